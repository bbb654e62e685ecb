"""lab.iterate: the 5-point self-judgment, pairs from scores, and self-rewarding rounds with lineage."""
import json
import sys
from pathlib import Path

import pytest

from lab import iterate
from lab.engine_lab import LabSession
from lab import score as scoring
from lab.instructions import load_instructions
from lab.iterate import IterateConfig
from lab.errors import LabError
from lab.progress import Progress, Stopped
from lab.ui import iterate as iterate_tab

sys.path.insert(0, str(Path(__file__).parent))

KEY = "sk-iterate-test-key"
PROMPTS = ["Say hi.", "Name a fruit.", "Count to three."]


def small(**kw) -> IterateConfig:
    return IterateConfig(**{"rounds": 2, "samples": 3, "evaluations": 2, "max_new_tokens": 8, "judge_tokens": 12,
                            "eval_n": 2, "max_steps": 2, "lora_r": 4, "batch_size": 8, **kw})


@pytest.fixture
def seeded(run):
    run.record_stage("sample", {"model": "tiny-random"})
    run.append("instructions", [{"id": f"t{i}", "prompt": p, "source": "test"} for i, p in enumerate(PROMPTS)])
    return run


# ---- the judgment ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("Relevant and clear. Score: 4", 4.0), ("**Score:** 3", 3.0), ("Score: 3.5", 3.5), ("score: 4/5", 4.0),
    ("Score: 1 at first... on reflection, Score: 5", 5.0), ("Score: 7", None), ("It is fine.", None), ("", None),
])
def test_parse_score(text, expected):
    assert scoring.parse_score(text) == expected


def test_score_prompt_is_the_papers_additive_prompt():
    p = scoring.score_prompt("Why is the sky blue?", "Rayleigh scattering.")
    assert "additive 5-point scoring system" in p and "Bestow a fifth point" in p
    assert "User: Why is the sky blue?\n<response>Rayleigh scattering.</response>" in p
    assert 'Conclude with the score using the format: "Score: <total points>"' in p
    assert len(scoring.PROMPT_HASH) == 16


def test_digit_tokens_and_forced_probabilities(tiny):
    ctx, ids = scoring.digit_tokens(tiny.tokenizer, "Fine answer.\nScore: ")
    assert [tiny.tokenizer.decode([i]).strip() for i in ids] == list("012345")
    probs = scoring.forced_score_probs(tiny, ["Say hi.", "Say hi."], ["a", "longer text here"], 2)
    assert len(probs) == 2 and all(len(p) == 6 and abs(sum(p) - 1) < 1e-5 for p in probs)


def test_strip_partial_score():
    assert scoring.strip_partial_score("Good answer. Score:") == "Good answer."
    assert scoring.strip_partial_score("Good answer. Score: 4") == "Good answer. Score: 4"


def test_local_scores_modes(tiny):
    prompts = [scoring.score_prompt("Say hi.", "Hi!"), scoring.score_prompt("Name a fruit.", "Apple.")]
    auto = scoring.local_scores(LabSession(tiny), prompts, 2, small(), seed=0)
    assert [len(r) for r in auto] == [2, 2]
    assert all(e["method"] == "probabilities" and 0 <= e["score"] <= 5 for r in auto for e in r)  # noise never
    parse = scoring.local_scores(LabSession(tiny), prompts, 2, small(score_mode="parse"), seed=0)  # ends with "Score: N"
    assert all(e["method"] == "invalid" and e["score"] is None for r in parse for e in r)


# ---- pairs from scores ----------------------------------------------------------------------------------------------
def sample(iid, j, text):
    return {"instruction_id": iid, "sample_index": j, "prompt": f"prompt {iid}", "text": text}


def score(iid, j, value, e=0):
    return {"set": "train", "instruction_id": iid, "sample_index": j, "eval_index": e, "score": value}


def test_build_pairs_best_vs_worst_ties_and_unscored_dropped(run):
    """The self-rewarding pairs are lab.pairs' "self" source: best vs worst mean score, ties and unscored dropped."""
    from lab.pairs import PairsConfig, build_pairs

    samples = [sample("x", 0, "mid"), sample("x", 1, "best"), sample("x", 2, "worst"),
               sample("tie", 0, "p"), sample("tie", 1, "q"),
               sample("one", 0, "r"), sample("one", 1, "s"),
               sample("same", 0, "t"), sample("same", 1, "t")]
    scores = [score("x", 0, 3), score("x", 0, 3, 1), score("x", 1, 5), score("x", 1, 4, 1), score("x", 2, 1),
              score("x", 2, None, 1), score("tie", 0, 2), score("tie", 1, 2), score("one", 0, 4),
              score("one", 1, None), score("same", 0, 5), score("same", 1, 1)]
    run.append("samples", samples)
    run.append("scores", scores)
    stats = build_pairs(run, PairsConfig(source="self"))
    unscored = stats["dropped"]["unscored"]
    assert (stats["pairs"], stats["instructions"] - stats["pairs"] - unscored, unscored) == (1, 2, 1)
    (p,) = [json.loads(line) for line in run.pairs_file("self").read_text().splitlines()]
    assert p["chosen"] == [{"role": "assistant", "content": "best"}] and p["rejected"][0]["content"] == "worst"
    assert p["prompt"] == [{"role": "user", "content": "prompt x"}]
    assert (p["meta"]["score_chosen"], p["meta"]["score_rejected"], p["meta"]["source"]) == (4.5, 1.0, "self")


# ---- rounds ----------------------------------------------------------------------------------------------------------
def test_two_rounds_lineage_and_adapters_load(seeded, tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = iterate.run(seeded, small())
    lines = iterate.lineage(seeded)
    assert [line["round"] for line in lines] == [1, 2] and [r["round"] for r in out["rounds"]] == [1, 2]
    r1, r2 = (Path(line["adapter"]) for line in lines)
    assert lines[0]["policy"] is None and lines[1]["policy"] == str(r1) == lines[1]["reference"]
    assert r1 == seeded.iteration(1).adapter_dir("round-1") and r2 == seeded.iteration(2).adapter_dir("round-2")
    assert json.loads((r2 / "training.json").read_text())["init_adapter"] == str(r1)  # round 1 is the reference
    for k, line in enumerate(lines, 1):
        it = seeded.iteration(k)
        assert len(it.read("samples")) == 9 and len(it.read("instructions")) == 3
        assert sum(s["set"] == "train" for s in it.read("scores")) == 9 * 2
        assert line["pairs_kept"] + line["dropped_ties"] + line["dropped_unscored"] == 3
        assert len(it.read("samples")) == line["samples"] and sum(line["score_hist"].values()) == 18
        assert line["eval"]["instructions"] == 2 and line["eval"]["win_rate_vs_base"]["n"] == 2
    assert lines[0]["eval"]["win_rate_vs_previous"] is None and lines[1]["eval"]["win_rate_vs_previous"]["n"] == 2
    assert {r["model"] for r in seeded.iteration(2).read("compare")} == {"base", "round-1", "round-2"}
    reused = [c for c in seeded.iteration(2).read("compare") if c["model"] in ("base", "round-1")]
    assert reused == seeded.iteration(1).read("compare")  # round 2 reuses round 1's evaluation of base and round-1
    assert [s for s in seeded.iteration(2).read("scores") if s["set"] == "eval" and s["model"] != "round-2"] == \
        [s for s in seeded.iteration(1).read("scores") if s["set"] == "eval"]
    assert seeded.iteration(2).read("samples")[0]["adapter"] == str(r1)
    for adapter in (r1, r2):  # each round's adapter loads on a fresh base
        base = AutoModelForCausalLM.from_pretrained(tiny.path)
        assert isinstance(PeftModel.from_pretrained(base, str(adapter)), PeftModel)
    before = [len(seeded.iteration(k).read("scores")) for k in (1, 2)]
    iterate.run(seeded, small())  # finished rounds are kept, not redone
    assert [len(seeded.iteration(k).read("scores")) for k in (1, 2)] == before and len(iterate.lineage(seeded)) == 2
    stage = seeded.stage_settings("iterate")
    assert stage["rounds"] == 2 and stage["prompt_hash"] == scoring.PROMPT_HASH


def test_rounds_on_verifiable_instructions_record_and_plot_their_checks_accuracy(run):
    """Training instructions with checks keep them through the rounds; the held-out checks accuracy of base and
    each round's adapter is in iterate.jsonl and the tab's table and plot (numbers no judge produced)."""
    from lab import checks
    from lab.ui import iterate as tab

    run.record_stage("sample", {"model": "tiny-random"})
    run.append("instructions", [i.to_dict() for i in load_instructions("checks", 3)])
    iterate.run(run, small(rounds=1, eval_instructions="checks-heldout"))
    (line,) = iterate.lineage(run)
    assert all(checks.has_checks(i) for i in run.iteration(1).read("instructions"))
    found = line["eval"]["checks"]
    assert found["n"] == 2 and set(found["accuracy"]) == {"base", "round-1"}
    answers = {r["model"]: r for r in run.iteration(1).read("compare") if r["instruction_id"] == "ch-001"}
    by_hand = checks.check(answers["base"], answers["base"]["text"]).strict  # one prompt's share of the accuracy
    assert 0 <= found["accuracy"]["base"]["value"] <= 1 and (found["accuracy"]["base"]["value"] > 0) >= by_hand
    assert found["vs_base"]["diff"] == pytest.approx(found["accuracy"]["round-1"]["value"] -
                                                     found["accuracy"]["base"]["value"])
    frame = tab.checks_frame([line])
    assert sorted(frame["model"]) == ["base", "this round"] and list(frame["round"]) == ["round 1"] * 2
    assert "(n=2)" in tab.rounds_table([line]).iloc[0, -2]


def test_stop_mid_round_then_resume(seeded):
    class StopWhenScoring(Progress):
        def check_stop(self):
            if "scoring" in self.desc:
                raise Stopped("stop")

    with pytest.raises(Stopped):
        iterate.run(seeded, small(rounds=1, eval_n=0), StopWhenScoring(quiet=True))
    samples, partial = seeded.iteration(1).read("samples"), seeded.iteration(1).read("scores")
    assert len(samples) == 9 and 0 < len(partial) < 18  # stopped after one chunk of answers was scored
    iterate.run(seeded, small(rounds=1, eval_n=0))
    assert seeded.iteration(1).read("samples") == samples  # resumed: not sampled again
    scores = seeded.iteration(1).read("scores")
    assert scores[:len(partial)] == partial and len(scores) == 18
    assert len(iterate.lineage(seeded)) == 1


def test_a_stop_asked_for_in_the_last_scoring_batch_stops_before_training_loads_a_model(seeded):
    """The whole score stage fits one batch here, so it has no safe point after the stop; the round must not go on
    into training (a model load and TRL's set-up are longer than the app's 30 s grace before it kills)."""
    class StopAfterScoring(Progress):
        asked = False

        def update(self, done, total, desc=None, partial=0.0, **extra):
            super().update(done, total, desc, partial, **extra)
            self.asked = self.asked or (self.desc == "round 1 · scoring" and done == total > 0)

        def check_stop(self):
            if self.asked:
                raise Stopped("stop")

    with pytest.raises(Stopped):
        iterate.run(seeded, small(rounds=1, eval_n=0, batch_size=64), StopAfterScoring(quiet=True))
    assert len(seeded.iteration(1).read("scores")) == 18 and seeded.iteration(1).pairs_file("self").exists()
    assert not seeded.iteration(1).adapter_dir("round-1").exists()  # training never started


# ---- an API judge -------------------------------------------------------------------------------------------------
def test_api_judge_scores_and_all_ties_are_refused(seeded, monkeypatch):
    from fakeprovider import FakeProvider, user_text

    def by_length(req):  # a judge that likes long answers
        response = user_text(req).split("<response>")[1].split("</response>")[0]
        return f"Justification. Score: {min(5, len(response) // 10)}"

    monkeypatch.setenv("GROQ_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=by_length) as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        cfg = small(rounds=1, judge="groq", judge_model="judge-model", rpm=0.0, eval_n=2)
        iterate.run(seeded, cfg)
        assert fp.calls == 9 * 2 + 2 * 2 * 2  # 9 answers x R=2; then base and round-1 on 2 held-out, R=2
    it = seeded.iteration(1)
    scores = it.read("scores")
    assert {s["method"] for s in scores} == {"parsed"} and scores[0]["judge"] == "groq:judge-model"
    pairs = [json.loads(x) for x in it.pairs_file("self").read_text().splitlines()]
    assert all(len(p["chosen"][0]["content"]) // 10 > len(p["rejected"][0]["content"]) // 10 for p in pairs)
    assert not any(KEY in f.read_text(errors="ignore") for f in seeded.path.rglob("*") if f.is_file())


def test_every_instruction_tied_is_a_clear_error(seeded, monkeypatch):
    from fakeprovider import FakeProvider

    monkeypatch.setenv("GROQ_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=lambda req: "Fine. Score: 3") as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        with pytest.raises(LabError, match="no pairs to train on \\(3 instructions tied"):
            iterate.run(seeded, small(rounds=1, judge="groq", rpm=0.0))
    assert len(seeded.iteration(1).read("scores")) == 18  # what was scored is kept
    assert not iterate.lineage(seeded)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_no_instructions(run):
    run.record_stage("sample", {"model": "tiny-random"})
    with pytest.raises(LabError, match="no instructions yet"):
        iterate.run(run, small())


def test_missing_api_key_fails_first(seeded):
    with pytest.raises(LabError, match="GROQ_API_KEY"):
        iterate.run(seeded, small(judge="groq"))
    assert not seeded.iteration(1).path.exists()


def test_start_adapter_from_another_base(seeded):
    from test_compare import make_adapter

    make_adapter(seeded, "llama", base_name="meta-llama/Llama-3.2-1B-Instruct")
    with pytest.raises(LabError, match="'llama' was trained on meta-llama"):
        iterate.run(seeded, small(start_adapter="llama"))


def test_eval_set_all_training_instructions(seeded, tmp_path):
    f = tmp_path / "same.txt"
    f.write_text("\n".join(PROMPTS))
    with pytest.raises(LabError, match="--eval-n 0"):
        iterate.run(seeded, small(eval_instructions=str(f)))


def test_bad_settings():
    with pytest.raises(LabError, match="--samples >= 2"):
        small(samples=1).validate()
    with pytest.raises(LabError, match="--judge-tokens"):
        small(judge_tokens=2).validate()


def test_cli_iterate_bad_input_exits_2(run, capsys):
    from lab.cli import main

    run.record_stage("sample", {"model": "tiny-random"})
    assert main(["iterate", "--run", run.name, "--rounds", "2"]) == 2
    assert "no instructions yet" in capsys.readouterr().err


# ---- end to end on the bundled model: the README's recipe runs two rounds, and tests/test_readme.py loads each
# round's adapter and generates with it (assert_each_rounds_adapter_loads_and_generates)


def test_batch_size_zero_reuses_what_the_iteration_recorded(run, tiny):
    """--batch-size 0 (auto): the size the run's iteration recorded when it started (a resumed round draws as it
    drew, on any machine), else auto_batch's (96 for the tiny Llama on CPU); an explicit size wins."""
    from dataclasses import replace

    from lab.iterate import IterateConfig, batch_for

    cfg = IterateConfig()
    assert cfg.batch_size == 0 and batch_for(run, cfg, tiny.path) == 96
    assert batch_for(run, replace(cfg, batch_size=8), tiny.path) == 8
    run.record_stage("iterate", {"batch_size": 32})
    assert batch_for(run, cfg, tiny.path) == 32 and batch_for(run, replace(cfg, batch_size=8), tiny.path) == 8


def test_the_tabs_plot_frames_hold_every_colour_from_the_first_round():
    """Gradio keeps a plot's first colour scale: round 1 must already hold the 'previous' line (its previous model
    is the plain base) and all six scores, and an empty plot gets no frame at all."""
    rate = {"win_rate": 0.75, "ci_low": 0.5, "ci_high": 1.0, "n": 4}
    first = {"round": 1, "policy": None, "eval": {"win_rate_vs_base": rate}, "score_hist": {"3": 4}}
    started = {**first, "policy": "/runs/r/adapters/sft"}  # --start-adapter: no head-to-head was measured
    frame = iterate_tab.win_frame([first])
    assert frame.to_dict("records") == [{"round": 1, "win rate": 0.75, "against": "base"},
                                        {"round": 1, "win rate": 0.75, "against": "previous"}]
    assert iterate_tab.vs_previous(started) is None and list(iterate_tab.win_frame([started])["against"]) == ["base"]
    hist = iterate_tab.hist_frame([first])
    assert list(hist["score"]) == list("012345") and list(hist["count"]) == [0, 0, 0, 4, 0, 0]
    many = iterate_tab.hist_frame([{**first, "round": k} for k in (2, 10)])
    assert sorted(set(many["round"])) == ["round 02", "round 10"]  # in round order on the axis
    assert iterate_tab.plot(iterate_tab.win_frame([]))["value"] is None and iterate_tab.plot(frame)["value"] is frame
