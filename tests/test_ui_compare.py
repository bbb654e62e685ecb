"""The Compare tab: the comparison as a real job, then scores, grid, per-instruction view, notes and exports."""
import gradio as gr
import pytest

from lab import compare, compare_scorers, jobs
from lab.ui import compare as tab
from lab.ui import grid, views
from test_compare import HELD, heldout_file, make_adapter, write_training


def start(run_name, adapters=(), source="heldout", upload=None, **kw):
    values = {"n": 3, "max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 0, "pairrm": "",
              "judge": "none", "judge_model": "", "duplicates": "drop", "near_duplicate": 0.7, "batch_size": 8,
              "score": "none", "score_model": "", "reward": "", "checks": True, **kw}
    return tab.start_compare(run_name, list(adapters), source, upload, *[values[f] for f in tab.FORM])


@pytest.mark.slow
def test_compare_as_a_job_then_scores_grid_notes_and_export(run, tmp_path):
    write_training(run, ["Explain why the sky is blue."])
    make_adapter(run, "judge", seed=1)
    make_adapter(run, "pairrm", seed=2)
    assert "started" in start("t", ["judge"], "file", heldout_file(tmp_path, HELD), pairrm="tiny-random")
    st = jobs.wait(run, timeout_s=240)
    assert st["state"] == "done", st.get("log_tail")
    scores, made, picker, page, info, note, overall = tab.refresh("t")
    assert list(tab.scores_table(compare_scorers.read_scores(run))["model"]) == ["base", "judge"]
    assert "<caption>LC = the lab" in scores and "not AlpacaEval" in scores  # the LC figure says what it is
    assert "<td>judge</td>" in scores and "Made with temperature 0.7 · top-p 0.9 · max new tokens 6" in made
    assert "PairRM tiny-random" in made and "instructions 3" in made
    ids = [c[1] for c in picker["choices"]]
    assert len(ids) == 3 and picker["value"] == ids[0] and overall == "" and note == ""
    assert page.count('class="lab-grid-item') == 3 and info == "Instructions 1-3 of 3 · page 1 of 1"
    assert page.count('data-model="base"') == 3 and page.count('data-model="judge"') == 3 and HELD[0] in page
    assert "hit max tokens" in page and "PairRM: <span" in page and "the reference for the verdicts" in page
    outcome = compare_scorers.read_scores(run)["outcomes"]["judge"]["pairrm"][ids[0]]
    assert grid.VERDICT[outcome][1] in page.split('data-model="judge"')[1]  # the first instruction's verdict
    assert "saved" in tab.save_instruction_note("t", ids[1], "judge hedges more")
    assert tab.show_page("t", ids[1])[2] == "judge hedges more"
    assert "(noted)" in tab.refresh("t", ids[1])[2]["choices"][1][0]
    tab.save_overall_note("t", "no clear winner")
    assert tab.refresh("t")[6] == "no clear winner"
    assert tab.export_grid("t", "md").endswith("compare.md")
    assert run.upload_path(".jsonl", "heldout").exists()  # the uploaded held-out file is kept with the run
    assert tab.restored(views.last_settings(run, "compare"))[:3] == [["judge"], "file", 3]  # the form after a reload


def test_the_grid_pages_through_the_instructions(run):
    from test_compare import cfg

    write_training(run, ["A"])
    make_adapter(run, "judge")
    compare.compare_run(run, cfg(n=7, max_new_tokens=4))
    ids = grid.instruction_ids(run)
    assert len(ids) == 7 and grid.neighbour(run, ids[0], 1) == ids[3] and grid.neighbour(run, ids[4], 5) == ids[6]
    assert grid.neighbour(run, ids[6], -1) == ids[3] and grid.neighbour(run, None, -1) == ids[0]
    page, info = grid.render(run, ids[6])
    assert info == "Instructions 7-7 of 7 · page 3 of 3" and page.count("lab-grid-item") == 1
    assert "no scorer was chosen" in page


def test_mistakes_become_messages(run):
    with pytest.raises(gr.Error, match="Choose a run"):
        start("")
    write_training(run, ["A"])
    with pytest.raises(gr.Error, match="no adapters yet"):
        start("t")
    make_adapter(run, "judge")
    with pytest.raises(gr.Error, match="Upload a held-out"):
        start("t", source="file")
    with pytest.raises(gr.Error, match="GROQ_API_KEY"):
        start("t", judge="groq")
    assert "No comparison in this run yet" in tab.refresh("t")[0]
    assert tab.scorers_changed("", "", "none", "none")[0] == tab.NO_SCORER  # said before anything runs
    assert tab.scorers_changed("", "tiny-reward", "none", "none")[0] == ""  # a reward model is a scorer
    assert tab.scorers_changed("", "", "none", "none", True, "checks-heldout")[0] == ""  # so are the checks
    assert tab.scorers_changed("", "", "none", "none", False, "checks-heldout")[0] == tab.NO_SCORER
    note, key_box = tab.scorers_changed("tiny-random", "", "none", "groq")
    assert note == "" and key_box["visible"] is True
    assert tab.scorers_changed("", "", "local", "base")[1]["visible"] is False


def test_the_tab_is_in_the_app():
    from lab.ui import TABS, build_app

    assert ("Compare", "lab.ui.compare") in TABS and ("Iterate", "lab.ui.iterate") in TABS
    build_app()
