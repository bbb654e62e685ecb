"""The visitor behind each request on a hosted app, and the gate every handler that takes a run name passes.

Identity (lab.hosting.Visitor): the Hugging Face user signed in through the Space's OAuth, else a random id the page
keeps in the browser's localStorage (a gr.BrowserState, encrypted with a key kept beside the runs; never shown). The
page's load event (`arrive`) hands that id to the server, which keeps it for the page's session in memory
(`_SESSIONS`: session hash -> id), so every later request of that page is known by its session hash and no handler
needs the id among its inputs. A request from a session that never loaded the page (a bare API client) has no
identity: it reaches no run.

The gate (`install`) wraps the function of every event whose inputs include the run picker. Off a hosted app it
lets everything through. On one, for run name R:
  - R is the visitor's own: the handler runs;
  - R is shared by the owner (LAB_SHARED_RUNS): the handler runs with R read-only (lab.store.read_only), so a
    save, a job start or a stop on it is refused with a message;
  - R is free: a click claims it for the visitor first (lab.hosting.claim; undone if nothing was written); other
    events (refreshes on a change, timers) run with R read-only;
  - anything else: a click gets "No such run"; other events leave the page as it is (no toast every second).
A generator handler (the chat's stream) is gated the same way before its first item; a read-only run stays read-only
for each step of it (every step may run in another worker thread, so the rule is set again around each one).
"""
from __future__ import annotations

import functools
import inspect
import os
import re
import secrets
import time

import gradio as gr
from gradio.context import LocalContext

from lab import hosting
from lab.errors import LabError
from lab.store import list_runs, read_only, runs_root
from lab.ui.wording import say

STORAGE_KEY = "preference-lab-visitor"
SECRET_ENV = "LAB_BROWSER_SECRET"
ID_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_SESSIONS: dict[str, str] = {}  # session hash -> the browser id its page sent on load
MAX_SESSIONS = 10_000
STILL_LOADING = "The page is still loading: try again in a moment."
NO_SUCH_RUN = ("No such run {name!r} among yours. Run names are shared on this app: to start a new run, type a "
               "name nobody uses yet.")


def browser_secret() -> str:
    """The key gr.BrowserState encrypts with: $LAB_BROWSER_SECRET, else one kept in <runs root>/.browser-secret, so
    a restarted app still reads what browsers stored (a fresh random key each start would forget every visitor)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = runs_root() / ".browser-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32))
    except FileExistsError:
        pass
    return path.read_text(encoding="utf-8").strip()


def browser_state(storage_key: str) -> gr.BrowserState:
    """A value kept in the browser; on a hosted app under the lasting key (see browser_secret)."""
    return gr.BrowserState(None, storage_key=storage_key, secret=browser_secret() if hosting.hosted() else None)


def _oauth_user(request) -> str | None:
    """The signed-in Hugging Face user name of a request (Gradio keeps the OAuth reply in the session cookie)."""
    inner = getattr(request, "request", None) or request
    scope = getattr(inner, "scope", None)
    session = scope.get("session", {}) if isinstance(scope, dict) else (getattr(inner, "session", None) or {})
    info = session.get("oauth_info") if hasattr(session, "get") else None
    if not info or (info.get("expires_at") and info["expires_at"] < time.time()):
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def current_visitor() -> hosting.Visitor | None:
    """Who sent the request being handled (None outside a request, or for a session that never loaded the page)."""
    request = LocalContext.request.get(None)
    if request is None:
        return None
    return hosting.Visitor.of(_oauth_user(request), _SESSIONS.get(getattr(request, "session_hash", None) or ""))


def requester() -> tuple[str | None, str | None]:
    """(the visitor's key, a hash of their network address) for the request being handled: what the job queue
    counts per visitor and per address (lab.jobs.check_queue, lab.hosting.check_new_run). The address is the one
    the owner's trusted proxies report (lab.hosting.client_address, LAB_PROXY_HOPS), never a hop the client wrote."""
    request = LocalContext.request.get(None)
    visitor = current_visitor()
    if request is None:
        return (visitor.primary if visitor else None), None
    headers = getattr(request, "headers", None) or {}
    peer = getattr(getattr(request, "client", None), "host", "") or ""
    host = hosting.client_address(headers.get("x-forwarded-for"), peer)
    where = hosting.visitor_key("address", host) if host else None
    return (visitor.primary if visitor else None), where


def arrive(saved_id: str | None, saved_run: str | None, request: gr.Request):
    """Page load: [the visitor's browser id (made on the first visit), the run picker: their runs, the run they
    had open if it is still theirs]. Without one to restore the picker's value is left alone: this event may land
    after the visitor has typed a name, which it must not wipe."""
    if not hosting.hosted():
        runs = list_runs()
        return saved_id, gr.update(choices=runs, **({"value": saved_run} if saved_run in runs else {}))
    vid = saved_id if isinstance(saved_id, str) and ID_SHAPE.match(saved_id) else secrets.token_urlsafe(24)
    if request is not None and request.session_hash:
        _SESSIONS[request.session_hash] = vid
        while len(_SESSIONS) > MAX_SESSIONS:  # pages never closed (a bare client calling /arrive in a loop)
            _SESSIONS.pop(next(iter(_SESSIONS)))
    runs = hosting.visible_runs(hosting.Visitor.of(_oauth_user(request), vid))
    return vid, gr.update(choices=runs, **({"value": saved_run} if saved_run in runs else {}))


def leave(request: gr.Request) -> None:
    """Page closed: forget its session."""
    if request is not None and request.session_hash:
        _SESSIONS.pop(request.session_hash, None)


def run_choices() -> list[str]:
    """What the run picker lists for the request being handled."""
    return hosting.visible_runs(current_visitor()) if hosting.hosted() else list_runs()


def action(fn):
    """Mark a handler that is not a click as an action: refused loudly (a toast) rather than quietly."""
    fn.lab_action = True
    return fn


# ---- the gate -------------------------------------------------------------------------------------------------------
def _skips(n_outputs: int):
    return None if n_outputs == 0 else gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs))


def _call(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    except LabError as e:  # e.g. a write into a read-only run from code that does not turn errors into messages
        raise gr.Error(say(e)) from e


def _rights(args: tuple, at: int, is_action: bool, clicked: bool) -> tuple[str, str]:
    """(how to run the handler, the run name) for the run name at args[at]: "plain" (no gate: no name, or not
    hosted), "own", "read" (read-only), "claim" (a free name taken for this visitor), "skip" (quietly nothing).
    Refused actions raise. Before the page's load event (arrive) has told who this session is, a click is refused
    with STILL_LOADING and anything else skipped (a name typed meanwhile is remembered once arrive lands:
    lab.ui.build_app)."""
    name = str(args[at] or "").strip() if len(args) > at else ""
    if not name or not hosting.hosted():
        return "plain", name
    visitor = current_visitor()
    if visitor is None:
        if clicked:
            raise gr.Error(STILL_LOADING)
        return "skip", name
    rights = hosting.access(name, visitor)
    if rights == "own":
        return "own", name
    if rights == "shared" or (rights == "new" and not is_action):
        return "read", name
    if rights == "new" and _call(hosting.claim, (name, visitor, requester()[1]), {}):
        return "claim", name
    if is_action:
        raise gr.Error(NO_SUCH_RUN.format(name=name))
    return "skip", name


def guard(fn, at: int, is_action: bool, n_outputs: int, clicked: bool = False):
    """fn with the visitor's access to the run name at args[at] checked first (see the module docstring)."""
    @functools.wraps(fn)
    def gated(*args, **kwargs):
        how, name = _rights(args, at, is_action, clicked)
        if how == "plain":
            return fn(*args, **kwargs)
        if how == "skip":
            return _skips(n_outputs)
        try:
            with read_only(*((runs_root() / name,) if how == "read" else ())):
                return _call(fn, args, kwargs)
        finally:
            if how == "claim":
                hosting.release_if_empty(name)

    return gated


def _steps(stream, folders: tuple):
    """Yield from `stream`, each step run with `folders` read-only (a ContextVar set in one thread is not seen in
    the next, and a `with` held across a yield would leak into whatever else that thread runs)."""
    while True:
        with read_only(*folders):
            try:
                item = _call(next, (stream,), {})
            except StopIteration:
                return
        yield item


def guard_stream(fn, at: int, is_action: bool, n_outputs: int, clicked: bool = False):
    """guard() for a generator handler: the same rights, checked before the first item (see the module docstring)."""
    @functools.wraps(fn)
    def gated(*args, **kwargs):
        how, name = _rights(args, at, is_action, clicked)
        if how == "plain":
            yield from fn(*args, **kwargs)
        elif how == "skip":
            yield _skips(n_outputs)
        else:
            try:
                yield from _steps(fn(*args, **kwargs), (runs_root() / name,) if how == "read" else ())
            finally:
                if how == "claim":
                    hosting.release_if_empty(name)

    return gated


def install(app: gr.Blocks, run_name: gr.Component) -> int:
    """Gate every event of `app` that reads the run picker. -> how many were gated."""
    n = 0
    for block_fn in app.fns.values():
        if block_fn.fn is None or run_name not in block_fn.inputs:
            continue
        at = list(block_fn.inputs).index(run_name)
        if inspect.iscoroutinefunction(block_fn.fn) or inspect.isasyncgenfunction(block_fn.fn):
            raise TypeError(f"{block_fn.name}: the visitor gate wraps plain functions and generators only")
        wrap = guard_stream if inspect.isgeneratorfunction(block_fn.fn) else guard
        clicked = any(event in ("click", "submit") for _, event in block_fn.targets)
        block_fn.fn = wrap(block_fn.fn, at, clicked or getattr(block_fn.fn, "lab_action", False),
                           len(block_fn.outputs), clicked)
        n += 1
    return n
