"""Human spot-check of judged pairs: agree with the judge, overrule it, or skip.

Each decision is appended to spotcheck.jsonl the moment it is made (a reload loses nothing); changing one's mind
appends again, and the last line per pair wins:
    {"instruction_id": str, "a": int, "b": int,     # the canonical pair (sample indices, a < b)
     "human": "a" | "b" | "tie" | "skip",           # in canonical terms, like the judge's verdicts
     "judge": "a" | "b" | "tie" | "inconsistent" | "invalid",   # the judge's pair verdict the human saw
     "rule": str,                                   # how the judge's verdict was made (lab.verdicts.RULES key)
     "time": str}
lab.pairs reads these verdicts into the judge's preferences; lab.pairs.record_spotcheck saves one and rebuilds
pairs-judge.jsonl at once (with the settings it was last built with), so a human verdict replaces the judge's:
"a" / "b" make or flip that pair, "tie" removes it, "skip" changes nothing.
"""
from __future__ import annotations

import time

from lab.errors import LabError
from lab.rank import RANKERS, latest_rankings, preference
from lab.sample import groups
from lab.stats import agreement as rate_and_kappa
from lab.store import Run
from lab.verdicts import run_verdicts

HUMAN = ("a", "b", "tie", "skip")


def latest(run: Run) -> dict[tuple[str, int, int], dict]:
    """(instruction_id, a, b) -> the last spot-check line for that pair."""
    return {(r["instruction_id"], int(r["a"]), int(r["b"])): r for r in run.read("spotcheck")}


def _judged(run: Run) -> dict[tuple[str, int, int], dict]:
    return {(v["instruction_id"], v["a"], v["b"]): v for v in run_verdicts(run)}


def items(run: Run) -> list[dict]:
    """Every judged pair, ready to show; pairs not yet checked come first (then in judging order):
        {"instruction_id", "a", "b", "prompt", "text_a", "text_b",
         "judge": pair verdict, "rule": lab.verdicts.RULES key, "calibrated": {"a", "b"} | None,
         "orders": [{"order", "verdict", "reasoning", "confidence", "grades"}],
         "pairrm": {"prefers": "a" | "b", "logit": float} | None, "human": str | None}"""
    texts = {g.instruction_id: (g.prompt, dict(zip(g.indices, g.texts))) for g in groups(run)}
    judged = _judged(run)
    if not judged:
        raise LabError(f"Run '{run.name}' has no judged pairs to check: run `python -m lab judge --run {run.name}` "
                       "first.")
    rankings, human = latest_rankings(run, "pairrm"), latest(run)
    out = [_item(v, texts, rankings, human) for key, v in judged.items() if key[0] in texts]
    return sorted(out, key=lambda x: x["human"] is not None)  # stable: judging order within each group


def _item(v: dict, texts: dict, rankings: dict, human: dict) -> dict:
    iid, a, b = v["instruction_id"], v["a"], v["b"]
    prompt, by_index = texts[iid]
    rec = rankings.get(iid)
    pairrm = None
    if rec and {a, b} <= set(rec["sample_indices"]):
        logit = preference(rec, a, b)
        pairrm = {"prefers": "a" if logit > 0 else "b", "logit": round(logit, 4)}
    h = human.get((iid, a, b))
    return {"instruction_id": iid, "a": a, "b": b, "prompt": prompt, "text_a": by_index.get(a, ""),
            "text_b": by_index.get(b, ""), "judge": v["verdict"], "rule": v["rule"], "calibrated": v["calibrated"],
            "orders": v["orders"], "pairrm": pairrm,
            "human": h["human"] if h else None}


def record(run: Run, instruction_id: str, a: int, b: int, human: str) -> dict:
    """Save one human decision at once (the saved line is returned). The judge pairs are rebuilt from it by the
    caller: lab.pairs.record_spotcheck does both."""
    if human not in HUMAN:
        raise LabError(f"Unknown spot-check answer {human!r}: use one of {', '.join(HUMAN)}.")
    a, b = int(a), int(b)
    verdict = _judged(run).get((instruction_id, min(a, b), max(a, b)))
    if verdict is None:
        raise LabError(f"Pair ({a}, {b}) of instruction {instruction_id} was never judged, so there is nothing to "
                       "check: pick a pair from the spot-check list.")
    if a > b:  # keep canonical terms: the answer named the first index given
        a, b, human = b, a, {"a": "b", "b": "a"}.get(human, human)
    line = {"instruction_id": instruction_id, "a": a, "b": b, "human": human, "judge": verdict["verdict"],
            "rule": verdict["rule"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run.append("spotcheck", [line])
    return line


def agreement(run: Run) -> dict:
    """How often the judge (and each ranker, where it ranked the pair) agreed with the human, on the checked pairs.
        {"checked": n, "skipped": n,
         "judge": {"n", "agree", "rate", "kappa"},     # judge's pair verdict vs human (a/b/tie; the judge's
                                                       #   inconsistent/invalid count as disagreement)
         "pairrm": {"n", "agree", "rate", "kappa"},    # PairRM vs human where the human chose a or b
         "reward": {...}}                              # a reward model the same way (every lab.rank.RANKERS kind)"""
    lines = latest(run).values()
    checked = [r for r in lines if r["human"] != "skip"]
    return {"checked": len(checked), "skipped": len(lines) - len(checked),
            "judge": rate_and_kappa([(r["judge"], r["human"]) for r in checked]),
            **{kind: rate_and_kappa(ranker_vs_human(run, kind, checked)) for kind in RANKERS}}


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
