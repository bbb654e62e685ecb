"""Generation behind one interface: completions of chat prompts, from the base model or with a LoRA adapter on,
by whichever engine a stage was given.

An engine (lab.engines.ENGINES holds them; `pick_engine` resolves `--engine auto|lab|vllm|...`) is one module with
one `Engine` entry: lab.engine_lab (the lab's own batched sampler, on weights loaded in this process) and
lab.engine_vllm (vLLM in its own environment; docs/engines.md). A stage never asks which engine it has: it
`load`s the model through the entry (the weights, or only the tokenizer where the engine holds the weights),
opens a `session` on it with the adapters it needs (by name), and asks the session for
  - `units(units, encoded, dec, batch_size, shown, on_done)`: exactly the samples listed (the sample stage resumes
    what a run lacks, compare answers every missing (model, instruction)), each batch handed to `on_done` as it is
    done so a crash loses at most what is in flight;
  - `generate(prompts, k, dec, batch_size, progress, adapter, read)`: k completions per prompt, as lists (the
    self-scorer, the local tools).
The entry also says what run.json records of it (`record`) and whether compare's key names it (`keyed`); the
session says what it can do (`reads`, `one_call`, `per_sample`: see Session).

Seeding: the same seed and the same units give the same completions on one engine; two engines draw differently.
The lab's sampler seeds each batch from what it holds (each unit's `salt`), vLLM each sample from (seed, the unit's
`key`, sample index) (engine_vllm.SEED_RULE), so a unit names itself both ways.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from lab import limits, precision, shared_attention
from lab.progress import Progress

if TYPE_CHECKING:
    from lab.models import ChatModel


@dataclass(frozen=True)
class Unit:
    """One prompt's share of a `units` call: samples `indices` of prompt `prompt` (an index into the call's encoded
    prompts), answered with the adapter named `adapter` (None: the base). `key` names the prompt for engines that
    seed each sample (vLLM: None = a hash of its tokens); `salt(indices)` names the unit, or a part of it, for
    engines that seed a batch from what it holds (the lab's sampler; None: f"{key}:{indices}"). Units of different
    `group`s never share a batch (compare's chunks: a resumed comparison draws what a fresh one would)."""

    prompt: int | str
    indices: list[int]
    key: str | None = None
    adapter: str | None = None
    group: int = 0
    salt: Callable[[list[int]], str] | None = field(default=None, compare=False)

    def salt_of(self, indices: list[int]) -> str:
        return self.salt(indices) if self.salt else f"{self.key}:{indices}"


OnDone = Callable[[Unit, list["Completion"]], None]  # (a unit, or part of one: its indices; its completions in order)


class Session(Protocol):
    """An engine opened on one model with its adapters (Engine.session), and what the stages may rely on."""

    cm: "ChatModel"  # what the engine's `load` gave: prompts are encoded with it
    reads: bool  # reads a ReadAfter inside its batches; else the self-scorer reads the digits on a model loaded here
    one_call: bool  # batches a whole call itself (each call starts it): the self-scorer sends every row at once
    per_sample: bool  # seeds each sample by (key, index), not a batch by what it holds: a resume may ask for only
    #                   the samples missing (else compare redoes a whole chunk to draw what a fresh run would)

    def units(self, units: list[Unit], encoded: dict | list, dec: "Decoding", batch_size: int,
              shown: "ShiftedProgress", on_done: OnDone) -> float:
        """Generate every unit (encoded[unit.prompt]: chat-rendered token ids), handing each batch's completions to
        on_done as it is done; `shown` is told the completions done and checked for a stop request.
        -> new tokens per second (0.0 if unknown)."""

    def generate(self, prompts: list[str], k: int, dec: "Decoding", batch_size: int = 64,
                 progress: Progress | None = None, adapter: str | None = None,
                 read: "ReadAfter | None" = None) -> list[list["Completion"]]:
        """k completions of each prompt (plain text, rendered with the model's chat template), one list per prompt
        in the order given; `read` only where the engine `reads`."""


@dataclass(frozen=True)
class Engine:
    label: str  # in --engine's help and the app
    available: Callable[[], tuple[bool, str]]  # -> (installed, what was found or why not)
    load: Callable[[str, str, str], "ChatModel"]  # (spec, device, dtype) -> the ChatModel prompts are encoded with:
    #                                               the weights (lab), or the tokenizer alone (the engine holds them)
    session: Callable[["ChatModel", dict[str, Path]], object]  # (cm, {adapter name: folder}) -> a context manager
    #                                                            giving a Session; adapters are unloaded on exit
    record: Callable[[], dict] = dict  # what run.json records of it beside "engine_used" (version, seed rule)
    keyed: bool = True  # compare's key names the engine (the lab's predates engines: its key names none)


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0

    def to_dict(self) -> dict:
        """The "decoding" field of samples.jsonl and compare.jsonl."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed}


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    read: list[float] | None = None  # ReadAfter's probabilities, where one was asked for (never in a record)


@dataclass(frozen=True)
class ReadAfter:
    """Next-token probabilities read as a batch's completions are written, on the keys and values the decode
    already holds (so neither the prompt nor the completion runs twice): `tails(texts)` gives, per completion text,
    the token ids that follow the prompt (None: nothing to read for it); Completion.read gets the probabilities of
    `ids` after prompt + tail, renormalised over `ids`. Where the tail starts with the generated tokens, only what
    comes after them is run. The self-scorer reads the digits 0-5 after judgment + "Score: " so."""

    tails: Callable[[list[str]], list[list[int] | None]]
    ids: tuple[int, ...]



AUTO_BATCH_CPU, AUTO_BATCH = 96, 32  # sequences per batch for --batch-size 0 (auto): on CPU, elsewhere
AUTO_BATCH_HELP = (f"sequences generated together; 0 = auto: {AUTO_BATCH_CPU} where the decode shares each prompt "
                   f"among its rows (CPU, float32, Llama/Mistral/Qwen-style models), else {AUTO_BATCH}")


def auto_batch(requested: int, device: str, dtype: str, model_path: str) -> int:
    """--batch-size, where 0 means auto: AUTO_BATCH_CPU sequences where the decode shares each prompt's keys and
    values among its rows (lab.shared_attention: CPU, float32, a plain-attention model, read from its config), so
    a row holds only its own tokens and a step is mostly the weights' arithmetic, which more rows share (scoring 32
    answers x 3 judgments took 115 s at 32 sequences per batch and 85 s at 96, bundled model, 2 cores); AUTO_BATCH
    elsewhere, where a row holds its whole context (a 3B model's 96 judge prompts: ~12 GB of KV cache). Never above
    the hosted app's cap (lab.limits, LAB_MAX_BATCH)."""
    if requested:
        return requested
    from transformers import AutoConfig

    dev = precision.probe(device)
    shared = shared_attention.supports(AutoConfig.from_pretrained(model_path), dev.kind,
                                       precision.resolve_dtype(dev, dtype))
    n = AUTO_BATCH_CPU if shared else AUTO_BATCH
    cap = limits.cap("batch")
    return int(min(n, cap)) if cap else n

def engine_record(name: str) -> dict:
    """What run.json records of the engine that generated: its name (`engine_used`: the `engine` setting beside it
    stays as asked, auto included, so that run.json redoes the run as it was asked for) and what its entry adds."""
    from lab.engines import ENGINES

    return {"engine_used": name, **ENGINES[name].record()}


class ShiftedProgress:
    """A stage's Progress as an engine call sees it: the call counts its own completions from 0, the bar shows the
    stage's (done before + done now) of its total, with the work inside a batch (`partial`) passed on so the count
    moves per decode step; stop requests pass through. per_unit: completions that make one of the stage's units
    (a scored row is R judgments). stops=False: the caller checks for a stop at its own safe points (after it
    appended what the call made), so a stop never throws away a finished batch."""

    def __init__(self, progress: Progress, before: int, total: int, desc: str, per_unit: int = 1,
                 stops: bool = True):
        self.progress, self.before, self.total, self.desc, self.per_unit = progress, before, total, desc, per_unit
        self.stops = stops

    def update(self, done: int, total: int | None = None, partial: float = 0.0, **extra) -> None:
        whole, part = divmod(done, self.per_unit)
        self.progress.update(self.before + whole, self.total, self.desc, partial=(part + partial) / self.per_unit,
                             **extra)

    def check_stop(self) -> None:
        if self.stops:
            self.progress.check_stop()



def generate(cm: "ChatModel", prompts: list[str], k: int, dec: Decoding, batch_size: int = 64,
             progress: Progress | None = None, engine: str = "lab", adapter: Path | None = None,
             read: ReadAfter | None = None) -> list[list[Completion]]:
    """k completions for each prompt by engine `engine` (cm: what that engine's `load` gave), with the adapter
    folder `adapter` on (None: the model as it is): the local tools and the tests call this; the stages open a
    session themselves, to keep their adapters loaded across calls."""
    from lab.engines import ENGINES

    with ENGINES[engine].session(cm, {"adapter": adapter} if adapter else {}) as session:
        return session.generate(prompts, k, dec, batch_size, progress, "adapter" if adapter else None, read)
