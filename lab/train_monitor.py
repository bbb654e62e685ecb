"""What a training tells its watchers while it runs: metrics.jsonl, the cooperative stop, and the warnings.

lab.train adds `metrics_callback(...)` to TRL's trainer; the app's Train tab and the CLI read the same file and call
`diagnose` for plain-language warnings about what small-data DPO does. The record this module writes, in the
adapter folder (runs/<run>/adapters/<name>/):

metrics.jsonl                                    one line per logged step, appended while training runs:
    {"split": "train"|"eval"|"summary", "step": int, "max_steps": int, "epoch": float, "time": unix s,
     "elapsed_s": s since this process began training, "loss", "grad_norm", "learning_rate",
     "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",   # beta * log(pi/ref)
     "logps/chosen", "logps/rejected",                                                # summed over answer tokens
     "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy",
     "num_tokens": cumulative tokens seen, "tokens_per_s": since the previous train line,
     "eta_s": seconds left at the recent pace}
    eval lines carry the same names without TRL's "eval_" prefix; the summary line holds train_runtime etc.
    (other methods log their own names: KTO "kl" and no accuracies; SimPO/ORPO "nll_loss", ORPO "log_odds_ratio",
     "log_odds_chosen"; SimPO's logps are per-token means; lab.methods.METHODS[...].plots)
"""
from __future__ import annotations

import time
from pathlib import Path

from lab.methods import METHODS
from lab.progress import Progress, stop_requested
from lab.store import append_jsonl


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


FEW_PAIRS = 8


def few_pairs_warning(stats: dict) -> str | None:
    """So few training pairs that the curves measure memorisation (a run of 1 pair showed loss 0 and accuracy 1)."""
    n, held = stats.get("n_train"), stats.get("n_eval", 0)
    if n is None or n >= FEW_PAIRS:
        return None
    return (f"Only {n} training pair{'s' if n != 1 else ''}{'' if held else ' and no held-out ones'}: the loss and "
            "reward accuracy show how well the adapter memorises them, not how it answers new prompts. Sample more "
            "instructions for a preference data set worth training on.")


def diagnose(metrics: list[dict], stats: dict | None, beta: float, history: list[dict] | tuple = (),
             method: str = "dpo") -> list[str]:
    """Plain-language warnings about what small-data DPO does; the CLI prints them, the app shows them live.
    Likelihood displacement is read from rewards measured against a reference, so reference-free methods skip it."""
    reference = METHODS[method].reference if method in METHODS else True
    found = [few_pairs_warning(stats) if stats else None, displacement_warning(metrics, beta) if reference else None,
             length_warning(stats, history) if stats else None]
    return [w for w in found if w]


# ---- live metrics and cooperative stop -----------------------------------------------------------------------------
class MetricsStream:
    """Appends one JSON line per log event to metrics.jsonl, feeds lab.progress, and turns a stop request into
    `should_training_stop` (with a checkpoint) at the end of the current optimizer step.

    A mixin: `metrics_callback()` joins it with transformers' TrainerCallback, so importing this module (the app
    does, for `diagnose`) does not import transformers."""

    def __init__(self, path: Path, progress: Progress, distributed: bool):
        self.path, self.progress, self.distributed = path, progress, distributed
        self.start = self.last_time = time.time()
        self.last_tokens, self.first_step = 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step is None:  # here, not in on_train_begin: a resumed state is loaded in between
            self.start = self.last_time = time.time()
            self.first_step = state.global_step
            # the first step (seconds to minutes on a CPU) shows as a phase of its own, not as the loading before
            self.progress.update(state.global_step, state.max_steps, "training")

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_everywhere():
            control.should_training_stop = True
            control.should_save = True  # a checkpoint to resume from
        self.progress.update(state.global_step, state.max_steps, "training", eta_s=self._eta(state))

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
