"""Human spot-check: decisions saved at once, pairs rebuilt from them, agreement with the judge and PairRM."""
import json

import pytest

from lab import spotcheck
from lab.pairs import PairsConfig
from lab.errors import LabError
from lab.pairs import build_pairs, record_spotcheck
from prefdata import judge_call, judge_pair, write_samples
from test_pairs import rankings_line

DATA = {"i1": ("Explain tides.", ["The moon's gravity pulls the oceans.", "Water moves.", "Moon and sun."]),
        "i2": ("Name a colour.", ["Red.", "Blue."])}


@pytest.fixture
def checked_run(run):
    """i1: (0,1) a, (0,2) a, (1,2) inconsistent; i2: (0,1) b. PairRM prefers 0 > 1 > 2 on i1."""
    write_samples(run, DATA)
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i1", 0, 2, "a")
               + [judge_call("i1", 1, 2, "ab", "b", "B explains it"), judge_call("i1", 1, 2, "ba", "a", "A wins")]
               + judge_pair("i2", 0, 1, "b"))
    run.append("rankings", [rankings_line("i1", [[float(j - i) for j in range(3)] for i in range(3)])])
    return run


def pairs_of(run) -> set[tuple]:
    return {(m["instruction_id"], m["chosen_index"], m["rejected_index"], m["by"])
            for m in (json.loads(x)["meta"] for x in run.pairs_file("judge").read_text().splitlines())}


def test_items_show_everything_a_human_needs(checked_run):
    items = spotcheck.items(checked_run)
    assert [(i["instruction_id"], i["a"], i["b"]) for i in items] == [("i1", 0, 1), ("i1", 0, 2), ("i1", 1, 2),
                                                                      ("i2", 0, 1)]
    incons = items[2]
    assert incons["judge"] == "inconsistent" and incons["prompt"] == "Explain tides."
    assert (incons["text_a"], incons["text_b"]) == ("Water moves.", "Moon and sun.")
    assert {o["order"]: o["reasoning"] for o in incons["orders"]} == {"ab": "B explains it", "ba": "A wins"}
    assert incons["pairrm"] == {"prefers": "a", "logit": 2.0} and incons["human"] is None
    assert items[3]["pairrm"] is None  # i2 was not ranked


def test_override_is_saved_at_once_and_rebuilds_pairs(checked_run):
    build_pairs(checked_run, PairsConfig(source="judge", strategy="all-pairs"))
    assert pairs_of(checked_run) == {("i1", 0, 1, "judge"), ("i1", 0, 2, "judge"), ("i2", 1, 0, "judge")}
    out = record_spotcheck(checked_run, "i2", 0, 1, "a")  # overrule: the human prefers Red.
    assert checked_run.read("spotcheck")[-1] == out["saved"]
    assert out["saved"]["judge"] == "b" and out["saved"]["human"] == "a"
    # rebuilt with the settings it was last built with (all-pairs), the human's verdict in place of the judge's
    assert pairs_of(checked_run) == {("i1", 0, 1, "judge"), ("i1", 0, 2, "judge"), ("i2", 0, 1, "human")}
    assert out["pairs"]["human_overrides"] == 1 and out["pairs"]["strategy"] == "all-pairs"
    record_spotcheck(checked_run, "i1", 1, 2, "b")  # settles the inconsistent pair: a new pair
    record_spotcheck(checked_run, "i1", 0, 1, "tie")  # removes a pair
    assert pairs_of(checked_run) == {("i1", 0, 2, "judge"), ("i1", 2, 1, "human"), ("i2", 0, 1, "human")}
    record_spotcheck(checked_run, "i1", 0, 1, "skip")  # changed one's mind: the last line wins, skip = judge again
    assert ("i1", 0, 1, "judge") in pairs_of(checked_run)
    assert len(checked_run.read("spotcheck")) == 4  # nothing rewritten, every decision on disk


def test_checked_pairs_go_last_and_survive_a_reload(checked_run):
    spotcheck.record(checked_run, "i1", 0, 1, "a")
    items = spotcheck.items(checked_run)  # a fresh read, as after a page reload
    assert (items[-1]["a"], items[-1]["b"], items[-1]["human"]) == (0, 1, "a")
    assert not checked_run.pairs_file("judge").exists()  # spotcheck.record alone leaves pairs alone


def test_reversed_indices_are_stored_canonically(checked_run):
    saved = record_spotcheck(checked_run, "i2", 1, 0, "a")["saved"]  # "the first one I named (1) is better"
    assert (saved["a"], saved["b"], saved["human"]) == (0, 1, "b")


def test_bad_answers_are_refused_and_nothing_is_saved(checked_run):
    with pytest.raises(LabError, match="Unknown spot-check answer"):
        spotcheck.record(checked_run, "i1", 0, 1, "maybe")
    with pytest.raises(LabError, match="never judged"):
        spotcheck.record(checked_run, "i2", 0, 5, "a")
    assert checked_run.read("spotcheck") == []


def test_agreement_with_a_reward_model_beside_pairrm(checked_run):
    """A reward model's lines count on their own: it prefers 2 > 1 > 0 on i1, the opposite of PairRM."""
    checked_run.append("rankings", [{"instruction_id": "i1", "kind": "reward", "sample_indices": [0, 1, 2],
                                     "scores": [0.0, 1.0, 2.0], "ranks": [3, 2, 1], "truncated": [False] * 3,
                                     "tokens_cut": [0] * 3, "max_length": 512, "quantize": "none",
                                     "ranker": "test-reward", "ranker_path": "/x", "time": ""}])
    spotcheck.record(checked_run, "i1", 0, 1, "a")  # PairRM a, reward b
    spotcheck.record(checked_run, "i1", 0, 2, "b")  # PairRM a, reward b
    agree = spotcheck.agreement(checked_run)
    assert (agree["pairrm"]["n"], agree["pairrm"]["agree"]) == (2, 1)
    assert (agree["reward"]["n"], agree["reward"]["agree"]) == (2, 1)
    from lab.ui.spotcheck import agreement_md

    shown = agreement_md(agree)
    assert "- PairRM: 1/2 (50%)" in shown and "- Reward model: 1/2 (50%)" in shown


def test_no_judgments_is_a_clear_error(run):
    write_samples(run, DATA)
    with pytest.raises(LabError, match="no judged pairs.*lab judge"):
        spotcheck.items(run)


def test_agreement_with_judge_and_pairrm(checked_run):
    spotcheck.record(checked_run, "i1", 0, 1, "a")  # judge a, PairRM a
    spotcheck.record(checked_run, "i1", 0, 2, "b")  # judge a, PairRM a
    spotcheck.record(checked_run, "i1", 1, 2, "a")  # judge inconsistent, PairRM a
    spotcheck.record(checked_run, "i2", 0, 1, "skip")
    agree = spotcheck.agreement(checked_run)
    assert agree["checked"] == 3 and agree["skipped"] == 1
    assert agree["judge"]["n"] == 3 and agree["judge"]["agree"] == 1 and agree["judge"]["rate"] == pytest.approx(0.3333)
    assert agree["pairrm"]["n"] == 3 and agree["pairrm"]["agree"] == 2
    # judge labels a,a,inconsistent vs human a,b,a: p_o 1/3, p_e (2*2)/9 -> kappa (1/3 - 4/9)/(5/9) = -0.2
    assert agree["judge"]["kappa"] == pytest.approx(-0.2)
