"""Noise labelled as noise (lab.noise): the rule, the CLI's summary field and stderr line, the tabs, the cards; and a
data set with no pairs says why and what to do, in words for the page."""
import json
from types import SimpleNamespace

import gradio as gr
import pytest

from lab import noise
from lab.errors import LabError
from lab.pairs import SOURCES, PairsConfig, build_pairs
from lab.progress import Progress
from lab.train import TrainConfig, precheck
from prefdata import judge_pair, write_samples

TINY_MODEL, TINY_RANKER = noise.WORDS[("model", "tiny-random")], noise.WORDS[("ranker", "tiny-random")]
WEAK_JUDGE = noise.WORDS[("judge", "bundled")]
DATA = {"i1": ("Explain tides.", ["The moon pulls the sea.", "Water moves.", "Tides are sea levels."]),
        "i2": ("Name a colour.", ["Blue.", "Red, like a tomato."])}


def test_the_rule_knows_which_specs_are_noise_and_which_are_not(run):
    assert noise.label("model", "tiny-random") == TINY_MODEL and noise.label("ranker", "tiny-random") == TINY_RANKER
    assert noise.label("judge", "bundled") == noise.label("judge", "HuggingFaceTB/SmolLM2-135M-Instruct") == WEAK_JUDGE
    assert noise.label("model", "bundled") is None and noise.label("ranker", "llm-blender/PairRM") is None
    run.record_stage("sample", {"model": "bundled"})
    assert noise.notes(run, "judge", {"backend": "local", "model": ""}) == [WEAK_JUDGE]
    assert noise.notes(run, "judge", {"backend": "groq", "model": ""}) == []
    run.record_stage("rank", {"ranker": "tiny-random"})
    assert noise.notes(run, "train", {"pairs": "pairrm", "model": ""}) == [TINY_RANKER]  # trained on noise
    assert noise.notes(run, "train", {"pairs": "judge", "model": ""}) == []  # the judge was never run
    assert noise.notes(run, "compare", {"model": "bundled", "pairrm": "", "judge": "none", "score": "base"}) == \
        [WEAK_JUDGE, TINY_RANKER]  # the base model scores (weak); the adapters' PairRM pairs were noise
    folder = run.adapter_dir("dpo-pairrm")
    folder.mkdir(parents=True)
    (folder / "training.json").write_text(json.dumps({"settings": {"pairs": "pairrm"}, "base_model": "bundled"}))
    assert noise.notes(run, "merge", {"adapter": "dpo-pairrm"}) == [TINY_RANKER]  # merged: what its adapter learned
    assert noise.notes(run, "merge", {"adapter": "missing"}) == []


def test_the_cli_labels_noise_in_the_summary_and_on_stderr(runs_dir, lab_cli):
    out = lab_cli("sample", "--run", "n", "--model", "tiny-random", "--n", "2", "--k", "2",
              "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["noise"] == [TINY_MODEL] and TINY_MODEL in out.stderr
    out = lab_cli("rank", "--run", "n", "--ranker", "tiny-random")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["noise"]) == {TINY_MODEL, TINY_RANKER} and TINY_RANKER in out.stderr


def test_tabs_and_cards_show_the_labels(run):
    from lab import cards
    from lab.ui import judge as judge_tab, rank as rank_tab, sample as sample_tab, spotcheck as spot_tab

    write_samples(run, DATA)
    run.record_stage("sample", {"model": "tiny-random"})
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i2", 0, 1, "b"))
    run.record_stage("judge", {"backend": "local", "model": "bundled"})
    assert TINY_MODEL in sample_tab.refresh("t")[0]
    figures = judge_tab.refresh("t")[0]
    assert WEAK_JUDGE in figures and TINY_MODEL in figures
    assert WEAK_JUDGE in spot_tab.load_queue("t")[2]  # the spot-check's position line
    assert WEAK_JUDGE in rank_tab.make_pairs("t", "judge", "best-vs-worst", 0)
    assert WEAK_JUDGE in rank_tab.last_pairs("t", "judge")  # and the pairs' view, when the run is picked again
    pairs = [json.loads(x) for x in run.pairs_file("judge").read_text().splitlines()]
    raw = {k: run.read(k) for k in ("samples", "judgments", "rankings", "spotcheck")}
    card = cards.dataset_card("me/t-judge", "judge", run, pairs, raw, {"default": len(pairs)})
    head = card.split("## Load it")[0]
    assert WEAK_JUDGE in head and TINY_MODEL in head  # under the title, before anything else


def test_a_set_without_pairs_says_why_and_what_to_do_in_page_words(run):
    from lab.ui import judge as judge_tab, rank as rank_tab, train as train_tab

    write_samples(run, DATA)
    run.record_stage("sample", {"model": "bundled"})
    run.append("judgments", judge_pair("i1", 0, 1, "tie") + judge_pair("i2", 0, 1, "a", "b"))
    out = build_pairs(run, PairsConfig(source="judge"))
    why = out["no_pairs"]
    assert out["pairs"] == 0 and out["warnings"] == [why]
    assert "1 ties" in why and "1 undecided disagreements" in why and "Spot-check tab" in why and "API judge" in why
    assert "--" not in why and "python -m" not in why  # words for the page, not command-line flags
    assert why in rank_tab.make_pairs("t", "judge", "best-vs-worst", 0)
    run.record_stage("judge", {"backend": "groq", "model": "m"})
    figures = judge_tab.refresh("t")[0]  # the Judge tab says it too, before anyone reaches Train
    assert "No instruction has a preference" in figures and SOURCES["judge"].no_pairs_fix in figures
    with pytest.raises(LabError, match="Spot-check tab"):
        precheck(run, "judge", "dpo", TrainConfig())
    with pytest.raises(gr.Error, match="Spot-check tab"):
        train_tab.start_training("t", "judge", "dpo", "", *[None] * len(train_tab.FORM))


def test_the_rank_train_compare_and_iterate_tabs_and_the_model_card_show_the_labels(run):
    from lab import rank
    from lab.rank import RankConfig
    from lab.train import train_adapter
    from lab.ui import chat as chat_tab, common, compare as compare_tab, iterate as iterate_tab, rank as rank_tab, \
        train as train_tab
    from tests.test_train import TINY, instructions, pair, write_pairs

    write_samples(run, DATA)
    run.record_stage("sample", {"model": "tiny-random"})
    rank.run(run, RankConfig(ranker="tiny-random"), Progress(quiet=True))
    assert TINY_RANKER in rank_tab.refresh("t")[0] and TINY_MODEL in rank_tab.refresh("t")[0]
    write_pairs(run.pairs_file("pairrm"), [pair(i) for i in instructions("train")[:2]])
    out = train_adapter(run, "pairrm", "dpo", TrainConfig(**TINY, max_steps=1, lora_r=4), progress=Progress(quiet=True))
    summary = train_tab.live_view("t", "dpo")[1]
    assert TINY_MODEL in summary and TINY_RANKER in summary  # trained on a random ranker's pairs
    card = (out / "README.md").read_text()
    assert TINY_RANKER in card.split("## Training parameters")[0]  # under the title
    run.record_stage("compare", {"model": "tiny-random", "pairrm": "tiny-random", "judge": "none", "score": "none"})
    run.record_stage("iterate", {"model": "tiny-random", "judge": "self"})
    assert TINY_RANKER in common.run_labels("t", "compare") and TINY_MODEL in common.run_labels("t", "iterate")
    assert common.run_labels("no such run", "compare") == "" and common.run_labels(None, "iterate") == ""
    assert TINY_MODEL in common.run_labels("t", "chat")  # the Chat tab talks to the run's model
    with gr.Blocks():  # each tab holds the box that shows them, filled by one of its views (lab.ui.views)
        ctx = SimpleNamespace(run_name=gr.Dropdown(), remembered=None, visitor=None)
        for mod, stage in ((compare_tab, "compare"), (iterate_tab, "iterate"), (chat_tab, "chat")):
            tab = mod.build(ctx)
            view = next(v for v in tab.views if v.outputs == [tab.labels])
            assert isinstance(tab.labels, gr.Markdown) and view.read("t") == [common.run_labels("t", stage)]
            assert view.read("../not-a-run") == [gr.skip()]  # a name that is not a run's leaves the box as it is


def test_a_win_rate_from_a_random_or_weak_scorer_says_so_in_its_column(run):
    """The numbers themselves carry the mark, not only a banner above the table (a user asked which one was noise)."""
    from lab.ui import compare as compare_tab

    w = {"win_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4}
    scores = {"per_model": {"a": {"chars_change": None, "mean_chars": 100, "mean_tokens": 20.0, "truncated_rate": 0,
                                  "distinct_1": 0.5, "distinct_2": 0.8, "refusal_rate": 0}},
              "win_rates": {"a": {"pairrm": w, "judge": w, "score": w}}}
    table = compare_tab.scores_table(scores, {"pairrm": "tiny-random", "judge": "local", "score": "base",
                                              "model": "tiny-random", "reward": "tiny-reward"})
    assert list(table.columns[8:11]) == ["PairRM win rate ⚠️ random ranker", "judge win rate ⚠️ weak judge",
                                         "5-point win rate ⚠️ random judge"]
    assert "reward win rate ⚠️ random ranker" in table.columns
    real = compare_tab.scores_table(scores, {"pairrm": "llm-blender/PairRM", "judge": "groq", "score": "groq",
                                             "reward": "Skywork/Skywork-Reward-V2-Qwen3-0.6B"})
    assert list(real.columns[8:11]) == ["PairRM win rate", "judge win rate", "5-point win rate"]
    assert "reward win rate" in real.columns
    assert real.iloc[0, 10] == "0.50 [0.10, 0.90] (n=4)"
    assert real.columns[-1] == "checks win rate" and real.iloc[0, -1] == ""  # no checks: nothing, not noise


def test_a_tab_shows_no_labels_for_scorers_before_its_stage_ran(run):
    """Compare's box stays empty until a comparison exists: the judge or ranker upstream is not its scorer yet."""
    import gradio as gr

    from lab.ui import common

    run.record_stage("sample", {"model": "tiny-random"})
    run.record_stage("rank", {"ranker": "tiny-random"})
    with gr.Blocks():
        _, view = common.labels_view("compare")
    assert view.read("t") == [""]
    run.record_stage("compare", {"model": "tiny-random", "pairrm": "tiny-random", "judge": "none", "score": "none"})
    assert TINY_RANKER in view.read("t")[0]
