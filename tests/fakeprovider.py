"""A local chat-completions server that stands in for Groq and OpenAI-compatible providers in tests and benches.

The real SDK clients talk to it over HTTP on 127.0.0.1, so retries, timeouts, headers and parsing are exercised for
real. It serves both paths:
    POST /openai/v1/chat/completions   (groq.Groq(base_url=fp.url))
    POST /v1/chat/completions          (openai.OpenAI(base_url=fp.url + "/v1"))
Anything else answers 404, as a wrong base URL would.

Usage:
    with FakeProvider(key="test-key", latency_s=0.3) as fp:
        fp.answer = lambda req: json_verdict("A", "A is more complete")   # scripted content per request
        fp.faults.extend([Fault.status(429, retry_after=1), Fault.status(500)])  # applied to the next requests
        fp.rate_limit = (60, 60.0)              # server-side limit: 60 requests in any 60 s window, else 429
        ... run the code under test against fp.url ...
        fp.calls, fp.statuses[429], fp.requests   # what the server saw
        fp.auth_headers                           # the Authorization header of every request, in order

`answer(request_body) -> str | dict`: a str is the assistant message content; a dict is sent as the whole JSON body.
Faults (one per request, in order, before the answer): Fault.status(code, retry_after=None), Fault.hang(seconds),
Fault.garbage_body() (HTTP 200 whose body is not JSON), Fault.content(text) (a well-formed reply whose message is
`text`, e.g. not JSON), Fault.empty() (a reply with no content), Fault.drop() (close the connection, no reply),
Fault.json_failed(text) (Groq's 400 json_validate_failed when JSON mode is on and the model wrote invalid JSON).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PATHS = ("/openai/v1/chat/completions", "/v1/chat/completions")


@dataclass
class Fault:
    kind: str  # status | hang | garbage_body | content | empty | drop
    status_code: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    text: str = ""

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> "Fault":
        return cls("status", status_code=code, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> "Fault":
        return cls("hang", seconds=seconds)

    @classmethod
    def garbage_body(cls) -> "Fault":
        return cls("garbage_body")

    @classmethod
    def content(cls, text: str) -> "Fault":
        return cls("content", text=text)

    @classmethod
    def empty(cls) -> "Fault":
        return cls("empty")

    @classmethod
    def drop(cls) -> "Fault":
        return cls("drop")

    @classmethod
    def json_failed(cls, text: str) -> "Fault":
        """Groq's answer when JSON mode is on and the model wrote invalid JSON: HTTP 400 json_validate_failed,
        with what the model wrote in `failed_generation`."""
        return cls("json_failed", status_code=400, text=text)


def json_verdict(verdict: str, reasoning: str = "Compared both responses.") -> str:
    """The content a well-behaved judge returns: reasoning first, then the verdict ("A", "B" or "tie")."""
    return json.dumps({"reasoning": reasoning, "verdict": verdict})


def user_text(request: dict) -> str:
    """The last user message of a chat-completions request body."""
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def first_shown(request: dict, *needles: str) -> str | None:
    """Which of `needles` appears first in the user message (None if none appears): lets a scripted judge see order."""
    text = user_text(request)
    found = [(text.find(n), n) for n in needles if n in text]
    return min(found)[1] if found else None


class FakeProvider:
    """The server; see the module docstring. Thread-safe counters; `close()` (or leaving `with`) stops it."""

    def __init__(self, key: str | None = "test-key", latency_s: float = 0.0, models: set[str] | None = None,
                 answer: Callable[[dict], Any] | None = None):
        self.key, self.latency_s, self.models = key, latency_s, models
        self.answer = answer or (lambda req: json_verdict("A"))
        self.faults: deque[Fault] = deque()
        self.rate_limit: tuple[int, float] | None = None
        self.calls = 0
        self.statuses: Counter = Counter()
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.paths: Counter = Counter()
        self.max_in_flight = 0
        self._in_flight = 0
        self._accepted: deque[float] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Root URL: groq's base_url as is; add "/v1" for the openai SDK."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeProvider":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset_counts(self) -> None:
        with self._lock:
            self.calls, self.statuses, self.requests, self.paths = 0, Counter(), [], Counter()
            self.auth_headers = []
            self.max_in_flight = 0

    # ---- decisions, under the lock ----
    def _admit(self, path: str, body: dict, auth: str | None) -> tuple[Fault | None, float | None]:
        """Count the request and decide how to answer: (fault or None, Retry-After seconds if rate-limited)."""
        with self._lock:
            self.calls += 1
            self.paths[path] += 1
            self.requests.append(body)
            self.auth_headers.append(auth)
            if self.key is not None and auth != f"Bearer {self.key}":
                return Fault.status(401), None
            if self.models is not None and body.get("model") not in self.models:
                return Fault.status(404), None
            wait = self._rate_limited()
            if wait is not None:
                return Fault.status(429, retry_after=wait), wait
            return (self.faults.popleft() if self.faults else None), None

    def _rate_limited(self) -> float | None:
        if not self.rate_limit:
            return None
        limit, window = self.rate_limit
        now = time.monotonic()
        while self._accepted and now - self._accepted[0] >= window:
            self._accepted.popleft()
        if len(self._accepted) >= limit:
            return window - (now - self._accepted[0]) if self._accepted else window
        self._accepted.append(now)
        return None

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self, status: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self.statuses[status] += 1


def _completion(body: dict, content: str | None) -> dict:
    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
    completion = len(content or "") // 4
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


ERRORS = {401: ("invalid_api_key", "Invalid API Key"), 404: ("model_not_found", "The model does not exist"),
          429: ("rate_limit_exceeded", "Rate limit reached, please retry later"),
          500: ("server_error", "Internal server error"), 503: ("service_unavailable", "Service unavailable")}


def _handler(fp: FakeProvider):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real providers do

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path not in PATHS:
                return self._send(404, {"error": {"message": f"Unknown path {self.path}", "code": "not_found"}})
            body = json.loads(raw or b"{}")
            fault, _ = fp._admit(self.path, body, self.headers.get("Authorization"))
            fp._enter()
            try:
                status = self._serve(body, fault)
            finally:
                fp._leave(status if "status" in locals() else 0)

        def _serve(self, body: dict, fault: Fault | None) -> int:
            if fault is None or fault.kind in ("content", "empty"):
                if fp.latency_s and fp._closing.wait(fp.latency_s):
                    return 0
            if fault is None:
                out = fp.answer(body)
                return self._send(200, out if isinstance(out, dict) else _completion(body, out))
            return self._fault(body, fault)

        def _fault(self, body: dict, fault: Fault) -> int:
            if fault.kind == "status":
                code, msg = ERRORS.get(fault.status_code, ("error", f"HTTP {fault.status_code}"))
                headers = {"Retry-After": f"{fault.retry_after:.3f}"} if fault.retry_after is not None else {}
                return self._send(fault.status_code, {"error": {"message": msg, "type": code, "code": code}}, headers)
            if fault.kind == "json_failed":
                return self._send(400, {"error": {
                    "message": "Failed to generate JSON. Please adjust your prompt. See 'failed_generation' for more "
                               "details.", "type": "invalid_request_error", "code": "json_validate_failed",
                    "failed_generation": fault.text}})
            if fault.kind == "hang":
                fp._closing.wait(fault.seconds)
                return 0
            if fault.kind == "garbage_body":
                return self._send(200, b"<html>502 Bad Gateway</html> not json")
            if fault.kind == "drop":
                self.close_connection = True
                return 0
            return self._send(200, _completion(body, fault.text if fault.kind == "content" else None))

        def _send(self, status: int, payload: Any, headers: dict | None = None) -> int:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to send to
                pass
            return status

    return Handler
