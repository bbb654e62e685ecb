"""Self-rewarding scores (Yuan et al., 2024): every answer judged R times with the paper's additive 5-point prompt
(SCORE_PROMPT), by the model that wrote it (`judge` "self", as in the paper) or by an API model, and averaged.
A scorer like the pairwise judge and PairRM: lab.pairs builds the "self" preference set from these scores, and
lab.compare can use them ("score") for win rates.

scores.jsonl's format, `score_record` and the reader `mean_scores` are lab/records/scores.py.

The records are the cache: a (set, instruction, sample or model, text) already scored by the same judge is not
scored again, so a rerun scores nothing and a stopped one resumes.
"""
from __future__ import annotations

import contextvars
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from lab import efficiency, models, precision
from lab.adapters import adapters_on
from lab.config import Settings, opt
from lab.errors import LabError
from lab.engine_lab import read_after
from lab.engines import ENGINE_CHOICES, ENGINE_HELP, ENGINES, pick_engine
from lab.generation import (AUTO_BATCH, AUTO_BATCH_HELP, Decoding, ReadAfter, Session, ShiftedProgress, auto_batch,
                            engine_record)
from lab.judge_backends import API_BACKENDS, DEFAULT_MODELS, ApiBackend
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.ratelimit import RateLimiter
from lab.records.scores import score_key, score_record, score_summary, text_hash
from lab.store import Run, once

SCORE_PROMPT = """Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it \
is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not \
completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, \
regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in \
blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the \
user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for \
improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, \
without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and \
insightful answer.

User: {instruction}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the \
response in alignment with this additive scoring model, we'll systematically attribute points based on the \
outlined criteria."""
JUDGE = "policy"  # the name the judging adapter gets in its engine session
PROMPT_HASH = hashlib.sha256(SCORE_PROMPT.encode()).hexdigest()[:16]
SCORE_RE = re.compile(r"score\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*5)?", re.IGNORECASE)


@dataclass
class ScoreConfig(Settings):
    """Who scores and how; docs/iterative.md gives the paper's values."""

    judge: str = opt("self", "who scores: self (the model that wrote the answers, its adapter on, as in the paper), "
                     "or an API judge", ("self", *API_BACKENDS), label="Judge")
    judge_model: str = opt("", "API judge model (default: the backend's default)", label="API judge model")
    evaluations: int = opt(3, "times each answer is scored; the scores are averaged (the paper's R)",
                           label="Scores per answer (R)")
    judge_tokens: int = opt(160, "longest judgment (justification + score), in tokens", label="Judgment tokens")
    judge_temperature: float = opt(0.7, "sampling temperature of the judgments (0 makes the R scores identical)")
    score_mode: str = opt("auto", "auto: a local judgment without 'Score: N' is scored from the digit probabilities "
                          "after 'Score: '; parse: such judgments count as unscored", ("auto", "parse"))
    rpm: float = opt(30.0, "API judge: most requests per minute (Groq's free tier allows 30; 0 = no limit)")
    concurrency: int = opt(4, "API judge: requests in flight at once")
    seed: int = opt(0, "seed of the local judge's sampling")
    batch_size: int = opt(0, "local judge: " + AUTO_BATCH_HELP + " (an answer scored R times counts R)")
    engine: str = opt("auto", "local judge's " + ENGINE_HELP, ENGINE_CHOICES)
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)

    def validate(self) -> "ScoreConfig":
        if self.evaluations < 1 or self.batch_size < 0 or self.concurrency < 1:
            raise LabError("--evaluations and --concurrency must be at least 1, --batch-size 0 (auto) or more.")
        if self.judge_tokens < 8 or self.judge_temperature < 0:
            raise LabError("--judge-tokens must be at least 8 (a justification and 'Score: N'; 160 is typical) and "
                           "--judge-temperature >= 0.")
        if self.rpm < 0:
            raise LabError(f"--rpm must be 0 (no limit) or more (got {self.rpm}).")
        return self

    @property
    def name(self) -> str:
        """The judge as recorded: "self", or "<backend>:<model>"."""
        return "self" if self.judge == "self" else f"{self.judge}:{self.judge_model or DEFAULT_MODELS[self.judge]}"


# ---- the judgment: prompt, parser, local probabilities ------------------------------------------------------------
def score_prompt(instruction: str, response: str) -> str:
    return SCORE_PROMPT.format(instruction=instruction, response=response)


def parse_score(text: str) -> float | None:
    """The points of the LAST "Score: <points>" in a judgment (0-5), or None where there is none or it is out of range.
    Accepts the variants judges write: "Score: 4", "**Score:** 4", "Score: 3.5", "score: 4/5"."""
    found = SCORE_RE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 0 <= value <= 5 else None


def digit_tokens(tok, context: str) -> tuple[list[int], tuple[int, ...]]:
    """(ids of `context`, the id of each digit 0-5 as the next token). Found by tokenizing context + digit, so it
    works whether a tokenizer glues the digit to the space before it or not."""
    ctx, ids = digit_contexts(tok, [context])
    return ctx[0], ids


def digit_contexts(tok, contexts: list[str]) -> tuple[list[list[int]], tuple[int, ...]]:
    """digit_tokens for many contexts in one tokenizer call: (ids of each context, the digits' ids). Every context
    must give the digits the same ids (they all end in "Score: ")."""
    runs = tok([c + str(d) for c in contexts for d in range(6)], add_special_tokens=False)["input_ids"]
    out, digits = [], None
    for n in range(len(contexts)):
        group = runs[6 * n:6 * n + 6]
        common = 0
        while all(len(r) > common + 1 and r[common] == group[0][common] for r in group):
            common += 1
        ids = tuple(r[common] for r in group)
        if len(set(ids)) != 6 or (digits is not None and ids != digits):
            raise LabError("This judge model's tokenizer does not give the digits 0-5 their own tokens after "
                           "'Score: ': use --score-mode parse or another judge.")
        out.append(group[0][:common])
        digits = ids
    return out, digits or ()


def judgment_context(text: str) -> str:
    """What the digit probabilities are read after: the judgment (less an unfinished last 'Score') + "Score: "."""
    return strip_partial_score(text).rstrip() + "\nScore: "


def score_reader(tok) -> ReadAfter | None:
    """The generation engine's read of P(digit 0-5) after judgment + "Score: ", for judgments with no readable
    score, on the keys and values the batch pre-filled for the judge prompt (the prompt never runs twice).
    None where the tokenizer has no digit tokens there (forced_score_probs then says so, if a judgment needs it)."""
    try:
        digits = digit_tokens(tok, "Fine.\nScore: ")[1]
    except LabError:
        return None

    def tails(texts: list[str]) -> list[list[int] | None]:
        need = [i for i, t in enumerate(texts) if parse_score(t) is None]
        out: list[list[int] | None] = [None] * len(texts)
        if need:
            ctx, ids = digit_contexts(tok, [judgment_context(texts[i]) for i in need])
            if ids != digits:
                raise LabError("This judge model's tokenizer gives the digits after 'Score: ' different tokens in "
                               "different judgments: use --score-mode parse or another judge.")
            for i, c in zip(need, ctx):
                out[i] = c
        return out

    return ReadAfter(tails, digits)


def forced_score_probs(cm, prompts: list[str], texts: list[str], batch_size: int) -> list[list[float]]:
    """P(digit) over 0-5 for the token after judgment_context(texts[i]), which follows judge prompt prompts[i]
    (plain text, rendered with cm's chat template), for judgments written elsewhere (vLLM). Each distinct prompt
    of a batch is pre-filled once and only the judgments run after it. [n], [n] -> [n, 6]."""
    uniq = list(dict.fromkeys(prompts))
    where = {p: n for n, p in enumerate(uniq)}
    ctx, ids = digit_contexts(cm.tokenizer, [judgment_context(t) for t in texts])
    return read_after(cm, [cm.encode_prompt(p) for p in uniq], ctx, [where[p] for p in prompts], ids, batch_size)


def strip_partial_score(text: str) -> str:
    """Cut a judgment before a last 'Score' that was started but not finished (max tokens ran out)."""
    cut = text.lower().rfind("score")
    return text[:cut].rstrip() if cut >= 0 and parse_score(text[cut:]) is None else text


def judgment(text: str, probs: list[float] | None) -> dict:
    """One evaluation: the parsed score, else the expected digit under `probs` (P of 0-5), else unscored."""
    value = parse_score(text)
    if value is not None:
        return {"score": value, "method": "parsed", "probs": None, "raw": text}
    if probs is not None:
        return {"score": sum(d * q for d, q in enumerate(probs)), "method": "probabilities", "probs": probs,
                "raw": text}
    return {"score": None, "method": "invalid", "probs": None, "raw": text}


def local_scores(session: Session, prompts: list[str], evaluations: int, cfg, seed: int,
                 progress: Progress | None = None, adapter: str | None = None, probs_model: Callable | None = None
                 ) -> list[list[dict]]:
    """R judgments of each judge prompt by a local chat model through an engine session (lab.generation.Session),
    with the adapter named `adapter` on (None: the base), cfg.batch_size sequences at a time. Judgments without a
    score (score_mode auto) are scored from the digit probabilities: where the engine `reads`, in the same batch,
    on the judge prompt's pre-filled cache (score_reader); else afterwards by `probs_model()` (a context manager
    giving a loaded ChatModel; default the session's) with forced_score_probs.
    Returns, per prompt, R dicts {"score", "method", "probs", "raw"}."""
    dec = Decoding(cfg.judge_temperature, 1.0 if cfg.judge_temperature == 0 else 0.95, cfg.judge_tokens, seed)
    auto = cfg.score_mode == "auto"
    read = score_reader(session.cm.tokenizer) if auto and session.reads else None  # read in the sampling batch
    batch = cfg.batch_size or AUTO_BATCH
    comps = session.generate(prompts, evaluations, dec, batch, progress, adapter, read=read)
    out = [[judgment(c.text, c.read) for c in row] for row in comps]
    todo = [(i, j) for i, row in enumerate(out) for j, e in enumerate(row) if e["score"] is None]
    if todo and auto and read is None:
        with (probs_model() if probs_model else nullcontext(session.cm)) as pm:
            probs = forced_score_probs(pm, [prompts[i] for i, _ in todo], [out[i][j]["raw"] for i, j in todo],
                                       batch)
        for (i, j), p in zip(todo, probs):
            out[i][j] = judgment(out[i][j]["raw"], p)
    return out


def api_scores(backend: ApiBackend, prompts: list[str], evaluations: int, concurrency: int = 1) -> list[list[dict]]:
    """R judgments of each prompt by an API model, `concurrency` requests in flight (they share its rate limiter)."""
    def one(p: str) -> dict:
        reply = backend.complete(p)
        s = parse_score(reply.text)
        return {"score": s, "method": "parsed" if s is not None else "invalid", "probs": None, "raw": reply.text,
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}}

    ctx = contextvars.copy_context()  # workers report their requests to the stage's efficiency meter
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        flat = list(pool.map(lambda p: ctx.copy().run(one, p), [p for p in prompts for _ in range(evaluations)]))
    return [flat[i * evaluations:(i + 1) * evaluations] for i in range(len(prompts))]


def api_backend(cfg: ScoreConfig, api_key: str | None = None) -> ApiBackend | None:
    """The API judge, or None for the model's own judgment. The key is passed in memory (the app) or read from the
    environment (lab.judge_backends.resolve_key); it never reaches a file."""
    if cfg.judge == "self":
        return None
    return ApiBackend(cfg.judge, cfg.judge_model or DEFAULT_MODELS[cfg.judge], RateLimiter(cfg.rpm), api_key=api_key,
                      temperature=cfg.judge_temperature, max_tokens=cfg.judge_tokens, json_mode=False,
                      local="--judge self")


# ---- scoring rows, with the records as the cache ------------------------------------------------------------------
def row_key(row: dict, cfg: ScoreConfig) -> tuple:
    return score_key({**row, "sample_index": row.get("sample_index") if row["set"] == "train" else None,
                      "model": row.get("model") if row["set"] == "eval" else None, "text_hash": text_hash(row["text"]),
                      "judge": cfg.name})


@dataclass
class Scorer:
    """What scores rows: an API judge, or a local model through an engine session (lab.generation.Session) with
    the adapter named `adapter` on; `probs_model` (a context manager giving a ChatModel loaded here) reads the digit
    probabilities of judgments without a score where the engine reads none in its batches."""

    cfg: ScoreConfig
    judge: ApiBackend | None
    session: Session | None = None
    adapter: str | None = None
    probs_model: Callable | None = None
    engine: str = ""  # the engine's name, for run.json (local judges)

    def score(self, prompts: list[str], seed: int, progress=None) -> list[list[dict]]:
        """progress: told the judgments made (R per prompt) and the work inside a batch as it decodes (a
        lab.generation.ShiftedProgress); API judges report per call through score_rows only."""
        if self.judge is not None:
            return api_scores(self.judge, prompts, self.cfg.evaluations, self.cfg.concurrency)
        return local_scores(self.session, prompts, self.cfg.evaluations, self.cfg, seed, progress,
                            adapter=self.adapter, probs_model=self.probs_model)

    def rows_per_call(self, todo: int) -> int:
        """Rows per `score` call (each call's records are written as it returns): an API judge batch_size rows;
        an engine that batches a whole call itself (vLLM: each call starts the engine) every row at once; else one
        generation batch (batch_size sequences: batch_size // R rows)."""
        batch = self.cfg.batch_size or AUTO_BATCH  # 0 (auto) is resolved for local judges by score_samples
        if self.judge is not None:
            return batch
        if self.session.one_call:
            return max(1, todo)
        return max(1, batch // self.cfg.evaluations)


def score_rows(run: Run, rows: list[dict], scorer: Scorer, progress: Progress, desc: str = "scoring",
               on_first: Callable[[], None] | None = None) -> int:
    """Score (instruction, response) rows R times each and append them to the run's scores.jsonl, a chunk at a time;
    rows already scored (score_key) are skipped. rows: {"set", "instruction_id", "prompt", "text",
    "sample_index" (train) | "model" (eval)}. on_first: called once, before the first record is written.
    Returns how many rows were scored now."""
    cfg = scorer.cfg
    have = {score_key(s) for s in run.read("scores")}
    todo = [row for row in rows if row_key(row, cfg) not in have]
    step = scorer.rows_per_call(len(todo))
    if scorer.judge is None:  # a local judge: similar lengths share a batch (less padding)
        todo.sort(key=lambda row: len(row["prompt"]) + len(row["text"]))
    started = once(on_first or (lambda: None))
    for n in range(0, len(todo), step):
        progress.check_stop()
        before = len(rows) - len(todo) + n
        progress.update(before, len(rows), desc)
        chunk = todo[n:n + step]
        evals = scorer.score([score_prompt(row["prompt"], row["text"]) for row in chunk], cfg.seed,
                             ShiftedProgress(progress, before, len(rows), desc, per_unit=cfg.evaluations, stops=False))
        started()
        run.append("scores", [score_record(row, e, ev, cfg.name, PROMPT_HASH) for row, evs in zip(chunk, evals)
                              for e, ev in enumerate(evs)])
    progress.update(len(rows), len(rows), desc)
    return len(todo)


# ---- the stage ----------------------------------------------------------------------------------------------------
def run(run: Run, cfg: ScoreConfig, progress: Progress | None = None) -> dict:
    """The score stage (its lab.stages row); an API judge's key comes from the environment."""
    return score_samples(run, cfg, progress)


def score_samples(run: Run, cfg: ScoreConfig, progress: Progress | None = None, api_key: str | None = None,
                  desc: str = "scoring") -> dict:
    """The score stage's work: every answer of samples.jsonl scored R times (set "train"). The self judge is the model
    that sampled the run, with the adapter it sampled with switched on (as run.json's sample entry says)."""
    cfg.validate()
    judge = api_backend(cfg, api_key)  # a missing API key fails here, before any work
    spec = (run.stage_settings("sample") or {}).get("model")
    if judge is None and not cfg.batch_size and spec:  # 0: auto, for the model that judges
        cfg = replace(cfg, batch_size=auto_batch(0, cfg.device, cfg.dtype, models.resolve(spec)))
    rows = [{**s, "set": "train"} for s in run.read("samples")]
    if not rows:
        raise LabError(f"Run '{run.name}' has no samples to score: run the Sample stage first.",
                       ui=f"Run '{run.name}' has no samples to score: sample first in the Sample tab.")
    progress = progress or Progress("scoring")
    with run.lock("score"), efficiency.measure(run, "score"), self_scorer(run, cfg, judge, progress) as scorer:
        done = score_rows(run, rows, scorer, progress, desc, on_first=lambda: run.record_stage("score", {
            **cfg.to_dict(), "judge_name": cfg.name, "prompt_hash": PROMPT_HASH,
            **(engine_record(scorer.engine) if judge is None else {})}))
    progress.close()
    return score_summary(run, cfg.name) | {"scored_now": done}


@contextmanager
def self_scorer(run: Run, cfg: ScoreConfig, judge: ApiBackend | None, progress: Progress | None = None
                ) -> Iterator[Scorer]:
    """A Scorer for the run's own samples: the API judge, or the model that sampled them with its adapter on."""
    if judge is not None:
        yield Scorer(cfg, judge)
        return
    sampled = run.stage_settings("sample") or {}
    if not sampled.get("model"):
        raise LabError(f"Run {run.name} records no sampling model to judge its own answers: sample first.")
    with model_scorer(cfg, sampled["model"], sampled.get("adapter_path"), progress) as scorer:
        yield scorer


@contextmanager
def model_scorer(cfg: ScoreConfig, spec: str, adapter: str | None, progress: Progress | None = None
                 ) -> Iterator[Scorer]:
    """A Scorer whose judge is the local model `spec` with the adapter folder `adapter` on (None: the base), through
    the engine cfg.engine picks; the digits an engine does not read in its batches are read on the model loaded
    here (lab_judge)."""
    name = pick_engine(cfg.engine, precision.probe(cfg.device).kind)
    if progress is not None:
        progress.loading(f"model {spec}")
    cm = ENGINES[name].load(spec, cfg.device, cfg.dtype)
    with ENGINES[name].session(cm, {JUDGE: Path(adapter)} if adapter else {}) as session:
        yield Scorer(cfg, None, session, JUDGE if adapter else None,
                     None if session.reads else (lambda: lab_judge(spec, cfg, adapter)), name)


@contextmanager
def lab_judge(spec: str, cfg: ScoreConfig, adapter: str | None) -> Iterator:
    """The judge model loaded in this process, its adapter on (for the digit probabilities an engine that reads none
    in its batches needs)."""
    cm = models.load(spec, cfg.device, cfg.dtype)
    with adapters_on(cm, {JUDGE: Path(adapter)} if adapter else {}) as select, \
            select(JUDGE if adapter else None) as judge:
        yield judge
