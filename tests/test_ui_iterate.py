"""The Iterate tab: rounds as a real job, then the rounds table and the per-round plots."""
import gradio as gr
import pytest

from lab import jobs
from lab.ui import iterate as tab


def values(**kw) -> list:
    v = {"rounds": 2, "samples": 2, "evaluations": 1, "n": 2, "max_new_tokens": 6, "judge": "self",
         "judge_model": "", "start_adapter": "", "eval_n": 2, "beta": 0.1, "lr": 5e-5, "epochs": 1.0,
         "max_steps": 1, "lora_r": 4, "seed": 0, "eval_instructions": "heldout", "judge_tokens": 8,
         "temperature": 0.7, "judge_temperature": 0.7, "train_batch_size": 2, "gradient_checkpointing": True, **kw}
    return [v[f] for f in tab.FORM]


@pytest.mark.slow
def test_iterate_as_a_job_then_table_and_plots(run):
    run.record_stage("sample", {"model": "tiny-random"})
    run.append("instructions", [{"id": f"t{i}", "prompt": p, "source": "test"}
                                for i, p in enumerate(["Say hi.", "Name a fruit."])])
    plan = tab.show_plan("t", *values())  # before it runs: 2 rounds x 2 instructions x N=2, R=1
    assert "**2** rounds to run on 2 instructions: 8 answers and 8 self-scores" in plan, plan
    assert "6 held-out answers (2 instructions)" in plan  # base and round 1, then round 2 only (the rest reused)
    assert "no measured pace on this run yet" in plan  # nothing was sampled on this run by the lab yet
    assert "started" in tab.start_iterating("t", *values(gradient_checkpointing=False))
    st = jobs.wait(run, timeout_s=300)
    assert st["state"] == "done", st.get("log_tail")
    for k in (1, 2):  # the form's training settings reach every round's training
        assert run.iteration(k).stage_settings("train")["gradient_checkpointing"] is False
    table_html, *plots, made, caption = tab.refresh("t")
    win_fig, length_fig, hist, checks = (p["value"] for p in plots)  # updates: a figure / frame, or no value
    assert checks is None and plots[-1]["visible"] is False  # no checks on these held-out instructions
    table = tab.rounds_table(tab.lineage(run))
    assert list(table["round"]) == [1, 2] and list(table["adapter"]) == ["round-1", "round-2"]  # names, not paths
    assert "round-2" in table_html and str(run.path) not in table_html and "judge self" in made
    assert "too few for an interval" in table_html and "[1.00, 1.00]" not in table_html  # n=2: no interval
    ax = win_fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2] and all(line.get_marker() == "o" for line in ax.get_lines())
    assert caption == ""  # two rounds: lines, nothing to explain
    wins, lengths = tab.win_frame(tab.lineage(run)), tab.length_frame(tab.lineage(run))
    assert set(wins["against"]) == {"base", "previous"} and len(wins) == 4  # round 1's previous is the base
    assert set(lengths["answers"]) == {"all", "chosen", "rejected"}
    assert sorted(set(hist["round"])) == ["round 1", "round 2"] and hist["count"].sum() == 2 * 2 * 2
    assert len(hist) == 2 * 6  # every score 0-5 in each round: the colours are all there from round 1
    assert tab.refresh_if_changed("t", ["t", 2]) == [gr.skip()] * 8
    again = tab.show_plan("t", *values(rounds=3))  # one more round, at the pace and training time measured here
    assert "**1** round to run" in again and "tokens/s" in again and "as round 1 took here" in again, again  # nothing new: the plots are not redrawn
    assert tab.refresh_if_changed("t", ["other", 2])[-1] == ["t", 2]


def test_mistakes_become_messages(run):
    with pytest.raises(gr.Error, match="Choose a run"):
        tab.start_iterating("", *values())
    run.record_stage("sample", {"model": "tiny-random"})
    with pytest.raises(gr.Error, match="“Answers per instruction \\(N\\)” >= 2"):
        tab.start_iterating("t", *values(samples=1))
    with pytest.raises(gr.Error, match="GROQ_API_KEY"):
        tab.start_iterating("t", *values(judge="groq"))
    assert "No rounds in this run yet" in tab.refresh("t")[0]


@pytest.mark.slow
def test_a_typed_api_key_runs_the_job_and_is_saved_nowhere(run, runs_dir, monkeypatch):
    """A visitor's own Groq key: refused when missing, used by the job when typed, found in no file afterwards."""
    import itertools

    from tests.fakeprovider import FakeProvider

    typed = "gsk-typed-in-the-browser-0123456789"
    run.record_stage("sample", {"model": "tiny-random"})
    run.append("instructions", [{"id": f"t{i}", "prompt": p, "source": "test"}
                                for i, p in enumerate(["Say hi.", "Name a fruit."])])
    counter = itertools.count()
    with FakeProvider(key=typed, answer=lambda req: f"Fine. Score: {next(counter) % 5 + 1}") as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        with pytest.raises(gr.Error, match="GROQ_API_KEY"):
            tab.start_iterating("t", *values(judge="groq", rounds=1))
        # one instruction, no held-out evaluation: the round's 2 self-scores (30 a minute, as the app sends them)
        # are the calls that carry the key
        assert "started" in tab.start_iterating("t", *values(judge="groq", rounds=1, eval_n=0, n=1), api_key=typed)
        st = jobs.wait(run, timeout_s=300)
    assert st["state"] == "done" and fp.calls >= 2, st.get("log_tail")
    for path in runs_dir.rglob("*"):
        assert not path.is_file() or typed not in path.read_text(errors="replace"), path
