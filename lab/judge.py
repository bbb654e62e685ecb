"""The LLM judge stage: pairwise verdicts with reasoning, each pair judged in both orders, under a call plan.

What a call records and how calls add up to one verdict per pair: lab/records/verdicts.py (judgments.jsonl's format, the
folding rule, the position- and length-bias figures). Who answers: lab/judge_backends.py (the BACKENDS registry:
Groq, any OpenAI-compatible server, a local transformers model). This module renders the prompt, plans the calls
(knockout or full), runs them (concurrently under a rate limit for APIs, batched for the local model), and treats
judgments.jsonl as its cache: a call whose cache_key is already in the file is not made again, so a rerun makes no
calls and a killed run resumes where it stopped.
"""
from __future__ import annotations

import contextvars
import hashlib
import itertools
import json
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import efficiency
from lab.config import Settings, opt
from lab.errors import LabError
from lab.judge_backends import API_BACKENDS, BACKENDS, DEFAULT_MODELS, KEY_ENV, MAX_RETRY_AFTER_S, ApiBackend, \
    LocalBackend, price_usd
from lab.progress import Progress, stop_requested
from lab.ratelimit import Cancelled, RateLimiter
from lab.records.samples import groups
from lab.records.verdicts import SCORE_RANGE, TIE_BAND, pair_verdicts, report_records
from lab.store import Run, atomic_write_text, once, read_user_text

PLANS = {
    "knockout": "a knockout tournament, each match judged in both orders: K-1 matches, 2(K-1) calls per instruction "
                "(8 for K=5); an undecided match (tie, inconsistent, invalid) is settled by a seeded coin flip",
    "full": "every pair in both orders: K(K-1) calls per instruction (20 for K=5)",
}
CALIBRATE = {
    "auto": "decide pairs whose two orders disagree from the grades averaged over both orders, where the calls "
            "carry grades (the local judge's label probabilities; API replies carry none unless asked)",
    "scores": "API judges: also ask for a 1-10 score per response in each order and calibrate with them (the same "
              "calls, a few more output tokens each)",
    "off": "no calibration: a pair whose two orders disagree is inconsistent",
}


@dataclass
class JudgeConfig(Settings):
    backend: str = opt("local", "who judges: " + "; ".join(f"{k}: {b.label}" for k, b in BACKENDS.items()),
                       choices=tuple(BACKENDS), label="Judge")
    model: str = opt("", "judge model; empty = " + ", ".join(f"{b.default_model} ({k})" for k, b in BACKENDS.items()),
                     label="Model")
    base_url: str = opt("", "provider root; empty = the SDK default. openai-compatible roots end in /v1 "
                        "(e.g. http://localhost:11434/v1 for Ollama); groq's has no /v1", label="Base URL")
    api_key_env: str = opt("", f"environment variable that holds the API key (empty = {' / '.join(KEY_ENV.values())})")
    plan: str = opt("knockout", "knockout: 2(K-1) calls per instruction (8 for K=5); full: every pair in both orders, "
                    "K(K-1) calls (20 for K=5)", choices=tuple(PLANS), label="Call plan")
    prompt_file: str = opt("", "judge prompt template with {instruction}, {response_a}, {response_b}; empty = built-in")
    temperature: float = opt(0.0, "judge sampling temperature (0: the same inputs give the same verdict)")
    max_tokens: int = opt(512, "longest judge reply, in tokens (API backends)")
    rpm: float = opt(30.0, "client-side limit, requests per minute (Groq free tier: 30; 0 = no limit)",
                     label="Requests per minute")
    concurrency: int = opt(8, "API requests in flight at once", label="Concurrent requests")
    timeout_s: float = opt(60.0, "seconds to wait for one API answer before retrying")
    max_retries: int = opt(5, "retries of a request after 429 / 5xx / timeout (Retry-After is honoured)")
    backoff_s: float = opt(1.0, "first retry delay when the provider gives no Retry-After; doubles each retry")
    max_retry_after_s: float = opt(MAX_RETRY_AFTER_S, "longest Retry-After pause accepted; a provider asking for "
                                   "more (a daily quota spent) stops the run, with what it asked, instead of pausing "
                                   "every worker")
    json_mode: bool = opt(True, "ask the API for a JSON object (response_format); turn off for servers without it")
    retry_invalid: bool = opt(False, "judge again the calls recorded as invalid (otherwise the cache keeps them)")
    seed: int = opt(0, "seed of the coin that settles undecided knockout matches")
    calibrate: str = opt("auto", "position calibration of pairs whose two orders disagree: auto (graded calls: the "
                         "local judge's label probabilities), scores (API judges also grade each response 1-10 in "
                         "each order; same calls, a few more tokens), off (disagreement = inconsistent)",
                         choices=tuple(CALIBRATE), label="Position calibration")
    tie_band: float = opt(TIE_BAND, "calibrated pairs whose two averaged grades (0-1) differ by this much or less "
                          "are ties", label="Tie band")
    estimate_only: bool = opt(False, "print the plan's calls, time and cost, and judge nothing")
    reasoning_tokens: int = opt(96, "local backend: tokens of reasoning generated before the verdict (0 = none)",
                                label="Local reasoning tokens")
    min_reasoning_tokens: int = opt(16, "local backend: the reasoning may not close before this many tokens (the "
                                    "model's own words: a closing quote or end of turn is held back until then)",
                                    label="Local minimum reasoning tokens")
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
            raise LabError(f"--base-url is for the {' and '.join(API_BACKENDS)} backends; the local judge runs here.")
        if self.backend == "local" and self.calibrate == "scores":
            raise LabError("--calibrate scores is for API judges: the local judge's label probabilities are already "
                           "its grades (use auto).")
        if not 0 <= self.tie_band < 1 or self.min_reasoning_tokens < 0:
            raise LabError(f"--tie-band must be in [0, 1) (got {self.tie_band}; {TIE_BAND} is the default) and "
                           "--min-reasoning-tokens >= 0.")
        return self

    def band(self) -> float | None:
        """The tie band pair_verdicts takes: None when calibration is off."""
        return None if self.calibrate == "off" else self.tie_band


# ---- the prompt ---------------------------------------------------------------------------------------------------
DEFAULT_TEMPLATE = """You are an impartial judge. Compare two AI assistant responses to the same user instruction and \
decide which one better fulfils it.

Criteria, most important first:
1. Helpfulness and correctness: does it do what was asked, accurately, without false claims or unsafe advice?
2. Completeness and relevance: does it cover what matters, without padding or off-topic text?
3. Clarity: is it well organised and easy to follow?
The order in which the responses are shown must not influence you. Length is not quality: a longer response is \
better only if the extra content is useful. If the two are equally good (or equally bad), the verdict is "tie".

[Instruction]
{instruction}

[Response A]
{response_a}
[End of Response A]

[Response B]
{response_b}
[End of Response B]

First compare the responses against the criteria in two to four sentences, then give your verdict. Reply with one \
JSON object and nothing else, reasoning first:
{"reasoning": "<your comparison>", "verdict": "A" or "B" or "tie"}"""
PLACEHOLDER = re.compile(r"\{(instruction|response_a|response_b)\}")
# --calibrate scores: appended to the template, so an API judge grades each response in each order
SCORES_SUFFIX = """

Also grade each response on its own, from 1 (useless) to 10 (excellent). Reply with one JSON object and nothing \
else, reasoning first:
{"reasoning": "<your comparison>", "score_a": <1-10>, "score_b": <1-10>, "verdict": "A" or "B" or "tie"}"""


def check_template(template: str) -> str:
    """A usable prompt template has each placeholder {instruction}, {response_a}, {response_b} (other braces, as in
    the JSON example, are left alone). Returns it unchanged; raises LabError naming what is missing."""
    missing = [p for p in ("instruction", "response_a", "response_b") if "{" + p + "}" not in template]
    if missing:
        raise LabError("The judge prompt lacks " + ", ".join("{" + m + "}" for m in missing) +
                       ": put each placeholder where that text goes (see docs/judge.md).")
    return template


def with_scores(template: str) -> str:
    """The template as --calibrate scores sends it (SCORES_SUFFIX appended once)."""
    return template if template.endswith(SCORES_SUFFIX) else template + SCORES_SUFFIX


def parse_scores(text: str) -> dict[str, float] | None:
    """{"A": score of the response shown first, "B": of the second} from a reply's JSON "score_a" / "score_b";
    None unless both are numbers within SCORE_RANGE."""
    start, end = text.find("{"), text.rfind("}")
    try:
        obj = json.loads(text[start:end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    got = {pos: obj.get(f"score_{pos.lower()}") for pos in ("A", "B")}
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and SCORE_RANGE[0] <= v <= SCORE_RANGE[1]
             for v in got.values())
    return {k: float(v) for k, v in got.items()} if ok else None


def prompt_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def render_prompt(template: str, instruction: str, first: str, second: str) -> str:
    """Fill the template in one pass, so a response that itself contains '{response_b}' cannot inject text."""
    values = {"instruction": instruction, "response_a": first, "response_b": second}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def load_template(prompt_file: str = "") -> str:
    if not prompt_file:
        return DEFAULT_TEMPLATE
    path = Path(prompt_file).expanduser()
    if not path.is_file():
        raise LabError(f"Prompt file {path} does not exist: give a text file with the template, or leave "
                       "--prompt-file empty for the built-in one.")
    text = read_user_text(path, "Prompt file").replace("\r\n", "\n").replace("\r", "\n")  # as open() reads text
    return check_template(text)


VERDICT_WORDS = {"a": "A", "response a": "A", "b": "B", "response b": "B", "tie": "tie", "draw": "tie",
                 "equal": "tie", "c": "tie"}
VERDICT_FIELD = re.compile(r'"verdict"\s*:\s*"\s*\[*\s*(response a|response b|a|b|tie)\s*\]*\s*"', re.IGNORECASE)


def parse_output(text: str) -> tuple[str | None, str]:
    """Judge output -> (position verdict "A" | "B" | "tie", or None if unreadable; reasoning).

    Takes the first JSON object in the text (code fences and chatter around it are tolerated); if that is not valid
    JSON (an unescaped quote in the reasoning, a cut-off reply) a literal "verdict": "A|B|tie" field still counts.
    Anything else is unreadable: never guessed."""
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            obj = json.loads(text[start:end + 1])
            if isinstance(obj, dict):
                word = str(obj.get("verdict", "")).strip().strip("[]\"'. ").lower()
                return VERDICT_WORDS.get(word), str(obj.get("reasoning", "")).strip()
        except json.JSONDecodeError:
            pass
    m = VERDICT_FIELD.search(text)
    return (VERDICT_WORDS[m.group(1).lower()], "") if m else (None, "")


# ---- calls and the plan -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One judge request: canonical pair (a < b), the order shown, and the texts of a and b."""

    instruction_id: str
    instruction: str
    a: int
    b: int
    order: str  # "ab" | "ba"
    text_a: str
    text_b: str

    @property
    def shown(self) -> tuple[str, str]:
        """(first, second) as the judge sees them."""
        return (self.text_a, self.text_b) if self.order == "ab" else (self.text_b, self.text_a)


def cache_key(backend: str, model: str, phash: str, call: Call) -> str:
    """What makes two calls the same call: judge, prompt, instruction and the two texts in the order shown."""
    blob = json.dumps([backend, model, phash, call.instruction, *call.shown], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


Candidates = dict[str, tuple[str, dict[int, str]]]  # instruction id -> (instruction, {sample index: text})


def load_candidates(run: Run) -> tuple[Candidates, int]:
    """Distinct responses per instruction (lab.sample.Group.distinct: duplicates are not judged against their twin).

    Returns (candidates of instructions with >= 2 distinct responses, how many instructions had fewer)."""
    found = groups(run)
    usable = {g.instruction_id: (g.prompt, g.distinct()) for g in found if len(g.distinct()) >= 2}
    if not usable:
        raise LabError(f"No instruction in run '{run.name}' has two different responses to compare (K=1, or "
                       "identical/empty answers): sample again with --k 2 or more (5 is typical; in the Sample tab, "
                       "'Responses each') and a temperature above 0.")
    return usable, len(found) - len(usable)


Lookup = Callable[[Call], "dict | None"]  # a call -> its finished record (from the cache), or None


def _calls(iid: str, cand: tuple[str, dict[int, str]], a: int, b: int) -> list[Call]:
    a, b = min(a, b), max(a, b)
    return [Call(iid, cand[0], a, b, o, cand[1][a], cand[1][b]) for o in ("ab", "ba")]


def _match_verdict(calls: list[Call], lookup: Lookup, band: float | None) -> dict | None:
    recs = [lookup(c) for c in calls]
    return None if any(r is None for r in recs) else pair_verdicts(recs, band)[0]


def _coin(seed: int, iid: str, a: int, b: int) -> int:
    """A seeded coin for undecided matches: reproducible, and blind to position and length."""
    h = int(hashlib.sha256(f"{seed}:{iid}:{a}:{b}".encode()).hexdigest()[:8], 16)
    return a if h % 2 == 0 else b


def knockout(iid: str, cand: tuple[str, dict[int, str]], lookup: Lookup, seed: int = 0,
             band: float | None = TIE_BAND) -> tuple[list[list[Call]], list[list[Call]], int | None]:
    """Replay the knockout tournament of one instruction as far as the cache allows.

    Round 1 pairs responses (0,1), (2,3), ...; an odd one out waits (a bye) for the next round; winners advance.
    A match's winner is its pair verdict under the tie band `band` (lab.records.verdicts.pair_verdicts: calibrated too).
    Returns (matches played, matches of the current round still to judge, champion or None until finished);
    a match is the two Calls of one pair."""
    entrants, played = list(cand[1]), []
    while len(entrants) > 1:
        matches = [_calls(iid, cand, entrants[i], entrants[i + 1]) for i in range(0, len(entrants) - 1, 2)]
        verdicts = [_match_verdict(m, lookup, band) for m in matches]
        played += [m for m, v in zip(matches, verdicts) if v is not None]
        if any(v is None for v in verdicts):
            return played, [m for m, v in zip(matches, verdicts) if v is None], None
        winners = [_winner(v, seed) for v in verdicts]
        entrants = winners + ([entrants[-1]] if len(entrants) % 2 else [])
    return played, [], entrants[0]


def _winner(v: dict, seed: int) -> int:
    if v["verdict"] in ("a", "b"):
        return v[v["verdict"]]
    return _coin(seed, v["instruction_id"], v["a"], v["b"])


def plan_step(plan: str, cands: Candidates, lookup: Lookup, seed: int = 0, band: float | None = TIE_BAND
              ) -> tuple[list[Call], int, int]:
    """Calls to make now (all whose inputs are known), calls the plan makes in all, calls already in the cache.

    'full' is one step; 'knockout' takes one step per round (the next round's pairs depend on the winners)."""
    todo, total, done = [], 0, 0
    for iid, cand in cands.items():
        k = len(cand[1])
        if plan == "full":
            matches = [_calls(iid, cand, a, b) for a, b in itertools.combinations(cand[1], 2)]
            reached, total = matches, total + k * (k - 1)
        else:
            played, pending, _ = knockout(iid, cand, lookup, seed, band)
            reached, total = played + pending, total + 2 * (k - 1)
        calls = [c for m in reached for c in m]
        new = [c for c in calls if lookup(c) is None]
        todo += new
        done += len(calls) - len(new)
    return todo, total, done


# ---- running ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one backend call produced, before it becomes a record."""

    position_verdict: str | None  # "A" | "B" | "tie" | None (unreadable)
    reasoning: str
    raw: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int = 1
    latency_s: float = 0.0
    probs: dict | None = None  # local backend: {"A", "B", "tie"}
    scores: dict | None = None  # API judge under --calibrate scores: {"A", "B"} (SCORE_RANGE points)


class _Session:
    """One judge run: settings resolved once, the cache, and the writer of records."""

    def __init__(self, run: Run, cfg: JudgeConfig, template: str, progress: Progress):
        self.run, self.cfg, self.progress = run, cfg, progress
        self.template = check_template(template)
        if cfg.calibrate == "scores":
            self.template = with_scores(self.template)
        self.model = cfg.model or DEFAULT_MODELS[cfg.backend]
        self.phash = prompt_hash(self.template)
        self.cache: dict[str, dict] = {}
        for r in run.read("judgments"):
            if r.get("cache_key") and not (cfg.retry_invalid and r["verdict"] == "invalid"):
                self.cache[r["cache_key"]] = r
        self.made = self.invalid_now = 0
        self.started: Callable[[], None] = lambda: None  # judge_run: records the settings before the first record

    def key(self, call: Call) -> str:
        return cache_key(self.cfg.backend, self.model, self.phash, call)

    def lookup(self, call: Call) -> dict | None:
        return self.cache.get(self.key(call))

    def prompt(self, call: Call) -> str:
        return render_prompt(self.template, call.instruction, *call.shown)

    def emit(self, call: Call, out: Outcome) -> None:
        """Append one finished call to judgments.jsonl at once (the cache and the resume point)."""
        rec = self.record(call, out)
        self.started()
        self.run.append("judgments", [rec])
        self.cache[rec["cache_key"]] = rec
        self.made += 1
        self.invalid_now += rec["verdict"] == "invalid"
        if self.made == FAIL_FAST_CALLS and self.invalid_now == self.made:
            raise LabError(f"The first {self.made} judge replies could not be read as a verdict (last one: "
                           f"{out.raw[:200]!r}). Check --model / --base-url, and that the prompt asks for JSON with "
                           "a verdict; then rerun with --retry-invalid (--no-json-mode if the server rejects response_format). The "
                           "replies are saved in judgments.jsonl.")

    def record(self, call: Call, out: Outcome) -> dict:
        pv = out.position_verdict
        canon = {None: "invalid", "tie": "tie", "A": call.order[0], "B": call.order[1]}[pv]
        probs = None if out.probs is None else {call.order[0]: out.probs["A"], call.order[1]: out.probs["B"],
                                                "tie": out.probs["tie"]}
        scores = None if out.scores is None else {call.order[0]: out.scores["A"], call.order[1]: out.scores["B"]}
        return {"instruction_id": call.instruction_id, "a": call.a, "b": call.b, "order": call.order,
                "verdict": canon, "position_verdict": pv, "reasoning": out.reasoning, "raw": out.raw,
                "backend": self.cfg.backend, "model": self.model, "prompt_hash": self.phash,
                "cache_key": self.key(call),
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
                "cost_usd": price_usd(self.model, out.prompt_tokens, out.completion_tokens),
                "confidence": None if out.probs is None else round(out.probs[pv], 4) if pv else None,
                "label_probs": None if probs is None else {k: round(v, 4) for k, v in probs.items()},
                "scores": scores,
                "attempts": out.attempts, "latency_s": round(out.latency_s, 3), "time": time.time()}


FAIL_FAST_CALLS = 5  # if this many first replies are all unreadable, stop instead of spending the whole plan


def _api_outcome(backend: ApiBackend, prompt: str, want_scores: bool = False) -> Outcome:
    """One judged call over the API: unreadable output (or, with want_scores, a reply without both scores) is asked
    for once more, then kept as it is (invalid when it holds no verdict)."""
    t0, tokens, attempts = time.monotonic(), [0, 0], 0
    for _ in range(2):
        reply = backend.complete(prompt)
        tokens = [tokens[0] + reply.prompt_tokens, tokens[1] + reply.completion_tokens]
        attempts += reply.attempts
        verdict, reasoning = parse_output(reply.text) if reply.parsed_http else (None, "")
        scores = parse_scores(reply.text) if want_scores and reply.parsed_http else None
        if (verdict is not None and (scores or not want_scores)) or reply.rejected:  # a refusal would come again
            break
    return Outcome(verdict, reasoning, reply.text, tokens[0], tokens[1], attempts, time.monotonic() - t0,
                   scores=scores)


def _run_api(s: _Session, backend: ApiBackend, calls: list[Call], tick: Callable[[], None]) -> None:
    """Judge calls concurrently (cfg.concurrency threads, all sharing the rate limiter); records are written by
    this thread as each call finishes. On a stop request or a fatal error, calls not started are dropped and
    calls in flight are still recorded."""
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=s.cfg.concurrency) as pool:
        want = s.cfg.calibrate == "scores"
        futures = {pool.submit(contextvars.copy_context().run, _api_outcome, backend, s.prompt(c), want): c
                   for c in calls}  # each worker in this context: its requests count in this stage's efficiency
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    s.emit(futures[f], f.result())
                    tick()
                except Cancelled:
                    pass
                except Exception as e:  # LabError (fatal provider answer) or a bug: stop the rest, then raise
                    error = error or e
                    backend.limiter.abort.set()
            if stop_requested():
                backend.limiter.abort.set()
    if error:
        raise error
    s.progress.check_stop()


def _run_local(s: _Session, backend: LocalBackend, calls: list[Call], tick: Callable[[], None],
               within: Callable[[float], None] | None = None) -> None:
    """Judge calls in batches of similar length; each batch is recorded before the next starts.
    within(calls' worth of work in flight): per decode step, so the count moves inside a batch."""
    calls = sorted(calls, key=lambda c: len(s.prompt(c)))
    for i in range(0, len(calls), backend.batch_size):
        s.progress.check_stop()
        batch = calls[i:i + backend.batch_size]
        t0 = time.monotonic()
        outs = backend.judge([s.prompt(c) for c in batch], within)
        dt = (time.monotonic() - t0) / len(batch)
        for call, v in zip(batch, outs):
            pv = max(v.probs, key=v.probs.get)
            s.emit(call, Outcome(pv, v.reasoning, v.raw, v.prompt_tokens, v.completion_tokens, 1, dt, v.probs))
            tick()


def make_backend(cfg: JudgeConfig, api_key: str | None = None) -> ApiBackend | LocalBackend:
    """The backend cfg asks for. api_key: passed in memory by the app; else read from the environment."""
    model = cfg.model or DEFAULT_MODELS[cfg.backend]
    if cfg.backend == "local":
        return LocalBackend(model, cfg.device, cfg.dtype, cfg.reasoning_tokens, cfg.batch_size,
                            cfg.min_reasoning_tokens)
    return ApiBackend(cfg.backend, model, RateLimiter(cfg.rpm), cfg.base_url, api_key, cfg.api_key_env,
                      cfg.timeout_s, cfg.max_retries, cfg.backoff_s, cfg.temperature, cfg.max_tokens, cfg.json_mode,
                      cfg.max_retry_after_s)


def estimate(run: Run, cfg: JudgeConfig, template: str | None = None) -> dict:
    """The cost of a plan before it runs (the CLI prints it, the app shows it):
    {"plan", "backend", "model", "instructions", "skipped_instructions", "calls_total", "calls_cached",
     "calls_to_make", "minutes_at_rpm" (None: no limit / local), "est_prompt_tokens", "est_completion_tokens",
     "est_cost_usd" (None: price unknown), "calls_per_instruction" (for K responses: {K: calls})}.
    Knockout totals are exact (K-1 matches, each twice); how many of its later rounds are cached shows as they come."""
    cfg.validate()
    s = _Session(run, cfg, template if template is not None else load_template(cfg.prompt_file), Progress(quiet=True))
    cands, skipped = load_candidates(run)
    todo, total, done = plan_step(cfg.plan, cands, s.lookup, cfg.seed, cfg.band())
    to_make = total - done
    chars = sum(len(s.prompt(c)) for c in todo) / max(len(todo), 1)
    p_tok, c_tok = int(to_make * chars / 4), to_make * min(cfg.max_tokens, 200)  # ~4 characters a token
    per_k = {k: (k * (k - 1) if cfg.plan == "full" else 2 * (k - 1)) for k in sorted({len(c[1]) for c in cands.values()})}
    price = price_usd(s.model, p_tok, c_tok) if cfg.backend != "local" else 0.0
    return {"plan": cfg.plan, "plan_description": PLANS[cfg.plan], "backend": cfg.backend, "model": s.model,
            "instructions": len(cands), "skipped_instructions": skipped, "calls_total": total, "calls_cached": done,
            "calls_to_make": to_make, "calls_per_instruction": per_k,
            "minutes_at_rpm": round(to_make / cfg.rpm, 1) if cfg.backend != "local" and cfg.rpm > 0 else None,
            "est_prompt_tokens": p_tok, "est_completion_tokens": c_tok, "est_cost_usd": price}


def judge_run(run: Run, cfg: JudgeConfig, progress: Progress | None = None, api_key: str | None = None,
              template: str | None = None) -> dict:
    """The judge stage: judge the run's samples under cfg.plan, appending to judgments.jsonl; resumes from the
    cache. template: the prompt text (the app passes its editor's text); default cfg.prompt_file or the built-in.
    Returns report(run) for this judge and prompt, plus {"calls_made", "plan", ...}.
    Holds the run's "judge" lock, and reads the cache under it: a second judge on the run is refused, not run twice."""
    cfg.validate()
    with run.lock("judge"), efficiency.measure(run, "judge"):
        return _judge_locked(run, cfg, progress, api_key, template)


def _judge_locked(run: Run, cfg: JudgeConfig, progress: Progress | None, api_key: str | None,
                  template: str | None) -> dict:
    progress = progress or Progress("judging")
    s = _Session(run, cfg, template if template is not None else load_template(cfg.prompt_file), progress)
    cands, skipped = load_candidates(run)
    backend = None  # made on the first call to make: a fully cached rerun needs no key and loads no model
    while True:
        todo, total, done = plan_step(cfg.plan, cands, s.lookup, cfg.seed, cfg.band())
        if not todo:
            break
        if backend is None:
            if cfg.backend == "local":
                progress.loading(f"judge model {cfg.model or DEFAULT_MODELS['local']}")
            backend = make_backend(cfg, api_key)
            s.started = once(lambda: _record_settings(run, cfg, s))
        at = [done]  # calls recorded so far: the count the work in flight adds to

        def tick() -> None:
            at[0] += 1
            progress.update(at[0], total, "judging", calls_made=s.made)
        progress.update(done, total, "judging")
        if isinstance(backend, LocalBackend):
            _run_local(s, backend, todo, tick, lambda work: progress.update(at[0], total, "judging", partial=work))
        else:
            _run_api(s, backend, todo, tick)
    progress.close()
    current = [r for c in _all_reached(cfg.plan, cands, s.lookup, cfg.seed, cfg.band()) if (r := s.lookup(c))]
    if not s.made:
        _update_calibration(run, cfg)
    return {**report_records(current, run.read("samples"), cfg.band()), "calls_made": s.made, "plan": cfg.plan,
            "backend": cfg.backend, "model": s.model, "prompt_hash": s.phash, "skipped_instructions": skipped}


def _record_settings(run: Run, cfg: JudgeConfig, s: _Session) -> None:
    """judge-prompt.txt and run.json's judge entry, written with the first new record: a run that fails before any
    call succeeds (a bad key, a wrong URL) keeps the template and settings its judgments were made with."""
    atomic_write_text(run.file("judge_prompt"), s.template)
    run.record_stage("judge", {**cfg.to_dict(), "model": s.model, "prompt_hash": s.phash})


def _update_calibration(run: Run, cfg: JudgeConfig) -> None:
    """A rerun that made no call but asks for another calibration: run.json's judge entry says the new one, so every
    reader of the verdicts (lab.records.verdicts.run_verdicts) decides the pairs as this run did."""
    old = run.stage_settings("judge")
    if old and (old.get("calibrate"), old.get("tie_band")) != (cfg.calibrate, cfg.tie_band):
        run.record_stage("judge", {**old, "calibrate": cfg.calibrate, "tie_band": cfg.tie_band})


def _all_reached(plan: str, cands: Candidates, lookup: Lookup, seed: int, band: float | None) -> list[Call]:
    """Every call the plan made (once it is complete), for the summary of this judge and prompt."""
    out = []
    for iid, cand in cands.items():
        if plan == "full":
            out += [c for a, b in itertools.combinations(cand[1], 2) for c in _calls(iid, cand, a, b)]
        else:
            played, pending, _ = knockout(iid, cand, lookup, seed, band)
            out += [c for m in played + pending for c in m]
    return out


def run(run: Run, cfg: JudgeConfig, progress: Progress | None = None) -> dict:
    """The judge stage as the CLI and the app's jobs run it: the plan's cost first (stderr), before any call, then
    the verdicts; --estimate-only: the plan is the summary."""
    plan = estimate(run, cfg)
    print("plan: " + json.dumps(plan, ensure_ascii=False), file=sys.stderr, flush=True)
    return {"estimate_only": True, "plan": plan} if cfg.estimate_only else judge_run(run, cfg, progress)
