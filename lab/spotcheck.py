"""Human spot-check of judged pairs, and of pairs the IFEval checks decided: agree, overrule, or skip.

Each decision is appended to spotcheck.jsonl the moment it is made (a reload loses nothing); changing one's mind
appends again, and the last line per pair wins:
    {"instruction_id": str, "a": int, "b": int,     # the canonical pair (sample indices, a < b)
     "human": "a" | "b" | "tie" | "skip",           # in canonical terms, like the judge's verdicts
     "judge": "a" | "b" | "tie" | "inconsistent" | "invalid" | null,   # the judge's pair verdict the human saw
                                                    # (null: a pair only the checks decided)
     "rule": str,                                   # how the judge's verdict was made (lab.records.verdicts.RULES key)
     "checks": "a" | "b" | "tie",                   # only where the instruction carries IFEval checks: theirs
     "time": str}
lab.pairs reads these verdicts into the judge's and the checks' preferences; lab.pairs.record_spotcheck saves one
and rebuilds pairs-judge.jsonl and pairs-checks.jsonl at once (with the settings each was last built with), so a
human verdict replaces the grader's: "a" / "b" make or flip that pair, "tie" removes it, "skip" changes nothing.
The pairs shown are every judged pair, then every pair of pairs-checks.jsonl the judge did not see.
"""
from __future__ import annotations

import time

from lab import checks
from lab.errors import LabError
from lab.rank import RANKERS
from lab.records.rankings import latest_rankings, preference
from lab.records.samples import groups
from lab.records.verdicts import run_verdicts
from lab.stats import agreement as rate_and_kappa
from lab.store import Run

HUMAN = ("a", "b", "tie", "skip")


def latest(run: Run) -> dict[tuple[str, int, int], dict]:
    """(instruction_id, a, b) -> the last spot-check line for that pair."""
    return {(r["instruction_id"], int(r["a"]), int(r["b"])): r for r in run.read("spotcheck")}


def _judged(run: Run) -> dict[tuple[str, int, int], dict]:
    return {(v["instruction_id"], v["a"], v["b"]): v for v in run_verdicts(run)}


def _checks_decided(run: Run) -> list[tuple[str, int, int]]:
    """The canonical pairs of pairs-checks.jsonl (what the checks made of the samples), in file order."""
    from lab.store import read_jsonl

    metas = [r["meta"] for r in read_jsonl(run.pairs_file("checks"))]
    return [(m["instruction_id"], *sorted((m["chosen_index"], m["rejected_index"]))) for m in metas]


def _checked_by_checks(run: Run) -> list[tuple[str, int, int]]:
    """Pairs a person decided that the checks had decided: a verdict rewrites pairs-checks.jsonl (a tie removes the
    pair, a flip can make best-vs-worst pick another), so they stay listed from the spot-check file."""
    return [key for key, line in latest(run).items() if "checks" in line]


def checks_of(run: Run) -> dict[tuple[str, int], dict]:
    """(instruction_id, sample_index) -> its checks.jsonl line (lab.checks), for the run's verifiable answers."""
    return {(r["instruction_id"], r["sample_index"]): r for r in run.read("checks")}


def items(run: Run) -> list[dict]:
    """Every judged pair, then every checks pair the judge did not see, ready to show; pairs not yet checked come
    first (then in judging order):
        {"instruction_id", "a", "b", "prompt", "text_a", "text_b",
         "judge": pair verdict | None, "rule": lab.records.verdicts.RULES key, "calibrated": {"a", "b"} | None,
         "orders": [{"order", "verdict", "reasoning", "confidence", "grades"}],
         "pairrm": {"prefers": "a" | "b", "logit": float} | None,
         "checks": {"prefers": "a" | "b" | "tie", "a": [results], "b": [results]} | None, "human": str | None}"""
    texts = {g.instruction_id: (g.prompt, dict(zip(g.indices, g.texts))) for g in groups(run)}
    judged = _judged(run)
    keys = list(dict.fromkeys([*judged, *_checks_decided(run), *_checked_by_checks(run)]))
    if not keys:
        raise LabError(f"Run '{run.name}' has no judged pairs to check: run `python -m lab judge --run {run.name}` "
                       "(or build checks pairs on a verifiable set) first.")
    found = {"rankings": latest_rankings(run, "pairrm"), "human": latest(run), "checks": checks_of(run)}
    out = [_item(key, judged.get(key), texts, found) for key in keys if key[0] in texts]
    return sorted(out, key=lambda x: x["human"] is not None)  # stable: judging order within each group


def _pairrm(rec: dict | None, a: int, b: int) -> dict | None:
    if not rec or not {a, b} <= set(rec["sample_indices"]):
        return None
    logit = preference(rec, a, b)
    return {"prefers": "a" if logit > 0 else "b", "logit": round(logit, 4)}


def _checks(found: dict, iid: str, a: int, b: int) -> dict | None:
    ca, cb = found.get((iid, a)), found.get((iid, b))
    if ca is None or cb is None:
        return None
    prefers = "a" if ca["score"] > cb["score"] else "b" if cb["score"] > ca["score"] else "tie"
    return {"prefers": prefers, "a": ca["results"], "b": cb["results"]}


def _item(key: tuple[str, int, int], v: dict | None, texts: dict, found: dict) -> dict:
    iid, a, b = key
    prompt, by_index = texts[iid]
    h = found["human"].get(key)
    return {"instruction_id": iid, "a": a, "b": b, "prompt": prompt, "text_a": by_index.get(a, ""),
            "text_b": by_index.get(b, ""), "judge": v["verdict"] if v else None, "rule": v["rule"] if v else "",
            "calibrated": v["calibrated"] if v else None, "orders": v["orders"] if v else [],
            "pairrm": _pairrm(found["rankings"].get(iid), a, b), "checks": _checks(found["checks"], iid, a, b),
            "human": h["human"] if h else None}


def record(run: Run, instruction_id: str, a: int, b: int, human: str) -> dict:
    """Save one human decision at once (the saved line is returned). The judge pairs are rebuilt from it by the
    caller: lab.pairs.record_spotcheck does both."""
    if human not in HUMAN:
        raise LabError(f"Unknown spot-check answer {human!r}: use one of {', '.join(HUMAN)}.")
    a, b = int(a), int(b)
    key = (instruction_id, min(a, b), max(a, b))
    verdict = _judged(run).get(key)
    by_checks = _checks(checks_of(run), *key)
    if verdict is None and (by_checks is None or key not in {*_checks_decided(run), *_checked_by_checks(run)}):
        raise LabError(f"Pair ({a}, {b}) of instruction {instruction_id} was never judged, so there is nothing to "
                       "check: pick a pair from the spot-check list.")
    if a > b:  # keep canonical terms: the answer named the first index given
        a, b, human = b, a, {"a": "b", "b": "a"}.get(human, human)
    line = {"instruction_id": instruction_id, "a": a, "b": b, "human": human,
            "judge": verdict["verdict"] if verdict else None, "rule": verdict["rule"] if verdict else "",
            **({"checks": by_checks["prefers"]} if by_checks else {}), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run.append("spotcheck", [line])
    return line


def agreement(run: Run) -> dict:
    """How often the judge (and each ranker, where it ranked the pair) agreed with the human, on the checked pairs.
        {"checked": n, "skipped": n,
         "judge": {"n", "agree", "rate", "kappa"},     # judge's pair verdict vs human (a/b/tie; the judge's
                                                       #   inconsistent/invalid count as disagreement)
         "pairrm": {"n", "agree", "rate", "kappa"},    # PairRM vs human where the human chose a or b
         "reward": {...},                              # a reward model the same way (every lab.rank.RANKERS kind)
         "checks": {"n", "agree", "rate", "kappa"}}    # the IFEval checks vs human, on verifiable pairs"""
    lines = latest(run).values()
    checked = [r for r in lines if r["human"] != "skip"]
    return {"checked": len(checked), "skipped": len(lines) - len(checked),
            "judge": rate_and_kappa([(r["judge"], r["human"]) for r in checked if r.get("judge") is not None]),
            **{kind: rate_and_kappa(ranker_vs_human(run, kind, checked)) for kind in RANKERS},
            "checks": rate_and_kappa([(r["checks"], r["human"]) for r in checked if r.get("checks")])}


def ranker_vs_human(run: Run, kind: str, checked: list[dict]) -> list[tuple[str, str]]:
    """(the ranker's "a"/"b", the human's) on the checked pairs the ranker ranked and the human decided."""
    rankings = latest_rankings(run, kind)
    labels = []
    for r in checked:
        rec = rankings.get(r["instruction_id"])
        if r["human"] in ("a", "b") and rec and {r["a"], r["b"]} <= set(rec["sample_indices"]):
            labels.append(("a" if preference(rec, r["a"], r["b"]) > 0 else "b", r["human"]))
    return labels


def label_pairs(run: Run, records: list[dict]) -> list[dict]:
    """Pairs (lab.pairs records) with the person's verdict on each spot-checked pair in meta["human"]: "chosen" (the
    person preferred the chosen answer), "rejected" (they preferred the other one) or "tie"; pairs nobody checked (or
    skipped) are returned as they are. KTO reads these as its labels (lab.methods.unpaired_rows)."""
    verdicts = latest(run)
    out = []
    for r in records:
        meta = r.get("meta") or {}
        ci, ri = meta.get("chosen_index"), meta.get("rejected_index")
        line = verdicts.get((meta.get("instruction_id"), *sorted((ci, ri)))) if isinstance(ci, int) and \
            isinstance(ri, int) else None
        if line is None or line["human"] == "skip":
            out.append(r)
            continue
        preferred = {"a": min(ci, ri), "b": max(ci, ri)}.get(line["human"])
        human = "tie" if preferred is None else "chosen" if preferred == ci else "rejected"
        out.append({**r, "meta": {**meta, "human": human}})
    return out
