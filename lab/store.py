"""The run directory: the single source of truth, and the only module that knows file names.

    runs/<run>/
      run.json                resolved settings of every stage that ran (never a secret)
      instructions.jsonl      lab.instructions.Instruction records
      samples.jsonl           lab.sample.Sample records
      judgments.jsonl         lab.judge records
      rankings.jsonl          lab.rank records
      spotcheck.jsonl         human verdicts on judged pairs (lab.spotcheck)
      pairs-<source>.jsonl    TRL conversational pairs (lab.pairs)
      adapters/<name>/        PEFT adapter + metrics.jsonl + settings + card (lab.train)
      compare.jsonl           lab.compare records
      iterations/<k>/         a nested Run for round k of self-rewarding DPO
      jobs/                   the child process that works on this run now (lab.jobs)
      hub/<repo>/             the exact folders pushed to the Hub, or that `push --dry-run` would push (lab.hub)
      push.jsonl              one line per repo pushed: its link (lab.hub)

JSONL files are append-only. Each append writes whole lines in one `write`, then flushes and fsyncs, so a crash
loses at most the records in flight. A torn last line (a kill mid-write) is ignored by readers and cut off by the
next append, so it never corrupts what follows. Whole-file writes (run.json, pairs) go to a temporary file that is
renamed into place: a reader sees the old file or the new one, never half of one.

Beside the runs, `<runs root>/.locks/` holds one lock file per run and stage (Run.lock), outside the run folder so
that a stage refused for bad input leaves its run exactly as it was.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lab.errors import LabError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# credential-like names ("token", "hf_token", "api_key"...), but not counts such as "max_new_tokens"
SECRET_KEY = re.compile(r"(api_?key|(^|_)token$|secret|password|authorization)", re.IGNORECASE)
# the userinfo of a URL ("http://user:sk-...@host/v1"): a credential that must never be recorded
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]+@")

FILES = {
    "instructions": "instructions.jsonl",
    "samples": "samples.jsonl",
    "judgments": "judgments.jsonl",
    "rankings": "rankings.jsonl",
    "spotcheck": "spotcheck.jsonl",
    "compare": "compare.jsonl",
    "notes": "notes.json",
    "iterate": "iterate.jsonl",
    "compare_scoring": "compare-scoring",  # a folder of nested Runs: the comparison judged by lab.judge / lab.rank
    "judge_prompt": "judge-prompt.txt",  # the prompt template the last judge run used (lab.judge)
    "compare_scores": "compare-scores.json",
    "compare_csv": "compare.csv",  # exports of the comparison grid
    "compare_md": "compare.md",
    "compare_grid": "compare-grid.jsonl",
    "scores": "scores.jsonl",  # self-rewarding 5-point scores of one round (lab.iterate)
    "push": "push.jsonl",
    "hub": "hub",  # a folder: one staged repo per subfolder
}


def runs_root() -> Path:
    """Where run names resolve: $LAB_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("LAB_RUNS_DIR", "runs")).resolve()


def validate_run_name(name: str) -> str:
    if not RUN_NAME.match(name or "") or ".." in name:
        raise LabError(
            f"Invalid run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(no slashes, no '..')."
        )
    return name


def redact_userinfo(text: str) -> str:
    """Cut the user:password part out of every URL in text: "http://u:sk-1@host/v1" -> "http://***@host/v1"."""
    return URL_USERINFO.sub(r"\1***@", text)


def scrub(settings: Any) -> Any:
    """Drop every field whose name looks like a credential and the userinfo of every URL in a string, at any depth:
    run.json and cards must never hold one."""
    if isinstance(settings, dict):
        return {k: scrub(v) for k, v in settings.items() if not SECRET_KEY.search(str(k))}
    if isinstance(settings, (list, tuple)):
        return [scrub(v) for v in settings]
    return redact_userinfo(settings) if isinstance(settings, str) else settings


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_folder(target: Path, build: Callable[[Path], None],
                 complete: Callable[[Path], bool] | None = None) -> Path:
    """Build a folder in a temp dir beside `target`, then rename it into place: a crash or a failed build never
    leaves half a folder that looks complete, and a failed rebuild leaves the previous one untouched.
    With `complete` (build-once caches), a target that already passes it is kept and the build skipped."""
    import shutil

    if complete and complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        if complete and complete(target):  # another process finished the same build first
            shutil.rmtree(tmp)
            return target
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _cut_torn_tail(path: Path) -> None:
    """If a kill left a last line without its newline, drop that partial record before appending."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        while True:
            f.seek(size - block)
            data = f.read(block)
            cut = data.rfind(b"\n")
            if cut >= 0 or block == size:
                f.truncate(size - block + cut + 1 if cut >= 0 else 0)
                return
            block = min(size, block * 2)


def append_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Append records as whole lines, durably. Returns how many were written."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _cut_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    return lines.count("\n")


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Yield the complete records of a JSONL file; a torn last line (no newline) is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise LabError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or delete that line.") from e


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Replace a whole JSONL file atomically (for derived files such as pairs)."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)


class Run:
    """One run directory. Construct with `Run.open(name)`; stages read and write through it.

    `Run(path)` is for the folders the lab builds itself (iterations/<k>, compare-scoring/<tag>), never for a name
    or path someone typed."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()

    @classmethod
    def open(cls, name: str, create: bool = True) -> "Run":
        """The run called `name` under `runs_root()`. A run is a plain name (RUN_NAME) in the CLI, the app and its
        API alike: a path (`a/b`, `/abs`, `..`) is refused, so no one can make the lab write outside the runs root."""
        run = cls(runs_root() / validate_run_name(str(name).strip()))
        if not create and not run.path.is_dir():
            raise LabError(f"No run named '{run.name}' under the runs root: start one with "
                           f"`python -m lab sample --run {run.name} ...` (or the Sample tab).")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, kind: str) -> Path:
        """Path of a known record file, e.g. run.file("samples")."""
        return self.path / FILES[kind]

    def pairs_file(self, source: str) -> Path:
        return self.path / f"pairs-{validate_run_name(source)}.jsonl"

    def pair_sources(self) -> list[str]:
        """Sources that have a pairs file, e.g. ["judge", "pairrm"]."""
        names = (p.name[len("pairs-"):-len(".jsonl")] for p in self.path.glob("pairs-*.jsonl"))
        return sorted(n for n in names if RUN_NAME.match(n))

    def adapter_dir(self, name: str) -> Path:
        return self.path / "adapters" / validate_run_name(name)

    def adapters(self) -> list[str]:
        """Names of complete adapters (a folder counts once its adapter_config.json is in place)."""
        root = self.path / "adapters"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").exists())

    def upload_path(self, suffix: str, kind: str = "instructions") -> Path:
        """Where a file the user uploaded in the app is kept: kind "instructions" (training) or "heldout"."""
        suffix = suffix if re.match(r"^\.[a-z]{1,5}$", suffix) else ".txt"
        kind = kind if kind in ("instructions", "heldout") else "instructions"
        return self.path / "uploads" / f"{kind}{suffix}"

    def iteration(self, k: int) -> "Run":
        return Run(self.path / "iterations" / str(int(k)))

    def iterations(self) -> list[int]:
        """Numbers of the self-rewarding rounds that have a folder, in order."""
        root = self.path / "iterations"
        return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"

    @contextmanager
    def lock(self, stage: str) -> Iterator[None]:
        """Hold this run's lock for `stage` (e.g. "judge", "pairs-pairrm") while the block runs; a second process
        asking for it is refused at once with a LabError (two writers would duplicate records or calls).

        flock on the stage's lock file (_lock_file), non-blocking; the kernel drops the lock when the process dies, so
        a kill never leaves a stale lock. The file is never deleted (deleting it would let two processes lock two
        files)."""
        with open(self._lock_file(stage), "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(stage, f) from None
            f.truncate(0)
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def check_unlocked(self, stage: str) -> None:
        """Raise the "already running" LabError if another process holds the lock for `stage` (the app's check
        before it starts a job); holds nothing afterwards."""
        if self._lock_file(stage, create=False).exists():
            with self.lock(stage):
                pass

    def _lock_file(self, stage: str, create: bool = True) -> Path:
        """<runs root>/.locks/<run name>-<stage>-<hash of the run's path>.lock: the hash tells nested runs (round
        "1" of two runs) apart; the file lives outside the run so that locking writes nothing into it."""
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        path = runs_root() / ".locks" / f"{self.name}-{validate_run_name(stage)}-{digest}.lock"
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _busy(self, stage: str, f) -> LabError:
        f.seek(0)
        pid = f.read().strip()
        return LabError(f"{stage} is already running on run '{self.name}'" + (f" (process {pid})" if pid else "") +
                        ": wait for it to finish or stop it (the app's Stop button, or Ctrl-C in its terminal), "
                        "then run this again.")

    def read(self, kind: str) -> list[dict]:
        return read_jsonl(self.file(kind))

    def append(self, kind: str, records: Iterable[dict]) -> int:
        return append_jsonl(self.file(kind), records)

    # run.json: one entry per stage, the settings it last ran with
    def settings(self) -> dict:
        p = self.path / "run.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {"stages": {}}

    def record_stage(self, stage: str, settings: dict) -> None:
        """Set run.json's entry for `stage` (scrubbed). Read-modify-write under a blocking lock, so two stages
        running at once on the run (sample and rank, say) never drop each other's entry."""
        with open(self._lock_file("run-json"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            data = self.settings()
            data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            data.setdefault("stages", {})[stage] = {**scrub(settings), "updated": now}
            atomic_write_json(self.path / "run.json", data)

    def stage_settings(self, stage: str) -> dict | None:
        return self.settings().get("stages", {}).get(stage)


def list_runs() -> list[str]:
    root = runs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and RUN_NAME.match(p.name))
