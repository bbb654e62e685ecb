"""Settings of every stage: one dataclass per stage, each field with a default and a one-line help.

The same dataclass fills the command line (`add_arguments` / `from_args`), the app's forms, and run.json
(`asdict`). Field names become flags: `max_new_tokens` -> `--max-new-tokens`. Secrets are never fields: API keys and
hub tokens come from the environment (or the app's session) at the moment of use.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

from lab.errors import LabError


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A settings field: its default and the one line that explains it (shown by --help and in the app)."""
    return field(default=default, metadata={"help": help, "choices": choices})


class Settings:
    """Mixin: dataclass <-> argparse, plus validation hooks.

    Every subclass's `validate()` first runs `check_finite()` (wrapped in by __init_subclass__), so no stage ever
    runs with, or writes into run.json, a NaN or an infinity; a new float field is covered without more code."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("validate")
        if own is not None:
            @functools.wraps(own)
            def validate(self):
                self.check_finite()
                return own(self)
            cls.validate = validate

    def validate(self):
        self.check_finite()
        return self

    def check_finite(self) -> None:
        """LabError for the first float field that is NaN or infinite (argparse's float() accepts 'nan', 'inf')."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LabError(f"--{f.name.replace('_', '-')} must be a finite number (got {value}): give a plain "
                               f"number such as {f.default}.")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = type(f.default) if f.default is not None else str
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                    help=f.metadata.get("help"))
            else:
                parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                    help=f"{f.metadata.get('help')} (default: {f.default})")

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_argv(self) -> list[str]:
        """The command-line flags that rebuild these settings (how the app hands work to a `python -m lab` job)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(f"--{flag}" if value else f"--no-{flag}")
            elif value is not None:
                argv += [f"--{flag}", str(value)]
        return argv

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


MAX_K = 1000  # responses per instruction anyone may ask for (a Space's owner caps it lower: lab/limits.py)


@dataclass
class SampleConfig(Settings):
    model: str = opt("bundled", "model spec: hub id, local folder, 'bundled' or 'tiny-random'")
    instructions: str = opt("bundled", "instruction source: 'lima', 'bundled', or a .jsonl/.csv/.txt file")
    n: int = opt(50, "how many instructions to take from the source")
    k: int = opt(5, "responses per instruction")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)")
    max_new_tokens: int = opt(256, "longest response, in tokens")
    seed: int = opt(0, "seed for picking instructions and for sampling")
    batch_size: int = opt(64, "sequences generated together (lower it if memory runs out)")
    device: str = opt("auto", "cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "SampleConfig":
        if self.k < 1:
            raise LabError(f"--k must be at least 1 (got {self.k}): it is the number of responses per instruction.")
        if self.k > MAX_K:
            raise LabError(f"--k {self.k} is more than {MAX_K} responses per instruction: judging and ranking grow "
                           f"with K squared; 4-16 is usual. Ask for at most {MAX_K}.")
        if self.n < 1:
            raise LabError(f"--n must be at least 1 (got {self.n}).")
        if not 1 <= self.max_new_tokens <= 8192:
            raise LabError(f"--max-new-tokens must be between 1 and 8192 (got {self.max_new_tokens}); "
                           "256-512 is typical for chat answers.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise LabError("--temperature must be >= 0 and --top-p in (0, 1].")
        if self.batch_size < 1:
            raise LabError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        return self


@dataclass
class PushConfig(Settings):
    namespace: str = opt("", "Hub user or organisation to push to (default: the owner of the token)")
    prefix: str = opt("", "start of every repo name (default: the run name): <prefix>-<source>, <prefix>-<adapter>")
    private: bool = opt(True, "create the repos private (--no-private makes them public)")
    datasets: bool = opt(True, "push each preference data set (pairs-<source>.jsonl, with samples and judgments)")
    adapters: bool = opt(True, "push each trained adapter with its model card")
    only: str = opt("", "comma-separated pair sources / adapter names to push (default: all)")
    iterations: bool = opt(True, "also push the data sets and adapters of self-rewarding iterations")
    endpoint: str = opt("", "Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    dry_run: bool = opt(False, "write the folders that would be uploaded under <run>/hub/ and push nothing")

    def validate(self) -> "PushConfig":
        from lab.hub import is_hub_name

        for label, value in (("--namespace", self.namespace), ("--prefix", self.prefix)):
            if value and not is_hub_name(value):
                raise LabError(f"{label} {value!r} is not a valid Hub name: use letters, digits, '-', '_' or '.', "
                               "starting with a letter or digit, without '--' or '..', not ending in '-', '.' or "
                               "'.git'.")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise LabError(f"--endpoint must be a URL such as https://huggingface.co (got {self.endpoint!r}).")
        if not (self.datasets or self.adapters):
            raise LabError("Nothing to push: --no-datasets and --no-adapters were both given.")
        return self


TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class TrainConfig(Settings):
    """DPO + LoRA settings. docs/training.md explains every field, its default and why."""

    model: str = opt("", "base model spec (empty = the model that sampled the run)")
    epochs: float = opt(3.0, "passes over the training pairs (ignored when --max-steps > 0)")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1 = run the epochs)")
    lr: float = opt(5e-5, "peak learning rate of the LoRA weights (cosine decay after warm-up)")
    warmup_ratio: float = opt(0.1, "fraction of the steps spent warming the learning rate up from 0")
    beta: float = opt(0.1, "DPO beta: strength of the pull back to the reference (higher = stay closer)")
    loss_type: str = opt("sigmoid", "TRL loss type, or several joined by ',' (e.g. sigmoid,sft)")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout (> 0 also turns the model's own dropout back on)")
    target_modules: str = opt("all-linear", "layers that get LoRA: 'all-linear' or names joined by ','")
    batch_size: int = opt(4, "pairs per device per forward pass")
    grad_accum: int = opt(1, "forward passes per optimizer step (effective batch = batch x accum x devices)")
    max_length: int = opt(1024, "longest prompt + response in tokens; longer ones are cut at the end")
    eval_fraction: float = opt(0.1, "share of the instructions held out for eval loss and reward accuracy")
    eval_steps: int = opt(0, "evaluate every N steps (0 = about 5 times per training)")
    save_steps: int = opt(50, "write a resumable checkpoint every N steps")
    logging_steps: int = opt(1, "write a metrics line every N steps")
    seed: int = opt(0, "seed for the data order, the eval split and the LoRA init")
    gradient_checkpointing: bool = opt(True, "recompute activations in the backward pass: far less memory, ~30% slower")
    precompute_ref: bool = opt(False, "compute reference log-probs once before training (faster steps, startup pass)")
    resume: bool = opt(True, "continue an interrupted training of the same adapter from its last checkpoint")
    device: str = opt("auto", "cpu, cuda or auto (GPU if there is one); accelerate launch picks per process")
    dtype: str = opt("auto", "float32, bfloat16 or auto (bf16 on GPU, fp32 on CPU)")

    def losses(self) -> list[str]:
        return [t.strip() for t in self.loss_type.split(",") if t.strip()]

    def validate(self) -> "TrainConfig":
        bad = [t for t in self.losses() if t not in TRL_LOSS_TYPES]
        if bad or not self.losses():
            raise LabError(f"--loss-type {self.loss_type!r}: use one or more of {', '.join(TRL_LOSS_TYPES)}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise LabError("Give --epochs > 0 or --max-steps > 0: there is nothing to train otherwise.")
        for flag, value in (("--lr", self.lr), ("--beta", self.beta)):
            if not value > 0:
                raise LabError(f"{flag} must be > 0 (got {value}).")
        for flag, value in (("--lora-r", self.lora_r), ("--lora-alpha", self.lora_alpha),
                            ("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum),
                            ("--save-steps", self.save_steps), ("--logging-steps", self.logging_steps)):
            if value < 1:
                raise LabError(f"{flag} must be at least 1 (got {value}).")
        if self.max_length < 16:
            raise LabError(f"--max-length {self.max_length} is too short for a prompt and an answer; "
                           "512-2048 is usual.")
        if not self.target_modules.strip(" ,"):
            raise LabError("--target-modules is empty: give 'all-linear' or layer names joined by ',' (q_proj,v_proj).")
        if not 0 <= self.eval_fraction < 0.5 or not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise LabError("--eval-fraction must be in [0, 0.5), --lora-dropout and --warmup-ratio in [0, 1).")
        return self


@dataclass
class CompareConfig(Settings):
    model: str = opt("", "base model spec (default: the model this run sampled with)")
    instructions: str = opt("heldout", "held-out instructions: 'heldout' (bundled), or a .jsonl/.csv/.txt file")
    n: int = opt(0, "how many held-out instructions (0 = all)")
    adapters: str = opt("", "comma-separated adapter names of this run (default: every adapter)")
    temperature: float = opt(0.7, "sampling temperature, the same for every model (0 = greedy)")
    top_p: float = opt(0.9, "nucleus sampling threshold, the same for every model (1 = off)")
    max_new_tokens: int = opt(256, "longest completion, in tokens")
    seed: int = opt(0, "seed for sampling (every model gets the same) and for the bootstrap")
    batch_size: int = opt(32, "instructions generated together (lower it if memory runs out)")
    duplicates: str = opt("drop", "held-out instructions that duplicate training ones: drop, flag (keep, marked) "
                          "or refuse", ("drop", "flag", "refuse"))
    near_duplicate: float = opt(0.7, "character 5-gram Jaccard similarity from which an instruction is a near duplicate")
    pairrm: str = opt("", "PairRM ranker for win rates: llm-blender/PairRM or a local folder ('' = skip)")
    judge: str = opt("none", "LLM judge for win rates, both orders: none, local, groq or openai",
                     ("none", "local", "groq", "openai"))
    judge_model: str = opt("", "the judge's model (default: the judge backend's default)")
    judge_rpm: float = opt(30.0, "API judge: most requests per minute (0 = no limit); the base URL comes from "
                           "$GROQ_BASE_URL / $OPENAI_BASE_URL when set")
    bootstrap: int = opt(2000, "bootstrap resamples for the win-rate confidence intervals")
    confidence: float = opt(0.95, "confidence level of the intervals")
    device: str = opt("auto", "cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "CompareConfig":
        SampleConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                     batch_size=self.batch_size).validate()
        if self.n < 0:
            raise LabError(f"--n must be 0 (all) or more (got {self.n}).")
        if not 0 < self.near_duplicate <= 1:
            raise LabError(f"--near-duplicate must be in (0, 1] (got {self.near_duplicate}); 0.7 is a good start.")
        if self.bootstrap < 100 or not 0.5 <= self.confidence < 1:
            raise LabError("--bootstrap must be at least 100 and --confidence in [0.5, 1), e.g. 2000 and 0.95.")
        return self


@dataclass
class RankConfig(Settings):
    ranker: str = opt("llm-blender/PairRM", "PairRM: hub id, local llm-blender ranker folder, or 'tiny-random'")
    batch_size: int = opt(32, "ordered response pairs per forward pass (K responses give K*(K-1) per instruction)")
    device: str = opt("auto", "cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "RankConfig":
        if self.batch_size < 1:
            raise LabError(f"--batch-size must be at least 1 (got {self.batch_size}); 20 fits 5 responses at once.")
        return self


@dataclass
class PairsConfig(Settings):
    source: str = opt("judge", "where preferences come from: the LLM judge's verdicts or PairRM's rankings",
                      choices=("judge", "pairrm"))
    strategy: str = opt("best-vs-worst", "best-vs-worst: one pair per instruction; all-pairs: every preferred pair "
                        "whose strength reaches --margin", choices=("best-vs-worst", "all-pairs"))
    margin: float = opt(0.0, "smallest preference strength kept: PairRM's both-orders logit; a judge verdict "
                        "counts 1 (so margins up to 1 keep every verdict)")
    use_spotcheck: bool = opt(True, "let human spot-check verdicts override the judge's (judge pairs only)")

    def validate(self) -> "PairsConfig":
        if self.margin < 0:
            raise LabError(f"--margin must be >= 0 (got {self.margin}): it is the smallest preference kept.")
        return self


@dataclass
class JudgeConfig(Settings):
    backend: str = opt("local", "who judges: local (transformers, offline, weak at 135M), groq, or openai (any "
                       "OpenAI-compatible server)", choices=("local", "groq", "openai"))
    model: str = opt("", "judge model; empty = llama-3.3-70b-versatile (groq), gpt-4o-mini (openai), bundled (local)")
    base_url: str = opt("", "provider root; empty = the SDK default. openai-compatible roots end in /v1 "
                        "(e.g. http://localhost:11434/v1 for Ollama); groq's has no /v1")
    api_key_env: str = opt("", "environment variable that holds the API key (empty = GROQ_API_KEY / OPENAI_API_KEY)")
    plan: str = opt("knockout", "knockout: 2(K-1) calls per instruction (8 for K=5); full: every pair in both orders, "
                    "K(K-1) calls (20 for K=5)", choices=("knockout", "full"))
    prompt_file: str = opt("", "judge prompt template with {instruction}, {response_a}, {response_b}; empty = built-in")
    temperature: float = opt(0.0, "judge sampling temperature (0: the same inputs give the same verdict)")
    max_tokens: int = opt(512, "longest judge reply, in tokens (API backends)")
    rpm: float = opt(30.0, "client-side limit, requests per minute (Groq free tier: 30; 0 = no limit)")
    concurrency: int = opt(8, "API requests in flight at once")
    timeout_s: float = opt(60.0, "seconds to wait for one API answer before retrying")
    max_retries: int = opt(5, "retries of a request after 429 / 5xx / timeout (Retry-After is honoured)")
    backoff_s: float = opt(1.0, "first retry delay when the provider gives no Retry-After; doubles each retry")
    max_retry_after_s: float = opt(300.0, "longest Retry-After pause accepted; a provider asking for more (a daily "
                                   "quota spent) stops the run, with what it asked, instead of pausing every worker")
    json_mode: bool = opt(True, "ask the API for a JSON object (response_format); turn off for servers without it")
    retry_invalid: bool = opt(False, "judge again the calls recorded as invalid (otherwise the cache keeps them)")
    seed: int = opt(0, "seed of the coin that settles undecided knockout matches")
    reasoning_tokens: int = opt(96, "local backend: tokens of reasoning generated before the verdict (0 = none)")
    batch_size: int = opt(8, "local backend: prompts per forward pass")
    device: str = opt("auto", "local backend: cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "local backend: float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "JudgeConfig":
        if self.concurrency < 1 or self.batch_size < 1:
            raise LabError("--concurrency and --batch-size must be at least 1.")
        if self.rpm < 0 or self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise LabError("--rpm must be >= 0 (0 = no limit), --timeout-s > 0, --max-retries and --backoff-s >= 0.")
        if self.max_retry_after_s <= 0:
            raise LabError(f"--max-retry-after-s must be > 0 (got {self.max_retry_after_s}); 300 (5 minutes) is usual.")
        if self.max_tokens < 16 or self.reasoning_tokens < 0:
            raise LabError(f"--max-tokens must be at least 16 (got {self.max_tokens}): the reply holds the reasoning "
                           "and the verdict; --reasoning-tokens must be >= 0.")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise LabError(f"--base-url {self.base_url!r} is not a URL: give http(s)://host[:port][/v1].")
        if self.backend == "local" and self.base_url:
            raise LabError("--base-url is for the groq and openai backends; the local judge runs here.")
        return self


@dataclass
class IterateConfig(Settings):
    """Self-rewarding DPO. docs/iterative.md explains every field and the paper's values."""

    model: str = opt("", "base model spec (default: the model this run sampled with)")
    rounds: int = opt(2, "self-rewarding rounds; round k trains adapter round-k from round k-1")
    instructions: str = opt("run", "training instructions: 'run' (this run's instructions.jsonl), 'bundled', or a file")
    n: int = opt(0, "how many instructions (0 = all)")
    samples: int = opt(4, "answers per instruction each round (the paper's N)")
    evaluations: int = opt(3, "times each answer is scored; the scores are averaged (the paper's R)")
    temperature: float = opt(0.7, "sampling temperature of the answers")
    top_p: float = opt(0.9, "nucleus sampling threshold of the answers")
    max_new_tokens: int = opt(256, "longest answer, in tokens")
    judge: str = opt("self", "who scores: self (the current model, as in the paper), groq or openai",
                     ("self", "groq", "openai"))
    judge_model: str = opt("", "API judge model (default: the backend's default)")
    judge_tokens: int = opt(160, "longest judgment (justification + score), in tokens")
    judge_temperature: float = opt(0.7, "sampling temperature of the judgments (0 makes the R scores identical)")
    score_mode: str = opt("auto", "auto: a local judgment without 'Score: N' is scored from the digit probabilities "
                          "after 'Score: '; parse: such judgments count as unscored", ("auto", "parse"))
    rpm: float = opt(30.0, "API judge: most requests per minute (Groq's free tier allows 30)")
    start_adapter: str = opt("", "adapter of this run that round 1 starts from (default: the plain base)")
    eval_instructions: str = opt("heldout", "held-out instructions for the per-round win rates")
    eval_n: int = opt(16, "held-out instructions per round evaluation (0 = no evaluation)")
    beta: float = opt(0.1, "DPO beta of each round (the paper's 0.1)")
    lr: float = opt(5e-5, "learning rate of each round's LoRA training")
    epochs: float = opt(2.0, "passes over a round's pairs")
    max_steps: int = opt(-1, "cap on optimizer steps per round (-1 = run the epochs)")
    lora_r: int = opt(16, "LoRA rank of round 1 (later rounds keep the shape of the adapter they continue)")
    train_batch_size: int = opt(4, "pairs per training step")
    seed: int = opt(0, "seed for sampling, judging and training (each round offsets it by its number)")
    batch_size: int = opt(32, "sequences generated together (lower it if memory runs out)")
    device: str = opt("auto", "cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "IterateConfig":
        SampleConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                     batch_size=self.batch_size).validate()
        if self.rounds < 1 or self.samples < 2 or self.evaluations < 1:
            raise LabError(f"--rounds must be >= 1, --samples >= 2 (a pair needs two answers) and --evaluations >= 1 "
                           f"(got {self.rounds}, {self.samples}, {self.evaluations}).")
        if self.judge_tokens < 8 or self.judge_temperature < 0:
            raise LabError("--judge-tokens must be at least 8 (a justification and 'Score: N'; 160 is typical) and "
                           "--judge-temperature >= 0.")
        if self.n < 0 or self.eval_n < 0 or self.rpm < 0:
            raise LabError("--n and --eval-n must be 0 (all / none) or more, --rpm 0 (no limit) or more.")
        if self.train_batch_size < 1:
            raise LabError(f"--train-batch-size must be at least 1 (got {self.train_batch_size}).")
        self.train_config(1, self.train_batch_size).validate()  # before round 1 samples anything, not after
        return self

    def train_config(self, k: int, n_pairs: int) -> TrainConfig:
        """The DPO settings of round k, trained on n_pairs pairs (a batch no larger than the pairs)."""
        return TrainConfig(model=self.model, beta=self.beta, lr=self.lr, epochs=self.epochs, max_steps=self.max_steps,
                           lora_r=self.lora_r, lora_alpha=2 * self.lora_r,
                           batch_size=min(self.train_batch_size, n_pairs), eval_fraction=0.0, seed=self.seed + k,
                           device=self.device, dtype=self.dtype)
