"""The Spot-check tab: the queue, a decision saved and the pairs rebuilt, navigation, agreement as it grows."""
from __future__ import annotations

import json

from lab.ui import spotcheck as tab
from prefdata import judge_call, judge_pair, write_samples
from test_pairs import rankings_line
from test_spotcheck import DATA


def judged(run):
    write_samples(run, DATA)
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i1", 0, 2, "a")
               + [judge_call("i1", 1, 2, "ab", "b", "B explains it"), judge_call("i1", 1, 2, "ba", "a", "A wins")]
               + judge_pair("i2", 0, 1, "b"))
    run.append("rankings", [rankings_line("i1", [[float(j - i) for j in range(3)] for i in range(3)])])


def test_walk_decide_and_agreement(run):
    judged(run)
    keys, at, position, prompt, a, b, judge, agreement = tab.load_queue("t")
    assert len(keys) == 4 and at == 0 and "Pair **1** of 4 · 0 checked" in position
    assert "Explain tides." in prompt and "The moon&#x27;s gravity" in a and "Water moves." in b
    assert "Judge</b>: Response 1 is better <i>(both orders agree)</i>" in judge
    assert "PairRM</b>: prefers response 1" in judge
    assert agreement == "No pairs checked yet."
    at, saved, position, *_ = tab.decide("t", keys, 0, "b")  # overrule the judge
    assert at == 1 and "rebuilt: 2 pairs (1 from your checks)" in saved and "1 checked" in position
    line = run.read("spotcheck")[-1]
    assert (line["instruction_id"], line["a"], line["b"], line["human"], line["judge"]) == ("i1", 0, 1, "b", "a")
    meta = [json.loads(x)["meta"] for x in run.pairs_file("judge").read_text().splitlines()]
    assert {(m["instruction_id"], m["chosen_index"], m["by"]) for m in meta} == {("i1", 1, "human"), ("i2", 1, "judge")}
    at, position, _, _, _, judge, agreement = tab.move("t", keys, at, 1)
    assert "(the orders disagree (no graded signal))" in judge
    assert at == 2 and "Inconsistent" in judge and "B explains it" in judge and "A wins" in judge
    assert "Judge: 0/1 (0%)" in agreement and "PairRM: 0/1" in agreement
    back = tab.move("t", keys, at, -2)
    assert back[0] == 0 and "your verdict: **Response 2 is better**" in back[1]
    reloaded = tab.load_queue("t")  # a page reload: the checked pair goes to the end
    assert reloaded[0][-1] == ("i1", 0, 1)


def test_without_judgments_the_tab_says_what_to_do(run):
    write_samples(run, DATA)
    keys, at, position, *_ = tab.load_queue("t")
    assert keys == [] and "judge first (Judge tab)" in position
    assert tab.move("t", [], 0, 1)[1] == "Load the pairs first."
