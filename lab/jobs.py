"""Long work in a child process that the app can follow, stop and re-attach to; one job at a time, the rest queued.

A job is `python -m lab <stage> ...` (the same command a terminal runs) started in its own process group, with its
state on disk so that a page reload, or a restarted app, finds it again:

    runs/<run>/jobs/job.json       {"ticket", "argv", "label", "queued"} while it waits; + "pid", "started" once it runs
    runs/<run>/jobs/progress.json  written by lab.progress.Progress in the child
    runs/<run>/jobs/log.txt        the child's stdout and stderr
    runs/<run>/jobs/exit.json      {"returncode", "state", "error", "ui_error"}, written by the child as it ends (or
                                   by the app for a job cancelled, or dropped, before it ran); "error" is the message
                                   for a terminal, "ui_error" the same in the app's words (lab.errors) or null

One job runs per machine at a time (models fill memory): `<runs root>/.active-job` names the run that has it. Jobs
started meanwhile wait in a first-come queue, one file per job:

    <runs root>/.queue/<ticket>.json   {"ticket", "run", "argv", "label", "queued", "needs_key"}

The ticket (nanoseconds + random) orders the queue. The app's process pumps it (`pump`: from a thread the app
starts, at every `start` and in `wait`): once the machine is free, the oldest entry starts. A run has at most one job
queued or running. An API key typed into the page for a queued job waits in this process's memory only (`_KEYS`),
never in a file; an entry whose key is gone (the app restarted) is dropped with a message in its run's exit.json.
Changes to the queue hold `<runs root>/.queue.lock` (flock), so two processes never start two jobs.
"""
from __future__ import annotations

import contextvars
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lab import limits
from lab.errors import LabError
from lab.judge_backends import BASE_URL_ENV, KEY_ENV, TYPED_KEY_ENV
from lab.store import JOB_FILES, Run, atomic_write_json, atomic_write_text, check_writable, root_file, runs_root

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
    marker = _read(root_file("active_job"))
    if not marker or not _alive(int(marker["pid"])):
        return None
    if Run(Path(marker["run"])).job_file("exit").exists():
        return None  # it has reported its end and is only tearing down: the app already shows it finished
    return Path(marker["run"]), int(marker["pid"])


LOST_KEY = ("Dropped from the queue: it was to use an API key typed into the page, and the app restarted while it "
            "waited (typed keys are never saved). Start it again and type the key again.")
_KEYS: dict[str, dict[str, str]] = {}  # ticket -> the typed credentials of a queued job, in this process only
_LOCK = threading.Lock()  # with the flock below: never nested (a second flock of this process would wait forever)
_PUMPER: list[threading.Thread] = []


def _queue_dir() -> Path:
    return root_file("queue")


@contextmanager
def _queue_lock() -> Iterator[None]:
    """Hold the queue (threads of this process, and other processes) while it changes."""
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(root_file("queue_lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def queued() -> list[dict]:
    """The queue's entries, oldest first."""
    folder = _queue_dir()
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [e for e in (_read(p) for p in paths) if e and e.get("ticket")]


def start(run: Run, argv: list[str], label: str, secret_env: dict[str, str] | None = None,
          who: str | None = None, where: str | None = None) -> dict:
    """Queue `python -m lab *argv` for `run` and start it at once if the machine is free. -> status(run).
    Refused while the run already has a job queued or running, and on a hosted app past the queue's caps
    (check_queue: who = the visitor's key, where = a hash of their address).

    secret_env: credentials for this job alone (an API key a visitor typed into the page, as $LAB_API_KEY_<BACKEND>;
    the owner's Hub token for a model the owner lets visitors use, lab.limits.owner_token). They
    reach only the child's environment: never argv (visible to every user in `ps`), job.json, the queue, the log or
    any other file; while the job waits in the queue they stay in this process's memory. With a typed key in
    secret_env the child does not inherit the owner's provider keys (lab.judge_backends.KEY_ENV): a visitor's job
    runs on the visitor's key alone; without it, no typed key reaches the child. On a hosted app the child inherits
    only an allow-list of the app's environment (job_env).
    The child gets this process's runs root ($LAB_RUNS_DIR), so the run name in argv means the same run there.
    """
    check_writable(run.jobs_dir)
    with _queue_lock():
        st = status(run)
        if st["state"] in ("queued", "running"):
            raise LabError(f"A job is already {st['state']} on run {run.name!r} ({st.get('label', 'a job')}): wait "
                           "for it to finish, or stop it first.")
        check_queue(who, where)
        ticket = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        entry = {"ticket": ticket, "run": str(run.path), "argv": argv, "label": label, "queued": time.time(),
                 "needs_key": bool(secret_env), "who": who, "where": where}
        if secret_env:
            _KEYS[ticket] = dict(secret_env)
        atomic_write_json(_queue_dir() / f"{ticket}.json", entry)  # the entry first: job.json always finds it
        atomic_write_json(run.job_file("job"), {k: entry[k] for k in ("ticket", "argv", "label", "queued")})
        for kind in ("progress", "exit"):
            run.job_file(kind).unlink(missing_ok=True)
        atomic_write_text(run.job_file("log"), "Queued: it starts when the machine is free.\n")
    pump()
    return status(run)


def _holders() -> list[dict]:
    """The queue's entries plus the running job's (as {"who", "where"}), for the caps."""
    running = active_job()
    job = _read(Run(running[0]).job_file("job")) if running else None
    return queued() + ([job] if job else [])


def check_queue(who: str | None, where: str | None) -> None:
    """On a hosted app: at most LAB_MAX_QUEUE jobs waiting or running, one per visitor, two per address (a visitor
    may mint new browser ids; an address is harder to multiply)."""
    holders = _holders()
    limit = limits.cap("queue")
    if limit is not None and len(holders) >= limit:
        raise LabError(f"This app's queue is full ({len(holders)} jobs waiting or running; the owner sets "
                       "LAB_MAX_QUEUE): try again in a while.")
    if who and any(h.get("who") == who for h in holders):
        raise LabError("You already have a job waiting or running on this app: wait for it to finish, or stop it, "
                       "before you start another.")
    if where and sum(h.get("where") == where for h in holders) >= 2:
        raise LabError("Two jobs from your network are already waiting or running on this app: wait for one to "
                       "finish before you start another.")


def _enforce_time_limit() -> None:
    """Stop the running job once it has run longer than LAB_MAX_JOB_MINUTES (a hosted app's default: 60): SIGTERM
    first, then a kill of its process group if it is still there a minute later."""
    limit, running = limits.cap("job_minutes"), active_job()
    if limit is None or running is None:
        return
    run = Run(running[0])
    job = _read(run.job_file("job")) or {}
    over = time.time() - job.get("started", time.time()) - limit * 60
    if over > 0:
        os.killpg(running[1], signal.SIGKILL if over > 60 else signal.SIGTERM)
        if over > 60:
            atomic_write_json(run.job_file("exit"), {"returncode": -9, "state": "stopped", "error":
                              f"Stopped: it ran past this app's limit of {limits.cap('job_minutes'):g} minutes a job "
                              "(the owner sets LAB_MAX_JOB_MINUTES). What it finished is saved."})


def pump() -> dict | None:
    """Start the oldest queued job if no job holds the machine. -> the job started, or None. It runs outside any
    read-only guard of the caller (lab.store.read_only): starting the queue's head is the machine's business."""
    return contextvars.Context().run(_pump)


def _pump() -> dict | None:
    if not runs_root().is_dir():  # no runs root, no queue: looking never creates the folder (a test's, a new app's)
        return None
    _enforce_time_limit()
    with _queue_lock():
        if active_job():
            return None
        for entry in queued():
            path, run = _queue_dir() / f"{entry['ticket']}.json", Run(Path(entry["run"]))
            key = _KEYS.pop(entry["ticket"], None)
            if not run.path.is_dir() or (entry.get("needs_key") and key is None):
                if run.path.is_dir():
                    _end(run, "failed", LOST_KEY)
                path.unlink(missing_ok=True)
                continue
            job = _launch(run, entry, key)
            path.unlink(missing_ok=True)  # after job.json has the pid: status never sees the job in neither place
            return job
    return None


# What a job on a hosted app inherits from the app's environment: these names and prefixes only (an allow-list: a
# secret the owner adds later, WANDB_API_KEY or OAUTH_CLIENT_SECRET say, never reaches a visitor's job). Names under
# an allowed prefix that look like a credential (CREDENTIAL: LAB_BROWSER_SECRET, a typed LAB_API_KEY_*) are dropped;
# job_env adds the owner's provider keys (KEY_ENV) back for a job that brings no typed key of its own.
JOB_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "SPACE_ID", "SYSTEM",
    "SPACE_HOST", "SPACE_AUTHOR_NAME", "SPACE_REPO_NAME", "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTORCH_CUDA_ALLOC_CONF", "GRADIO_ANALYTICS_ENABLED", "TORCH_HOME",
    "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE", "TRL_EXPERIMENTAL_SILENCE", "PYTHONHASHSEED", "PYTHONWARNINGS",
    "PYTHONDONTWRITEBYTECODE", "VLLM_CPU_KVCACHE_SPACE", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE"})
JOB_ENV_PREFIXES = ("LC_", "LAB_", "HF_HUB_", "HF_HOME", "HF_DATASETS_", "HF_XET_", "HF_ENDPOINT", "HF_ASSETS_")
CREDENTIAL = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH)", re.IGNORECASE)


def job_env(secret_env: dict[str, str] | None) -> dict[str, str]:
    """The environment a job starts with, before the lab's own job variables. Off a hosted app: the app's, less the
    typed-key variables (and the owner's provider keys when secret_env brings the visitor's own). On one: the
    allow-list above, the owner's provider URLs, the owner's provider keys only for a job without a typed key, and
    HF_HUB_DISABLE_IMPLICIT_TOKEN=1 unless the owner's Hub token is handed to this job (secret_env's HF_TOKEN), so
    huggingface_hub never sends the owner's saved login (~/.cache/huggingface/token) for a visitor's download."""
    typed = set(TYPED_KEY_ENV.values())
    brings_key = bool(typed & set(secret_env or {}))
    if not limits.hosted():
        dropped = typed | (set(KEY_ENV.values()) if brings_key else set())
        return {**{k: v for k, v in os.environ.items() if k not in dropped}, **(secret_env or {})}
    env = {k: v for k, v in os.environ.items()
           if k in JOB_ENV_NAMES or (k.startswith(JOB_ENV_PREFIXES) and not CREDENTIAL.search(k))}
    owner = {*BASE_URL_ENV.values(), *(() if brings_key else KEY_ENV.values())}  # a typed key goes to the owner's URL
    env.update({k: v for k, v in os.environ.items() if k in owner})
    env.update(secret_env or {})
    if "HF_TOKEN" not in env:
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    return env


def _launch(run: Run, entry: dict, secret_env: dict[str, str] | None) -> dict:
    jobs = run.jobs_dir
    jobs.mkdir(parents=True, exist_ok=True)
    env = {**job_env(secret_env), "LAB_RUNS_DIR": str(runs_root()), "LAB_PROGRESS_FILE": str(run.job_file("progress")),
           "LAB_JOB_DIR": str(jobs), "PYTHONUNBUFFERED": "1"}
    with open(run.job_file("log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lab", *entry["argv"]], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    job = {"ticket": entry["ticket"], "pid": proc.pid, "argv": entry["argv"], "label": entry["label"],
           "queued": entry["queued"], "started": time.time(), "who": entry.get("who"), "where": entry.get("where")}
    atomic_write_json(run.job_file("job"), job)
    atomic_write_json(root_file("active_job"), {"run": str(run.path), "pid": proc.pid})
    return job


def _end(run: Run, state: str, error: str) -> None:
    atomic_write_json(run.job_file("exit"), {"returncode": None, "state": state, "error": error})


def start_pumping(interval_s: float = 1.0) -> None:
    """Pump the queue from a daemon thread of this process, once a second (the app calls this once)."""
    if _PUMPER:
        return

    def loop() -> None:
        while True:
            try:
                pump()
            except Exception as e:  # a full disk or a vanished folder must not end the app's queue for good
                print(f"job queue: {type(e).__name__}: {e}", file=sys.stderr)
            time.sleep(interval_s)

    _PUMPER.append(threading.Thread(target=loop, name="lab-job-queue", daemon=True))
    _PUMPER[0].start()


def place(ticket: str | None) -> dict | None:
    """{"position": 1-based place in line, "ahead": jobs before it (the running one included)}, or None if the
    ticket is not queued."""
    tickets = [e["ticket"] for e in queued()]
    if ticket not in tickets:
        return None
    ahead = tickets.index(ticket) + (1 if active_job() else 0)
    return {"position": ahead + 1, "ahead": ahead}


def cancel(run: Run) -> dict:
    """Take the run's queued job out of the queue (a running one is left alone: see stop). -> status(run)."""
    check_writable(run.jobs_dir)
    with _queue_lock():
        job = _read(run.job_file("job")) or {}
        if job.get("ticket") and "pid" not in job and place(job["ticket"]) is not None:
            _end(run, "stopped", "Cancelled while it waited in the queue; nothing ran.")
            (_queue_dir() / f"{job['ticket']}.json").unlink(missing_ok=True)
            _KEYS.pop(job["ticket"], None)
    return status(run)


def status(run: Run) -> dict:
    """What the run's latest job is doing: state is none | queued | running | done | failed | stopped | died.
    A queued job also has "position" and "ahead" (see place)."""
    job = _read(run.job_file("job"))
    if not job:
        return {"state": "none"}
    out = {**job, "progress": _read(run.job_file("progress")), "log_tail": log_tail(run)}
    end = _read(run.job_file("exit"))
    if end:
        return {**out, **end}
    if "pid" not in job:
        where = place(job.get("ticket"))
        if where is None:
            return {**out, "state": "died", "error": "The queued job left the queue without starting; start it again."}
        return {**out, "state": "queued", **where}
    if _alive(int(job["pid"])):
        return {**out, "state": "running"}
    return {**out, "state": "died", "error": "The job ended without reporting (killed?); see its log."}


def log_tail(run: Run, chars: int = 4000) -> str:
    path = run.job_file("log")
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")


def stop(run: Run, grace_s: float = 30.0, wait: bool = True) -> dict:
    """Ask the job to stop at its next safe point (SIGTERM); kill its process group if it has not after grace_s.
    A job still in the queue is cancelled. wait=False returns at once and escalates from a thread (the app: a
    handler that waits 30 s would hold up every visitor's Stop)."""
    check_writable(run.jobs_dir)
    job = _read(run.job_file("job"))
    if job and "pid" not in job:
        return cancel(run)
    if not job or not _alive(int(job["pid"])):
        return status(run)
    pid = int(job["pid"])
    os.killpg(pid, signal.SIGTERM)
    if not wait:
        threading.Timer(grace_s, _kill_if_alive, (run, pid)).start()
        return status(run)
    deadline = time.time() + grace_s
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    _kill_if_alive(run, pid)
    return status(run)


def _kill_if_alive(run: Run, pid: int) -> None:
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        atomic_write_json(run.job_file("exit"), {"returncode": -9, "state": "stopped",
                                                 "error": KILLED})


KILLED = ("Killed: it did not reach a safe point to stop at in time. What its stages had finished is saved; start "
          "it again to resume from there.")


def report_exit(returncode: int, state: str, error: str | None = None, ui_error: str | None = None) -> None:
    """Called by the CLI in a job child as it ends (no-op outside a job)."""
    jobs = os.environ.get("LAB_JOB_DIR")
    if jobs:
        atomic_write_json(Path(jobs) / JOB_FILES["exit"], {"returncode": returncode, "state": state, "error": error,
                                                           "ui_error": ui_error})


def wait(run: Run, timeout_s: float = 600.0, poll_s: float = 0.2) -> dict:
    """Block until the run's job is no longer queued or running, pumping the queue meanwhile (tests, scripts)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        pump()
        st = status(run)
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(poll_s)
    raise TimeoutError(f"job on run {run.name} still running after {timeout_s} s")
