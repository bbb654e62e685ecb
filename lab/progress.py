"""Progress and stop requests, shared by every long stage.

A stage takes a `Progress` and calls `progress.update(done, total, desc)` as work completes, and
`progress.check_stop()` between units of work. In a terminal that draws a tqdm bar. Inside a job started by
`lab.jobs`, `$LAB_PROGRESS_FILE` is set and the same numbers are also written there (throttled, atomically) for the
app to poll. A stop request (SIGTERM from `lab.jobs.stop`, or Ctrl-C) makes `check_stop()` raise `Stopped` at the next
safe point, so records already appended stay whole.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import weakref
from pathlib import Path

from lab.store import atomic_write_json

_STOP = {"requested": False}
_BARS: "weakref.WeakSet" = weakref.WeakSet()  # open Progress objects with a terminal bar (close_bars)


class Stopped(Exception):
    """Raised at a safe point after a stop was requested; what was written so far is kept."""


def request_stop(*_args) -> None:
    _STOP["requested"] = True


def stop_requested() -> bool:
    return _STOP["requested"]


def install_stop_handler() -> None:
    """The first SIGTERM asks politely (stages stop at their next safe point); a second one kills."""

    def handler(signum, frame):
        if _STOP["requested"]:
            raise KeyboardInterrupt
        request_stop()

    signal.signal(signal.SIGTERM, handler)


class Progress:
    """Reports `done/total` to a tqdm bar (terminal) and to $LAB_PROGRESS_FILE (jobs)."""

    def __init__(self, desc: str = "", quiet: bool = False, min_interval: float = 0.5):
        self.desc, self.quiet, self.min_interval = desc, quiet, min_interval
        env = os.environ.get("LAB_PROGRESS_FILE")
        self.file = Path(env) if env else None
        self._bar = None
        self._last_write = 0.0
        self.started = time.time()

    def update(self, done: int, total: int, desc: str | None = None, **extra) -> None:
        if desc and desc != self.desc:
            self.close()
            self.desc, self.started = desc, time.time()
        self._draw(done, total)
        self._write(done, total, extra)

    def _draw(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
            _BARS.add(self)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def _write(self, done: int, total: int, extra: dict, force: bool = False) -> None:
        now = time.time()
        if self.file is None or (not force and now - self._last_write < self.min_interval and done < total):
            return
        self._last_write = now
        rate = done / max(now - self.started, 1e-6)
        eta = (total - done) / rate if rate > 0 and total else None
        atomic_write_json(self.file, {"desc": self.desc, "done": done, "total": total, "eta_s": eta,
                                      "updated": now, **extra})

    def check_stop(self) -> None:
        if stop_requested():
            raise Stopped(f"{self.desc or 'work'} stopped on request; everything finished so far is saved.")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _BARS.discard(self)


def close_bars() -> None:
    """End every bar still drawn (a stage that raised leaves its bar open): the CLI's closing message then starts
    on a line of its own instead of after a half-drawn bar."""
    for progress in list(_BARS):
        progress.close()
