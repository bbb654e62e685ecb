"""Progress and stop requests, shared by every long stage.

A stage takes a `Progress` and calls `progress.update(done, total, desc)` as work completes, and
`progress.check_stop()` between units of work. In a terminal that draws a tqdm bar. Inside a job started by
`lab.jobs`, `$LAB_PROGRESS_FILE` is set and the same numbers are also written there (throttled, atomically) for the
app to poll. A stop request (SIGTERM from `lab.jobs.stop`, or Ctrl-C) makes `check_stop()` raise `Stopped` at the next
safe point, so records already appended stay whole.

Work inside a unit (the tokens of a batch being generated) is reported as `partial`: the share of one more unit's
worth of work, in the units of `done` (`update(3, 12, partial=1.5)`: 3 responses written, a batch of 3 half-way).
`loading(what)` says a model is being loaded (no counts yet). `prefix` names the part of a longer stage the phases
belong to ("round 2 · " in an iteration): every phase's desc, a loading one's too, starts with it.
Numbers the throttle held back are written when its
interval has passed, even if no update follows (a batch of judgments lands at once, then nothing for minutes);
`close()` writes them at once, so a finished stage never shows an earlier count.

$LAB_PROGRESS_FILE (one JSON object, rewritten whole):

    {"desc": str,                 # the phase ("sampling", "round 2: training", "loading model tiny-random")
     "done": int, "total": int,   # units finished, units in the phase (0 while loading)
     "partial": float,            # work done inside the units in flight, in the same units (0 when none)
     "loading": bool,             # a model is being loaded: no counts to show
     "eta_s": float | null,       # seconds left at the pace observed in this phase (see Progress.eta)
     "started": float,            # time.time() when this phase began (the page counts the seconds of a phase
                                  # with no pace yet: a model loading, a first batch's pre-fill)
     "updated": float,            # time.time() of the update written (a held-back one: up to min_interval before)
     ...}                         # extras of the stage: "tokens", "tokens_per_s", "calls_made", "repo"
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lab.store import atomic_write_json

_STOP = {"requested": False}
_BARS: "weakref.WeakSet" = weakref.WeakSet()  # open Progress objects with a terminal bar (close_bars)


class Stopped(Exception):
    """Raised at a safe point after a stop was requested; what was written so far is kept."""


def request_stop(*_args) -> None:
    _STOP["requested"] = True


def stop_requested() -> bool:
    return _STOP["requested"]


POLITE_CTRL_C = ("\nStopping at the next safe point (a training: after this step, with a checkpoint); Ctrl-C "
                 "again to quit at once.\n").encode()


def _polite(signum, frame) -> None:
    if _STOP["requested"]:
        raise KeyboardInterrupt
    request_stop()
    if signum == signal.SIGINT:
        os.write(2, POLITE_CTRL_C)  # not print(): a signal landing inside a write to stderr would re-enter it


@contextmanager
def stop_signals(ctrl_c: bool = True) -> Iterator[None]:
    """While a command runs: the first SIGTERM (the app's Stop) and, with ctrl_c, the first Ctrl-C ask politely
    (stages stop at their next safe point, a training after its current step with a checkpoint to resume from); a
    second one interrupts at once. Commands with no safe points (a chat) keep Ctrl-C as it was. The handlers before
    are put back and the request is forgotten afterwards, so a caller in the same process (the tests) is unchanged.
    Outside the main thread (where Python cannot set handlers) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP["requested"] = False
    kinds = (signal.SIGTERM, signal.SIGINT) if ctrl_c else (signal.SIGTERM,)
    before = {k: signal.getsignal(k) for k in kinds}
    for k in kinds:
        signal.signal(k, _polite)
    try:
        yield
    finally:
        for k, handler in before.items():
            signal.signal(k, handler)
        _STOP["requested"] = False


class Progress:
    """Reports `done/total` to a tqdm bar (terminal) and to $LAB_PROGRESS_FILE (jobs)."""

    def __init__(self, desc: str = "", quiet: bool = False, min_interval: float = 0.5):
        self.desc, self.quiet, self.min_interval = desc, quiet, min_interval
        self.prefix = ""  # put before every phase's desc (see the module docstring)
        env = os.environ.get("LAB_PROGRESS_FILE")
        self.file = Path(env) if env else None
        self._bar = None
        self._last_write = 0.0
        self._pending: dict | None = None  # the newest numbers the throttle held back (_flush writes them)
        self._flusher: threading.Timer | None = None  # writes them once the interval has passed
        self._lock = threading.Lock()  # updates may come from worker threads and the flusher
        self._before_loading: str | None = None
        self.started = time.time()
        self._pace: tuple[float, float] | None = None  # (time, work) when work first moved in this phase
        self._first_work: float | None = None

    def update(self, done: int, total: int, desc: str | None = None, partial: float = 0.0, **extra) -> None:
        if desc is None and self._before_loading is not None:
            desc = self._before_loading  # the phase goes on after a model was loaded inside it
        elif desc and not desc.startswith(self.prefix):
            desc = self.prefix + desc
        self._before_loading = None
        if desc and desc != self.desc:
            self.close()
            self.desc = desc
            self._new_phase()
        self._draw(done + partial, total)
        self._write(done, total, {"partial": round(float(partial), 3), "loading": False, **extra})

    def loading(self, what: str, verb: str = "loading") -> None:
        """Say that a model (`what`) is loading, or another uncounted phase (verb "computing": the reference's
        log-probs): the page shows that and its seconds instead of an empty bar. The next update without a desc
        goes back to the phase it came from."""
        if self._before_loading is None:
            self._before_loading = self.desc
        self.close()
        self.desc = f"{self.prefix}{verb} {what}"
        self._new_phase()
        if not self.quiet:  # a terminal sees the phase too (a model load, the reference's log-probs: minutes on CPU)
            print(f"{self.desc}…", file=sys.stderr, flush=True)
        self._write(0, 0, {"partial": 0.0, "loading": True}, force=True)

    def _new_phase(self) -> None:
        self.started = time.time()
        self._pace, self._first_work = None, None

    def eta(self, work: float, total: int, now: float) -> float | None:
        """Seconds left at the pace observed since work first moved in this phase: the time before that (a model
        loading, the first batch's pre-fill) says nothing about how fast the rest goes. None until it has moved
        twice."""
        if self._first_work is None:
            self._first_work = work
            return None
        if self._pace is None:
            if work > self._first_work:
                self._pace = (now, work)
            return None
        t0, w0 = self._pace
        if work <= w0 or not total:
            return None
        return max(total - work, 0.0) * (now - t0) / (work - w0)

    def _draw(self, done: float, total: int) -> None:
        if self.quiet:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
            _BARS.add(self)
        self._bar.total = total
        self._bar.n = round(done, 1)  # with the work inside a batch: the bar moves per decode step
        self._bar.refresh()

    def _write(self, done: int, total: int, extra: dict, force: bool = False) -> None:
        if self.file is None:
            return
        now = time.time()
        eta = self.eta(done + extra.get("partial", 0.0), total, now)
        record = {"desc": self.desc, "done": done, "total": total, "eta_s": eta, "updated": now,
                  "started": self.started, **extra}
        with self._lock:
            wait = self.min_interval - (now - self._last_write)
            if not force and wait > 0 and done < total:
                self._pending = record
                if self._flusher is None:
                    self._flusher = threading.Timer(wait, self._flush)
                    self._flusher.daemon = True
                    self._flusher.start()
                return
            self._last_write, self._pending = now, None
            atomic_write_json(self.file, record)

    def _flush(self) -> None:
        """Write the numbers the throttle held back (the flusher's timer, and close())."""
        with self._lock:
            self._flusher = None
            if self._pending is not None and self.file is not None:
                self._last_write = time.time()
                atomic_write_json(self.file, self._pending)
                self._pending = None

    def check_stop(self) -> None:
        if stop_requested():
            raise Stopped(f"{self.desc or 'work'} stopped on request; everything finished so far is saved.")

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self._flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _BARS.discard(self)


def close_bars() -> None:
    """End every bar still drawn (a stage that raised leaves its bar open): the CLI's closing message then starts
    on a line of its own instead of after a half-drawn bar."""
    for progress in list(_BARS):
        progress.close()
