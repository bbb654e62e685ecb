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
    LAB_MAX_UPLOAD_MB      5        size of a file uploaded in the app (instruction files), and of its contents
                                    once decompressed (a parquet or Arrow file's data)
    LAB_MAX_UPLOAD_ROWS    10000    rows or lines of an instruction file (a table's, from its metadata first)
    LAB_MAX_INSTRUCTION_KB 8        the longest instruction, in KB
    LAB_MAX_BATCH          64       sequences per forward pass (every --batch-size; train: --batch-size x
                                    --grad-accum; PairRM pairs per pass)
    LAB_MAX_LORA_R         64       LoRA rank (train --lora-r, --lora-alpha up to 4x; iterate --lora-r)
    LAB_MAX_LENGTH         2048     training sequence length (train --max-length)
    LAB_MAX_JUDGE_CALLS    400      judge calls one job may make (the plan's calls still to make)
    LAB_MAX_RANK_PAIRS     600      PairRM comparisons one job may make (K(K-1) per instruction)
    LAB_MAX_RUN_INSTRUCTIONS 64     instructions one run may hold (sampling more into a run adds to it)
    LAB_MAX_ADAPTERS       4        adapters one comparison may hold
    LAB_MAX_TEXT_KB        20       a judge prompt, a note or a chat message typed into the app, in KB
    LAB_MAX_CHAT_KB        64       a chat's whole conversation (history and message), in KB, before tokenizing
    LAB_MAX_QUEUE          12       jobs waiting or running at once (each visitor: one; each address: two)
    LAB_MAX_RUNS           20       new runs one visitor may start in 24 hours (one address: twice that)
    LAB_MAX_JOB_MINUTES    60       wall-clock minutes a job may run before it is stopped

The owner's Hugging Face token: on a hosted app it is taken out of the app's environment at start
(seal_owner_token) and reaches only jobs whose models are all in LAB_TOKEN_MODELS (comma-separated hub ids the
owner lets visitors use with it, e.g. a gated Llama whose licence the owner accepted). Anything else a visitor names
is fetched anonymously: a private or gated repo of the owner's stays out of reach.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from lab import models
from lab.memory import count_parameters  # sized from the config alone, bounds checked (lab.memory)
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
    "upload_rows": Cap("LAB_MAX_UPLOAD_ROWS", 10_000, "rows per instruction file"),
    "instruction_kb": Cap("LAB_MAX_INSTRUCTION_KB", 8, "KB per instruction"),
    "batch": Cap("LAB_MAX_BATCH", 64, "sequences per forward pass"),
    "lora_r": Cap("LAB_MAX_LORA_R", 64, "LoRA rank"),
    "length": Cap("LAB_MAX_LENGTH", 2048, "tokens of training sequence"),
    "judge_calls": Cap("LAB_MAX_JUDGE_CALLS", 400, "judge calls per job"),
    "rank_pairs": Cap("LAB_MAX_RANK_PAIRS", 600, "PairRM comparisons per job"),
    "run_instructions": Cap("LAB_MAX_RUN_INSTRUCTIONS", 64, "instructions per run"),
    "adapters": Cap("LAB_MAX_ADAPTERS", 4, "adapters per comparison"),
    "text_kb": Cap("LAB_MAX_TEXT_KB", 20, "KB of typed text"),
    "chat_kb": Cap("LAB_MAX_CHAT_KB", 64, "KB of conversation"),
    "queue": Cap("LAB_MAX_QUEUE", 12, "jobs waiting or running"),
    "runs": Cap("LAB_MAX_RUNS", 20, "new runs per visitor in 24 hours"),
    "job_minutes": Cap("LAB_MAX_JOB_MINUTES", 60, "minutes per job"),
}
HF_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
TOKEN_MODELS_ENV = "LAB_TOKEN_MODELS"
_OWNER_TOKEN: dict[str, str] = {}  # the owner's Hub token, kept out of os.environ on a hosted app


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
def seal_owner_token() -> None:
    """On a hosted app, take the owner's Hub token out of this process's environment (huggingface_hub reads it from
    there on every download): visitors' requests run anonymously unless owner_token() hands it out."""
    if hosted():
        for name in HF_TOKEN_ENV:
            if os.environ.get(name):
                _OWNER_TOKEN.setdefault("token", os.environ[name])
            os.environ.pop(name, None)


def token_models() -> set[str]:
    return {m.strip() for m in os.environ.get(TOKEN_MODELS_ENV, "").split(",") if m.strip()}


def owner_token(specs: list[str]) -> str | None:
    """The owner's Hub token for a job or a request that loads `specs`: off a hosted app whatever the environment
    holds (huggingface_hub finds it); on one, the sealed token only when every hub id in specs is one the owner lists
    in LAB_TOKEN_MODELS (None otherwise: fetch anonymously)."""
    if not hosted():
        return next((os.environ[n] for n in HF_TOKEN_ENV if os.environ.get(n)), None)
    hub_ids = [s for s in specs if s and models.HUB_ID.match(s) and s not in models.SPECIAL_SPECS]
    allowed = token_models()
    return _OWNER_TOKEN.get("token") if hub_ids and all(s in allowed for s in hub_ids) else None


def check_model(spec: str, flag: str = "--model") -> None:
    """Refuse a model above LAB_MAX_MODEL_PARAMS, before anything of it but its config is downloaded."""
    limit = cap("model_params")
    spec = (spec or "").strip()
    if limit is None or not spec or spec in models.SPECIAL_SPECS:  # bundled (135M) and tiny-random are small
        return
    source = models.resolve(spec)  # a hub id, or a local folder's path
    billions = count_parameters(source, owner_token([spec]) or False) / 1e9  # False: anonymously
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


def check_decoded(where: str, rows: int, nbytes: int) -> None:
    """Refuse an instruction file (`where`) whose contents, measured after decoding (decompressed, before any work on
    them), hold more than LAB_MAX_UPLOAD_ROWS rows or LAB_MAX_UPLOAD_MB bytes: a few KB of zstd parquet can hold
    millions of rows or a 200 MB prompt."""
    check("upload_rows", "rows", rows, f"{where} holds {rows:,} rows, which")
    limit = upload_limit_bytes()
    if limit is not None and nbytes > limit:
        raise LabError(f"{where} holds {nbytes / 1024 / 1024:.3g} MB once decompressed, above this app's cap of "
                       f"{_fmt(cap('upload_mb'))} MB per uploaded file (the owner sets {CAPS['upload_mb'].env}): "
                       "give fewer or shorter instructions.")


def check_instruction_length(where: str, prompts: list[str]) -> None:
    """Refuse an instruction longer than LAB_MAX_INSTRUCTION_KB (measured in UTF-8 bytes)."""
    if cap("instruction_kb") is None or not prompts:
        return
    longest = max(prompts, key=lambda p: len(p.encode("utf-8")))
    kb = len(longest.encode("utf-8")) / 1024
    check("instruction_kb", "", kb, f"{where}: an instruction of {kb:,.0f} KB ({longest[:40]!r}...)")


# ---- per stage ------------------------------------------------------------------------------------------------------
def check_text(what: str, text: str) -> None:
    """Refuse typed text (a judge prompt, a note) above LAB_MAX_TEXT_KB."""
    check("text_kb", what, len((text or "").encode("utf-8")) / 1024,
          f"{what} of {len((text or '').encode('utf-8')) / 1024:.0f} KB")


def check_chat_text(message: str, contents: list[str]) -> None:
    """Refuse a chat message above LAB_MAX_TEXT_KB, or a conversation (`contents`: the history's texts) that with it
    is above LAB_MAX_CHAT_KB: measured before anything is tokenized (a 4 MB message held every chat for 6 s)."""
    check_text("The message", message)
    kb = (len(message.encode("utf-8")) + sum(len(c.encode("utf-8")) for c in contents)) / 1024
    check("chat_kb", "", kb, f"The conversation of {kb:,.0f} KB")


def check_sample(cfg, run_instructions: int = 0) -> None:
    """cfg: SampleConfig; run_instructions: how many instructions the run would hold after it (its own + new)."""
    check("n", "--n", cfg.n)
    check("k", "--k", cfg.k)
    check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    check("batch", "--batch-size", cfg.batch_size)
    check("run_instructions", "the run's instructions", run_instructions,
          f"this run would hold {run_instructions} instructions, which")
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
    check("batch", "--batch-size", cfg.batch_size * cfg.grad_accum,
          f"--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} = {cfg.batch_size * cfg.grad_accum}")
    check("lora_r", "--lora-r", cfg.lora_r)
    check("lora_r", "--lora-alpha", cfg.lora_alpha / 4, f"--lora-alpha {cfg.lora_alpha} (4 x the rank cap at most)")
    check("length", "--max-length", cfg.max_length)
    check_model(model)


def check_compare(cfg, instructions: int, model: str, adapters: int = 0) -> None:
    """cfg: CompareConfig; instructions: how many held-out instructions it would answer; adapters: how many."""
    check("n", "--n", instructions, None if cfg.n else f"--n 0 (all: {instructions} instructions)")
    check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    check("batch", "--batch-size", cfg.batch_size)
    check("adapters", "--adapters", adapters, f"{adapters} adapters")
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
    check("batch", "--batch-size", cfg.batch_size)
    check("batch", "--train-batch-size", cfg.train_batch_size)
    check("lora_r", "--lora-r", cfg.lora_r)
    steps = steps_of(cfg.max_steps, cfg.epochs, instructions, cfg.train_batch_size)  # one pair per instruction
    check("train_steps", "--max-steps", steps,
          None if cfg.max_steps > 0 else f"--epochs {_fmt(cfg.epochs)} over {instructions} pairs ({steps} steps)")
    check_model(model)


def check_judge(cfg, calls: int = 0) -> None:
    """cfg: JudgeConfig; calls: the calls its plan still has to make."""
    check("judge_calls", "the judge plan", calls, f"the plan's {calls} calls still to make")
    check("batch", "--batch-size", cfg.batch_size)
    if hosted() and cfg.backend != "local" and (cfg.rpm <= 0 or cfg.rpm > 60 or cfg.concurrency > 8):
        raise LabError("On this hosted app an API judge runs at 1-60 requests per minute and at most 8 at once "
                       f"(asked: {cfg.rpm:g} per minute, {cfg.concurrency} at once): lower the rate limit settings.")
    if cfg.backend == "local":
        check("new_tokens", "--reasoning-tokens", cfg.reasoning_tokens)
        check_model(cfg.model or "bundled")


def check_rank(cfg, comparisons: int = 0) -> None:
    """cfg: RankConfig; comparisons: the K(K-1) ordered pairs per instruction still to rank, summed."""
    check("rank_pairs", "ranking", comparisons, f"ranking {comparisons} response pairs")
    check("batch", "--batch-size", cfg.batch_size)
