"""Merge and export: fold a trained LoRA adapter into its base model (PEFT's merge_and_unload) and write a plain
transformers checkpoint, which loads with `AutoModelForCausalLM.from_pretrained(folder)` alone (no PEFT), serves in
vLLM or TGI, converts to GGUF, and `push` publishes as a model repo.

    runs/<run>/merged/<adapter>/      (names: lab.store.MERGED_FILES)
      config.json, generation_config.json, model*.safetensors   transformers' checkpoint (save_pretrained)
      tokenizer.json, tokenizer_config.json, chat_template ...  the tokenizer as trained (pad token included)
      README.md                                                 model card (lab.cards.merged_card)
      merge.json                                                {"adapter": str, "adapter_fingerprint": str,
                                                                 "base_model": spec, "base_model_path": str,
                                                                 "method": str, "dtype": str, "parameters": int,
                                                                 "versions": {package: version}, "time": str}

The weights are merged in float32 (W + B·A·alpha/r) and only then cast to --dtype, so a bf16 checkpoint carries one
rounding, not two. The folder is built beside its place and moved in whole (lab.store.build_folder): a crash never
leaves half a checkpoint, and merging again replaces the old one only once the new one is complete.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from lab import cards, efficiency, models
from lab.adapters import adapter_base, check_same_base, check_weights, fingerprint, read_state, resolve_adapters
from lab.config import Settings, opt
from lab.errors import LabError
from lab.progress import Progress
from lab.store import MERGED_FILES, Run, atomic_write_json, atomic_write_text, build_folder

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class MergeConfig(Settings):
    adapter: str = opt("", "the adapter of this run to fold into its base model", label="Adapter")
    model: str = opt("", "base model spec (empty = the model the adapter was trained on)", label="Base model")
    dtype: str = opt("auto", "dtype of the saved weights (auto = the base checkpoint's own, else float32)", DTYPES,
                     label="Saved dtype")

    def validate(self) -> "MergeConfig":
        if not self.adapter.strip():
            raise LabError("Give --adapter: the name of the run's adapter to merge (see `ls runs/<run>/adapters`).")
        return self


def base_spec(run: Run, folder: Path, given: str) -> str:
    """--model, else the spec training.json records, else the run's sampled model, else adapter_config.json's base."""
    spec = given or (read_state(folder) or {}).get("base_model") or (run.stage_settings("sample") or {}).get("model") \
        or adapter_base(folder)
    if not spec:
        raise LabError(f"Adapter {folder.name!r} records no base model: pass --model (the model it was trained on).")
    return spec


def saved_dtype(cfg: MergeConfig, path: str):
    """The torch dtype to save in: --dtype, or for auto the one the base checkpoint's config names (float32 if none)."""
    import torch
    from transformers import AutoConfig

    name = cfg.dtype
    if name == "auto":
        stored = getattr(AutoConfig.from_pretrained(path), "dtype", None)
        name = str(stored).replace("torch.", "") if stored is not None else "float32"
    return getattr(torch, name if name in DTYPES else "float32")


def merged_model(spec: str, adapter: Path):
    """(base + adapter folded into plain weights, tokenizer), in float32."""
    import torch
    from peft import PeftModel

    check_weights(adapter)
    model, tok = models.load_weights(spec, torch.float32)
    try:
        peft = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, unknown target modules
        raise LabError(f"Adapter {adapter.name!r} does not fit {spec} ({type(e).__name__}): pass the --model it was "
                       "trained on.") from e
    return peft.merge_and_unload(), tok


def run(run: Run, cfg: MergeConfig, progress: Progress | None = None) -> dict:
    """The merge stage: runs/<run>/merged/<adapter>/ from the adapter and its base. -> a summary (folder, base, dtype,
    parameters). Holds the run's merge lock for that adapter: a second merge of it is refused, not run on top."""
    cfg.validate()
    folder = resolve_adapters(run, cfg.adapter)[cfg.adapter]
    spec = base_spec(run, folder, cfg.model)
    path = models.resolve(spec)
    check_same_base({cfg.adapter: folder}, spec, path)
    progress = progress or Progress("merge")
    with run.lock(f"merge-{cfg.adapter}"), efficiency.measure(run, "merge", cfg.adapter):
        record = _merge_locked(run, cfg, folder, spec, path, progress)
    run.record_stage("merge", cfg.to_dict())
    return {"run": run.name, "folder": str(run.merged_dir(cfg.adapter)), **record}


def _merge_locked(run: Run, cfg: MergeConfig, folder: Path, spec: str, path: str, progress: Progress) -> dict:
    state = read_state(folder) or {}
    progress.update(0, 3, "merge: loading the base and the adapter")
    model, tok = merged_model(spec, folder)
    dtype = saved_dtype(cfg, path)
    model = model.to(dtype)
    record = {"adapter": cfg.adapter, "adapter_fingerprint": fingerprint(folder), "base_model": spec,
              "base_model_path": path, "method": state.get("method") or "dpo",
              "dtype": str(dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in model.parameters()),
              "versions": {p: version(p) for p in ("torch", "transformers", "peft")},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    progress.update(1, 3, "merge: saving the checkpoint")

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors
        tok.save_pretrained(tmp)
        progress.update(2, 3, "merge: writing the card")
        card = cards.merged_card(cfg.adapter, cfg.adapter, run, tmp, state, record)
        atomic_write_text(tmp / MERGED_FILES["card"], card)
        atomic_write_json(tmp / MERGED_FILES["record"], record)  # last: the mark of a complete merge

    build_folder(run.merged_dir(cfg.adapter), build)
    progress.update(3, 3, "merge")
    progress.close()
    return record
