"""The statistics every stage reports, in one place, each with explicit arguments (no settings objects).

- rate(hits, total): a share, or None when nothing was counted.
- cohen_kappa / agreement: two raters' labels (judge vs PairRM, judge vs a person).
- bootstrap_ci / win_rate: a win rate over instructions (win 1, tie 0.5, loss 0) with a percentile bootstrap
  interval over instructions.
- mean_ci / paired_difference: a mean over prompts (an accuracy) and the difference of two models answering the same
  prompts (an accuracy, a reward), each with a percentile bootstrap interval over prompts (pairs resampled together).
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


def mean_ci(values: list[float], resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The mean of per-item values with its percentile bootstrap interval: {"value", "ci_low", "ci_high", "n"}."""
    lo, hi = bootstrap_ci(values, resamples, confidence, seed)
    return {"value": sum(values) / len(values) if values else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": len(values)}


def paired_difference(a: list[float], b: list[float], resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict:
    """Mean of a - b over paired items (the same prompt answered by two models), with the percentile bootstrap
    interval that resamples items, so each pair stays together: {"diff", "ci_low", "ci_high", "n", "better",
    "worse"} (items where a is above / below b)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs pairs: {len(a)} values against {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    m = mean_ci(d, resamples, confidence, seed)
    return {"diff": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"],
            "better": sum(x > 0 for x in d), "worse": sum(x < 0 for x in d)}


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


LC_NOTE = ("LC = the lab's length-controlled win rate: AlpacaEval 2's idea, not AlpacaEval's number. The lab fits "
           "the length term alone on your instructions with a small ridge and gives a bootstrap interval; AlpacaEval "
           "also fits an instruction-difficulty term over its own 805 instructions, shrinks with a cross-validated L1 "
           "penalty and reports a standard error. Do not compare it with a leaderboard's LC figure.")
LC_RIDGE = 0.1  # L2 penalty on the length coefficient only: a perfect length split would send it to infinity


def _lc_fit(y, x, ridge: float, steps: int = 40):
    """Newton's method for P(win) = sigmoid(theta + phi * x), soft targets y in [0, 1], a ridge penalty on phi.
    y, x: [B, n] arrays (B fits at once: the data and its bootstrap resamples) -> theta [B], phi [B]."""
    import numpy as np

    theta, phi = np.zeros(len(y)), np.zeros(len(y))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(theta[:, None] + phi[:, None] * x)))
        r, w = y - p, np.maximum(p * (1 - p), 1e-12)
        g = np.stack([r.sum(1), (r * x).sum(1) - ridge * phi], 1)
        h00, h01, h11 = w.sum(1), (w * x).sum(1), (w * x * x).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        step_t, step_p = (h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det
        theta = np.clip(theta + np.clip(step_t, -5, 5), -30, 30)  # all wins (or losses): theta runs off, capped
        phi = phi + np.clip(step_p, -5, 5)
    return theta, phi


def lc_win_rate(outcomes: list[float], length_gaps: list[float], resamples: int = 2000, confidence: float = 0.95,
                seed: int = 0, ridge: float = LC_RIDGE) -> dict:
    """Length-controlled win rate (the AlpacaEval 2 idea, Dubois et al. 2024, but not its number: see LC_NOTE): fit
        P(win) = sigmoid(theta + phi * tanh(gap / scale))
    to the outcomes per instruction (WIN 1, TIE 0.5 as a soft target, LOSS 0), gap = this model's answer length
    minus the other's (characters), scale = the gaps' standard deviation, by Newton's method; the win rate at equal
    length is sigmoid(theta). theta is not penalised, so with equal lengths this is exactly the raw win rate.
    The interval is a percentile bootstrap over instructions (each resample refitted); figures to 6 decimals.
    -> {"lc_win_rate", "lc_ci_low", "lc_ci_high", "length_coef": phi, "length_scale": scale}"""
    import numpy as np

    y, gap = np.asarray(outcomes, dtype=float), np.asarray(length_gaps, dtype=float)
    if len(y) == 0 or len(y) != len(gap):
        nan = float("nan")
        return {"lc_win_rate": nan, "lc_ci_low": nan, "lc_ci_high": nan, "length_coef": nan, "length_scale": nan}
    scale = float(gap.std()) or 1.0
    x = np.tanh(gap / scale)
    theta, phi = _lc_fit(y[None], x[None], ridge)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    boot = 1 / (1 + np.exp(-_lc_fit(y[idx], x[idx], ridge)[0]))
    tail = (1 - confidence) / 2 * 100
    r = lambda v: round(float(v), 6)  # noqa: E731  (a capped theta's sigmoid is 9.4e-14, not a figure to print)
    return {"lc_win_rate": r(1 / (1 + np.exp(-theta[0]))), "lc_ci_low": r(np.percentile(boot, tail)),
            "lc_ci_high": r(np.percentile(boot, 100 - tail)), "length_coef": r(phi[0]), "length_scale": scale}
