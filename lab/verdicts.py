"""The judge's records and what they add up to: judgments.jsonl's format, one verdict per judged pair, and the
figures every view reports (position consistency, first-position and longer-answer win rates).

Record format of judgments.jsonl (one line per judge call, appended by lab.judge as each call completes):

    {"instruction_id": str,
     "a": int, "b": int,               # sample indices, a < b: the canonical pair
     "order": "ab" | "ba",             # "ab": response a was shown first (as "Response A"); "ba": b was shown first
     "verdict": "a" | "b" | "tie" | "invalid",   # in canonical terms (which sample won), NOT which position won
     "position_verdict": "A" | "B" | "tie" | null,  # what the judge said: the first (A) or second (B) response shown
     "reasoning": str, "raw": str,     # the judge's explanation, and its whole raw output
     "backend": a lab.judge_backends.BACKENDS name, "model": str,
     "prompt_hash": str,               # sha256[:16] of the prompt template (the template itself: judge-prompt.txt)
     "cache_key": str,                 # sha256 of backend, model, prompt hash, instruction and the two texts as shown
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "cost_usd": float | null,         # where the model's price is known (lab.judge_backends.PRICES)
     "confidence": float | null,       # local backend: probability of the verdict label among A / B / tie
     "label_probs": {"a", "b", "tie"} | null,    # local backend, in canonical terms
     "attempts": int,                  # HTTP / parse attempts this call took (1 = first try)
     "latency_s": float, "time": float}

A call whose output cannot be parsed is retried once, then recorded with verdict "invalid" and the raw text: it is
never counted as a preference. The records double as the judge's cache (lab.judge).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from lab.stats import rate
from lab.store import Run

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
        "consistency_rate": rate(sum(p["verdict"] != "inconsistent" for p in both), len(both)),
        "first_position_win_rate": rate(sum(r["position_verdict"] == "A" for r in decisive_calls), len(decisive_calls)),
        "longer_answer_win_rate": rate(sum(_longer_won(p, length) for p in decisive_pairs), len(decisive_pairs)),
        "verdicts": counts,
        "prompt_tokens": sum(r.get("usage", {}).get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum(r.get("usage", {}).get("completion_tokens", 0) for r in records),
        "cost_usd": round(sum(costs), 6) if costs else None,
    }


def _longer_won(pair: dict, length: dict) -> bool:
    iid, a, b = pair["instruction_id"], pair["a"], pair["b"]
    longer = "a" if length.get((iid, a), 0) > length.get((iid, b), 0) else "b"
    return pair["verdict"] == longer


def report_records(records: list[dict], samples: list[dict]) -> dict:
    """judge_stats plus how many instructions reached a preference (at least one decisive pair verdict)."""
    stats = judge_stats(records, samples)
    decided = {p["instruction_id"] for p in pair_verdicts(records) if p["verdict"] in ("a", "b")}
    judged = {r["instruction_id"] for r in records}
    return {**stats, "instructions_judged": len(judged), "instructions_with_preference": len(decided)}


def report(run: Run) -> dict:
    """The figures of a run's judgments (all of them, the latest call per pair and order counting)."""
    return report_records(run.read("judgments"), run.read("samples"))
