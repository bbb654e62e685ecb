"""Memory: what a model needs to sample or to train a LoRA adapter, from its config alone, against what is free.

Nothing here loads weights: the shapes come from config.json (a hub id fetches only that file), the model is built on
the meta device to count parameters and the LoRA layers. The estimate, in bytes:

    sampling   weights  params x bytes(dtype)
               kv cache batch x tokens x layers x 2 x kv_dim x bytes(dtype)   (tokens: prompt + new tokens)
               logits   batch x vocab x 4 x 2                                  (fp32 softmax of the last position)
    training   weights  params x bytes(dtype); 4-bit: 0.56 byte per linear-layer parameter (NF4, double
                        quantization), the embeddings in 16 bits
               LoRA     LoRA params x 16 (fp32 weight, gradient, Adam's two moments)
               logits   2 x batch x max_length x vocab x bytes(compute)   (chosen and rejected sequences)
               hidden   2 x batch x max_length x hidden x layers x bytes(compute), x 8 without gradient
                        checkpointing (every layer's activations kept, not one per layer)
    both       runtime  0.5 GiB on CUDA (context, allocator), 0.3 GiB elsewhere

Checked against one measurement (plain TRL on an H100, Llama-3.2-1B shape, LoRA r=16 all-linear, batch 8, ~420
tokens, gradient checkpointing): 4.2 GiB measured, 4.5 GiB estimated. The estimate errs on the high side.

`check_fits` compares it with what the device has free (CUDA: torch.cuda.mem_get_info; mps: PyTorch's
recommended maximum; CPU: MemAvailable), or with $LAB_MEMORY_GB where that is set (a budget on a shared machine),
and refuses with the numbers. LAB_MEMORY_CHECK=0 turns the refusal off.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

from lab.errors import LabError

GIB = 1024 ** 3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES = 0.5625  # 4 bits + double-quantized absmax constants per parameter
RUNTIME = {"cuda": 0.5 * GIB, "mps": 0.3 * GIB, "cpu": 0.3 * GIB}
# config values past which a model is not sized at all (a made-up config.json would cost the server minutes or GBs)
CONFIG_BOUNDS = {"num_hidden_layers": 512, "n_layer": 512, "num_layers": 512, "hidden_size": 65536, "n_embd": 65536,
                 "d_model": 65536, "intermediate_size": 262144, "n_inner": 262144, "vocab_size": 2_000_000,
                 "num_attention_heads": 1024, "num_key_value_heads": 1024, "max_position_embeddings": 10_000_000,
                 "n_positions": 10_000_000}


@dataclass(frozen=True)
class Shape:
    """A causal LM's sizes, read from its config (no weights)."""

    params: int
    embedding_params: int  # input embeddings (+ an untied output layer)
    layers: int
    hidden: int
    kv_dim: int  # key/value heads x head size
    vocab: int
    linear: tuple[tuple[str, int, int], ...]  # (module name, in, out) of the layers LoRA can adapt


def _check_bounds(config, source: str) -> None:
    for key, bound in CONFIG_BOUNDS.items():
        value = getattr(config, key, None)
        if isinstance(value, int) and value > bound:
            raise LabError(f"{source}'s config says {key}={value}: past {bound}, the lab does not size it (no real "
                           "chat model is that large); choose another model.")


def config_error(source: str, err: Exception) -> LabError:
    """Why `source`'s config.json could not be read, with the way out for that reason."""
    text = str(err)
    first = (text.splitlines() or [type(err).__name__])[0][:200]
    if any(w in text.lower() for w in ("couldn't connect", "offline", "connection", "timed out")) or \
            isinstance(err, (ConnectionError, TimeoutError)):
        skip = "" if os.environ.get("HF_HUB_OFFLINE") else " (HF_HUB_OFFLINE=1 skips the retries)"
        return LabError(f"Could not reach the Hugging Face Hub to read {source}'s config.json ({first}): check the "
                        "connection (a gated model such as Llama also needs its licence accepted and HF_TOKEN set); "
                        f"offline, give a local folder, 'bundled' or 'tiny-random'{skip}.")
    if "gated" in text.lower() or re.search(r"\b40[13]\b", text):
        return LabError(f"{source} is gated: accept its licence on the Hugging Face Hub, then set HF_TOKEN (or run "
                        "`hf auth login`) and try again.")
    return LabError(f"Could not read the config of {source} to size it ({first}): give a hub id of a transformers "
                    "causal LM, a local folder, 'bundled' or 'tiny-random'.")


@lru_cache(maxsize=64)
def model_shape(source: str, token: str | bool | None = None) -> Shape:
    """The Shape of the model a hub id or a folder with config.json describes: only config.json is fetched (a hub
    id; `token` False = anonymously, None = whatever huggingface_hub finds), a config with absurd sizes is refused
    before anything is built, and the model is built on the meta device with its buffers there too, so nothing is
    downloaded or allocated. Raises LabError when the config cannot be read (gated, missing, malformed)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source, token=token)
        _check_bounds(config, source)
        with init_empty_weights(include_buffers=True):
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # on the meta device from_config leaves tied embeddings as two tensors
    except LabError:
        raise
    except Exception as e:  # unreachable, gated, missing, remote-code or malformed: the size is unknown
        raise config_error(source, e) from None
    text = config.get_text_config()
    out = model.get_output_embeddings()
    embeds = {id(p): p.numel() for m in (model.get_input_embeddings(), out) if m is not None for p in m.parameters()}
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    linear = tuple((n, m.in_features, m.out_features) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not out)
    return Shape(sum(p.numel() for p in model.parameters()), sum(embeds.values()), text.num_hidden_layers,
                 text.hidden_size, getattr(text, "num_key_value_heads", heads) * head_dim, text.vocab_size, linear)


def count_parameters(source: str, token: str | bool | None = None) -> int:
    """Parameters of the causal LM that `source` describes (tied embeddings count once, as in the loaded model)."""
    return model_shape(source, token).params


def lora_parameters(shape: Shape, r: int, targets: str = "all-linear") -> int:
    """Parameters of a rank-r LoRA on the target layers: r x (in + out) per layer ('all-linear': every linear
    layer but the output layer, as PEFT does)."""
    names = None if targets.strip() == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
    return sum(r * (i + o) for n, i, o in shape.linear
               if names is None or n in names or n.rsplit(".", 1)[-1] in names)


@dataclass(frozen=True)
class Estimate:
    """Bytes per part (the module docstring gives each formula) and their total."""

    weights: int
    lora: int = 0
    activations: int = 0
    runtime: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.runtime

    def to_dict(self) -> dict:
        return {k + "_gb": round(v / GIB, 2) for k, v in {**asdict(self), "total": self.total}.items()}


def sampling_need(shape: Shape, dtype: str, kind: str, batch: int = 64, tokens: int = 768) -> Estimate:
    """Memory to sample `batch` sequences of `tokens` (prompt + new) in `dtype` on a device of `kind`."""
    b = BYTES[dtype]
    kv = batch * tokens * shape.layers * 2 * shape.kv_dim * b
    return Estimate(shape.params * b, 0, kv + batch * shape.vocab * 4 * 2, int(RUNTIME[kind]))


def training_need(shape: Shape, dtype: str, kind: str, lora_r: int = 16, targets: str = "all-linear",
                  batch: int = 4, max_length: int = 1024, four_bit: bool = False,
                  checkpointing: bool = True) -> Estimate:
    """Memory of one LoRA DPO step: `batch` pairs of `max_length` tokens, base in `dtype` (or 4 bits)."""
    compute = 2 if four_bit or dtype != "float32" else 4
    if four_bit:
        weights = int((shape.params - shape.embedding_params) * NF4_BYTES + shape.embedding_params * 2)
    else:
        weights = shape.params * BYTES[dtype]
    tokens = 2 * batch * max_length
    hidden = tokens * shape.hidden * shape.layers * compute * (1 if checkpointing else 8)
    return Estimate(weights, lora_parameters(shape, lora_r, targets) * 16, tokens * shape.vocab * compute + hidden,
                    int(RUNTIME[kind]))


# ---- what is free ---------------------------------------------------------------------------------------------
def _meminfo() -> tuple[int, int] | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def available(kind: str, name: str = "") -> dict:
    """{"free": bytes, "total": bytes, "source": what was read} of the device; $LAB_MEMORY_GB caps "free"."""
    import torch

    if kind == "cuda":
        index = int(name.split(":")[1]) if ":" in name else 0
        free, total = torch.cuda.mem_get_info(index)
        found = {"free": int(free), "total": int(total), "source": "torch.cuda.mem_get_info"}
    elif kind == "mps":
        total = int(torch.mps.recommended_max_memory())
        found = {"free": total - int(torch.mps.driver_allocated_memory()), "total": total, "source": "mps"}
    else:
        ram = _meminfo() or (os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                             os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        found = {"free": int(ram[0]), "total": int(ram[1]), "source": "MemAvailable"}
    budget = budget_bytes()
    if budget is not None and budget < found["free"]:
        found = {**found, "free": budget, "source": "$LAB_MEMORY_GB"}
    return found


def budget_bytes() -> int | None:
    raw = os.environ.get("LAB_MEMORY_GB", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise LabError(f"LAB_MEMORY_GB={raw!r} is not a number: set it to the GiB the lab may use.") from None
    if not value > 0:
        raise LabError(f"LAB_MEMORY_GB={raw!r} must be above 0 (GiB the lab may use), or unset.")
    return int(value * GIB)


def check_fits(need: Estimate, kind: str, name: str, what: str, fixes: str) -> None:
    """LabError with the numbers when `need` exceeds what the device has free (unless LAB_MEMORY_CHECK=0).
    what: e.g. "Training meta-llama/Llama-3.2-3B-Instruct in bfloat16"; fixes: what to change."""
    if os.environ.get("LAB_MEMORY_CHECK", "").strip() == "0":
        return
    have = available(kind, name)
    if need.total <= have["free"]:
        return
    parts = ", ".join(f"{k.removesuffix('_gb')} {v:.2f}" for k, v in need.to_dict().items() if k != "total_gb" and v)
    raise LabError(f"{what} needs about {need.total / GIB:.1f} GiB ({parts} GiB), but {kind} has "
                   f"{have['free'] / GIB:.1f} GiB free of {have['total'] / GIB:.1f} ({have['source']}): {fixes} "
                   "(`python -m lab doctor --model M` shows the estimate; LAB_MEMORY_CHECK=0 skips this check).")
