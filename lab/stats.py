"""The statistics every stage reports, in one place, each with explicit arguments (no settings objects).

- rate(hits, total): a share, or None when nothing was counted.
- cohen_kappa / agreement: two raters' labels (judge vs PairRM, judge vs a person).
- bootstrap_ci / win_rate: a win rate over instructions (win 1, tie 0.5, loss 0) with a percentile bootstrap
  interval over instructions.
- length_balance: how the chosen and rejected answers of preference pairs differ in length.
- spearman: rank correlation of two score lists (an int8 ranker against fp32, bench/rank.py).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

WIN, TIE, LOSS = 1.0, 0.5, 0.0


def rate(hits: int, total: int, digits: int = 4) -> float | None:
    return round(hits / total, digits) if total else None


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def ranks_of(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank: [10, 30, 20, 20] -> [1, 4, 2.5, 2.5]."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the two lists' ranks (ties: mean ranks). None when undefined
    (fewer than 2 values, or one list constant)."""
    if len(x) != len(y) or len(x) < 2:
        return None
    rx, ry = ranks_of(list(x)), ranks_of(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / (vx * vy) ** 0.5


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e): agreement beyond what the two raters' label rates give by chance.
    None when undefined (both raters always used the same single label)."""
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if p_e == 1 else round((p_o - p_e) / (1 - p_e), 4)


def agreement(labels: list[tuple[str, str]]) -> dict:
    """[(rater 1, rater 2)] -> {"n", "agree", "rate", "kappa"}."""
    x, y = [a for a, _ in labels], [b for _, b in labels]
    agree = sum(a == b for a, b in labels)
    return {"n": len(labels), "agree": agree, "rate": rate(agree, len(labels)), "kappa": cohen_kappa(x, y)}


def bootstrap_ci(values: list[float], resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling items with replacement)."""
    import numpy as np

    if not values:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def outcome(a: float, b: float) -> float:
    """The outcome for the side scoring `a` against `b`: WIN, TIE or LOSS."""
    return WIN if a > b else LOSS if a < b else TIE


def win_rate(outcomes: list[float], resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Outcomes per instruction (WIN 1, TIE 0.5, LOSS 0) -> {"win_rate", "ci_low", "ci_high", "n", "wins",
    "ties", "losses"}; the interval is a percentile bootstrap over instructions."""
    lo, hi = bootstrap_ci(outcomes, resamples, confidence, seed)
    return {"win_rate": sum(outcomes) / len(outcomes) if outcomes else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": len(outcomes), "wins": outcomes.count(WIN), "ties": outcomes.count(TIE),
            "losses": outcomes.count(LOSS)}


def length_balance(chosen: list[int], rejected: list[int]) -> dict:
    """Lengths (characters) of the chosen and rejected answers of pairs, in the same order ->
    {"n", "chosen_chars_mean", "rejected_chars_mean", "chosen_longer_fraction" (over all pairs),
     "longer_chosen_rate" (over the pairs whose two lengths differ; None if none differ)}."""
    differ = [(c, r) for c, r in zip(chosen, rejected) if c != r]
    return {"n": len(chosen), "chosen_chars_mean": mean(chosen), "rejected_chars_mean": mean(rejected),
            "chosen_longer_fraction": rate(sum(c > r for c, r in zip(chosen, rejected)), len(chosen), 6),
            "longer_chosen_rate": rate(sum(c > r for c, r in differ), len(differ))}
