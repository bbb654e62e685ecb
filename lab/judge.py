"""The LLM judge: pairwise verdicts with reasoning, each pair judged in both orders, position bias measured.

Record format of judgments.jsonl (one line per judge call, appended as each call completes):

    {"instruction_id": str,
     "a": int, "b": int,               # sample indices, a < b: the canonical pair
     "order": "ab" | "ba",             # "ab": response a was shown first (as "Response A"); "ba": b was shown first
     "verdict": "a" | "b" | "tie" | "invalid",   # in canonical terms (which sample won), NOT which position won
     "position_verdict": "A" | "B" | "tie" | null,  # what the judge said: the first (A) or second (B) response shown
     "reasoning": str, "raw": str,     # the judge's explanation, and its whole raw output
     "backend": "groq" | "openai" | "local", "model": str,
     "prompt_hash": str,               # sha256[:16] of the prompt template (the template itself: judge-prompt.txt)
     "cache_key": str,                 # sha256 of backend, model, prompt hash, instruction and the two texts as shown
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "cost_usd": float | null,         # where the model's price is known (lab.judge_backends.PRICES)
     "confidence": float | null,       # local backend: probability of the verdict label among A / B / tie
     "label_probs": {"a", "b", "tie"} | null,    # local backend, in canonical terms
     "attempts": int,                  # HTTP / parse attempts this call took (1 = first try)
     "latency_s": float, "time": float}

A call whose output cannot be parsed is retried once, then recorded with verdict "invalid" and the raw text: it is
never counted as a preference. The records double as the cache: a call whose cache_key is already in the file is not
made again, so a rerun makes no calls and a killed run resumes where it stopped.

`pair_verdicts(records)` folds the calls into one verdict per pair (see its docstring); `judge_stats` gives the
position-consistency rate, the first-position win rate and the longer-answer win rate that the CLI and the app show.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from lab.config import JudgeConfig
from lab.errors import LabError
from lab.judge_backends import DEFAULT_MODELS, ApiBackend, LocalBackend, price_usd
from lab.progress import Progress, stop_requested
from lab.ratelimit import Cancelled, RateLimiter
from lab.store import Run, atomic_write_text, once, read_user_text

CANONICAL = ("a", "b", "tie")


def pair_verdicts(records: Iterable[dict]) -> list[dict]:
    """One verdict per judged pair, from the per-call records of judgments.jsonl.

    Returns, in first-seen order, one dict per (instruction_id, a, b):
        {"instruction_id", "a", "b",
         "verdict": "a" | "b" | "tie" | "inconsistent" | "invalid",
         "orders": [{"order": "ab"|"ba", "verdict", "reasoning", "confidence"}, ...],   # the calls it rests on
         "single": True}                                                               # only if one order counted
    Rules: the last record per (pair, order) wins (a rerun with another prompt or judge supersedes the old call).
    Both orders valid and equal -> that verdict; valid but different -> "inconsistent" (a tie against a win is a
    disagreement too); one order valid (the other missing or invalid) -> that verdict with "single": True;
    no valid order -> "invalid".
    """
    latest: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        latest[(r["instruction_id"], int(r["a"]), int(r["b"]))][r["order"]] = r
    return [_fold(key, by_order) for key, by_order in latest.items()]


def _fold(key: tuple, by_order: dict[str, dict]) -> dict:
    orders = [{"order": o, "verdict": r["verdict"], "reasoning": r.get("reasoning", ""),
               "confidence": r.get("confidence")} for o, r in sorted(by_order.items())]
    valid = {o["verdict"] for o in orders if o["verdict"] in CANONICAL}
    n_valid = sum(o["verdict"] in CANONICAL for o in orders)
    out = {"instruction_id": key[0], "a": key[1], "b": key[2], "orders": orders}
    if not valid:
        return {**out, "verdict": "invalid"}
    if len(valid) > 1:
        return {**out, "verdict": "inconsistent"}
    return {**out, "verdict": valid.pop(), **({"single": True} if n_valid == 1 else {})}


def judge_stats(records: list[dict], samples: list[dict]) -> dict:
    """Position bias and length bias of a set of judge calls (the figures the CLI and the app report).

    records: judgments.jsonl records; samples: samples.jsonl records (for response lengths). Calls, tokens and cost
    count every call made; the rates count the latest call per pair and order, as pair_verdicts does.
    Returns {"calls", "invalid_calls", "pairs", "pairs_both_orders",
             "consistency_rate": share of pairs judged validly in both orders whose two verdicts agree,
             "first_position_win_rate": share of decisive calls (A or B) won by the response shown first
                                        (0.5 = no position bias),
             "longer_answer_win_rate": share of decisive pair verdicts won by the longer response (characters),
             "verdicts": {"a", "b", "tie", "inconsistent", "invalid": count of pairs},
             "prompt_tokens", "completion_tokens", "cost_usd"}; a rate is None where nothing could be counted.
    """
    records = list(records)
    latest = {(r["instruction_id"], r["a"], r["b"], r["order"]): r for r in records}.values()  # as pair_verdicts
    length = {(s["instruction_id"], s["sample_index"]): len(s["text"]) for s in samples}
    pairs = pair_verdicts(records)
    both = [p for p in pairs if sum(o["verdict"] in CANONICAL for o in p["orders"]) == 2]
    decisive_calls = [r for r in latest if r.get("position_verdict") in ("A", "B")]
    decisive_pairs = [p for p in pairs if p["verdict"] in ("a", "b")
                      and length.get((p["instruction_id"], p["a"])) != length.get((p["instruction_id"], p["b"]))]
    costs = [r["cost_usd"] for r in records if r.get("cost_usd") is not None]
    counts = {v: sum(p["verdict"] == v for p in pairs) for v in (*CANONICAL, "inconsistent", "invalid")}
    return {
        "calls": len(records), "invalid_calls": sum(r["verdict"] == "invalid" for r in records),
        "pairs": len(pairs), "pairs_both_orders": len(both),
        "consistency_rate": _rate(sum(p["verdict"] != "inconsistent" for p in both), len(both)),
        "first_position_win_rate": _rate(sum(r["position_verdict"] == "A" for r in decisive_calls), len(decisive_calls)),
        "longer_answer_win_rate": _rate(sum(_longer_won(p, length) for p in decisive_pairs), len(decisive_pairs)),
        "verdicts": counts,
        "prompt_tokens": sum(r.get("usage", {}).get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum(r.get("usage", {}).get("completion_tokens", 0) for r in records),
        "cost_usd": round(sum(costs), 6) if costs else None,
    }


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _longer_won(pair: dict, length: dict) -> bool:
    iid, a, b = pair["instruction_id"], pair["a"], pair["b"]
    longer = "a" if length.get((iid, a), 0) > length.get((iid, b), 0) else "b"
    return pair["verdict"] == longer


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
PLANS = {
    "knockout": "a knockout tournament, each match judged in both orders: K-1 matches, 2(K-1) calls per instruction "
                "(8 for K=5); an undecided match (tie, inconsistent, invalid) is settled by a seeded coin flip",
    "full": "every pair in both orders: K(K-1) calls per instruction (20 for K=5)",
}


def check_template(template: str) -> str:
    """A usable prompt template has each placeholder {instruction}, {response_a}, {response_b} (other braces, as in
    the JSON example, are left alone). Returns it unchanged; raises LabError naming what is missing."""
    missing = [p for p in ("instruction", "response_a", "response_b") if "{" + p + "}" not in template]
    if missing:
        raise LabError("The judge prompt lacks " + ", ".join("{" + m + "}" for m in missing) +
                       ": put each placeholder where that text goes (see docs/judge.md).")
    return template


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
    """Distinct responses per instruction from samples.jsonl (duplicates are not judged against their twin).

    Returns (candidates of instructions with >= 2 distinct responses, how many instructions had fewer)."""
    samples = run.read("samples")
    if not samples:
        raise LabError(f"Run '{run.name}' has no samples yet: run `python -m lab sample --run {run.name}` "
                       "(or the Sample tab) first.")
    by_id: dict[str, tuple[str, dict[int, str]]] = {}
    for s in samples:
        if s.get("duplicate_of") is None and s["text"].strip():
            by_id.setdefault(s["instruction_id"], (s["prompt"], {}))[1][int(s["sample_index"])] = s["text"]
    usable = {iid: (p, dict(sorted(t.items()))) for iid, (p, t) in by_id.items() if len(t) >= 2}
    if not usable:
        raise LabError(f"No instruction in run '{run.name}' has two different responses to compare (K=1, or "
                       "identical/empty answers): sample again with --k 2 or more (5 is typical) and temperature > 0.")
    skipped = len({s["instruction_id"] for s in samples}) - len(usable)
    return usable, skipped


Lookup = Callable[[Call], "dict | None"]  # a call -> its finished record (from the cache), or None


def _calls(iid: str, cand: tuple[str, dict[int, str]], a: int, b: int) -> list[Call]:
    a, b = min(a, b), max(a, b)
    return [Call(iid, cand[0], a, b, o, cand[1][a], cand[1][b]) for o in ("ab", "ba")]


def _match_verdict(calls: list[Call], lookup: Lookup) -> dict | None:
    recs = [lookup(c) for c in calls]
    return None if any(r is None for r in recs) else pair_verdicts(recs)[0]


def _coin(seed: int, iid: str, a: int, b: int) -> int:
    """A seeded coin for undecided matches: reproducible, and blind to position and length."""
    h = int(hashlib.sha256(f"{seed}:{iid}:{a}:{b}".encode()).hexdigest()[:8], 16)
    return a if h % 2 == 0 else b


def knockout(iid: str, cand: tuple[str, dict[int, str]], lookup: Lookup, seed: int = 0
             ) -> tuple[list[list[Call]], list[list[Call]], int | None]:
    """Replay the knockout tournament of one instruction as far as the cache allows.

    Round 1 pairs responses (0,1), (2,3), ...; an odd one out waits (a bye) for the next round; winners advance.
    Returns (matches played, matches of the current round still to judge, champion or None until finished);
    a match is the two Calls of one pair."""
    entrants, played = list(cand[1]), []
    while len(entrants) > 1:
        matches = [_calls(iid, cand, entrants[i], entrants[i + 1]) for i in range(0, len(entrants) - 1, 2)]
        verdicts = [_match_verdict(m, lookup) for m in matches]
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


def plan_step(plan: str, cands: Candidates, lookup: Lookup, seed: int = 0) -> tuple[list[Call], int, int]:
    """Calls to make now (all whose inputs are known), calls the plan makes in all, calls already in the cache.

    'full' is one step; 'knockout' takes one step per round (the next round's pairs depend on the winners)."""
    todo, total, done = [], 0, 0
    for iid, cand in cands.items():
        k = len(cand[1])
        if plan == "full":
            matches = [_calls(iid, cand, a, b) for a, b in itertools.combinations(cand[1], 2)]
            reached, total = matches, total + k * (k - 1)
        else:
            played, pending, _ = knockout(iid, cand, lookup, seed)
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


class _Session:
    """One judge run: settings resolved once, the cache, and the writer of records."""

    def __init__(self, run: Run, cfg: JudgeConfig, template: str, progress: Progress):
        self.run, self.cfg, self.template, self.progress = run, cfg, check_template(template), progress
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
        return {"instruction_id": call.instruction_id, "a": call.a, "b": call.b, "order": call.order,
                "verdict": canon, "position_verdict": pv, "reasoning": out.reasoning, "raw": out.raw,
                "backend": self.cfg.backend, "model": self.model, "prompt_hash": self.phash,
                "cache_key": self.key(call),
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
                "cost_usd": price_usd(self.model, out.prompt_tokens, out.completion_tokens),
                "confidence": None if out.probs is None else round(out.probs[pv], 4) if pv else None,
                "label_probs": None if probs is None else {k: round(v, 4) for k, v in probs.items()},
                "attempts": out.attempts, "latency_s": round(out.latency_s, 3), "time": time.time()}


FAIL_FAST_CALLS = 5  # if this many first replies are all unreadable, stop instead of spending the whole plan


def _api_outcome(backend: ApiBackend, prompt: str) -> Outcome:
    """One judged call over the API: unreadable output is asked for once more, then kept as invalid."""
    t0, tokens, attempts = time.monotonic(), [0, 0], 0
    for _ in range(2):
        reply = backend.complete(prompt)
        tokens = [tokens[0] + reply.prompt_tokens, tokens[1] + reply.completion_tokens]
        attempts += reply.attempts
        verdict, reasoning = parse_output(reply.text) if reply.parsed_http else (None, "")
        if verdict is not None or reply.rejected:  # a refused request would be refused again
            break
    return Outcome(verdict, reasoning, reply.text, tokens[0], tokens[1], attempts, time.monotonic() - t0)


def _run_api(s: _Session, backend: ApiBackend, calls: list[Call], tick: Callable[[], None]) -> None:
    """Judge calls concurrently (cfg.concurrency threads, all sharing the rate limiter); records are written by
    this thread as each call finishes. On a stop request or a fatal error, calls not started are dropped and
    calls in flight are still recorded."""
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=s.cfg.concurrency) as pool:
        futures = {pool.submit(_api_outcome, backend, s.prompt(c)): c for c in calls}
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


def _run_local(s: _Session, backend: LocalBackend, calls: list[Call], tick: Callable[[], None]) -> None:
    """Judge calls in batches of similar length; each batch is recorded before the next starts."""
    calls = sorted(calls, key=lambda c: len(s.prompt(c)))
    for i in range(0, len(calls), backend.batch_size):
        s.progress.check_stop()
        batch = calls[i:i + backend.batch_size]
        t0 = time.monotonic()
        outs = backend.judge([s.prompt(c) for c in batch])
        dt = (time.monotonic() - t0) / len(batch)
        for call, v in zip(batch, outs):
            pv = max(v.probs, key=v.probs.get)
            s.emit(call, Outcome(pv, v.reasoning, v.raw, v.prompt_tokens, v.completion_tokens, 1, dt, v.probs))
            tick()


def make_backend(cfg: JudgeConfig, api_key: str | None = None) -> ApiBackend | LocalBackend:
    """The backend cfg asks for. api_key: passed in memory by the app; else read from the environment."""
    model = cfg.model or DEFAULT_MODELS[cfg.backend]
    if cfg.backend == "local":
        return LocalBackend(model, cfg.device, cfg.dtype, cfg.reasoning_tokens, cfg.batch_size)
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
    todo, total, done = plan_step(cfg.plan, cands, s.lookup, cfg.seed)
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
    with run.lock("judge"):
        return _judge_locked(run, cfg, progress, api_key, template)


def _judge_locked(run: Run, cfg: JudgeConfig, progress: Progress | None, api_key: str | None,
                  template: str | None) -> dict:
    progress = progress or Progress("judging")
    s = _Session(run, cfg, template if template is not None else load_template(cfg.prompt_file), progress)
    cands, skipped = load_candidates(run)
    backend = None  # made on the first call to make: a fully cached rerun needs no key and loads no model
    while True:
        todo, total, done = plan_step(cfg.plan, cands, s.lookup, cfg.seed)
        if not todo:
            break
        if backend is None:
            backend = make_backend(cfg, api_key)
            s.started = once(lambda: _record_settings(run, cfg, s))
        runner = _run_local if isinstance(backend, LocalBackend) else _run_api
        counter = itertools.count(done + 1)
        progress.update(done, total, "judging")
        runner(s, backend, todo, lambda: progress.update(next(counter), total, "judging", calls_made=s.made))
    progress.close()
    current = [r for c in _all_reached(cfg.plan, cands, s.lookup, cfg.seed) if (r := s.lookup(c))]
    return {**report_records(current, run.read("samples")), "calls_made": s.made, "plan": cfg.plan,
            "backend": cfg.backend, "model": s.model, "prompt_hash": s.phash, "skipped_instructions": skipped}


def _record_settings(run: Run, cfg: JudgeConfig, s: _Session) -> None:
    """judge-prompt.txt and run.json's judge entry, written with the first new record: a run that fails before any
    call succeeds (a bad key, a wrong URL) keeps the template and settings its judgments were made with."""
    atomic_write_text(run.file("judge_prompt"), s.template)
    run.record_stage("judge", {**cfg.to_dict(), "model": s.model, "prompt_hash": s.phash})


def _all_reached(plan: str, cands: Candidates, lookup: Lookup, seed: int) -> list[Call]:
    """Every call the plan made (once it is complete), for the summary of this judge and prompt."""
    out = []
    for iid, cand in cands.items():
        if plan == "full":
            out += [c for a, b in itertools.combinations(cand[1], 2) for c in _calls(iid, cand, a, b)]
        else:
            played, pending, _ = knockout(iid, cand, lookup, seed)
            out += [c for m in played + pending for c in m]
    return out


def report_records(records: list[dict], samples: list[dict]) -> dict:
    """judge_stats plus how many instructions reached a preference (at least one decisive pair verdict)."""
    stats = judge_stats(records, samples)
    decided = {p["instruction_id"] for p in pair_verdicts(records) if p["verdict"] in ("a", "b")}
    judged = {r["instruction_id"] for r in records}
    return {**stats, "instructions_judged": len(judged), "instructions_with_preference": len(decided)}


def report(run: Run) -> dict:
    """The figures of a run's judgments (all of them, the latest call per pair and order counting)."""
    return report_records(run.read("judgments"), run.read("samples"))
