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
      merged/<adapter>/       the adapter folded into its base: a plain transformers checkpoint + card (lab.merge)
      compare.jsonl           lab.compare records
      efficiency.jsonl        one line per run of a stage: wall and CPU time, peak memory, tokens, API calls, cost
                              (lab.efficiency)
      report/                 tables, figures and judge examples for a write-up (lab.report; REPORT_FILES)
      iterations/<k>/         a nested Run for round k of self-rewarding DPO
      jobs/                   the child process that works on this run now (lab.jobs)
      hub/<repo>/             the exact folders pushed to the Hub, or that `push --dry-run` would push (lab.hub)
      push.jsonl              one line per repo pushed: its link (lab.hub)
      uploads/                files the user gave in the app, for the stage about to run (Run.upload_path)
      owner.json              on a hosted app, who started the run: a hash of the visitor's id (lab.hosting)
    runs/ (beside the runs, never a run: names starting with '.' are not run names)
      .locks/<run>~<stage>.lock   flock held by the process running that stage on that run (Run.lock)
      .queue/, .queue.lock, .active-job   the job queue and the job holding the machine (lab.jobs)
      .browser-secret         the key browsers' stored values are encrypted with, on a hosted app (lab.ui.visitors)

JSONL files are append-only. Each append writes whole lines in one `write`, then flushes and fsyncs, so a crash
loses at most the records in flight. A torn last line (a kill mid-write) is ignored by readers and cut off by the
next append, so it never corrupts what follows. Whole-file writes (run.json, pairs) go to a temporary file that is
renamed into place: a reader sees the old file or the new one, never half of one.

Files a user gives (instructions, pairs, judge prompts) are read by `read_user_text` / `iter_user_jsonl` instead:
UTF-8 with or without a BOM, every line a record (a last line without its newline included), and any fault a
one-line LabError naming the file and the line.

Every write goes through this module's writers, which refuse paths inside a run made read-only for the current
call (`read_only`): a hosted app lets visitors read the runs its owner shares, not change them (lab.hosting).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from contextvars import ContextVar
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
    "checks": "checks.jsonl",  # IFEval checks of every sampled response whose instruction carries them (lab.checks)
    "scores": "scores.jsonl",  # self-rewarding 5-point scores of one round (lab.iterate)
    "efficiency": "efficiency.jsonl",  # one line per run of a stage: time, memory, tokens, calls (lab.efficiency)
    "report": "report",  # a folder: `python -m lab report` writes it whole (REPORT_FILES, lab.report)
    "push": "push.jsonl",
    "hub": "hub",  # a folder: one staged repo per subfolder
    "owner": "owner.json",  # who started the run on a hosted app (lab.hosting)
    "run": "run.json",  # the resolved settings of every stage (Run.record_stage)
    "adapters": "adapters",  # a folder: one adapter folder per subfolder (ADAPTER_FILES)
    "merged": "merged",  # a folder: one merged checkpoint per adapter (MERGED_FILES)
    "iterations": "iterations",  # a folder: one nested Run per self-rewarding round
    "jobs": "jobs",  # a folder: the job that works on this run (JOB_FILES)
    "uploads": "uploads",  # a folder: files given in the app (Run.upload_path)
}
# Inside runs/<run>/adapters/<name>/ (lab.adapters). PEFT fixes the first two names; the rest are the lab's.
ADAPTER_FILES = {
    "config": "adapter_config.json",  # PEFT's; moved in last, the mark of a complete adapter
    "weights": "adapter_model.safetensors",  # PEFT's
    "state": "training.json",  # lab.train: status, settings, pairs, final metrics, warnings
    "metrics": "metrics.jsonl",  # lab.train_monitor: one line per logged step
    "card": "README.md",  # the model card (lab.cards)
    "checkpoints": "checkpoints",  # Trainer checkpoints for a resume
    "staging": ".publish.tmp",  # where a finished adapter is assembled before it is moved in
    "tracking": "runs",  # TensorBoard event files (train --report-to tensorboard); never pushed (lab.hub)
}
# Inside runs/<run>/merged/<adapter>/ (lab.merge), beside transformers' own checkpoint files (config.json,
# model*.safetensors, generation_config.json, the tokenizer's files)
MERGED_FILES = {
    "record": "merge.json",  # lab.merge: what was merged (adapter, fingerprint, base, dtype); written last
    "config": "config.json",  # transformers'
    "card": "README.md",  # the model card (lab.cards.merged_card)
}
# Inside runs/<run>/jobs/ (lab.jobs)
JOB_FILES = {"job": "job.json", "progress": "progress.json", "log": "log.txt", "exit": "exit.json"}
# Inside runs/<run>/report/ (lab.report); figures per adapter are "curves-<adapter>.png"
REPORT_FILES = {"readme": "README.md", "efficiency": "efficiency.csv", "examples": "judge-examples.md",
                "scores": "scores.csv", "judge": "judge.csv", "training": "training.csv", "rounds": "rounds.csv",
                "rounds_png": "rounds.png", "grid": "comparison.md", "notes": "notes.md", "checks": "checks.csv"}
# Beside the runs, in the runs root (see the module docstring)
ROOT_FILES = {"locks": ".locks", "queue": ".queue", "queue_lock": ".queue.lock", "active_job": ".active-job",
              "browser_secret": ".browser-secret"}
# A vLLM worker's work folder (lab.engine_vllm; a temp folder unless the caller gives one)
WORK_FILES = {"request": "request.json", "results": "results.jsonl", "log": "worker.log"}
# The instruction sets that ship with the project (lab.instructions)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
ASSET_FILES = {"bundled": "instructions-train.jsonl", "heldout": "instructions-heldout.jsonl",
               "checks": "checks-train.jsonl", "checks-heldout": "checks-heldout.jsonl"}  # verifiable (lab.checks)


def lock_file(folder: Path, name: str) -> Path:
    """<runs root>/.locks/<folder below the root, '/' as '~'>~<name>.lock: outside the folder it guards, so taking
    a lock changes nothing in a run (a refused or stopped stage leaves it byte for byte as it was), and never
    deleted (deleting a lock file while held would let two processes lock two files)."""
    root, folder = runs_root(), Path(folder).resolve()
    where = folder.relative_to(root) if root in folder.parents else Path(folder.as_posix().lstrip("/"))
    return root / ROOT_FILES["locks"] / ("~".join(where.parts) + f"~{validate_run_name(name)}.lock")


def adapter_file(folder: Path, kind: str) -> Path:
    """A file of an adapter folder, e.g. adapter_file(path, "state") -> path/training.json."""
    return Path(folder) / ADAPTER_FILES[kind]


def root_file(kind: str) -> Path:
    """A file or folder beside the runs, e.g. root_file("queue")."""
    return runs_root() / ROOT_FILES[kind]


def asset(kind: str) -> Path:
    """A bundled instruction set: asset("bundled") or asset("heldout")."""
    return ASSETS / ASSET_FILES[kind]
_READ_ONLY: ContextVar[tuple[Path, ...]] = ContextVar("lab_read_only_runs", default=())


def runs_root() -> Path:
    """Where run names resolve: $LAB_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("LAB_RUNS_DIR", "runs")).resolve()


def validate_run_name(name: str, what: str = "run name") -> str:
    """A plain folder name (runs, adapters, pair sources); `what` names it in the message ("adapter name")."""
    if not RUN_NAME.match(name or "") or ".." in name:
        raise LabError(
            f"Invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
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


@contextmanager
def read_only(*folders: Path) -> Iterator[None]:
    """Within this block (this thread or task), writes inside any of `folders` raise LabError."""
    token = _READ_ONLY.set(_READ_ONLY.get() + tuple(Path(f).resolve() for f in folders))
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def check_writable(path: Path) -> None:
    """Raise LabError if `path` lies in a folder made read-only by `read_only`."""
    target = Path(path).resolve()
    for root in _READ_ONLY.get():
        if target == root or root in target.parents:
            raise LabError(f"Run {root.name!r} is shared read-only on this app: you can look at it, not change it. "
                           "Start a run of your own (type a new name at the top) to work on.")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never a mix."""
    check_writable(path)
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
    if complete and complete(target):
        return target
    check_writable(target)
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
    check_writable(path)
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


def read_user_text(path: Path, what: str = "File") -> str:
    """The text of a file a user gave: UTF-8, a leading BOM dropped (editors on Windows add one).

    Not UTF-8 (UTF-16, Latin-1, a binary file) or holding NUL bytes: LabError naming the file, the line and the byte
    offset, and saying to save it as UTF-8. `what` starts the message ("Instruction file", "Pairs file")."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LabError(f"{what} {path} cannot be read ({e.strerror}): give a readable text file.") from None
    fix = "save it as UTF-8 text (in most editors: Save as..., encoding UTF-8)"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LabError(f"{what} {path} is UTF-16 text, not UTF-8: {fix}.")
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # the BOM
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data[:at].count(b"\n") + 1
        raise LabError(f"{what} {path} is not UTF-8 text (byte {at}, on line {line}, is 0x{data[at]:02x}): "
                       f"{fix}.") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise LabError(f"{what} {path} holds a NUL byte on line {line}: it is a binary file, not text; {fix}.")
    return text


def iter_user_jsonl(path: Path, what: str = "File") -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSONL file a user gave (read_user_text's rules).

    Unlike iter_jsonl (the lab's own append-only files, where a last line without newline is a torn write), a
    user's file has no torn lines: its last line counts whether or not it ends with a newline."""
    for n, line in enumerate(read_user_text(path, what).split("\n"), 1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or delete that line.") from e
            except RecursionError:  # Python's parser gives up near 1,000 levels: a traceback, not a message
                value = TOO_DEEP
            if value is TOO_DEEP or json_depth(value) > MAX_JSON_DEPTH:
                raise LabError(f"{path}: line {n} nests lists or objects more than {MAX_JSON_DEPTH} levels deep; a "
                               "record of the lab needs a few: fix or delete that line.")
            yield n, value


MAX_JSON_DEPTH = 32  # lists / objects inside each other in one line of a user's JSONL (chat messages need 3)
TOO_DEEP = object()


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and dicts nest in `value` (a scalar: 0), counted up to limit + 1 (then it stops looking),
    without recursion."""
    deepest, level = 0, [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > limit:
                return deepest
            level += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def once(write: Callable[[], Any]) -> Callable[[], None]:
    """`write` run at the first call only. Stages record their settings (run.json) this way, just before their first
    record: a stage that fails before doing any work (a bad key, a model that does not load) leaves run.json as it
    was, so it never describes work that did not happen."""
    done = []

    def call() -> None:
        if not done:
            write()
            done.append(True)
    return call


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
                           f"`python -m lab sample --run {run.name} ...`.", ui=f"No run named '{run.name}' yet: "
                           "start it in the Sample tab (or pick another run at the top).")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, kind: str) -> Path:
        """Path of a known record file, e.g. run.file("samples")."""
        return self.path / FILES[kind]

    def pairs_file(self, source: str) -> Path:
        return self.path / f"pairs-{validate_run_name(source, 'pair source name')}.jsonl"

    def pair_sources(self) -> list[str]:
        """Sources that have a pairs file, e.g. ["judge", "pairrm"]."""
        names = (p.name[len("pairs-"):-len(".jsonl")] for p in self.path.glob("pairs-*.jsonl"))
        return sorted(n for n in names if RUN_NAME.match(n))

    def adapter_dir(self, name: str) -> Path:
        return self.file("adapters") / validate_run_name(name, "adapter name")

    def adapters(self) -> list[str]:
        """Names of complete adapters (a folder counts once its adapter_config.json is in place)."""
        root = self.file("adapters")
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if adapter_file(p, "config").exists())

    def round_adapters(self) -> dict[str, Path]:
        """{name: folder} of the complete adapters the self-rewarding rounds trained (iterations/<k>/adapters/
        round-<k>), which chat and compare offer beside the run's own; a name the run's own adapters hold is theirs."""
        own = set(self.adapters())
        found = {name: self.iteration(k).adapter_dir(name) for k in self.iterations()
                 for name in self.iteration(k).adapters()}
        return {name: path for name, path in found.items() if name not in own}

    def adapter_folders(self) -> list[str]:
        """Names of every adapter folder, complete or still training (the app shows a training one live)."""
        root = self.file("adapters")
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []

    def merged_dir(self, adapter: str) -> Path:
        """Where adapter `adapter` folded into its base lives (lab.merge)."""
        return self.file("merged") / validate_run_name(adapter, "adapter name")

    def merged(self) -> list[str]:
        """Adapters with a complete merged checkpoint (its merge.json is in place: the folder is moved in whole)."""
        root = self.file("merged")
        return sorted(p.name for p in root.iterdir() if (p / MERGED_FILES["record"]).exists()) \
            if root.is_dir() else []

    def upload_path(self, suffix: str, kind: str = "instructions") -> Path:
        """Where a file the user gave in the app is kept: kind "instructions" (training), "heldout", or
        "judge-prompt" (the template typed in the Judge tab, for the job about to run)."""
        suffix = suffix if re.match(r"^\.[a-z]{1,7}$", suffix) else ".txt"  # .parquet, .arrow, .jsonl ...
        kind = kind if kind in ("instructions", "heldout", "judge-prompt") else "instructions"
        return self.file("uploads") / f"{kind}{suffix}"

    def save_upload(self, src: str | os.PathLike, kind: str = "instructions") -> Path:
        """Copy a file uploaded in the app into the run (see upload_path); returns where it now is."""
        dest = self.upload_path(Path(src).suffix.lower(), kind)
        check_writable(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return dest

    def iteration(self, k: int) -> "Run":
        return Run(self.file("iterations") / str(int(k)))

    def iterations(self) -> list[int]:
        """Numbers of the self-rewarding rounds that have a folder, in order."""
        root = self.file("iterations")
        return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []

    @property
    def jobs_dir(self) -> Path:
        return self.file("jobs")

    def job_file(self, kind: str) -> Path:
        """A file of the run's job (JOB_FILES), e.g. run.job_file("log")."""
        return self.jobs_dir / JOB_FILES[kind]

    @contextmanager
    def lock(self, stage: str) -> Iterator[None]:
        """Hold this run's lock for `stage` (e.g. "judge", "pairs-pairrm") while the block runs; a second process
        asking for it is refused at once with a LabError (two writers would duplicate records or calls).

        flock on the lock file (lock_path), non-blocking; the kernel drops the lock when the process dies, so a kill
        never leaves a stale lock. The file is never deleted (deleting it would let two processes lock two files)."""
        path = self.lock_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+", encoding="utf-8") as f:
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
        if self.lock_path(stage).exists():
            with self.lock(stage):
                pass

    def lock_path(self, stage: str) -> Path:
        return lock_file(self.path, stage)

    def _busy(self, stage: str, f) -> LabError:
        f.seek(0)
        pid = f.read().strip()
        head = f"{stage} is already running on run '{self.name}'" + (f" (process {pid})" if pid else "")
        return LabError(f"{head}: wait for it to finish or stop it (the app's Stop button, or Ctrl-C in its "
                        "terminal), then run this again.", ui=f"{head}: wait for it to finish or stop it (the "
                        "Stop button of its tab, or Ctrl-C where it was started), then start it again.")

    def read(self, kind: str) -> list[dict]:
        return read_jsonl(self.file(kind))

    def write(self, kind: str, records: Iterable[dict]) -> None:
        """Rewrite a record file whole, atomically (for files derived from others, like checks.jsonl)."""
        write_jsonl(self.file(kind), list(records))

    def append(self, kind: str, records: Iterable[dict]) -> int:
        return append_jsonl(self.file(kind), records)

    # run.json: one entry per stage, the settings it last ran with
    def settings(self) -> dict:
        p = self.file("run")
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {"stages": {}}

    def record_stage(self, stage: str, settings: dict) -> None:
        """Set run.json's entry for `stage` (scrubbed). Read-modify-write under a blocking lock, so two stages
        running at once on the run (sample and rank, say) never drop each other's entry."""
        path = self.lock_path("run-json")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            data = self.settings()
            data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            data.setdefault("stages", {})[stage] = {**scrub(settings), "updated": now}
            atomic_write_json(self.file("run"), data)

    def stage_settings(self, stage: str) -> dict | None:
        return self.settings().get("stages", {}).get(stage)


def list_runs() -> list[str]:
    root = runs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and RUN_NAME.match(p.name))
