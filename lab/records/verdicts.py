"""The judge's records and what they add up to: judgments.jsonl's format, one verdict per judged pair, and the
figures every view reports (position consistency, first-position and longer-answer win rates).

Record format of judgments.jsonl (one line per judge call, appended by lab.judge as each call completes):

    {"instruction_id": str,
     "a": int, "b": int,               # sample indices, a < b: the canonical pair
     "order": "ab" | "ba",             # "ab": response a was shown first (as "Response A"); "ba": b was shown first
     "verdict": "a" | "b" | "tie" | "invalid",   # in canonical terms (which sample won), NOT which position won
     "position_verdict": "A" | "B" | "tie" | null,  # what the judge said: the first (A) or second (B) response shown
     "reasoning": str,                 # the judge's explanation, as it wrote it
     "raw": str,                       # the judge's whole output, verbatim. Local backend: the text the model
                                       #   generated after the reply opening `{"reasoning": "` the lab wrote for it
                                       #   (its verdict is read from label probabilities, so it is not in raw)
     "backend": a lab.judge_backends.BACKENDS name, "model": str,
     "prompt_hash": str,               # sha256[:16] of the prompt template (the template itself: judge-prompt.txt)
     "cache_key": str,                 # sha256 of backend, model, prompt hash, instruction and the two texts as shown
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "cost_usd": float | null,         # where the model's price is known (lab.judge_backends.PRICES)
     "confidence": float | null,       # local backend: probability of the verdict label among A / B / tie
     "label_probs": {"a", "b", "tie"} | null,    # local backend, in canonical terms
     "scores": {"a": float, "b": float} | null,  # API judge with --calibrate scores: its grade of each response,
                                                 #   SCORE_RANGE points, in canonical terms
     "attempts": int,                  # HTTP / parse attempts this call took (1 = first try)
     "latency_s": float, "time": float}

A call whose output cannot be parsed is retried once, then recorded with verdict "invalid" and the raw text: it is
never counted as a preference. The records double as the judge's cache (lab.judge).

One verdict per pair (`pair_verdicts`), by the first rule that applies (RULES):
  - agree:      both orders valid and equal -> that verdict;
  - calibrated: both orders valid but different, and both graded (label probabilities, or scores) -> balanced
                position calibration (Wang et al. 2023, "Large Language Models are not Fair Evaluators"): each
                response's grade is averaged over the two orders (P(a wins) = mean of P("A") with a shown first and
                P("B") with a shown second; scores are mapped to 0-1 first), and the pair goes to the higher mean
                unless the two means are within the tie band (JudgeConfig.tie_band), which makes it a tie;
  - disagree:   both valid, different, not graded (or calibration off) -> "inconsistent";
  - single:     one order valid (the other missing or invalid) -> that verdict, "single": True;
  - invalid:    no valid order -> "invalid".
The raw figures stay beside the verdicts, so the bias stays visible: position consistency counts the two orders'
own verdicts, first-position wins count single calls.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from lab.stats import rate
from lab.store import Run

CANONICAL = ("a", "b", "tie")
TIE_BAND = 0.02  # JudgeConfig.tie_band's default: calibrated means closer than this make a tie (docs/judge.md)
SCORE_RANGE = (1.0, 10.0)  # the points an API judge gives each response under --calibrate scores
RULES = {  # how a pair's verdict was made, in words for tables and cards
    "agree": "both orders agree",
    "calibrated": "calibrated over both orders",
    "disagree": "the orders disagree (no graded signal)",
    "single": "single order",
    "invalid": "no valid order",
}


def grades(record: dict) -> dict[str, float] | None:
    """A call's graded signal in canonical terms, {"a": x, "b": y} in [0, 1]: the local judge's label probabilities,
    or an API judge's scores mapped from SCORE_RANGE; None when the call carries none."""
    lo, hi = SCORE_RANGE
    s = record.get("scores")
    if isinstance(s, dict) and {"a", "b"} <= s.keys():
        return {k: (float(s[k]) - lo) / (hi - lo) for k in ("a", "b")}
    p = record.get("label_probs")
    if isinstance(p, dict) and {"a", "b"} <= p.keys():
        return {k: float(p[k]) for k in ("a", "b")}
    return None


def pair_verdicts(records: Iterable[dict], tie_band: float | None = TIE_BAND) -> list[dict]:
    """One verdict per judged pair, from the per-call records of judgments.jsonl (the rules in the module docstring).

    tie_band: None turns calibration off (orders that disagree stay "inconsistent"). The last record per (pair,
    order) wins (a rerun with another prompt or judge supersedes the old call). Returns, in first-seen order:
        {"instruction_id", "a", "b",
         "verdict": "a" | "b" | "tie" | "inconsistent" | "invalid",
         "rule": a RULES key,
         "orders": [{"order": "ab"|"ba", "verdict", "reasoning", "confidence", "grades"}, ...],  # the calls
         "calibrated": {"a", "b"} | None,   # the grades averaged over both orders, where both are graded
         "single": True}                    # only if one order counted
    """
    latest: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        latest[(r["instruction_id"], int(r["a"]), int(r["b"]))][r["order"]] = r
    return [_fold(key, by_order, tie_band) for key, by_order in latest.items()]


def _fold(key: tuple, by_order: dict[str, dict], tie_band: float | None) -> dict:
    orders = [{"order": o, "verdict": r["verdict"], "reasoning": r.get("reasoning", ""),
               "confidence": r.get("confidence"), "grades": grades(r)} for o, r in sorted(by_order.items())]
    valid = [o for o in orders if o["verdict"] in CANONICAL]
    out = {"instruction_id": key[0], "a": key[1], "b": key[2], "orders": orders, "calibrated": _mean_grades(valid)}
    if not valid:
        return {**out, "verdict": "invalid", "rule": "invalid"}
    if len(valid) == 1:
        return {**out, "verdict": valid[0]["verdict"], "rule": "single", "single": True}
    if valid[0]["verdict"] == valid[1]["verdict"]:
        return {**out, "verdict": valid[0]["verdict"], "rule": "agree"}
    if out["calibrated"] is None or tie_band is None:
        return {**out, "verdict": "inconsistent", "rule": "disagree"}
    return {**out, "verdict": calibrated_verdict(out["calibrated"], tie_band), "rule": "calibrated"}


def _mean_grades(valid: list[dict]) -> dict[str, float] | None:
    """Each response's grade averaged over the two orders; None unless both orders are valid and graded."""
    if len(valid) != 2 or any(o["grades"] is None for o in valid):
        return None
    return {k: round(sum(o["grades"][k] for o in valid) / 2, 6) for k in ("a", "b")}


def calibrated_verdict(mean: dict[str, float], tie_band: float) -> str:
    """"a" or "b" for the higher averaged grade; "tie" when the two are within tie_band of each other."""
    gap = mean["a"] - mean["b"]
    return "tie" if abs(gap) <= tie_band else "a" if gap > 0 else "b"


def tie_band_of(settings: dict | None) -> float | None:
    """The tie band a judge run's settings (run.json's judge entry) ask for; None when calibration is off."""
    s = settings or {}
    return None if s.get("calibrate") == "off" else float(s.get("tie_band", TIE_BAND))


def run_verdicts(run: Run) -> list[dict]:
    """pair_verdicts of a run's judgments under the calibration its judge settings recorded (every reader of a
    run's verdicts goes through this: pairs, spot-check, compare, the app)."""
    return pair_verdicts(run.read("judgments"), tie_band_of(run.stage_settings("judge")))


def judge_stats(records: list[dict], samples: list[dict], tie_band: float | None = TIE_BAND) -> dict:
    """Position bias and length bias of a set of judge calls (the figures the CLI and the app report).

    records: judgments.jsonl records; samples: samples.jsonl records (for response lengths). Calls, tokens and cost
    count every call made; the rates count the latest call per pair and order, as pair_verdicts does.
    Returns {"calls", "invalid_calls", "pairs", "pairs_both_orders",
             "consistency_rate": share of pairs judged validly in both orders whose two raw verdicts agree
                                 (before any calibration),
             "first_position_win_rate": share of decisive calls (A or B) won by the response shown first
                                        (0.5 = no position bias),
             "longer_answer_win_rate": share of decisive pair verdicts won by the longer response (characters),
             "verdicts": {"a", "b", "tie", "inconsistent", "invalid": count of pairs},
             "rules": {RULES key: count of pairs}, "calibrated_pairs": pairs whose verdict calibration made,
             "prompt_tokens", "completion_tokens", "cost_usd"}; a rate is None where nothing could be counted.
    """
    records = list(records)
    latest = {(r["instruction_id"], r["a"], r["b"], r["order"]): r for r in records}.values()  # as pair_verdicts
    length = {(s["instruction_id"], s["sample_index"]): len(s["text"]) for s in samples}
    pairs = pair_verdicts(records, tie_band)
    both = [p for p in pairs if sum(o["verdict"] in CANONICAL for o in p["orders"]) == 2]
    decisive_calls = [r for r in latest if r.get("position_verdict") in ("A", "B")]
    decisive_pairs = [p for p in pairs if p["verdict"] in ("a", "b")
                      and length.get((p["instruction_id"], p["a"])) != length.get((p["instruction_id"], p["b"]))]
    costs = [r["cost_usd"] for r in records if r.get("cost_usd") is not None]
    counts = {v: sum(p["verdict"] == v for p in pairs) for v in (*CANONICAL, "inconsistent", "invalid")}
    rules = Counter(p["rule"] for p in pairs)
    return {
        "calls": len(records), "invalid_calls": sum(r["verdict"] == "invalid" for r in records),
        "pairs": len(pairs), "pairs_both_orders": len(both),
        "consistency_rate": rate(sum(_raw_agree(p) for p in both), len(both)),
        "first_position_win_rate": rate(sum(r["position_verdict"] == "A" for r in decisive_calls), len(decisive_calls)),
        "longer_answer_win_rate": rate(sum(_longer_won(p, length) for p in decisive_pairs), len(decisive_pairs)),
        "verdicts": counts, "rules": {k: rules[k] for k in RULES}, "calibrated_pairs": rules["calibrated"],
        "prompt_tokens": sum(r.get("usage", {}).get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum(r.get("usage", {}).get("completion_tokens", 0) for r in records),
        "cost_usd": round(sum(costs), 6) if costs else None,
    }


def _raw_agree(pair: dict) -> bool:
    """The two orders' own verdicts are the same (what position consistency counts, calibration aside)."""
    return len({o["verdict"] for o in pair["orders"] if o["verdict"] in CANONICAL}) == 1


def _longer_won(pair: dict, length: dict) -> bool:
    iid, a, b = pair["instruction_id"], pair["a"], pair["b"]
    longer = "a" if length.get((iid, a), 0) > length.get((iid, b), 0) else "b"
    return pair["verdict"] == longer


def report_records(records: list[dict], samples: list[dict], tie_band: float | None = TIE_BAND) -> dict:
    """judge_stats plus how many instructions reached a preference (at least one decisive pair verdict)."""
    stats = judge_stats(records, samples, tie_band)
    decided = {p["instruction_id"] for p in pair_verdicts(records, tie_band) if p["verdict"] in ("a", "b")}
    judged = {r["instruction_id"] for r in records}
    return {**stats, "instructions_judged": len(judged), "instructions_with_preference": len(decided)}


def report(run: Run) -> dict:
    """The figures of a run's judgments (all of them, the latest call per pair and order counting), under the
    calibration its judge settings recorded."""
    return report_records(run.read("judgments"), run.read("samples"), tie_band_of(run.stage_settings("judge")))
