"""The PairRM tab: ranking as a real job, the ranks table and per-instruction view, building pairs from the page."""
from __future__ import annotations

import gradio as gr
import pytest

from lab import jobs
from lab.ui import rank as tab
from prefdata import judge_pair, write_samples
from test_rank import DATA


@pytest.mark.slow
def test_rank_as_a_job_then_table_view_and_pairs(run):
    write_samples(run, DATA)
    assert "started" in tab.start_ranking("t", "tiny-random", 20)
    st = jobs.wait(run, timeout_s=180)
    assert st["state"] == "done", st.get("log_tail")
    summary, table_html, picker, shown = tab.refresh("t")
    assert "**3** instructions ranked with `tiny-random`" in summary and "Made with ranker tiny-random" in summary
    table = tab.ranks_table(run)
    assert list(table["instruction"]) == ["i1", "i2", "i3"] and list(table["responses"]) == [5, 3, 2]
    assert "<th scope=\"col\">score spread</th>" in table_html and shown == ""  # nothing picked yet
    assert "rank 1" in tab.refresh("t", "i1")[3]  # a pick kept across a refresh shows its ranking
    html = tab.show_ranking("t", "i1")
    assert html.index("rank 1") < html.index("rank 2") < html.index("rank 5")
    stats = tab.make_pairs("t", "pairrm", "all-pairs", 0)
    assert "**14 pairs**" in stats and "pairs-pairrm.jsonl" in stats  # 10 + 3 + 1 pairs of responses
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i2", 0, 1, "b"))
    judge_stats = tab.make_pairs("t", "judge", "best-vs-worst", 0)
    assert "**2 pairs**" in judge_stats and "judge vs PairRM on the same 2 response pairs" in judge_stats


def test_mistakes_become_messages(run):
    with pytest.raises(gr.Error, match="Choose a run"):
        tab.start_ranking("", "tiny-random", 20)
    with pytest.raises(gr.Error, match="“Rows per pass”"):
        tab.start_ranking("t", "tiny-random", 0)
    assert tab.refresh("t")[0] == "No samples in this run yet: sample first (Sample tab)."
    write_samples(run, DATA)
    assert tab.refresh("t")[0] == "Not ranked yet."
    with pytest.raises(gr.Error, match="no judgments: judge first in the Judge tab"):
        tab.make_pairs("t", "judge", "best-vs-worst", 0)


def test_a_judge_set_with_no_pairs_points_to_spotcheck_and_an_api_judge(run):
    write_samples(run, DATA)
    run.append("judgments", judge_pair("i1", 0, 1, "tie") + judge_pair("i2", 0, 1, "tie"))
    stats = tab.make_pairs("t", "judge", "best-vs-worst", 0)
    assert "**0 pairs**" in stats and "Spot-check" in stats and "API judge" in stats and "None" not in stats
    assert tab.last_pairs("t", "judge") == stats  # shown again after a reload, from run.json


def test_the_tab_is_in_the_app():
    from lab.ui import TABS, build_app

    assert ("PairRM", "lab.ui.rank") in TABS and ("Spot-check", "lab.ui.spotcheck") in TABS
    build_app()  # every tab builds with its handlers wired


def test_offline_the_ranker_starts_on_the_one_that_loads_and_says_why(monkeypatch):
    """With the Hub unreachable and PairRM not cached, a first Rank on the Hub's PairRM could only fail."""
    from lab import rank

    if rank.in_local_cache(rank.PAIRRM):
        pytest.skip("PairRM is in this machine's cache: it loads offline, so it stays the default")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not rank.hub_reachable()
    spec, why = rank.default_ranker()
    assert spec == "tiny-random" and "HF_HUB_OFFLINE" in why and "hf download llm-blender/PairRM" in why
