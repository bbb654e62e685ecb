"""Which device, which dtype, which training precision: one decision table, the device probed once.

    device  compute capability          load dtype (sample, judge,   training: base weights, LoRA weights,
                                        rank, compare)               the Trainer's mixed precision
    cuda    >= 8.0 (A100, A10G, L4,     bfloat16                     bfloat16 base, fp32 LoRA, bf16=True
            H100, RTX 30xx/40xx)
    cuda    6.0-7.x (T4 7.5, V100 7.0,  float16                      float16 base, fp32 LoRA, fp16=True: autocast
            P100 6.0)                                                with loss scaling (the Trainer's GradScaler)
    cuda    < 6.0                       float32                      float32, no mixed precision
    mps     (Apple silicon)             float16                      float32, no mixed precision (the Trainer's
                                                                     fp16 mode needs CUDA)
    cpu                                 float32                      float32 (CPU bf16 matmuls are slow on most
                                                                     machines)

bf16 is chosen from the compute capability, never from `torch.cuda.is_bf16_supported()`: that says True on a T4,
which only emulates bf16. LoRA weights stay fp32 under every mixed precision (PEFT upcasts adapters of a 16-bit
base), so the optimizer's updates are not lost to 16-bit rounding; with fp16 the loss scaling keeps small
gradients from flushing to zero.

--dtype overrides the table (`resolve_dtype` for loading, `train_precision` for training) within what the device
can do: bfloat16 on a GPU below 8.0 and float16 training off CUDA are refused with what to use instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import LabError

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "cpu, cuda, cuda:1 ..., mps or auto (CUDA, else Apple's mps, else CPU)"
DTYPE_HELP = ("float32, bfloat16, float16 or auto (bf16 on GPUs of compute capability 8.0+, fp16 on older ones "
              "such as the T4, fp16 on mps, fp32 on CPU; docs/training.md)")
BF16_CAPABILITY = (8, 0)  # native bf16 tensor cores from Ampere on
FP16_CAPABILITY = (6, 0)  # fast fp16 from Pascal (P100) on


@dataclass(frozen=True)
class Device:
    """What the lab runs on: kind "cuda" | "mps" | "cpu", the torch device string, the GPU's name and compute
    capability (None off CUDA)."""

    kind: str
    name: str  # "cuda:0", "mps", "cpu"
    gpu: str | None = None
    capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class TrainPrecision:
    """How a training runs: the dtype the base weights are loaded in and the Trainer's mixed precision."""

    load_dtype: str  # one of DTYPES
    mode: str  # "bf16" | "fp16" | "fp32"

    @property
    def trainer_flags(self) -> dict:
        """The TrainingArguments fields: bf16 / fp16 mixed precision (fp16 = autocast + loss scaling)."""
        return {"bf16": self.mode == "bf16", "fp16": self.mode == "fp16"}


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def probe(device: str | None = None) -> Device:
    """The device to run on: `device` ("auto" / None: CUDA, else Apple's mps, else CPU), checked to exist."""
    import torch

    want = (device or "auto").strip().lower()
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LabError(f"--device {want} was asked for, but no CUDA GPU is visible: use --device cpu (or auto).")
        index = int(want.split(":")[1]) if ":" in want else 0
        return Device("cuda", f"cuda:{index}" if ":" in want else "cuda", torch.cuda.get_device_name(index),
                      tuple(torch.cuda.get_device_capability(index)))
    if want == "mps":
        if not _mps_available():
            raise LabError("--device mps was asked for, but PyTorch sees no Apple GPU here: use --device cpu.")
        return Device("mps", "mps")
    if want == "cpu":
        return Device("cpu", "cpu")
    raise LabError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps.")


def default_dtype(dev: Device) -> str:
    """The load dtype of the table for sampling, judging, ranking and comparing."""
    if dev.kind == "cuda":
        cap = dev.capability or (0, 0)
        return "bfloat16" if cap >= BF16_CAPABILITY else "float16" if cap >= FP16_CAPABILITY else "float32"
    return "float16" if dev.kind == "mps" else "float32"


def _where(dev: Device) -> str:
    if dev.kind == "cuda":
        cap = dev.capability or (0, 0)
        return f"this GPU ({dev.gpu or dev.name}, compute capability {cap[0]}.{cap[1]})"
    return "Apple's mps" if dev.kind == "mps" else "the CPU"


def resolve_dtype(dev: Device, dtype: str | None) -> str:
    """--dtype (auto / None: the table's) -> a dtype name this device can load in."""
    if not dtype or dtype == "auto":
        return default_dtype(dev)
    if dtype not in DTYPES:
        raise LabError(f"Unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16.")
    if dtype == "bfloat16" and dev.kind == "cuda" and (dev.capability or (0, 0)) < BF16_CAPABILITY:
        raise LabError(f"--dtype bfloat16: {_where(dev)} has no native bfloat16 (it needs 8.0 or newer): use "
                       "--dtype float16 (or auto) on it.")
    return dtype


def train_precision(dev: Device, dtype: str | None) -> TrainPrecision:
    """The training row of the table, or the precision --dtype asks for where the device can train in it."""
    if not dtype or dtype == "auto":
        load = default_dtype(dev)
        if dev.kind == "mps":
            load = "float32"
        return TrainPrecision(load, {"bfloat16": "bf16", "float16": "fp16"}.get(load, "fp32"))
    load = resolve_dtype(dev, dtype)
    if load == "float16" and dev.kind != "cuda":
        raise LabError(f"--dtype float16: training in fp16 needs a CUDA GPU (mixed precision with loss scaling); "
                       f"on {_where(dev)} train in float32 (--dtype auto).")
    if load == "bfloat16" and dev.kind == "mps":
        raise LabError("--dtype bfloat16: the Trainer has no bf16 mixed precision on mps: train in float32 "
                       "(--dtype auto).")
    return TrainPrecision(load, {"bfloat16": "bf16", "float16": "fp16"}.get(load, "fp32"))


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ---- 4-bit QLoRA (bitsandbytes, an optional dependency: requirements-gpu.txt) ------------------------------------
def check_4bit(dev: Device) -> None:
    """LabError unless 4-bit loading can run here: a CUDA GPU and bitsandbytes installed."""
    import importlib.util

    if dev.kind != "cuda":
        raise LabError(f"--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels); {_where(dev)} cannot run "
                       "it: drop --load-in-4bit (LoRA on the full-precision model), or train on a GPU.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LabError("--load-in-4bit needs bitsandbytes, which is not installed: `pip install -r "
                       "requirements-gpu.txt` (or drop --load-in-4bit).")


def quantization_kwargs(dev: Device, prec: TrainPrecision) -> dict:
    """from_pretrained keyword arguments of a 4-bit NF4 base (QLoRA: double quantization, 16-bit compute in the
    training precision's dtype), placed whole on the training GPU."""
    from transformers import BitsAndBytesConfig

    compute = prec.load_dtype if prec.load_dtype != "float32" else "float16"
    index = int(dev.name.split(":")[1]) if ":" in dev.name else 0
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(compute)), "device_map": {"": index}}


def prepare_4bit(model, gradient_checkpointing: bool):
    """PEFT's preparation of a k-bit base for training (norms in fp32, input gradients for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def upcast_trainable(model, prec: TrainPrecision) -> int:
    """TRL casts a quantized model's LoRA weights to bf16 (the QLoRA paper's choice on bf16 GPUs). Under fp16 loss
    scaling or fp32 they go back to fp32: a GPU without native bf16 should not train in it. -> tensors upcast."""
    import torch

    if prec.mode == "bf16":
        return 0
    moved = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            moved += 1
    return moved
