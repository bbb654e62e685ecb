"""Two processes on one run (issue 9, item 4): every writing stage holds a per-run lock (lab.store.Run.lock); a
second process asking for the same stage is refused at once with an "already running" message, in the CLI and the
app, and writes nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from lab.errors import LabError
from lab.store import Run
from tests.fakeprovider import FakeProvider
from tests.test_judge import KEY, add_samples, prefer_higher

ROOT = Path(__file__).resolve().parent.parent


def test_a_held_lock_refuses_a_second_holder_and_is_free_again_after(run):
    with run.lock("judge"):
        with pytest.raises(LabError, match=rf"judge is already running on run 't' \(process {os.getpid()}\): "
                                           r"wait for it to finish or stop it"):
            with run.lock("judge"):
                pass
        with pytest.raises(LabError, match="already running"):
            run.check_unlocked("judge")
        with run.lock("pairs-pairrm"):  # another stage (or another pairs source) is not blocked
            pass
    with run.lock("judge"):
        pass
    run.check_unlocked("judge")


def stage_calls(run: Run) -> dict:
    """Each writing stage, called as the CLI and the app's jobs call it."""
    from lab.compare import compare_run
    from lab.compare import CompareConfig
    from lab.hub import PushConfig
    from lab.iterate import IterateConfig
    from lab.judge import JudgeConfig
    from lab.pairs import PairsConfig
    from lab.rank import RankConfig
    from lab.sample import SampleConfig
    from lab.hub import push_run
    from lab import iterate
    from lab.judge import judge_run
    from lab.pairs import build_pairs
    from lab import rank
    from lab import sample

    return {"sample": lambda: sample.run(run, SampleConfig(model="tiny-random", n=1, k=1)),
            "judge": lambda: judge_run(run, JudgeConfig()),
            "rank": lambda: rank.run(run, RankConfig(ranker="tiny-random")),
            "pairs-judge": lambda: build_pairs(run, PairsConfig(source="judge")),
            "pairs-pairrm": lambda: build_pairs(run, PairsConfig(source="pairrm")),
            "compare": lambda: compare_run(run, CompareConfig()),
            "iterate": lambda: iterate.run(run, IterateConfig()),
            "push": lambda: push_run(run, PushConfig(dry_run=True))}


@pytest.mark.parametrize("stage", list(stage_calls(Run(Path("/nonexistent")))))
def test_every_writing_stage_refuses_while_another_process_holds_its_lock(run, stage):
    add_samples(run, n=1, k=2)
    with run.lock(stage):
        before = snapshot(run)
        with pytest.raises(LabError, match=f"{stage} is already running on run 't'"):
            stage_calls(run)[stage]()
        assert snapshot(run) == before  # nothing written


def snapshot(run: Run) -> dict:
    return {str(p.relative_to(run.path)): p.read_bytes() for p in run.path.rglob("*") if p.is_file()}


def test_the_app_refuses_to_start_a_job_while_a_terminal_runs_that_stage(run):
    from lab import jobs
    from lab.ui.sample import start_sampling

    with run.lock("sample"), pytest.raises(gr.Error, match="sample is already running on run 't'"):
        start_sampling("t", "tiny-random", "bundled", None, 1, 1, 0.8, 0.95, 4, 0, 4)
    assert jobs.status(run)["state"] == "none"


# ---- two real processes at once -------------------------------------------------------------------------------------
def cli(runs_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LAB_RUNS_DIR": str(runs_dir), **(env or {})})


def second_while_first_works(first: subprocess.Popen, started, second_args, runs_dir, env=None):
    """Wait until the first process has done some work (started()), hold it there (SIGSTOP, so the second surely
    finds it mid-stage however slow this machine is), run the second to its end, then let the first go on."""
    deadline = time.time() + 180
    while not started() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = cli(runs_dir, *second_args, env=env)
        out, err = second.communicate(timeout=180)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=300)
    return second.returncode, err, first.returncode, first_err


def test_two_judges_at_once_make_the_plans_calls_once(run, runs_dir):
    add_samples(run, n=2, k=4)  # knockout: 2 x 2(K-1) = 12 calls
    with FakeProvider(key=KEY, answer=prefer_higher, latency_s=0.3) as fp:  # slow responses
        env = {"GROQ_API_KEY": KEY, "GROQ_BASE_URL": fp.url}
        argv = ["judge", "--run", "t", "--backend", "groq", "--model", "m", "--rpm", "0", "--concurrency", "2"]
        first = cli(runs_dir, *argv, env=env)
        rc2, err2, rc1, err1 = second_while_first_works(first, lambda: fp.calls >= 1, argv, runs_dir, env)
    assert rc2 == 2 and "judge is already running on run 't'" in err2 and "Traceback" not in err2
    assert rc1 == 0, err1
    records = run.read("judgments")
    assert fp.calls == 12 and len(records) == 12 and len({r["cache_key"] for r in records}) == 12


@pytest.mark.slow  # two processes sampling on tiny-random: about 30 s here
def test_two_samplers_at_once_write_each_record_once(run, runs_dir, tmp_path, tiny):
    src = tmp_path / "p.txt"
    src.write_text("".join(f"Prompt number {i}: say something.\n" for i in range(6)))
    argv = ["sample", "--run", "t", "--model", "tiny-random", "--instructions", str(src), "--n", "6", "--k", "2",
            "--max-new-tokens", "8", "--batch-size", "1"]
    first = cli(runs_dir, *argv)
    rc2, err2, rc1, err1 = second_while_first_works(first, lambda: len(run.read("samples")) >= 1, argv, runs_dir)
    assert rc2 == 2 and "sample is already running on run 't'" in err2 and "Traceback" not in err2
    assert rc1 == 0, err1
    keys = [(s["instruction_id"], s["sample_index"]) for s in run.read("samples")]
    assert len(keys) == len(set(keys)) == 12
