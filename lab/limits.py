"""Caps on what one job may ask for, set by whoever runs the app (a Space's owner) in the environment.

On a hosted app (a Space, or LAB_HOSTED=1: see lab.hosting) every cap has the default below, sized for a free CPU
Space (2 vCPU, 16 GB; docs/space.md); elsewhere a cap applies only where its variable is set. A variable set to 0
turns its cap off. The app checks a job's settings before it queues the job (the visitor sees which cap, and the
variable the owner sets), and the job's own process checks them again before it writes anything (it inherits the
environment), so a bare API client or a hand-made command line meets the same caps.

    variable               default  what it caps
    LAB_MAX_N              32       instructions a job works on (sample --n; compare, iterate: --n, --eval-n)
    LAB_MAX_K              8        responses per instruction (sample --k; iterate --samples and --evaluations)
    LAB_MAX_NEW_TOKENS     256      tokens generated per answer or judgment (every --max-new-tokens, local judge
                                    --reasoning-tokens, iterate --judge-tokens)
    LAB_MAX_MODEL_PARAMS   1.5      model size in billions of parameters, read from the model's config before any
                                    weights are downloaded (every --model, and a local judge's model; 'bundled'
                                    and 'tiny-random' are small and always pass)
    LAB_MAX_TRAIN_STEPS    200      optimizer steps of one training (--max-steps, or what --epochs come to); per
                                    round for iterate
    LAB_MAX_ROUNDS         3        self-rewarding rounds (iterate --rounds)
    LAB_MAX_UPLOAD_MB      5        size of a file uploaded in the app (instruction files)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from lab import models
from lab.memory import count_parameters  # noqa: F401  (sized from the config alone: lab.memory)
from lab.errors import LabError


@dataclass(frozen=True)
class Cap:
    env: str
    default: float  # in hosted mode
    what: str  # "<the flag or field> <unit>", for messages


CAPS = {
    "n": Cap("LAB_MAX_N", 32, "instructions per job"),
    "k": Cap("LAB_MAX_K", 8, "responses per instruction"),
    "new_tokens": Cap("LAB_MAX_NEW_TOKENS", 256, "new tokens per answer"),
    "model_params": Cap("LAB_MAX_MODEL_PARAMS", 1.5, "billion parameters per model"),
    "train_steps": Cap("LAB_MAX_TRAIN_STEPS", 200, "training steps"),
    "rounds": Cap("LAB_MAX_ROUNDS", 3, "self-rewarding rounds"),
    "upload_mb": Cap("LAB_MAX_UPLOAD_MB", 5, "MB per uploaded file"),
}


def on_space() -> bool:
    """True inside a Hugging Face Space (the Hub sets SPACE_ID and SYSTEM=spaces there)."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SYSTEM") == "spaces"


def hosted() -> bool:
    """Hosted mode: on a Space, or with LAB_HOSTED=1 (a public app on another host): visitors are not the owner."""
    return on_space() or os.environ.get("LAB_HOSTED", "").strip().lower() in ("1", "true", "yes")


def cap(name: str) -> float | None:
    """The cap in force for `name` (a key of CAPS), or None for no cap."""
    c = CAPS[name]
    raw = os.environ.get(c.env, "").strip()
    if not raw:
        return c.default if hosted() else None
    try:
        value = float(raw)
    except ValueError:
        raise LabError(f"{c.env}={raw!r} is not a number: the app's owner should set it to a number "
                       "(0 = no cap).") from None
    if not math.isfinite(value) or value < 0:
        raise LabError(f"{c.env}={raw!r} must be a number >= 0 (0 = no cap).")
    return value or None


def _fmt(x: float) -> str:
    return f"{x:g}"


def check(name: str, flag: str, value: float, asked: str | None = None) -> None:
    """Refuse `value` (given as `flag`, or described by `asked`) above the cap `name`, naming the cap and the
    variable that sets it."""
    limit = cap(name)
    if limit is not None and value > limit:
        c = CAPS[name]
        raise LabError(f"{asked or f'{flag} {_fmt(value)}'} is above this app's cap of {_fmt(limit)} {c.what} (the "
                       f"owner sets {c.env}): ask for at most {_fmt(limit)}.")


# ---- model size -----------------------------------------------------------------------------------------------------
def check_model(spec: str, flag: str = "--model") -> None:
    """Refuse a model above LAB_MAX_MODEL_PARAMS, before anything of it but its config is downloaded."""
    limit = cap("model_params")
    spec = (spec or "").strip()
    if limit is None or not spec or spec in models.SPECIAL_SPECS:  # bundled (135M) and tiny-random are small
        return
    source = models.resolve(spec)  # a hub id, or a local folder's path
    billions = count_parameters(source) / 1e9
    if billions > limit:
        c = CAPS["model_params"]
        raise LabError(f"{flag} {spec} has {billions:.2f} billion parameters, above this app's cap of "
                       f"{_fmt(limit)} (the owner sets {c.env}): choose a smaller model.")


# ---- uploads --------------------------------------------------------------------------------------------------------
def upload_limit_bytes() -> int | None:
    limit = cap("upload_mb")
    return None if limit is None else int(limit * 1024 * 1024)


def check_upload(path: str | os.PathLike) -> None:
    """Refuse an uploaded file above LAB_MAX_UPLOAD_MB (the app's launch refuses them too: see lab.ui)."""
    limit = upload_limit_bytes()
    size = Path(path).stat().st_size
    if limit is not None and size > limit:
        c = CAPS["upload_mb"]
        raise LabError(f"The uploaded file is {size / 1024 / 1024:.3g} MB, above this app's cap of "
                       f"{_fmt(cap('upload_mb'))} MB (the owner sets {c.env}): upload a smaller file.")


# ---- per stage ------------------------------------------------------------------------------------------------------
def check_sample(cfg) -> None:
    check("n", "--n", cfg.n)
    check("k", "--k", cfg.k)
    check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    check_model(cfg.model)


def steps_of(max_steps: int, epochs: float, pairs: int, per_step: int) -> int:
    """Optimizer steps a training will take: --max-steps, else the epochs over `pairs` at `per_step` pairs a step."""
    if max_steps > 0:
        return max_steps
    return math.ceil(epochs * math.ceil(pairs / max(per_step, 1)))


def check_train(cfg, pairs: int, model: str) -> None:
    """cfg: TrainConfig; pairs: how many pairs the file holds; model: the base model spec it trains."""
    steps = steps_of(cfg.max_steps, cfg.epochs, pairs, cfg.batch_size * cfg.grad_accum)
    asked = None if cfg.max_steps > 0 else f"--epochs {_fmt(cfg.epochs)} over {pairs} pairs ({steps} steps)"
    check("train_steps", "--max-steps", steps, asked)
    check_model(model)


def check_compare(cfg, instructions: int, model: str) -> None:
    """cfg: CompareConfig; instructions: how many held-out instructions it would answer."""
    check("n", "--n", instructions, None if cfg.n else f"--n 0 (all: {instructions} instructions)")
    check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    check_model(model)
    if cfg.judge == "local":
        check_model(cfg.judge_model or "bundled", "--judge-model")


def check_iterate(cfg, instructions: int, eval_instructions: int, model: str) -> None:
    """cfg: IterateConfig; instructions / eval_instructions: how many each round answers and evaluates on."""
    check("rounds", "--rounds", cfg.rounds)
    check("n", "--n", instructions, None if cfg.n else f"--n 0 (all: {instructions} instructions)")
    check("n", "--eval-n", eval_instructions)
    check("k", "--samples", cfg.samples)
    check("k", "--evaluations", cfg.evaluations)
    check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    check("new_tokens", "--judge-tokens", cfg.judge_tokens)
    steps = steps_of(cfg.max_steps, cfg.epochs, instructions, cfg.train_batch_size)  # one pair per instruction
    check("train_steps", "--max-steps", steps,
          None if cfg.max_steps > 0 else f"--epochs {_fmt(cfg.epochs)} over {instructions} pairs ({steps} steps)")
    check_model(model)


def check_judge(cfg) -> None:
    if cfg.backend == "local":
        check("new_tokens", "--reasoning-tokens", cfg.reasoning_tokens)
        check_model(cfg.model or "bundled")
