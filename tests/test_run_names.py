"""A run is a plain name under the runs root, everywhere (issue 9, item 2): the core, the CLI, the app's handlers
and its API, and the jobs the app starts. The lab's own nested runs (iterations/<k>, compare-scoring/<tag>) are
built by the code, never from typed text."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from lab.errors import LabError
from lab.store import Run

PATHS = ["a/b", "/abs/evil", "..", "../escape", "./here", "~/runs/x", "runs/../../x"]


@pytest.mark.parametrize("name", PATHS)
def test_a_path_is_refused_with_the_naming_rule(runs_dir, name):
    with pytest.raises(LabError, match=r"Invalid run name .*letters, digits.*no slashes"):
        Run.open(name)


def test_an_absolute_path_inside_the_runs_root_is_refused_too(runs_dir):
    with pytest.raises(LabError, match="Invalid run name"):
        Run.open(str(runs_dir / "t"))


@pytest.mark.parametrize("stage", ["sample", "judge", "rank", "pairs", "compare", "iterate", "push", "train"])
def test_the_cli_refuses_a_path_and_writes_nothing(runs_dir, tmp_path, monkeypatch, capsys, stage):
    from lab.cli import main

    monkeypatch.chdir(tmp_path)
    extra = {"train": ["--pairs", "judge", "--adapter", "x"]}.get(stage, [])
    for bad in (str(tmp_path / "evil"), "a/b"):
        assert main([stage, "--run", bad, *extra]) == 2
        assert "Invalid run name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no evil/, no a/b, no runs/


def test_the_apps_handlers_and_api_refuse_a_path(runs_dir, tmp_path):
    """The run box allows typed values: a path typed there, or sent by an API client, writes nowhere."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from lab.ui import build_app, launch_kwargs
    from lab.ui.sample import start_sampling

    evil = tmp_path / "evil"
    args = ("tiny-random", "bundled", None, 1, 1, 0.8, 0.95, 4, 0, 4)
    with pytest.raises(gr.Error, match="Invalid run name"):
        start_sampling(str(evil), *args)
    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    try:
        with pytest.raises(AppError, match="Invalid run name"):
            Client(app.local_url, verbose=False).predict(str(evil), *args, api_name="/start_sampling")
    finally:
        app.close()
    from lab.store import list_runs

    assert not evil.exists() and list_runs() == []  # (the app's queue may keep its lock file in the runs root)


@pytest.mark.slow
def test_a_job_gets_the_run_name_and_the_apps_runs_root(runs_dir, tmp_path, monkeypatch):
    """jobs run `python -m lab ... --run NAME` in the project folder: the name resolves under the app's runs root,
    also when that root is relative to where the app was started."""
    from lab import jobs
    from lab.ui.sample import start_sampling

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAB_RUNS_DIR", "my-runs")  # relative to the app's folder, not the job's
    start_sampling("t", "tiny-random", "bundled", None, 1, 1, 0.8, 0.95, 4, 0, 4)
    run = Run.open("t")
    st = jobs.wait(run, timeout_s=180)
    assert st["state"] == "done", st.get("log_tail")
    argv = json.loads((run.jobs_dir / "job.json").read_text())["argv"]
    assert argv[:3] == ["sample", "--run", "t"] and str(tmp_path) not in " ".join(argv)
    assert len(Run.open("t").read("samples")) == 1 and run.path == tmp_path / "my-runs" / "t"


def test_nested_runs_are_the_codes_own(run):
    """iterations/<k> is built by Run.iteration from a number; it is never opened by name."""
    assert run.iteration(2).path == run.path / "iterations" / "2"
    with pytest.raises(LabError):
        Run.open("t/iterations/2")
