"""What each run of a stage cost: time, memory, tokens, API calls and money, one record per run of a stage.

Every stage function enters `measure(run, stage)` once (with its lock); a stage that calls other stages (iterate,
compare) gets their records in their own nested runs too (iterations/<k>/, compare-scoring/<tag>/), and its own
record counts everything done inside it. The code that does the work reports it where it happens, to every meter
running in this context: local generation (lab.engine_lab), the local judge (lab.judge_backends.LocalBackend), API
requests (lab.judge_backends.ApiBackend), training (lab.train); the device and dtype come from lab.models.pick_device.

efficiency.jsonl (run root; one line per run of a stage, appended when it ends):

    {"stage": str,                    # a lab/stages.py STAGES name
     "name": str | null,              # what it made: the adapter (train, merge), the pair source (pairs)
     "status": "done" | "stopped" | "failed",
     "started": unix s, "wall_s": float,
     "cpu_s": float,                  # CPU seconds of this process and the child processes it waited for
     "peak_rss_gib": float,           # resident memory, sampled from /proc/self/status every 0.1 s
                                      #   (resource.getrusage's process peak where /proc is missing)
     "peak_gpu_gib": float | null,    # torch.cuda.max_memory_allocated over the stage, all GPUs; null without CUDA
     "device": str | null, "dtype": str | null,   # what its models ran on; null where none ran
     "tokens_in": int, "tokens_out": int,         # tokens the models read (a prompt sampled K times is pre-filled
                                                  #   once; API: the provider's prompt tokens) and generated;
                                                  #   training: the tokens trained on are tokens_in
     "tokens_per_s": float | null,    # tokens_out / wall_s; tokens_in / wall_s when nothing was generated
     "api_calls": int,                # HTTP requests to API judges and scorers, retries included
     "cost_usd": float | null,        # where the API model's price is known (lab.judge_backends.PRICES)
     "time": str}

A stage that fails or is stopped before doing any work (bad input: a LabError before the first token in or out, a key
the provider refuses) writes no record, so a refused command leaves the run as it was; one that fails or stops after
some work records it ("failed", "stopped"), since that time and money were spent.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from lab.progress import Stopped
from lab.store import FILES, Run

GIB = 2 ** 30
SAMPLE_S = 0.1  # how often resident memory is read
COLUMNS = ("stage", "name", "status", "wall_s", "cpu_s", "peak_rss_gib", "peak_gpu_gib", "device", "dtype",
           "tokens_in", "tokens_out", "tokens_per_s", "api_calls", "cost_usd")
_ACTIVE: ContextVar[tuple["Meter", ...]] = ContextVar("lab_efficiency_meters", default=())


def rss_gib() -> float | None:
    """This process's resident memory now (VmRSS), None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        return None
    return None


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _gpu_peak_and_reset() -> float | None:
    """Peak GPU memory allocated since the last reset, summed over GPUs, then reset; None where CUDA is not in use
    (torch is never imported here: a stage that needs no model stays light)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / GIB
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)
    return peak


class Meter:
    """The running figures of one stage run; thread-safe (API judges report from worker threads)."""

    def __init__(self, stage: str, name: str | None):
        self.stage, self.name = stage, name
        self.started, self.t0, self.cpu0 = time.time(), time.monotonic(), _cpu_s()
        self.tokens_in = self.tokens_out = self.api_calls = 0
        self.cost_usd: float | None = None
        self.device: str | None = None
        self.dtype: str | None = None
        self.peak_rss, self.peak_gpu = rss_gib() or 0.0, None
        self.lock, self.done = threading.Lock(), threading.Event()

    def add(self, tokens_in: int = 0, tokens_out: int = 0, api_calls: int = 0, cost_usd: float | None = None) -> None:
        with self.lock:
            self.tokens_in += int(tokens_in)
            self.tokens_out += int(tokens_out)
            self.api_calls += int(api_calls)
            if cost_usd is not None:
                self.cost_usd = (self.cost_usd or 0.0) + cost_usd

    def gpu(self, peak: float | None) -> None:
        if peak is not None:
            self.peak_gpu = max(self.peak_gpu or 0.0, peak)

    @property
    def worked(self) -> bool:
        """Tokens went through a model or came back from an API (requests refused at once, a bad key, are no work)."""
        return bool(self.tokens_in or self.tokens_out)

    def watch_memory(self) -> None:
        """Sample resident memory until the stage ends (a daemon thread)."""
        while not self.done.wait(SAMPLE_S):
            self.peak_rss = max(self.peak_rss, rss_gib() or 0.0)

    def record(self, status: str) -> dict:
        """The efficiency.jsonl line (format in the module docstring), figures so far."""
        wall = time.monotonic() - self.t0
        peak_rss = max(self.peak_rss, rss_gib() or 0.0) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        speed = self.tokens_out or self.tokens_in
        return {"stage": self.stage, "name": self.name, "status": status, "started": round(self.started, 3),
                "wall_s": round(wall, 3), "cpu_s": round(_cpu_s() - self.cpu0, 3), "peak_rss_gib": round(peak_rss, 4),
                "peak_gpu_gib": None if self.peak_gpu is None else round(self.peak_gpu, 4), "device": self.device,
                "dtype": self.dtype, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "tokens_per_s": round(speed / wall, 2) if speed and wall > 0 else None, "api_calls": self.api_calls,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@contextmanager
def measure(run: Run, stage: str, name: str | None = None) -> Iterator[Meter]:
    """Measure one run of `stage` on `run` and append its record to the run's efficiency.jsonl when it ends: done,
    or stopped (lab.progress.Stopped, Ctrl-C) or failed after doing some work (see the module docstring)."""
    outer = _ACTIVE.get()
    meter = Meter(stage, name)
    for m in outer:  # the peak so far belongs to the stages around this one; this one starts from zero
        m.gpu(_gpu_peak_and_reset())
    token = _ACTIVE.set(outer + (meter,))
    threading.Thread(target=meter.watch_memory, daemon=True, name=f"efficiency-{stage}").start()
    status = "failed"
    try:
        yield meter
        status = "done"
    except (Stopped, KeyboardInterrupt):
        status = "stopped"
        raise
    finally:
        meter.done.set()
        _ACTIVE.reset(token)
        meter.gpu(_gpu_peak_and_reset())
        for m in outer:
            m.gpu(meter.peak_gpu)
            m.peak_rss = max(m.peak_rss, meter.peak_rss)
        if (status == "done" or meter.worked) and int(os.environ.get("RANK", "0")) == 0:
            run.append("efficiency", [meter.record(status)])


def add(tokens_in: int = 0, tokens_out: int = 0, api_calls: int = 0, cost_usd: float | None = None) -> None:
    """Report work to every stage measured in this context (no-op outside any)."""
    for m in _ACTIVE.get():
        m.add(tokens_in, tokens_out, api_calls, cost_usd)


def note(device: str | None = None, dtype: str | None = None) -> None:
    """The device and dtype the running stages' models use (lab.models.pick_device calls this)."""
    for m in _ACTIVE.get():
        m.device, m.dtype = device or m.device, dtype or m.dtype


def current() -> Meter | None:
    """The innermost stage being measured, or None."""
    active = _ACTIVE.get()
    return active[-1] if active else None


def read(run: Run, running: bool = False) -> list[dict]:
    """The run's efficiency records, in the order the stages ended; running: plus the figures so far of the
    innermost stage being measured in this process (status "running"; a card written by the stage itself)."""
    now = current()
    return run.read("efficiency") + ([now.record("running")] if running and now else [])


def read_all(run: Run) -> list[dict]:
    """The records of the run and of every nested run in it (self-rewarding rounds, comparison scoring), each with
    "run": its folder relative to the run ("." for the run itself), in folder order."""
    out = [{"run": ".", **r} for r in read(run)]
    found = (p.parent for p in run.path.rglob(run.file("efficiency").name) if p.parent != run.path)
    for path in sorted(p for p in found if FILES["hub"] not in p.relative_to(run.path).parts):
        out += [{"run": path.relative_to(run.path).as_posix(), **r} for r in read(Run(path))]
    return out


def rows(records: list[dict]) -> list[list]:
    """Table rows (COLUMNS, with "run" first where records carry it) for the app, cards and the report."""
    cols = (("run",) if records and "run" in records[0] else ()) + COLUMNS
    return [[r.get(c) for c in cols] for r in records]


def markdown(records: list[dict]) -> str:
    """A Markdown table of efficiency records (empty string when there are none)."""
    if not records:
        return ""
    cols = (("run",) if "run" in records[0] else ()) + COLUMNS
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in records]
    return "\n".join(lines) + "\n"
