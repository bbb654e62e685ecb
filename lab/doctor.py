"""`python -m lab doctor [--model M] [--json]`: what this machine can run, before any run exists.

It reports the device lab.precision picks (GPU name, compute capability, memory), the dtype that sampling loads in
and the training precision, the generation engines installed (lab.engines ENGINES) and which one `--engine auto`
takes, whether 4-bit QLoRA can run, the package versions, and for a model the memory estimate of lab.memory
(sampling and LoRA training with the given settings) against what is free. The same estimate is what a stage checks
before it loads a model. With --json the report is one JSON object:

    {"device": "cuda" | "mps" | "cpu", "device_name": "cuda:0", "gpu": str | null, "capability": "7.5" | null,
     "memory": {"free_gb", "total_gb", "source"},
     "dtype": load dtype, "train_precision": "bf16" | "fp16" | "fp32", "train_dtype": the base's dtype in training,
     "engines": ["lab", ...], "engine_auto": "lab" | "vllm", "engine_notes": {engine: why it is or is not there},
     "load_in_4bit": {"ok": bool, "why": str}, "versions": {package: version | null},
     "model": null | {"spec", "path", "parameters", "sampling": lab.memory.Estimate.to_dict(), "training": ...,
                      "fits": {"sampling": bool, "training": bool}}
              | {"spec", "path", "error": why its config could not be read (offline, gated, ...)}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from lab import engines, memory, models, precision
from lab.config import Settings, opt
from lab.errors import LabError
from lab.precision import DEVICE_HELP, DTYPE_HELP

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "llm-blender")


@dataclass
class DoctorConfig(Settings):
    model: str = opt("", "a model spec to size: hub id (only config.json is fetched), folder, bundled, tiny-random")
    batch_size: int = opt(4, "training: pairs per forward pass, as `lab train --batch-size`")
    max_length: int = opt(1024, "training: prompt + answer tokens, as `lab train --max-length`")
    lora_r: int = opt(16, "training: LoRA rank")
    target_modules: str = opt("all-linear", "training: LoRA target modules")
    load_in_4bit: bool = opt(False, "training: a 4-bit base (QLoRA)")
    gradient_checkpointing: bool = opt(True, "training: gradient checkpointing")
    sample_batch: int = opt(64, "sampling: sequences generated together, as `lab sample --batch-size`")
    sample_tokens: int = opt(768, "sampling: prompt + new tokens per sequence")
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)
    json: bool = opt(False, "print the report as one JSON object")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def model_report(cfg: DoctorConfig, dev: precision.Device, dtype: str, prec: precision.TrainPrecision,
                 free: int) -> dict:
    """The memory estimates of cfg.model for sampling and training, and whether each fits in `free` bytes."""
    path = models.resolve(cfg.model)
    try:
        shape = memory.model_shape(path)
    except LabError as e:  # the hub unreachable, a gated id: the rest of the report still holds
        return {"spec": cfg.model, "path": path, "error": str(e)}
    sampling = memory.sampling_need(shape, dtype, dev.kind, cfg.sample_batch, cfg.sample_tokens)
    training = memory.training_need(shape, prec.load_dtype, dev.kind, cfg.lora_r, cfg.target_modules,
                                    cfg.batch_size, cfg.max_length, cfg.load_in_4bit, cfg.gradient_checkpointing)
    return {"spec": cfg.model, "path": path, "parameters": shape.params,
            "lora_parameters": memory.lora_parameters(shape, cfg.lora_r, cfg.target_modules),
            "sampling": sampling.to_dict(), "training": training.to_dict(),
            "fits": {"sampling": sampling.total <= free, "training": training.total <= free}}


def report(cfg: DoctorConfig) -> dict:
    """The doctor's report (the format in the module docstring)."""
    dev = precision.probe(cfg.device)
    dtype, prec = precision.resolve_dtype(dev, cfg.dtype), precision.train_precision(dev, cfg.dtype)
    mem = memory.available(dev.kind, dev.name)
    notes = {name: engine.available()[1] for name, engine in engines.ENGINES.items()}
    installed = [name for name, engine in engines.ENGINES.items() if engine.available()[0]]
    try:
        precision.check_4bit(dev)
        four_bit = {"ok": True, "why": "CUDA GPU and bitsandbytes found"}
    except LabError as e:
        four_bit = {"ok": False, "why": str(e)}
    return {"device": dev.kind, "device_name": dev.name, "gpu": dev.gpu,
            "capability": ".".join(map(str, dev.capability)) if dev.capability else None,
            "memory": {"free_gb": round(mem["free"] / memory.GIB, 2), "total_gb": round(mem["total"] / memory.GIB, 2),
                       "source": mem["source"]},
            "dtype": dtype, "train_precision": prec.mode, "train_dtype": prec.load_dtype, "engines": installed,
            "engine_auto": engines.pick_engine("auto", dev.kind), "engine_notes": notes, "load_in_4bit": four_bit,
            "versions": {p: _version(p) for p in PACKAGES},
            "model": model_report(cfg, dev, dtype, prec, mem["free"]) if cfg.model else None}


def as_text(r: dict) -> str:
    """The report for a person: one line per finding."""
    where = f"{r['device']} ({r['gpu']}, compute capability {r['capability']})" if r["gpu"] else r["device"]
    lines = [f"device:      {where}, {r['memory']['free_gb']:.1f} of {r['memory']['total_gb']:.1f} GiB free "
             f"({r['memory']['source']})",
             f"precision:   sampling in {r['dtype']}; training {r['train_precision']} (base in {r['train_dtype']}, "
             "LoRA weights fp32)",
             f"engines:     {', '.join(r['engines'])} (--engine auto picks {r['engine_auto']})"]
    lines += [f"  {name}: {why}" for name, why in r["engine_notes"].items()]
    lines.append(f"4-bit QLoRA: {'yes' if r['load_in_4bit']['ok'] else 'no'}: {r['load_in_4bit']['why']}")
    lines.append("versions:    " + ", ".join(f"{p} {v}" for p, v in r["versions"].items() if v))
    m = r["model"]
    if m and m.get("error"):
        lines.append(f"model:       {m['spec']}: not sized: {m['error']}")
    elif m:
        lines.append(f"model:       {m['spec']}: {m['parameters'] / 1e9:.2f} B parameters, LoRA "
                     f"{m['lora_parameters'] / 1e6:.1f} M")
        for what in ("sampling", "training"):
            est = m[what]
            verdict = "fits" if m["fits"][what] else "does NOT fit"
            parts = ", ".join(f"{k.removesuffix('_gb')} {v}" for k, v in est.items() if k != "total_gb" and v)
            lines.append(f"  {what}: ~{est['total_gb']} GiB ({parts}): {verdict}")
    return "\n".join(lines)


def doctor_command(cfg: DoctorConfig) -> str:
    """What `python -m lab doctor` prints: the report as one JSON object (--json) or as text."""
    r = report(cfg)
    return json.dumps(r, ensure_ascii=False) if cfg.json else as_text(r)
