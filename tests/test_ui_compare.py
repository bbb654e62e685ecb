"""The Compare tab: the comparison as a real job, then scores, grid, per-instruction view, notes and exports."""
import gradio as gr
import pytest

from lab import jobs
from lab.ui import compare as tab
from test_compare import HELD, heldout_file, make_adapter, write_training


def start(run_name, adapters=(), source="heldout", upload=None, **kw):
    values = {"n": 3, "max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 0, "pairrm": "",
              "judge": "none", "judge_model": "", "duplicates": "drop", "near_duplicate": 0.7, "batch_size": 8,
              "score": "none", "score_model": "", **kw}
    return tab.start_compare(run_name, list(adapters), source, upload, *[values[f] for f in tab.FORM])


def test_compare_as_a_job_then_grid_view_notes_and_export(run, tmp_path):
    write_training(run, ["Explain why the sky is blue."])
    make_adapter(run, "judge", seed=1)
    make_adapter(run, "pairrm", seed=2)
    assert "started" in start("t", ["judge"], "file", heldout_file(tmp_path, HELD))
    st = jobs.wait(run, timeout_s=240)
    assert st["state"] == "done", st.get("log_tail")
    scores, grid, picker, overall = tab.refresh("t")
    assert list(scores["model"]) == ["base", "judge"] and list(grid.columns)[-2:] == ["base", "judge"]
    assert len(grid) == 3 and overall == ""
    iid = grid["instruction_id"][0]
    page, note = tab.show_instruction("t", iid)
    assert "<b>base</b>" in page and "<b>judge</b>" in page and HELD[0] in page and note == ""
    assert "saved" in tab.save_instruction_note("t", iid, "judge hedges more")
    assert tab.show_instruction("t", iid)[1] == "judge hedges more"
    tab.save_overall_note("t", "no clear winner")
    assert tab.refresh("t")[3] == "no clear winner"
    assert tab.export_grid("t", "md").endswith("compare.md")
    assert run.upload_path(".jsonl", "heldout").exists()  # the uploaded held-out file is kept with the run


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
    with pytest.raises(gr.Error, match="no comparison yet"):
        tab.show_instruction("t", "x")
    assert tab.refresh("t")[1].empty


def test_the_tab_is_in_the_app():
    from lab.ui import TABS, build_app

    assert ("Compare", "lab.ui.compare") in TABS and ("Iterate", "lab.ui.iterate") in TABS
    build_app()
