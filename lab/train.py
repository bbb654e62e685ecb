"""DPO training of one LoRA adapter per preference data set, with TRL's DPOTrainer and PEFT.

The loss (sigmoid DPO, Rafailov et al. 2023), for a prompt x with chosen y_w and rejected y_l:

    L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

pi is the base model with the LoRA adapter on; ref is the same model with the adapter disabled (no second copy in
memory). When training continues from an existing adapter (`init_adapter`, self-rewarding rounds), TRL copies it into
a frozen "ref" adapter, so the reference is the previous round's model.

Input: a pairs file in TRL's conversational format (lab.pairs documents it); plain-string prompts/answers are
wrapped into one message each. Output, `runs/<run>/adapters/<name>/`:

    adapter_config.json, adapter_model.safetensors   the PEFT adapter. adapter_config.json is moved in LAST and is
                                                     the mark of a complete adapter (Run.adapters() looks for it)
    README.md                                        model card: base model, data set, parameters, final metrics
    training.json                                    {"status": "training"|"stopped"|"done"|"failed",
                                                      "settings": TrainConfig fields, "base_model": spec,
                                                      "base_model_path", "init_adapter": str|null,
                                                      "pairs": {"path", "sha256", "n", "n_train", "n_eval",
                                                                "chosen_chars_mean", "rejected_chars_mean",
                                                                "chosen_longer_fraction"},
                                                      "identity": what a resume must match (settings, model,
                                                                  pairs sha256, init adapter),
                                                      "global_step", "max_steps", "final": {metric: value},
                                                      "warnings": [str], "versions": {package: version},
                                                      "started", "finished": unix s, "error": str|null}
    metrics.jsonl                                    one line per logged step, appended while training runs:
        {"split": "train"|"eval"|"summary", "step": int, "max_steps": int, "epoch": float, "time": unix s,
         "elapsed_s": s since this process began training, "loss", "grad_norm", "learning_rate",
         "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",   # beta * log(pi/ref)
         "logps/chosen", "logps/rejected",                                                # summed over answer tokens
         "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy",
         "num_tokens": cumulative tokens seen, "tokens_per_s": since the previous train line,
         "eta_s": seconds left at the recent pace}
        eval lines carry the same names without TRL's "eval_" prefix; the summary line holds train_runtime etc.
    checkpoints/checkpoint-<step>/                   Trainer checkpoints for resume; removed once training is done

A stopped training (SIGTERM from the app, Ctrl-C) saves a checkpoint and the adapter trained so far (status
"stopped"); running the same command again resumes from the checkpoint. A crash leaves no adapter_config.json, so
the folder never looks like a finished adapter.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lab import models
from lab.config import TrainConfig
from lab.errors import LabError
from lab.progress import Progress, Stopped, stop_requested
from lab.store import (Run, append_jsonl, atomic_write_json, atomic_write_text, iter_user_jsonl, read_jsonl,
                       write_jsonl)

MIN_EVAL_GROUPS = 2  # fewer held-out instructions than this give an eval loss too noisy to read
# Settings that may change between an interrupted training and its resumption without changing what is learned
RESUME_FREE = ("resume", "device", "save_steps", "logging_steps", "eval_steps", "epochs", "max_steps")
# Chat-template markup, by the template family it comes from: such text in a pair was rendered for some model
TEMPLATE_MARKERS = {
    "<|im_start|>": "ChatML (SmolLM2, Qwen)", "<|im_end|>": "ChatML (SmolLM2, Qwen)",
    "<|start_header_id|>": "Llama 3", "<|eot_id|>": "Llama 3", "<|begin_of_text|>": "Llama 3",
    "[INST]": "Llama 2 / Mistral", "[/INST]": "Llama 2 / Mistral", "<<SYS>>": "Llama 2",
    "<start_of_turn>": "Gemma", "<end_of_turn>": "Gemma",
    "<|user|>": "Zephyr / Phi-3", "<|assistant|>": "Zephyr / Phi-3",
}
OOM_HINTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


# ---- input: pairs --------------------------------------------------------------------------------------------------
def resolve_pairs(run: Run, pairs: str | os.PathLike) -> Path:
    """'judge' | 'pairrm' | another source name -> run.pairs_file(name); anything else is a file path."""
    raw = str(pairs).strip()
    path = Path(raw).expanduser()
    if not raw:
        raise LabError("Give --pairs: 'judge', 'pairrm' or a pairs .jsonl file.")
    if path.is_file():
        return path.resolve()
    if "/" not in raw and not raw.endswith(".jsonl"):
        source = run.pairs_file(raw)
        if source.is_file():
            return source
        raise LabError(f"No pairs for source {raw!r} in run {run.name} ({source.name} is missing): build them "
                       f"first with `python -m lab pairs --run {run.name} --source {raw}`, or pass a file.")
    raise LabError(f"Pairs file {path} does not exist: give 'judge', 'pairrm' or an existing .jsonl file.")


def _as_messages(value: Any, role: str, where: str) -> list[dict]:
    """A plain string becomes one message; a list must hold {"role", "content"} dicts with non-empty text."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise LabError(f"{where}: expected a list of chat messages or a string, got {type(value).__name__}.")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise LabError(f"{where}: each message needs a 'role' (system/user/assistant) and a 'content' string.")
    if not value[-1]["content"].strip():
        raise LabError(f"{where}: the message text is empty.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _check_record(rec: Any, n: int) -> dict:
    """One pairs line -> {"prompt", "chosen", "rejected", "meta"}; raises LabError naming the line."""
    where = f"pairs line {n}"
    if not isinstance(rec, dict) or not {"prompt", "chosen", "rejected"} <= rec.keys():
        raise LabError(f"{where}: each line needs 'prompt', 'chosen' and 'rejected' (TRL conversational format, "
                       "see lab/pairs.py); rebuild the file with `python -m lab pairs`.")
    out = {"prompt": _as_messages(rec["prompt"], "user", f"{where}, prompt"),
           "chosen": _as_messages(rec["chosen"], "assistant", f"{where}, chosen"),
           "rejected": _as_messages(rec["rejected"], "assistant", f"{where}, rejected"),
           "meta": rec.get("meta") if isinstance(rec.get("meta"), dict) else {}}
    if out["prompt"][-1]["role"] != "user":
        raise LabError(f"{where}: the prompt must end with a user message.")
    for side in ("chosen", "rejected"):  # DPO trains on these tokens as the model's own answer
        if any(m["role"] != "assistant" for m in out[side]):
            raise LabError(f"{where}, {side}: every message must have role 'assistant' (the answer to the prompt); "
                           "earlier turns, user ones included, belong in 'prompt'.")
    return out


def _text_of(rec: dict) -> str:
    return "\n".join(m["content"] for part in ("prompt", "chosen", "rejected") for m in rec[part])


def _markup_error(n: int, marker: str, own: set[str], model: str) -> LabError:
    family = TEMPLATE_MARKERS.get(marker, "a chat template")
    if marker in own:
        why = (f"it is {model}'s own template markup, so the text was already rendered: the trainer renders the "
               "messages again and the markup would be doubled")
    else:
        why = f"it is markup of another model's template ({family}), not {model}'s"
    return LabError(f"pairs line {n} contains the chat-template token {marker!r}: {why}. Pairs must hold plain "
                    "message text; rebuild them with `python -m lab pairs`, or strip the template from the text.")


def check_markup(records: list[dict], tokenizer, model: str) -> None:
    """Refuse pairs whose text holds chat-template tokens (rendered for this or another model)."""
    own = {t for t in tokenizer.all_special_tokens if len(t) > 3 and t not in ("<unk>",)}
    own |= {t for t in TEMPLATE_MARKERS if t in (tokenizer.chat_template or "")}
    markers = sorted(set(TEMPLATE_MARKERS) | own, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(m) for m in markers))
    for n, rec in enumerate(records, 1):
        hit = pattern.search(_text_of(rec))
        if hit:
            raise _markup_error(n, hit.group(0), own, model)


def load_pairs(path: Path) -> list[dict]:
    """Read and check a pairs file (a user's file: UTF-8, its last line counts with or without a newline, see
    lab.store.iter_user_jsonl). Returns [{"prompt", "chosen", "rejected", "meta"}] (messages lists)."""
    records = [_check_record(r, n) for n, r in iter_user_jsonl(path, "Pairs file")]
    if not records:
        raise LabError(f"{path} holds no pairs: build them with `python -m lab pairs` (judge or pairrm first).")
    same = [n for n, r in enumerate(records, 1) if r["chosen"][-1]["content"].strip() ==
            r["rejected"][-1]["content"].strip()]
    if same:
        raise LabError(f"{len(same)} of {len(records)} pairs have the same chosen and rejected text (lines "
                       f"{', '.join(map(str, same[:5]))}{'...' if len(same) > 5 else ''}): they carry no preference "
                       "and only add noise. Drop ties and duplicate answers when building pairs (lab.pairs does), "
                       "or delete those lines.")
    return records


def split_pairs(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole instructions (never one pair of an instruction on each side). -> (train, eval)."""
    key = lambda r: r["meta"].get("instruction_id") or r["prompt"][-1]["content"]  # noqa: E731
    groups = sorted({key(r) for r in records})
    random.Random(seed).shuffle(groups)
    n_eval = round(len(groups) * fraction)
    if n_eval < MIN_EVAL_GROUPS or len(groups) - n_eval < 1:
        return records, []
    held = set(groups[:n_eval])
    return [r for r in records if key(r) not in held], [r for r in records if key(r) in held]


def pair_stats(path: Path, records: list[dict]) -> dict:
    """Size, checksum and the chosen-vs-rejected length balance of a pairs file (what the card and warnings need)."""
    chosen = [len(r["chosen"][-1]["content"]) for r in records]
    rejected = [len(r["rejected"][-1]["content"]) for r in records]
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "n": len(records),
            "chosen_chars_mean": sum(chosen) / len(chosen), "rejected_chars_mean": sum(rejected) / len(rejected),
            "chosen_longer_fraction": sum(c > r for c, r in zip(chosen, rejected)) / len(records)}


# ---- warnings shared by the CLI and the app ------------------------------------------------------------------------
def _rolling(values: list[float], k: int) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def displacement_warning(metrics: list[dict], beta: float, window: int = 5) -> str | None:
    """Reward accuracy near 1.0 in the first half while the chosen answers' log-prob falls below the reference."""
    train = [m for m in metrics if m.get("split") == "train" and "rewards/accuracies" in m]
    if len(train) < 2 * window:
        return None
    acc = _rolling([m["rewards/accuracies"] for m in train], window)
    chosen_shift = _rolling([m["rewards/chosen"] / beta for m in train], window)  # log pi(y_w) - log ref(y_w), nats
    half = max(m.get("max_steps") or m["step"] for m in train) / 2
    early = next((train[i]["step"] for i, a in enumerate(acc) if a >= 0.95 and train[i]["step"] <= half), None)
    if early is None or chosen_shift[-1] > -1.0:
        return None
    return (f"Reward accuracy reached {acc[-1]:.2f} by step {early}, while the chosen answers' log-probability fell "
            f"{-chosen_shift[-1]:.1f} nats below the reference: DPO is widening the margin by pushing both answers "
            "down (likelihood displacement, usual with few pairs), so the model may drift toward text that neither "
            "answer contains. Train fewer steps, raise --beta, add pairs, or add an SFT term "
            "(--loss-type sigmoid,sft).")


def length_warning(stats: dict, history: list[dict] | tuple = ()) -> str | None:
    """Chosen answers systematically longer than rejected ones (and more so than in earlier rounds' data)."""
    frac, c, r = stats["chosen_longer_fraction"], stats["chosen_chars_mean"], stats["rejected_chars_mean"]
    gap = c / max(r, 1.0)
    earlier = [h["chosen_chars_mean"] / max(h["rejected_chars_mean"], 1.0) for h in history]
    growing = bool(earlier) and gap > max(earlier) * 1.05
    if not (frac >= 0.65 and gap >= 1.2) and not (growing and gap >= 1.1):
        return None
    trend = f" (up from {earlier[-1]:.2f}x in the previous round)" if growing else ""
    return (f"Chosen answers are longer than rejected ones in {frac:.0%} of pairs ({c:.0f} vs {r:.0f} characters, "
            f"{gap:.2f}x){trend}: DPO learns length as much as quality, so answers tend to grow each round. Check "
            "whether the judge prefers length, or balance the pairs by length.")


def diagnose(metrics: list[dict], stats: dict | None, beta: float, history: list[dict] | tuple = ()) -> list[str]:
    """Plain-language warnings about what small-data DPO does; the CLI prints them, the app shows them live."""
    found = [displacement_warning(metrics, beta), length_warning(stats, history) if stats else None]
    return [w for w in found if w]


# ---- the adapter folder: lock, state, resume -----------------------------------------------------------------------
def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun, else True: only it writes files."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def adapter_lock(out: Path) -> Iterator[None]:
    """One training per adapter folder: a second one (another terminal, the app) is refused, not run on top."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(f"Adapter {out.name} is being trained by another process right now: wait for it or "
                           "stop it, or pick another --adapter name.") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while we still hold it, so no one else is using this file
            if not any(out.iterdir()):
                out.rmdir()  # failed before writing anything: leave no empty adapter folder behind


def read_state(out: Path) -> dict | None:
    """training.json of an adapter folder, or None."""
    path = out / "training.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last, so a torn one lacks it)."""
    ckpts = [p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(k for k in {*old, *new} if k not in RESUME_FREE)
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def refuse_finished(out: Path) -> dict | None:
    """LabError if `out` holds a finished adapter (or a foreign one); else its training.json (or None)."""
    state = read_state(out)
    if (out / "adapter_config.json").exists() and (state is None or state.get("status") == "done"):
        raise LabError(f"Adapter {out.name!r} already exists in {out.parent}: choose another adapter name, or "
                       "delete that folder to train it again.")
    return state


def plan_resume(out: Path, identity: dict, resume: bool) -> Path | None:
    """Decide what to do with an existing folder, reading only. -> checkpoint to resume from, or None (fresh)."""
    state = refuse_finished(out)
    ckpt = last_checkpoint(out) if resume and state else None
    if ckpt is None:
        return None
    diff = _differences(state.get("identity", {}), identity)
    if diff:
        raise LabError(f"Adapter {out.name!r} holds an interrupted training with other settings ({'; '.join(diff)})"
                       ": rerun with the same settings to resume it, pass --no-resume to start it over, or choose "
                       "another --adapter name.")
    return ckpt


def reset_folder(out: Path, ckpt: Path | None) -> None:
    """Fresh start: clear what an earlier attempt left. Resume: drop metric lines past the checkpoint's step."""
    if ckpt is None:
        for p in out.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        return
    step = int(ckpt.name.split("-")[-1])
    metrics = out / "metrics.jsonl"
    write_jsonl(metrics, [m for m in read_jsonl(metrics) if m.get("step", 0) <= step and m.get("split") != "summary"])


# ---- live metrics and cooperative stop -----------------------------------------------------------------------------
class MetricsStream:
    """Appends one JSON line per log event to metrics.jsonl, feeds lab.progress, and turns a stop request into
    `should_training_stop` (with a checkpoint) at the end of the current optimizer step.

    A mixin: `metrics_callback()` joins it with transformers' TrainerCallback, so importing lab.train (the app does,
    for `diagnose` and `read_metrics`) does not import transformers."""

    def __init__(self, path: Path, progress: Progress, distributed: bool):
        self.path, self.progress, self.distributed = path, progress, distributed
        self.start = self.last_time = time.time()
        self.last_tokens, self.first_step = 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step is None:  # here, not in on_train_begin: a resumed state is loaded in between
            self.start = self.last_time = time.time()
            self.first_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_everywhere():
            control.should_training_stop = True
            control.should_save = True  # a checkpoint to resume from
        self.progress.update(state.global_step, state.max_steps, "train", eta_s=self._eta(state))

    def _stop_everywhere(self) -> bool:
        """A stop on any rank stops all ranks at the same step (else the others wait forever in a collective)."""
        if not self.distributed:
            return stop_requested()
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop_requested() else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def _eta(self, state) -> float | None:
        done = state.global_step - (self.first_step or 0)
        if done <= 0:
            return None
        return (time.time() - self.start) / done * (state.max_steps - state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        rec = {"split": _split_of(logs), "step": state.global_step, "max_steps": state.max_steps,
               "epoch": round(state.epoch or 0.0, 4), "time": now, "elapsed_s": round(now - self.start, 3)}
        rec.update({k.removeprefix("eval_"): v for k, v in logs.items() if k != "epoch"})
        if rec["split"] == "train" and "num_tokens" in logs:
            rec["tokens_per_s"] = (logs["num_tokens"] - self.last_tokens) / max(now - self.last_time, 1e-9)
            self.last_tokens, self.last_time = logs["num_tokens"], now
            rec["eta_s"] = self._eta(state)
        append_jsonl(self.path, [rec])


def metrics_callback(path: Path, progress: Progress, distributed: bool):
    from transformers import TrainerCallback

    return type("MetricsStreamCallback", (MetricsStream, TrainerCallback), {})(path, progress, distributed)


def _split_of(logs: dict) -> str:
    if any(k.startswith("eval_") for k in logs):
        return "eval"
    return "summary" if "train_runtime" in logs else "train"


# ---- model, data set, trainer --------------------------------------------------------------------------------------
def load_policy(spec: str, config: TrainConfig, init_adapter: str | None):
    """Base model (+ the adapter to continue from, trainable) and its tokenizer, in the training dtype."""
    from transformers import AutoModelForCausalLM

    path = models.resolve(spec)
    device, dtype = models.pick_device(config.device, config.dtype)
    if str(dtype) == "torch.float16":
        raise LabError("--dtype float16 is not supported for training (it overflows without loss scaling): use "
                       "bfloat16 on a GPU or float32.")
    tok = models.load_tokenizer(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise models._hub_error(spec, e) from e
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    if init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    return model, tok, device


def lora_targets(config: TrainConfig) -> str | list[str]:
    """--target-modules as PEFT takes it: "all-linear", or a list of module names."""
    targets = config.target_modules.strip()
    return targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=lora_targets(config), task_type="CAUSAL_LM")


def check_target_modules(model, config: TrainConfig, spec: str) -> None:
    """Refuse --target-modules names that match no layer LoRA can adapt (PEFT's rule: the module's full name, or
    its end after a '.'), listing the names that can: PEFT would fail inside the trainer, or skip a misspelt name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(config)
    if targets == "all-linear":
        return
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise LabError(f"--target-modules {', '.join(missing)}: no such layer in {spec} can take LoRA. Use "
                       f"'all-linear', or names joined by ',' from: {', '.join(known)}.")


def planned_steps(config: TrainConfig, n_train: int, world: int) -> int:
    """Optimizer steps the Trainer will run (for eval spacing): max_steps, else epochs x steps per epoch."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(math.ceil(n_train / (config.batch_size * world)) / config.grad_accum)
    return max(1, math.ceil(config.epochs * per_epoch))


def dpo_args(config: TrainConfig, out: Path, device: str, n_train: int, has_eval: bool):
    """TrainConfig -> trl.DPOConfig. bf16 where the model is bf16 (GPU); every other field mapped one to one."""
    from trl import DPOConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    eval_every = config.eval_steps or max(1, planned_steps(config, n_train, world) // 5)
    return DPOConfig(
        output_dir=str(out / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio, beta=config.beta,
        loss_type=config.losses(), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length, seed=config.seed, data_seed=config.seed,
        gradient_checkpointing=config.gradient_checkpointing, precompute_ref_log_probs=config.precompute_ref,
        bf16=device.startswith("cuda") and str(models.pick_device(device, config.dtype)[1]) == "torch.bfloat16",
        use_cpu=device == "cpu", disable_dropout=config.lora_dropout == 0, logging_steps=config.logging_steps,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="steps" if has_eval else "no", eval_steps=eval_every, report_to=[], disable_tqdm=True,
    )


def to_dataset(records: list[dict]):
    """TRL conversational rows (the "meta" column is ours, not TRL's, so it stays out)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])


def check_lengths(records: list[dict], tok, max_length: int) -> None:
    """TRL silently drops pairs whose prompt alone fills max_length: refuse when that would leave nothing."""
    too_long = sum(len(tok(models.render_chat(tok, r["prompt"]), add_special_tokens=False)["input_ids"]) >= max_length
                   for r in records)
    if too_long == len(records):
        raise LabError(f"Every prompt is longer than --max-length {max_length} tokens, so no answer token would be "
                       "trained: raise --max-length.")


def build_trainer(model, tok, config: TrainConfig, out: Path, device: str, train: list[dict], held: list[dict],
                  progress: Progress):
    """DPOTrainer on `model`. A plain model gets a fresh LoRA (reference = adapter disabled); a PeftModel keeps its
    adapter trainable and TRL freezes a copy of it as the reference."""
    from peft import PeftModel
    from trl import DPOTrainer

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return DPOTrainer(
        model, args=dpo_args(config, out, device, len(train), bool(held)), train_dataset=to_dataset(train),
        eval_dataset=to_dataset(held) if held else None, processing_class=tok,
        peft_config=None if isinstance(model, PeftModel) else lora_config(config),
        callbacks=[metrics_callback(out / "metrics.jsonl", progress, distributed)])


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or any(h in str(err).lower() for h in OOM_HINTS)


def oom_error(config: TrainConfig, device: str) -> LabError:
    where = "GPU" if device.startswith("cuda") else "CPU"
    fixes = [f"lower --batch-size (now {config.batch_size}) and raise --grad-accum to keep the effective batch",
             f"lower --max-length (now {config.max_length})"]
    if not config.gradient_checkpointing:
        fixes.append("turn --gradient-checkpointing on")
    return LabError(f"Out of {where} memory while training: " + "; ".join(fixes) + ", or use a smaller model. "
                    "Checkpoints already written are kept; no adapter was written.")


def run_trainer(trainer, config: TrainConfig, device: str, ckpt: Path | None) -> None:
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        if trainer.eval_dataset is not None and not stop_requested():
            trainer.evaluate()  # the final eval line: what the card reports
    except (RuntimeError, MemoryError) as e:
        if _is_oom(e):
            raise oom_error(config, device) from e
        raise


# ---- output: the adapter, its card, its state ----------------------------------------------------------------------
def final_metrics(metrics: list[dict]) -> dict:
    """The last train line's and the last eval line's headline numbers, e.g. {"train/loss": .., "eval/loss": ..}."""
    keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
            "logps/rejected")
    out: dict = {}
    for split in ("train", "eval"):
        last = next((m for m in reversed(metrics) if m.get("split") == split), None)
        out.update({f"{split}/{k}": last[k] for k in keys if last and k in last})
    return out


def card_base_model(spec: str) -> str | None:
    if spec == "bundled":
        return models.BUNDLED_HUB_ID
    return spec if models.HUB_ID.match(spec) and not Path(spec).exists() else None


def model_card(name: str, state: dict) -> str:
    """README.md: hub metadata (base model, library) + what was trained on what, how, and how it ended."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(base_model=card_base_model(state["base_model"]), library_name="peft",
                         pipeline_tag="text-generation", tags=["dpo", "lora", "trl", "preference-lab"])
    p, s = state["pairs"], state["settings"]
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in s.items() if k not in ("resume", "device"))
    finals = "\n".join(f"| {k} | {v:.4g} |" for k, v in state["final"].items()) or "| (none logged) | |"
    warns = "\n".join(f"- {w}" for w in state["warnings"]) or "None."
    ended = ("complete" if state["status"] == "done" else
             f"**stopped early**, at step {state['global_step']} of {state['max_steps']}")
    reference = (f"It continues adapter `{state['init_adapter']}`, which served as the frozen reference."
                 if state["init_adapter"] else "The reference model is the base model (adapter disabled).")
    return f"""---
{meta.to_yaml()}
---

# {name}

A LoRA adapter for `{state['base_model']}` trained with DPO (TRL `DPOTrainer`, sigmoid loss unless noted below) by
Preference Lab. Training is {ended}. {reference}

## Data
{p['n']} preference pairs from `{Path(p['path']).name}` (sha256 `{p['sha256'][:16]}`): {p['n_train']} for training,
{p['n_eval']} held out (whole instructions) for evaluation. Chosen answers average {p['chosen_chars_mean']:.0f}
characters, rejected ones {p['rejected_chars_mean']:.0f}; the chosen one is longer in
{p['chosen_longer_fraction']:.0%} of pairs.

## Parameters
| setting | value |
|---|---|
{params}

## Final metrics
| metric | value |
|---|---|
{finals}

## Warnings
{warns}

## Use
```python
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained("{card_base_model(state['base_model']) or state['base_model_path']}")
model = PeftModel.from_pretrained(base, "path/to/{name}")
```
Versions: {", ".join(f"{k} {v}" for k, v in state["versions"].items())}.
"""


def publish_adapter(out: Path, model, state: dict) -> None:
    """Write the adapter, card and state into a temp folder, then move them in with adapter_config.json last: a
    crash at any point leaves a folder without it, which nothing treats as a finished adapter."""
    tmp = out / ".publish.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, selected_adapters=["default"])  # not TRL's frozen "ref" copy
    atomic_write_text(tmp / "README.md", model_card(out.name, state))
    atomic_write_json(tmp / "training.json", state)
    (out / "adapter_config.json").unlink(missing_ok=True)  # an older (stopped) adapter is incomplete from here on
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "adapter_config.json"):
        os.replace(f, out / f.name)
    tmp.rmdir()


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate")}


# ---- the entry point other stages call -----------------------------------------------------------------------------
def run_model(run: Run) -> str:
    """The model spec that sampled the run (the default base for training)."""
    spec = (run.stage_settings("sample") or {}).get("model")
    if not spec:
        raise LabError(f"Run {run.name} records no sampling model: give the base model with --model SPEC.")
    return spec


def resolve_init_adapter(run: Run, init_adapter: str | os.PathLike | None) -> str | None:
    """An adapter name of this run, or a folder holding adapter_config.json -> its path."""
    if not init_adapter:
        return None
    raw = str(init_adapter)
    for path in ((Path(raw).expanduser(),) + ((run.adapter_dir(raw),) if "/" not in raw else ())):
        if (path / "adapter_config.json").exists():
            return str(path.resolve())
    known = ", ".join(run.adapters()) or "none yet"
    raise LabError(f"--init-adapter {raw!r} is neither a complete adapter of run {run.name} ({known}) nor a folder "
                   "with adapter_config.json.")


def _barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def read_metrics(run: Run, adapter_name: str) -> list[dict]:
    """The metrics lines of an adapter, complete or still training (for plots)."""
    return read_jsonl(run.adapter_dir(adapter_name) / "metrics.jsonl")


def precheck(run: Run, pairs: str | os.PathLike, adapter_name: str, config: TrainConfig) -> dict:
    """The checks that need no model (settings, pairs file, adapter name), for the app to run before it starts a
    job. -> pair_stats of the pairs file. Raises LabError like train_adapter would."""
    config.validate()
    out = run.adapter_dir(adapter_name)
    path = resolve_pairs(run, pairs)
    stats = pair_stats(path, load_pairs(path))
    refuse_finished(out)
    return stats


def train_adapter(run: Run, pairs: str | os.PathLike, adapter_name: str, config: TrainConfig,
                  base_model: str | None = None, init_adapter: str | os.PathLike | None = None,
                  progress: Progress | None = None, callbacks: list | None = None) -> Path:
    """Train one LoRA adapter with DPO on a pairs file; returns `run.adapter_dir(adapter_name)`.

    pairs: "judge" | "pairrm" (the run's pairs-<source>.jsonl) or a path to a pairs .jsonl file.
    base_model: model spec (default: config.model, else the model that sampled the run).
    init_adapter: an adapter (name in this run, or folder) to continue from; it is also the frozen DPO reference,
      as self-rewarding rounds need. Its LoRA shape wins over config.lora_*.
    callbacks: extra transformers TrainerCallbacks (profiling, benchmarks).
    Raises LabError on bad input (nothing written), Stopped after saving a stopped training's adapter.
    Works unchanged under `accelerate launch` (every rank calls it; rank 0 writes the files).
    """
    config = config.validate()
    out = run.adapter_dir(adapter_name)
    spec = base_model or config.model or run_model(run)
    path = resolve_pairs(run, pairs)
    records = load_pairs(path)
    tok = models.load_tokenizer(spec)
    check_markup(records, tok, spec)
    check_lengths(records, tok, config.max_length)
    init = resolve_init_adapter(run, init_adapter)
    stats = pair_stats(path, records)
    identity = {**config.to_dict(), "model": spec, "pairs_sha256": stats["sha256"], "init_adapter": init}
    ckpt = plan_resume(out, identity, config.resume) if out.exists() else None
    _barrier()  # every rank has read the folder before rank 0 changes it
    lock = adapter_lock(out) if is_main_process() else _no_lock()
    with lock:
        return _train_locked(run, out, records, stats, identity, ckpt, init, progress or Progress("train"),
                             callbacks or [])


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _train_locked(run: Run, out: Path, records: list[dict], stats: dict, identity: dict, ckpt: Path | None,
                  init: str | None, progress: Progress, callbacks: list) -> Path:
    config = TrainConfig(**{k: identity[k] for k in TrainConfig.__dataclass_fields__})
    spec = identity["model"]
    model, tok, device = load_policy(spec, config, init)
    if init is None:  # a continued adapter keeps its own layers (TRL gets no LoraConfig then)
        check_target_modules(model, config, spec)
    train, held = split_pairs(records, config.eval_fraction, config.seed)
    state = {"status": "training", "settings": config.to_dict(), "base_model": spec,
             "base_model_path": models.resolve(spec), "init_adapter": init,
             "pairs": {**stats, "n_train": len(train), "n_eval": len(held)}, "identity": identity,
             "global_step": 0, "max_steps": None, "final": {}, "warnings": [], "versions": versions(),
             "started": time.time(), "finished": None, "error": None}
    if is_main_process():
        reset_folder(out, ckpt)
        atomic_write_json(out / "training.json", state)
    _barrier()
    try:  # from here on a failure is recorded in training.json (status "failed" and the message)
        trainer = build_trainer(model, tok, config, out, device, train, held, progress)
        for cb in callbacks:
            trainer.add_callback(cb)
        run_trainer(trainer, config, device, ckpt)
    except BaseException as e:
        if is_main_process() and not isinstance(e, KeyboardInterrupt):
            atomic_write_json(out / "training.json", {**state, "status": "failed", "error": str(e)[:2000],
                                                      "finished": time.time()})
        raise
    return _finish(run, out, trainer, state, config)


def _finish(run: Run, out: Path, trainer, state: dict, config: TrainConfig) -> Path:
    """Publish the adapter (rank 0), record the stage, and raise Stopped if this was a stop."""
    stopped = stop_requested()
    trainer.accelerator.wait_for_everyone()
    if is_main_process():
        metrics = read_jsonl(out / "metrics.jsonl")
        state = {**state, "status": "stopped" if stopped else "done", "global_step": trainer.state.global_step,
                 "max_steps": trainer.state.max_steps, "final": final_metrics(metrics),
                 "warnings": diagnose(metrics, state["pairs"], config.beta), "finished": time.time()}
        publish_adapter(out, trainer.accelerator.unwrap_model(trainer.model), state)
        if not stopped:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # only a resume needs them
        run.record_stage("train", {"adapter": out.name, "pairs": state["pairs"]["path"], "base_model":
                                   state["base_model"], "init_adapter": state["init_adapter"], **config.to_dict()})
    trainer.accelerator.wait_for_everyone()
    if stopped:
        raise Stopped(f"Training stopped at step {trainer.state.global_step} of {trainer.state.max_steps}: the adapter "
                      f"trained so far is saved in {out}; run the same command again to resume.")
    return out
