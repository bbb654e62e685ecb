"""Verifiable instructions: IFEval's checks on known answers, IFEval-format files, the checks pair source, the checks
compare scorer's numbers (against if-verifiable's own scoring and scipy's bootstrap) and the circular label."""
from __future__ import annotations

import json

import pytest

from lab import checks, compare, compare_scorers, graders
from lab.compare import CompareConfig
from lab.compare_scorers import checks_summary
from lab.errors import LabError
from lab.instructions import load_instructions, read_file
from lab.pairs import PairsConfig, build_pairs
from lab.stats import mean_ci, paired_difference
from prefdata import sample_line

NO_COMMA = {"prompt": "Describe tea. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}]}
TWO = {"prompt": "Describe rain in lowercase, under 10 words.",
       "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
       "kwargs": [{}, {"num_words": 10, "relation": "less than"}]}


# ---- the checks themselves --------------------------------------------------------------------------------------
def test_checks_on_known_answers():
    assert checks.check(NO_COMMA, "Tea is warm and green.").strict
    assert not checks.check(NO_COMMA, "Tea is warm, green and calm.").strict
    both = checks.check(TWO, "soft rain falls on the roof")
    assert both.strict and both.score == 1.0 and both.failed() == []
    half = checks.check(TWO, "Soft rain falls on the roof")
    assert not half.strict and half.failed() == ["change_case:english_lowercase"] and half.score == 0.5
    assert checks.check(TWO, "").results == [{"type": t, "strict": False, "loose": False}
                                             for t in TWO["instruction_id_list"]]


def test_loose_passes_what_strict_fails_only_for_ifevals_transformations():
    quoted = {"prompt": "Say hi in quotes.", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    c = checks.check(quoted, 'Sure! Here it is:\n"hi there"')  # a first line before the answer: loose drops it
    assert (c.strict, c.loose, c.score) == (False, True, 0.5)


def test_scores_match_if_verifiables_own_evaluation():
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    for text in ("soft rain falls", "Soft Rain", "a b c d e f g h i j k l", ""):
        sample = IFEvalSample(key=1, prompt=TWO["prompt"], instruction_id_list=TWO["instruction_id_list"],
                              kwargs=TWO["kwargs"])
        _, ref = evaluate_output_for_sample("ifeval", sample, text)
        got = checks.accuracies([checks.check(TWO, text)])
        assert got["prompt_strict"] == ref.binary_strict and got["prompt_loose"] == ref.binary_loose
        assert got["instruction_strict"] == ref.partial_strict and got["instruction_loose"] == ref.partial_loose


def test_bad_check_fields_say_what_to_fix(tmp_path):
    cases = [({"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]}, "not an IFEval check type"),
             ({"instruction_id_list": "punctuation:no_comma", "kwargs": [{}]}, "must be a non-empty list"),
             ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "list of 1 objects"),
             ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"words": 3}]},
              "do not fit the check"),
             ({"instruction_id_list": ["startend:end_checker"], "kwargs": [{}]}, "needs the arguments end_phrase"),
             ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]},
              "needs the arguments relation")]
    for fields, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"prompt": "Say hi.", **fields}) + "\n")
        with pytest.raises(LabError, match=message):
            read_file(path)


def test_checks_needing_nltk_data_are_refused_offline_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "nltk_has", lambda resource: False)  # a machine without nltk's punkt data
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "Two sentences.", "instruction_id_list":
                                ["length_constraints:number_sentences"],
                                "kwargs": [{"num_sentences": 2, "relation": "less than"}]}) + "\n")
    with pytest.raises(LabError, match="nltk.downloader punkt"):
        read_file(path)


# ---- reading IFEval-format instructions ------------------------------------------------------------------------
IFEVAL_ROWS = [  # google/IFEval's columns; kwargs as `datasets` stores them: every key, None where unset
    {"key": 1000, "prompt": "Write a haiku about tea. Do not use any commas.",
     "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None, "relation": None}]},
    {"key": 1001, "prompt": "Describe rain in fewer than 20 words.",
     "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 20, "relation": "less than"}]},
]


def test_ifeval_rows_read_from_jsonl_parquet_and_a_saved_dataset(tmp_path):
    import datasets

    unchecked = {"key": 1002, "prompt": "Say hi.", "instruction_id_list": [], "kwargs": []}  # a mixed table's row
    ds = datasets.Dataset.from_list(IFEVAL_ROWS + [unchecked])
    (tmp_path / "ifeval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS + [unchecked]))
    ds.to_parquet(str(tmp_path / "ifeval.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in ("ifeval.jsonl", "ifeval.parquet", "saved"):
        items = read_file(tmp_path / source)
        assert [i.instruction_id_list for i in items][:2] == [r["instruction_id_list"] for r in IFEVAL_ROWS]
        assert items[2].instruction_id_list is None and "kwargs" not in items[2].to_dict()
        assert items[1].kwargs == [{"num_words": 20, "relation": "less than"}]
        assert checks.check(items[1].to_dict(), "Rain falls softly.").strict


def test_the_bundled_verifiable_sets():
    train, heldout = load_instructions("checks"), load_instructions("checks-heldout")
    assert len(train) >= 120 and len(heldout) >= 60
    types = {t for i in train for t in i.instruction_id_list}
    assert len(types) >= 10 and types == {t for i in heldout for t in i.instruction_id_list}
    assert not types & set(checks.NEEDS_NLTK_DATA)  # every type runs offline
    task = lambda p: p.split(". ")[0]  # noqa: E731  the task before the constraint
    assert not {task(i.prompt) for i in train} & {task(i.prompt) for i in heldout}
    assert all(i.to_dict()["source"] == "checks" for i in train)


# ---- the pair source --------------------------------------------------------------------------------------------
def _checks_run(run, texts: dict[str, list[str]]):
    instructions = {"c1": NO_COMMA, "c2": TWO}
    run.append("instructions", [{"id": iid, "source": "test", **instructions[iid]} for iid in texts])
    run.append("samples", [sample_line(iid, instructions[iid]["prompt"], i, t)
                           for iid, ts in texts.items() for i, t in enumerate(ts)])
    return run


def test_checks_pairs_choose_the_answer_that_passes_more(run):
    _checks_run(run, {"c1": ["Tea, warm.", "Tea is warm.", "Tea, tea, tea."],
                      "c2": ["soft rain", "Soft rain", "soft Rain"]})
    stats = build_pairs(run, PairsConfig(source="checks"))
    pairs = {p["meta"]["instruction_id"]: p for p in map(json.loads, run.pairs_file("checks").read_text().splitlines())}
    assert pairs["c1"]["chosen"][0]["content"] == "Tea is warm." and pairs["c1"]["meta"]["by"] == "checks"
    assert pairs["c1"]["meta"]["score_chosen"] == 1.0 and pairs["c1"]["meta"]["score_rejected"] == 0.0
    assert pairs["c2"]["chosen"][0]["content"] == "soft rain"
    assert stats["pairs"] == 2 and stats["dropped"] == {"tie": 2}  # c1: 0 vs 2; c2: 1 vs 2 (both fail lowercase)
    lines = {(r["instruction_id"], r["sample_index"]): r for r in run.read("checks")}
    assert lines[("c2", 1)]["results"] == [{"type": "change_case:english_lowercase", "strict": False, "loose": False},
                                           {"type": "length_constraints:number_words", "strict": True, "loose": True}]


def test_a_person_overrules_the_checks_like_any_verdict(run):
    from lab import spotcheck
    from lab.pairs import record_spotcheck

    _checks_run(run, {"c1": ["Tea, warm.", "Tea is warm."]})
    build_pairs(run, PairsConfig(source="checks"))
    (item,) = spotcheck.items(run)  # no judge ran: the checks' pair is shown with each answer's results
    assert item["judge"] is None and item["checks"]["prefers"] == "b"
    assert item["checks"]["a"] == [{"type": "punctuation:no_comma", "strict": False, "loose": False}]
    out = record_spotcheck(run, "c1", 0, 1, "a")  # the person prefers the answer with the comma
    assert set(out["rebuilt"]) == {"checks"} and out["saved"]["checks"] == "b"
    (pair,) = map(json.loads, run.pairs_file("checks").read_text().splitlines())
    assert pair["chosen"][0]["content"] == "Tea, warm." and pair["meta"]["by"] == "human"
    assert spotcheck.agreement(run)["checks"]["agree"] == 0 and spotcheck.agreement(run)["judge"]["n"] == 0
    record_spotcheck(run, "c1", 0, 1, "tie")  # a tie removes the pair from the file, not from the spot-check list
    assert run.pairs_file("checks").read_text() == "" and [i["human"] for i in spotcheck.items(run)] == ["tie"]
    record_spotcheck(run, "c1", 0, 1, "b")  # and the person can change their mind
    assert [i["human"] for i in spotcheck.items(run)] == ["b"]
    build_pairs(run, PairsConfig(source="checks", use_spotcheck=False))
    (pair,) = map(json.loads, run.pairs_file("checks").read_text().splitlines())
    assert pair["chosen"][0]["content"] == "Tea is warm."


def test_no_instructions_with_checks_says_what_to_sample(run):
    run.append("instructions", [{"id": "p", "prompt": "Hi?", "source": "test"}])
    run.append("samples", [sample_line("p", "Hi?", 0, "a"), sample_line("p", "Hi?", 1, "b")])
    with pytest.raises(LabError, match="--instructions checks"):
        build_pairs(run, PairsConfig(source="checks"))


# ---- the compare scorer -----------------------------------------------------------------------------------------
def _table(answers: dict[str, list[str]], item: dict) -> tuple[dict, dict]:
    """A comparison of models answering len(answers[model]) copies of one verifiable instruction."""
    n = len(next(iter(answers.values())))
    ids = [f"i{k}" for k in range(n)]
    table = {m: {iid: {**item, "instruction_id": iid, "text": t} for iid, t in zip(ids, texts)}
             for m, texts in answers.items()}
    return table, {"instruction_ids": ids, "models": list(answers), "checked_ids": ids}


def test_checks_scorer_accuracies_and_paired_difference():
    base = ["a, b", "fine", "x, y", "ok, ok", "yes"]  # 2 of 5 pass no-comma
    tuned = ["a b", "fine", "x y", "ok, ok", "yes"]  # 4 of 5: better on 2 prompts, worse on none
    table, st = _table({"base": base, "dpo": tuned}, NO_COMMA)
    out = checks_summary(table, st, CompareConfig(bootstrap=4000))
    assert out["per_model"]["base"]["prompt_strict"]["value"] == pytest.approx(0.4)
    assert out["per_model"]["dpo"]["prompt_strict"]["value"] == pytest.approx(0.8)
    diff = out["vs_base"]["dpo"]["prompt_strict"]
    assert diff["diff"] == pytest.approx(0.4) and (diff["better"], diff["worse"], diff["n"]) == (2, 0, 5)
    assert diff["ci_low"] >= 0.0 and diff["ci_high"] <= 0.8
    assert out["failed"]["base"]["i0"] == ["punctuation:no_comma"] and out["failed"]["dpo"]["i0"] == []
    assert out["grader"] == graders.CHECKS


def test_the_bootstrap_intervals_agree_with_scipys():
    from scipy.stats import bootstrap

    rng = __import__("random").Random(3)
    a = [float(rng.random() < 0.6) for _ in range(60)]
    b = [float(rng.random() < 0.4) for _ in range(60)]
    ours = paired_difference(a, b, resamples=20000, seed=1)
    ref = bootstrap(([x - y for x, y in zip(a, b)],), lambda d, axis: d.mean(axis=axis), n_resamples=20000,
                    method="percentile", confidence_level=0.95, random_state=2).confidence_interval
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.02) and ours["ci_high"] == pytest.approx(ref.high, abs=0.02)
    one = mean_ci(a, resamples=20000, seed=1)
    ref1 = bootstrap((a,), lambda d, axis: d.mean(axis=axis), n_resamples=20000, method="percentile",
                     random_state=2).confidence_interval
    assert one["ci_low"] == pytest.approx(ref1.low, abs=0.02) and one["ci_high"] == pytest.approx(ref1.high, abs=0.02)


def test_checks_outcomes_give_a_win_rate_against_base():
    table, st = _table({"base": ["a, b", "fine", "x, y"], "dpo": ["a b", "fine", "x, y"]}, NO_COMMA)
    of = compare_scorers.checks_outcomes(None, CompareConfig(), table, st, None)
    assert [of(i, "dpo", "base") for i in st["instruction_ids"]] == [1.0, 0.5, 0.5]


# ---- who graded it ----------------------------------------------------------------------------------------------
def test_a_grader_that_made_the_training_pairs_is_labelled_circular():
    groq = graders.judge("groq", "")
    assert groq["id"] == "judge:groq:llama-3.3-70b-versatile"
    assert "Circular" in graders.circular(groq, graders.judge("groq", "llama-3.3-70b-versatile"))
    assert graders.circular(groq, graders.judge("openai", "gpt-4o-mini")) is None
    assert graders.circular(graders.ranker("llm-blender/PairRM"), groq) is None
    assert "Circular" in graders.circular(graders.ranker("tiny-random"), graders.ranker("tiny-random"))
    assert "knows the answer" in graders.circular(graders.CHECKS, graders.CHECKS)
    assert graders.circular(groq, None) is None


# ---- end to end on the tiny model: compare with checks, and the circular label ----------------------------------
def test_a_comparison_on_verifiable_instructions_scores_checks_and_labels_circular_grading(run, tmp_path):
    """A real comparison (tiny-random answers) on held-out instructions with checks: every answer is checked, the
    accuracies match the answers checked by hand, and a win rate from the ranker that made the adapter's training
    pairs says it is circular while the checks' say they know the answer."""
    from lab.adapters import read_state
    from lab.store import atomic_write_json
    from lab.ui import compare as compare_tab
    from test_compare import make_adapter, write_training

    write_training(run, ["Explain why the sky is blue."])
    run.append("rankings", [{"instruction_id": "train-0", "kind": "pairrm", "sample_indices": [0, 1],
                             "scores": [0.1, -0.1], "ranker": "tiny-random"}])  # lab.rank's record: what ranked
    (run.pairs_file("pairrm")).write_text("")
    out = make_adapter(run, "dpo-pairrm", seed=1)
    atomic_write_json(out / "training.json", {"status": "done", "pairs": {"path": str(run.pairs_file("pairrm"))}})
    assert read_state(out)["pairs"]["path"].endswith("pairs-pairrm.jsonl")
    cfg = CompareConfig(instructions="checks-heldout", n=6, max_new_tokens=8, batch_size=8, bootstrap=200,
                        pairrm="tiny-random")
    result = compare.compare_run(run, cfg)
    scores = compare_scorers.read_scores(run)
    found = scores["checks"]
    records = {(r["model"], r["instruction_id"]): r for r in run.read("compare")}
    assert found["n"] == 6 == len(scores["outcomes"]["dpo-pairrm"]["checks"]) and result["instructions"] == 6
    base = [checks.check(records[("base", i)], records[("base", i)]["text"]).strict for i in
            [f"ch-{k:03d}" for k in range(1, 7)]]
    assert found["per_model"]["base"]["prompt_strict"]["value"] == pytest.approx(sum(base) / 6)
    wins = scores["win_rates"]["dpo-pairrm"]
    assert wins["pairrm"]["grader_id"] == "ranker:tiny-random" and "Circular" in wins["pairrm"]["circular"]
    assert wins["checks"]["grader_id"] == "checks:ifeval" and wins["checks"]["circular"] is None  # not trained on them
    page = compare_tab.scores_html(scores, run.stage_settings("compare"))
    assert "circular: trained on this grader" in page and "Verifiable checks" in page
    assert "prompt-level strict vs base" in page
