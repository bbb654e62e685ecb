"""Long work in a child process that the app can follow, stop and re-attach to.

A job is `python -m lab <stage> ...` (the same command a terminal runs) started in its own process group, with its
state on disk so that a page reload, or a restarted app, finds it again:

    runs/<run>/jobs/job.json       {"pid", "argv", "label", "started"}
    runs/<run>/jobs/progress.json  written by lab.progress.Progress in the child
    runs/<run>/jobs/log.txt        the child's stdout and stderr
    runs/<run>/jobs/exit.json      {"returncode", "state", "error"}, written by the child as it ends

Only one job runs per machine at a time (models fill memory): `<runs root>/.active-job` names the run that has it;
starting another while it lives is refused with a message that says which one to wait for or stop.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.errors import LabError
from lab.judge_backends import KEY_ENV, TYPED_KEY_ENV
from lab.store import Run, atomic_write_json, runs_root

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of this process counts as finished
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def active_job() -> tuple[Path, int] | None:
    """(run path, pid) of the job that holds the machine, if it is still alive."""
    marker = _read(runs_root() / ".active-job")
    if not marker or not _alive(int(marker["pid"])):
        return None
    if (Path(marker["run"]) / "jobs" / "exit.json").exists():
        return None  # it has reported its end and is only tearing down: the app already shows it finished
    return Path(marker["run"]), int(marker["pid"])


def start(run: Run, argv: list[str], label: str, secret_env: dict[str, str] | None = None) -> dict:
    """Start `python -m lab *argv` for `run`. Refuses while any job is running.

    secret_env: credentials for this job alone (an API key a visitor typed into the page, as $LAB_API_KEY). They
    reach only the child's environment: never argv (visible to every user in `ps`), job.json, the log or any other
    file. With secret_env the child does not inherit the owner's provider keys (lab.judge_backends.KEY_ENV): a
    visitor's job runs on the visitor's key alone; without it, no $LAB_API_KEY reaches the child.
    The child gets this process's runs root ($LAB_RUNS_DIR), so the run name in argv means the same run there.
    """
    busy = active_job()
    if busy:
        raise LabError(f"Another job is running on this machine (run '{busy[0].name}'): wait for it or stop it first.")
    jobs = run.jobs_dir
    jobs.mkdir(parents=True, exist_ok=True)
    for name in ("progress.json", "exit.json"):
        (jobs / name).unlink(missing_ok=True)
    dropped = {TYPED_KEY_ENV, *(KEY_ENV.values() if secret_env else ())}  # only secret_env may set a typed key
    env = {**{k: v for k, v in os.environ.items() if k not in dropped}, **(secret_env or {}),
           "LAB_RUNS_DIR": str(runs_root()), "LAB_PROGRESS_FILE": str(jobs / "progress.json"),
           "LAB_JOB_DIR": str(jobs), "PYTHONUNBUFFERED": "1"}
    with open(jobs / "log.txt", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lab", *argv], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    job = {"pid": proc.pid, "argv": argv, "label": label, "started": time.time()}
    atomic_write_json(jobs / "job.json", job)
    atomic_write_json(runs_root() / ".active-job", {"run": str(run.path), "pid": proc.pid})
    return job


def status(run: Run) -> dict:
    """What the run's latest job is doing: state is none | running | done | failed | stopped | died."""
    jobs = run.jobs_dir
    job = _read(jobs / "job.json")
    if not job:
        return {"state": "none"}
    out = {**job, "progress": _read(jobs / "progress.json"), "log_tail": log_tail(run)}
    end = _read(jobs / "exit.json")
    if end:
        return {**out, **end}
    if _alive(int(job["pid"])):
        return {**out, "state": "running"}
    return {**out, "state": "died", "error": "The job ended without reporting (killed?); see its log."}


def log_tail(run: Run, chars: int = 4000) -> str:
    path = run.jobs_dir / "log.txt"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")


def stop(run: Run, grace_s: float = 30.0) -> dict:
    """Ask the job to stop at its next safe point (SIGTERM); kill its process group if it has not after grace_s."""
    job = _read(run.jobs_dir / "job.json")
    if not job or not _alive(int(job["pid"])):
        return status(run)
    pid = int(job["pid"])
    os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        atomic_write_json(run.jobs_dir / "exit.json", {"returncode": -9, "state": "stopped",
                                                       "error": "Killed after it did not stop in time."})
    return status(run)


def report_exit(returncode: int, state: str, error: str | None = None) -> None:
    """Called by the CLI in a job child as it ends (no-op outside a job)."""
    jobs = os.environ.get("LAB_JOB_DIR")
    if jobs:
        atomic_write_json(Path(jobs) / "exit.json", {"returncode": returncode, "state": state, "error": error})


def wait(run: Run, timeout_s: float = 600.0, poll_s: float = 0.2) -> dict:
    """Block until the run's job is no longer running (for tests and scripts)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = status(run)
        if st["state"] != "running":
            return st
        time.sleep(poll_s)
    raise TimeoutError(f"job on run {run.name} still running after {timeout_s} s")
