"""lab.stats: the length-controlled win rate (AlpacaEval 2's idea) against the raw win rate."""

import pytest

from lab.stats import LOSS, TIE, WIN, lc_win_rate, win_rate


def test_lc_equals_the_raw_win_rate_when_lengths_are_equal():
    outcomes = [WIN] * 9 + [TIE] * 3 + [LOSS] * 8
    lc = lc_win_rate(outcomes, [0] * len(outcomes), resamples=300)
    raw = win_rate(outcomes, resamples=300)
    assert lc["lc_win_rate"] == pytest.approx(raw["win_rate"], abs=1e-6) and lc["length_coef"] == 0
    assert lc["lc_ci_low"] == pytest.approx(raw["ci_low"], abs=1e-6) and \
        lc["lc_ci_high"] == pytest.approx(raw["ci_high"], abs=1e-6)


def test_lc_differs_when_the_winner_is_systematically_longer():
    gaps = list(range(-200, 601, 25))  # this model's answer minus the other's, characters: mostly longer
    outcomes = [WIN if g > 0 else LOSS if g < 0 else TIE for g in gaps]  # the longer answer wins
    outcomes[gaps.index(25)], outcomes[gaps.index(-25)] = LOSS, WIN  # not perfectly separable
    raw, lc = win_rate(outcomes)["win_rate"], lc_win_rate(outcomes, gaps)
    assert raw == pytest.approx(24.5 / 33) and lc["length_coef"] > 1
    assert lc["lc_win_rate"] < raw - 0.15 and abs(lc["lc_win_rate"] - 0.5) < 0.05  # at equal length, a coin
    assert lc["lc_ci_low"] <= lc["lc_win_rate"] <= lc["lc_ci_high"]
    mirrored = lc_win_rate(outcomes, [-g for g in gaps])  # the same outcomes won by the shorter side
    assert mirrored["lc_win_rate"] == pytest.approx(lc["lc_win_rate"]) and mirrored["length_coef"] < -1


def test_lc_handles_all_wins_ties_and_no_data():
    assert lc_win_rate([WIN] * 5, [10, 20, 30, 40, 50])["lc_win_rate"] > 0.99  # separation does not blow up
    assert lc_win_rate([TIE] * 4, [5, -5, 10, -10])["lc_win_rate"] == pytest.approx(0.5)
    assert lc_win_rate([], [])["lc_win_rate"] != lc_win_rate([], [])["lc_win_rate"]  # NaN: nothing to count


def test_a_one_sided_length_controlled_rate_is_printed_as_0_or_1_not_a_capped_fit():
    losses = lc_win_rate([LOSS] * 4, [10.0, -5.0, 3.0, -1.0], resamples=200)
    wins = lc_win_rate([WIN] * 4, [10.0, -5.0, 3.0, -1.0], resamples=200)
    assert (losses["lc_win_rate"], losses["lc_ci_low"], losses["lc_ci_high"]) == (0.0, 0.0, 0.0)  # was 9.4e-14
    assert (wins["lc_win_rate"], wins["lc_ci_low"], wins["lc_ci_high"]) == (1.0, 1.0, 1.0)


def test_paired_difference_is_the_mean_difference_with_its_bootstrap_interval():
    import numpy as np

    from lab.stats import bootstrap_ci, paired_difference

    a, b = [1.5, 0.75, 2.0, 1.75, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]
    diffs = [x - y for x, y in zip(a, b)]
    d = paired_difference(a, b, resamples=500, seed=3)
    assert d["n"] == 5 and d["diff"] == pytest.approx(float(np.mean(diffs)))
    assert (d["ci_low"], d["ci_high"]) == bootstrap_ci(diffs, 500, 0.95, 3)
    assert min(diffs) <= d["ci_low"] <= d["diff"] <= d["ci_high"] <= max(diffs)
    assert (d["better"], d["worse"]) == (3, 1)
    empty = paired_difference([], [])
    assert empty["n"] == 0 and empty["diff"] != empty["diff"]  # NaN: nothing to compare
    with pytest.raises(ValueError, match="needs pairs"):
        paired_difference([1.0], [])
