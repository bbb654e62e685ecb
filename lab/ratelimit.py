"""Client-side rate limiting and retry timing for API calls, shared by all worker threads of one judge run.

Why spacing rather than a burst window: providers count requests in windows we cannot see (sliding, fixed or token
bucket). Starting requests evenly, at least 60/rpm seconds apart (plus a small safety margin for network jitter),
never exceeds rpm in *any* 60-second window, whatever their algorithm, so the limiter provokes no 429 at all; the
price is no initial burst. A 429 with Retry-After pauses every worker, not only the one that saw it.
"""
from __future__ import annotations

import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Mapping


class Cancelled(Exception):
    """The run is stopping: a worker waiting for its turn gives up."""


class RateLimiter:
    """At most `rpm` request starts per minute, evenly spaced; `rpm <= 0` means no limit (pauses still apply)."""

    def __init__(self, rpm: float, margin: float = 0.03, abort: threading.Event | None = None):
        self.interval = 60.0 / rpm * (1 + margin) if rpm > 0 else 0.0
        self.abort = abort or threading.Event()
        self._next = 0.0  # monotonic time of the next free slot
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller may start a request; returns the seconds waited. Raises Cancelled on abort."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0 and self.abort.wait(wait):
            raise Cancelled()
        if self.abort.is_set():
            raise Cancelled()
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds` (the provider said Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def sleep(self, seconds: float) -> None:
        """Sleep that a stop request cuts short."""
        if seconds > 0 and self.abort.wait(seconds):
            raise Cancelled()


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the provider asked us to wait: `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff_s(attempt: int, base: float, retry_after: float | None, cap: float = 60.0) -> float:
    """Delay before retry number `attempt` (1-based): the provider's Retry-After if given, else exponential backoff
    base * 2^(attempt-1) with +-25% jitter (so workers that failed together do not retry together), capped."""
    if retry_after is not None:
        return min(retry_after, cap * 5)
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
