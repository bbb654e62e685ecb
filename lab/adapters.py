"""LoRA adapter folders: what is in one, whether it is complete, where it came from, and loading several onto one
base model.

    runs/<run>/adapters/<name>/        (file names: lab.store.ADAPTER_FILES)
      adapter_config.json, adapter_model.safetensors   the PEFT adapter; adapter_config.json is moved in LAST and is
                                                       the mark of a complete adapter (Run.adapters() looks for it)
      README.md                                        model card (lab.cards.model_card)
      training.json                                    lab.train's state of the training (format: lab/train.py)
      metrics.jsonl                                    one line per logged step (format: lab/train.py)
      checkpoints/checkpoint-<step>/                   Trainer checkpoints for a resume; removed once done
      runs/                                            TensorBoard event files (--report-to tensorboard); not pushed

A crash at any point leaves a folder without adapter_config.json, which nothing treats as a finished adapter.
Comparing, sampling with an adapter and self-rewarding rounds load every adapter they need onto ONE loaded base
(`adapters_on`) and switch between them, so memory holds one model plus a few LoRA matrices.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from lab.errors import LabError
from lab.store import ADAPTER_FILES, Run, adapter_file, atomic_write_json, atomic_write_text, lock_file, \
    read_jsonl, validate_run_name, write_jsonl

BASE = "base"  # the name of the plain base model beside adapters (compare's first column)
RESUME_FREE = ("resume", "device", "save_steps", "logging_steps", "eval_steps", "epochs", "max_steps", "report_to")


def is_complete(folder: Path) -> bool:
    return adapter_file(folder, "config").exists()


def read_state(folder: Path) -> dict | None:
    """training.json of an adapter folder, or None."""
    path = adapter_file(folder, "state")
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_metrics(folder: Path) -> list[dict]:
    """The metrics lines of an adapter, complete or still training (for plots)."""
    return read_jsonl(adapter_file(folder, "metrics"))


def final_metrics(metrics: list[dict]) -> dict:
    """The last train line's and the last eval line's headline numbers, e.g. {"train/loss": .., "eval/loss": ..}:
    every numeric metric the method logged (DPO's rewards/*, KTO's kl, ORPO's log_odds_ratio ...)."""
    skip = {"step", "max_steps", "epoch", "time", "elapsed_s", "eta_s", "tokens_per_s", "num_tokens", "grad_norm",
            "learning_rate"}
    out: dict = {}
    for split in ("train", "eval"):
        last = next((m for m in reversed(metrics) if m.get("split") == split), None)
        out.update({f"{split}/{k}": v for k, v in (last or {}).items()
                    if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def adapter_base(folder: Path) -> str:
    """The base model an adapter was trained on, as its adapter_config.json records it."""
    return json.loads(adapter_file(folder, "config").read_text(encoding="utf-8")).get("base_model_name_or_path") or ""


def fingerprint(folder: Path | None) -> str | None:
    """Hash of an adapter's weights and config: a retrained adapter under the same name is generated again."""
    if folder is None:
        return None
    h = hashlib.sha1()
    for kind in ("config", "weights"):
        path = adapter_file(folder, kind)
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:12]


# ---- names -> folders ---------------------------------------------------------------------------------------------
def resolve_adapters(run: Run, names: str) -> dict[str, Path]:
    """'' -> every complete adapter of the run; else a comma list of the run's adapter names. -> {name: folder}."""
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    if not wanted:
        wanted = run.adapters()
        if not wanted:
            raise LabError(f"Run {run.name} has no adapters yet: train one first (`python -m lab train --run "
                           f"{run.name} ...`).", ui=f"Run {run.name} has no adapters yet: train one first in the "
                           "Train tab.")
    out, rounds = {}, run.round_adapters()  # a self-rewarding round's adapter answers to its name too
    for name in wanted:
        validate_run_name(name, "adapter name")
        if name == BASE:
            raise LabError(f"An adapter may not be called {BASE!r}: that name is the base model. Rename the adapter.")
        folder = run.adapter_dir(name) if is_complete(run.adapter_dir(name)) else rounds.get(name)
        if folder is None or not is_complete(folder):
            have = ", ".join([*run.adapters(), *rounds]) or "none yet"
            raise LabError(f"No adapter {name!r} in run {run.name} (adapters: {have}). Pick names from that list.")
        check_weights(folder)  # before any model loads
        out[name] = folder
    return out


def check_weights(folder: Path) -> None:
    """Refuse an adapter folder without safetensors weights before PEFT opens it: a pickle adapter_model.bin (which
    can run code when loaded, and which PEFT's loader refuses with a traceback) or no weights at all."""
    folder = Path(folder)
    if adapter_file(folder, "weights").is_file():
        return
    if (folder / "adapter_model.bin").exists():
        raise LabError(f"Adapter {folder.name!r} holds adapter_model.bin, a pickle file, which the lab does not load "
                       "(loading a pickle can run any code in it): save the adapter as adapter_model.safetensors "
                       "(PEFT's save_pretrained does by default) and try again.")
    raise LabError(f"Adapter {folder.name!r} has no {adapter_file(folder, 'weights').name}: its weights are missing; "
                   "train it again or copy the whole adapter folder.")


def check_same_base(adapters: dict[str, Path], spec: str, base_path: str) -> None:
    """Refuse an adapter trained on another base: its LoRA matrices would fit nothing, or fit and mean nothing."""
    ok = {spec, base_path, Path(base_path).name, spec.rstrip("/").split("/")[-1]}
    for name, path in adapters.items():
        trained = adapter_base(path)
        if trained and trained not in ok and Path(trained).name not in ok:
            raise LabError(f"Adapter {name!r} was trained on {trained}, but the base model here is {spec} "
                           f"({base_path}). Pass --model {trained} or pick adapters trained on {spec}.")


# ---- several adapters on one loaded base -----------------------------------------------------------------------------
def attach_adapters(model, adapters: dict[str, Path]):
    """Wrap `model` in one PeftModel holding every adapter; returns (peft model, {name: internal adapter name})."""
    from peft import PeftModel

    slots = {name: f"lab_adapter_{i}" for i, name in enumerate(adapters)}  # run names may hold '.', PEFT keys may not
    peft = None
    for name, path in adapters.items():
        check_weights(path)
        try:
            if peft is None:
                peft = PeftModel.from_pretrained(model, str(path), adapter_name=slots[name])
            else:
                peft.load_adapter(str(path), adapter_name=slots[name])
        except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, unknown target modules
            if peft is not None:
                peft.unload()
            raise LabError(f"Adapter {name!r} does not fit this base model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}): it was trained on another model.") from e
    return peft, slots


@contextmanager
def adapters_on(cm, adapters: dict[str, Path]) -> Iterator[Callable]:
    """Load every adapter onto the loaded base `cm` (a lab.models.ChatModel) once; yields `select(name)`, a context
    manager that gives a ChatModel with that adapter switched on (name None: the plain base, every adapter
    disabled). On exit the LoRA layers are stripped again, so the cached base model stays a plain base model."""
    if not adapters:
        yield lambda name: nullcontext(cm)
        return
    peft, slots = attach_adapters(cm.model, adapters)
    wrapped = dataclasses.replace(cm, model=peft)

    @contextmanager
    def select(name: str | None):
        if name is None:
            with peft.disable_adapter():
                yield wrapped
        else:
            peft.set_adapter(slots[name])
            yield wrapped

    try:
        yield select
    finally:
        peft.unload()


# ---- a training's folder: lock, resume, publish ---------------------------------------------------------------------
@contextmanager
def adapter_lock(out: Path) -> Iterator[None]:
    """One training per adapter folder: a second one (another terminal, the app) is refused, not run on top.
    The lock file lives beside the runs (lab.store.lock_file), never in the folder."""
    lock = lock_file(out, "train")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(f"Adapter {out.name} is being trained by another process right now: wait for it or "
                           "stop it, or pick another adapter name.") from None
        out.mkdir(parents=True, exist_ok=True)
        try:
            yield
        finally:
            if not any(out.iterdir()):
                out.rmdir()  # failed before writing anything: leave no empty adapter folder behind


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json, Trainer's name, is written last: a torn one lacks it)."""
    ckpts = [p for p in adapter_file(out, "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def refuse_finished(out: Path) -> dict | None:
    """LabError if `out` holds a finished adapter (or a foreign one); else its training.json (or None)."""
    state = read_state(out)
    if is_complete(out) and (state is None or state.get("status") == "done"):
        raise LabError(f"Adapter {out.name!r} already exists in {out.parent.parent.name}: choose another adapter "
                       "name, or delete that folder to train it again.")
    return state


def plan_resume(out: Path, identity: dict, resume: bool) -> Path | None:
    """Decide what to do with an existing folder, reading only. -> checkpoint to resume from, or None (fresh)."""
    state = refuse_finished(out)
    ckpt = last_checkpoint(out) if resume and state else None
    if ckpt is None:
        return None
    old = state.get("identity", {})
    diff = [f"{k}: {old.get(k)!r} then, {identity.get(k)!r} now" for k in sorted({*old, *identity} - set(RESUME_FREE))
            if old.get(k) != identity.get(k)]
    if diff:
        raise LabError(f"Adapter {out.name!r} holds an interrupted training with other settings ({'; '.join(diff)})"
                       ": rerun with the same settings to resume it, pass --no-resume to start it over, or choose "
                       "another adapter name.")
    return ckpt


def reset_folder(out: Path, ckpt: Path | None) -> None:
    """Fresh start: clear what an earlier attempt left. Resume: drop metric lines past the checkpoint's step."""
    if ckpt is None:
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return
    step = int(ckpt.name.split("-")[-1])
    metrics = adapter_file(out, "metrics")
    write_jsonl(metrics, [m for m in read_jsonl(metrics) if m.get("step", 0) <= step and m.get("split") != "summary"])


def publish(out: Path, model, state: dict, card: Callable[[Path], str]) -> None:
    """Write the adapter, its card (`card(staging folder)` -> README text) and state into a staging folder, then move
    them in with adapter_config.json last: a crash at any point leaves a folder without it."""
    tmp = adapter_file(out, "staging")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, selected_adapters=["default"])  # not TRL's frozen "ref" copy
    atomic_write_json(adapter_file(tmp, "state"), state)
    atomic_write_text(adapter_file(tmp, "card"), card(tmp))
    adapter_file(out, "config").unlink(missing_ok=True)  # an older (stopped) adapter is incomplete from here on
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == ADAPTER_FILES["config"]):
        os.replace(f, out / f.name)
    tmp.rmdir()


def status(folder: Path) -> str | None:
    """training.json's status ("training" | "stopped" | "done" | "failed"), or None without one."""
    return (read_state(folder) or {}).get("status")
