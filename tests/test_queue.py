"""The job queue (lab.jobs): one job at a time, the others wait in order, each sees its place, Stop cancels a
waiting job, and a key typed for a waiting job stays in the app's memory only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import jobs
from lab.errors import LabError
from lab.judge_backends import TYPED_KEY_ENV
from lab.store import Run
from lab.ui.common import status_text
from tests.fakeprovider import FakeProvider
from tests.test_judge import add_samples, prefer_higher

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-queued-0123456789abcdefQUEUED"


def long_job(run: Run, src: Path) -> dict:
    """A sampling job that holds the machine until it is stopped (40 instructions of 200 tokens, one at a time: tens
    of seconds of tiny-random decoding)."""
    return jobs.start(run, ["sample", "--run", run.name, "--model", "tiny-random", "--instructions", str(src),
                            "--n", "40", "--k", "1", "--max-new-tokens", "200", "--batch-size", "1"], "Sampling")


def quick_job(run: Run, **kw) -> dict:
    """A job that ends at once (`pairs` on a run with no verdicts fails with a message): enough to see it start."""
    return jobs.start(run, ["pairs", "--run", run.name, "--source", "judge"], f"Pairs {run.name}", **kw)


@pytest.fixture
def prompts(tmp_path) -> Path:
    src = tmp_path / "p.txt"
    src.write_text("\n".join(f"Say something about the number {i}." for i in range(40)))
    return src


def wait_running(run: Run, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while jobs.status(run)["state"] != "running":
        assert time.time() < deadline, jobs.status(run)
        time.sleep(0.1)


def test_jobs_wait_in_order_see_their_place_and_can_be_cancelled(runs_dir, prompts, tiny):
    head, b, c, d = (Run.open(n) for n in ("head", "b", "c", "d"))
    for r in (b, c, d):
        r.path.mkdir(parents=True)
    long_job(head, prompts)
    try:
        places = [quick_job(r) for r in (b, c, d)]
        assert [(p["state"], p["position"], p["ahead"]) for p in places] == [("queued", 2, 1), ("queued", 3, 2),
                                                                             ("queued", 4, 3)]
        assert status_text(jobs.status(c)) == ("**Pairs c** queued: 3rd in line, 2 jobs ahead. It starts by itself; "
                                               "Stop takes it out of the queue.")
        with pytest.raises(LabError, match="A job is already queued on run 'b'"):
            quick_job(b)
        cancelled = jobs.stop(b)  # Stop on a waiting job takes it out of the queue
        assert cancelled["state"] == "stopped" and "Cancelled while it waited" in cancelled["error"]
        assert (jobs.status(c)["position"], jobs.status(d)["position"]) == (2, 3)  # everyone moves up
        assert jobs.pump() is None  # the machine is still busy: nothing starts
    finally:
        jobs.stop(head, grace_s=30)
    ended = {r.name: jobs.wait(r, timeout_s=120) for r in (c, d)}
    assert all(st["state"] == "failed" for st in ended.values())  # they ran (and said why pairs failed)
    assert ended["c"]["started"] < ended["d"]["started"]  # first come, first served
    assert "pid" not in jobs.status(b) and jobs.queued() == []  # the cancelled one never ran


def test_a_job_starts_at_once_when_the_machine_is_free(runs_dir):
    run = Run.open("free")
    run.path.mkdir(parents=True)
    st = quick_job(run)
    assert "pid" in st and st["state"] in ("running", "failed")
    assert jobs.wait(run, timeout_s=60)["state"] == "failed"


def secret_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_typed_key_waits_in_memory_only_and_reaches_its_job(runs_dir, prompts, tiny):
    """While the judge job waits, its key is in no file under the runs root; once it starts, its calls carry it."""
    head, judged = Run.open("head"), Run.open("keyed")
    add_samples(judged, n=1, k=2)
    with FakeProvider(key=SECRET, answer=prefer_higher) as fp:
        long_job(head, prompts)
        try:
            argv = ["judge", "--run", judged.name, "--backend", "openai", "--model", "m", "--rpm", "0",
                    "--base-url", fp.url + "/v1"]
            assert jobs.start(judged, argv, "Judging", secret_env={TYPED_KEY_ENV["openai"]: SECRET})["state"] == "queued"
            entry = jobs.queued()[0]
            assert entry["needs_key"] is True and SECRET not in json.dumps(entry)
            assert secret_files(runs_dir) == []
        finally:
            jobs.stop(head, grace_s=30)
        st = jobs.wait(judged, timeout_s=120)
    assert st["state"] == "done" and fp.calls == 2, st.get("log_tail")  # the provider accepted the typed key
    assert secret_files(runs_dir) == []


QUEUE_IN_ANOTHER_PROCESS = """
import sys
from lab import jobs
from lab.store import Run
run = Run.open("keyed")
run.path.mkdir(parents=True, exist_ok=True)
st = jobs.start(run, ["pairs", "--run", run.name], "keyed", secret_env={"GROQ_API_KEY": sys.argv[1]})
print(st["state"])
"""


@pytest.mark.slow
def test_a_queued_job_whose_key_was_lost_in_a_restart_is_dropped_with_a_message(runs_dir, prompts, tiny):
    """The app that queued the job (here a separate process) ends while the job waits: its key is gone with it,
    so the next app drops the job with a message instead of running it without the key."""
    head, keyed = Run.open("head"), Run.open("keyed")
    long_job(head, prompts)
    try:
        out = subprocess.run([sys.executable, "-c", QUEUE_IN_ANOTHER_PROCESS, SECRET], cwd=ROOT, text=True,
                             capture_output=True, timeout=60, env={**os.environ, "LAB_RUNS_DIR": str(runs_dir)})
        assert out.stdout.strip() == "queued", out.stderr
    finally:
        jobs.stop(head, grace_s=30)
    st = jobs.wait(keyed, timeout_s=60)
    assert st["state"] == "failed" and "app restarted while it waited" in st["error"] and "pid" not in st
    assert jobs.queued() == []
    assert secret_files(runs_dir) == []
