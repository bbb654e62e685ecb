"""Pieces every tab shares: the job panel (progress bar, status, stop, log) and small helpers.

A tab never runs long work in the web server: it builds its stage's settings dataclass, validates it (so mistakes
show at once), and hands `python -m lab <stage> ...` to `lab.jobs`. A `gr.Timer` polls the job's files, so a page
reload (or a restarted app) re-attaches to whatever is running. It ticks only on the tab on screen, and only while
a job of the run is queued or running (another tab's job too: a training that ends adds to Compare's list): a tick
that finds none stops it; opening the tab, picking a run or starting a job polls again
(lab.ui._poll_only_the_shown_tab, wire_start).
"""
from __future__ import annotations

import html
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
from gradio_client import utils as client_utils

from lab import hosting, jobs, limits, noise
from lab.ui import visitors
from lab.cli import build_parser
from lab.stages import BY_NAME
from lab.configfile import command_line, yaml_download
from lab.errors import LabError, ui_text
from lab.instructions import check_apart
from lab.judge_backends import KEY_ENV, TYPED_KEY_ENV
from lab.store import URL_USERINFO, Run
from lab.ui.views import View, internal
from lab.ui.wording import page_text, say, stage_of

POLL_S = 1.0
LIVE = ("queued", "running")  # the states of a run's job that the shown tab's timer ticks for


@dataclass
class JobPanel:
    """Components of one tab's view of the run's job."""

    bar: gr.HTML
    status: gr.Markdown
    stop: gr.Button
    log: gr.Code
    timer: gr.Timer
    redo: gr.Accordion  # a finished job's exact command line and its settings as a YAML file
    command: gr.Code
    download: gr.DownloadButton
    poll: Callable | None = None  # poll(event) chains a poll after the event (wire_job_panel sets it)


def open_run(name: str | None, create: bool = True) -> Run:
    if not name or not str(name).strip():
        raise gr.Error("Choose a run first (top of the page): pick one or type a new name.")
    try:
        return Run.open(str(name).strip(), create=create)
    except LabError as e:
        raise gr.Error(say(e)) from e


def progress_html(st: dict) -> str:
    """A plain HTML progress bar with the job's phase, counts, tokens and ETA (lab.progress's file)."""
    p, state = st.get("progress") or {}, st.get("state", "none")
    done, total = p.get("done", 0), p.get("total") or 0
    frac = min((done + (p.get("partial") or 0)) / total, 1.0) if total else (1.0 if state == "done" else 0.0)
    return (f'<div class="lab-progress" data-state="{state}" data-fill="{frac:.3f}">'
            f'<div class="lab-progress-fill" style="width:{frac * 100:.1f}%"></div>'
            f'<span>{html.escape(progress_label(st))}</span></div>')


def progress_label(st: dict, now: float | None = None) -> str:
    """"round 2 · scoring 3.4/8 · about 20 s left"; "sampling 4.6/12 · 412 tokens · 35 s so far" before the pace
    gives an estimate; "loading model bundled… 12 s"; "starting…". Work inside a batch shows as a fraction
    (lab.progress's `partial`), and a phase without a pace counts its seconds, so a running label moves each poll."""
    p, state = st.get("progress") or {}, st.get("state", "none")
    if state == "queued":
        return f"{st.get('label', 'job')}: {queue_text(st)}"
    running = state == "running"
    spent = max((now or time.time()) - p["started"], 0) if running and p.get("started") else None
    if running and (not p or p.get("loading")):
        return f"{p.get('desc') or 'starting'}…" + (f" {duration(spent)}" if spent is not None else "")
    if not p.get("total"):
        return ""
    done, partial = p.get("done", 0), (p.get("partial") or 0) if running else 0
    value = min(done + partial, p["total"])  # under one: two decimals, so a long first batch visibly moves
    count = (f"{value:.1f}" if value >= 1 else f"{value:.2f}") if partial else f"{done}"
    tokens = f" · {p['tokens']:,} tokens" if p.get("tokens") else ""
    eta = p.get("eta_s")
    left = "" if not running else f" · about {duration(eta)} left" if eta is not None else \
        f" · {duration(spent)} so far" if spent is not None else ""
    return f"{p.get('desc') or st.get('label', '')} {count}/{p['total']}{tokens}{left}"


def duration(seconds: float) -> str:
    """"12 s", "3.5 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def queue_text(st: dict) -> str:
    """"queued: 2nd in line, 1 job ahead" (only counts: whose jobs are ahead is nobody else's business)."""
    ahead = st.get("ahead", 0)
    return f"queued: {ordinal(st.get('position', 1))} in line, {ahead} job{'' if ahead == 1 else 's'} ahead"


def status_text(st: dict) -> str:
    state = st.get("state", "none")
    label = st.get("label", "job")
    if state == "none":
        return ""
    if state == "queued":
        return f"**{label}** {queue_text(st)}. It starts by itself; Stop takes it out of the queue."
    if state == "running":
        return f"**{label}** is running…"
    if state == "done":
        return f"**{label}** finished."
    error = hosting.public_text(page_text(st.get("ui_error") or st.get("error") or "", (st.get("argv") or [None])[0]))
    return f"**{label}** {state}: {html.escape(error)}"


def noise_md(run: Run | None, stage: str, settings: dict | None = None) -> str:
    """The noise labels of a stage's results on `run` (lab.noise) as Markdown, ending in a blank line; '' if none."""
    text = noise.markdown(noise.notes(run, stage, settings)) if run else ""
    return text + "\n\n" if text else ""


def run_labels(name: str | None, stage: str) -> str:
    """noise_md of `stage` on the run named `name`; '' when no run is chosen or the name is not a run's."""
    try:
        return noise_md(Run.open(name), stage) if name else ""
    except LabError:
        return ""


def labels_view(stage: str) -> tuple[gr.Markdown, View]:
    """A Markdown box for the noise labels of `stage` on the chosen run, and the View that fills it (a tab lists it
    in its views: re-read when the run is picked, the tab opened, or the tab's job queued, started or ended)."""
    box = gr.Markdown()

    def labels(name: str | None) -> str:  # a name that is not a run's raises: the view leaves the box as it is
        run = Run.open(name) if name else None  # no results of the stage yet: nothing to label (the warnings of
        # scorers not yet chosen mislead); a chat keeps no results, its labels are the model it talks to
        return noise_md(run, stage) if run and (not BY_NAME[stage].writes or run.stage_settings(stage)) else ""
    return box, View(labels, [box])


def plot(frame, caption: str = "", visible: bool = True):
    """A plot's update. No rows: no value at all rather than an empty frame: a Gradio 6.31 plot first given an empty
    frame draws no bars, lines or legend for the rows that come later (it keeps the empty frame's colour scale)."""
    return gr.update(value=frame if len(frame) else None, caption=caption or None, visible=visible)


def job_panel() -> JobPanel:
    with gr.Column(elem_classes="lab-job"):  # hidden while the tab has no job (lab.ui.style): no empty bar, no Stop
        with gr.Group():
            bar = gr.HTML(progress_html({}))
            with gr.Row():
                status = gr.Markdown()
                stop = gr.Button("Stop", variant="stop", size="sm", scale=0)
        with gr.Accordion("Job log", open=False):
            log = gr.Code(language=None, lines=10, max_lines=20, interactive=False)
        with gr.Accordion("Redo this job: command line and settings file", open=False, visible=False) as redo:
            command = gr.Code(language="shell", lines=2, interactive=False, label="Command line")
            download = gr.DownloadButton("Settings as YAML (--config)", size="sm")
    # outside the hidden column: a tab with no job of its own still polls (another tab's job ending changes its
    # views: a trained adapter joins Compare's list)
    timer = gr.Timer(POLL_S, active=False)  # the app activates the shown tab's
    return JobPanel(bar, status, stop, log, timer, redo, command, download)


def wire_job_panel(panel: JobPanel, run_name: gr.Component, stage: str, views: list[View] | tuple = ()) -> None:
    """Poll the run's job each tick (`job_<stage>`: run name -> bar, status, log, the timer), then re-read the tab's
    result views (lab.ui.views) when something changed (another run picked, a job of `stage` queued, started or ended, a
    job of another stage started or ended)
    or, for a live view, while it runs. Not every second for the rest: re-reading a run's files each tick is wasted
    work, and re-sending a dropdown's choices would close it under the user's cursor."""
    seen, news = gr.State(None), gr.State({})  # the job's last key; what this tick found (for the views)
    redo = [panel.redo, panel.command, panel.download]

    def poll(name: str, last):
        latest = _latest_job(name)
        st = latest if latest.get("argv", [None])[0] == stage else {"state": "none"}
        # another tab's job ending changes what this tab shows too (a trained adapter in Compare's list)
        other = [latest.get("argv", [None])[0], latest.get("state")] if st is not latest else []
        key = [name, st.get("state"), st.get("started") or st.get("queued"), st.get("position"), *other]
        found = {"changed": key != last, "running": st.get("state") == "running"}
        ticking = gr.Timer(active=latest.get("state") in LIVE)  # no job of the run under way: the timer stops
        if not found["changed"] and not found["running"]:
            return [gr.skip()] * (4 + len(redo)) + [last, found, ticking]
        stop = gr.update(visible=st.get("state") in LIVE)  # a finished job (after a reload too) has nothing to stop
        return [progress_html(st), status_text(st), stop, hosting.public_text(st.get("log_tail", "")),
                *redo_updates(st), key, found, ticking]

    def refresh(name: str, found: dict, *values):
        updates, at = [], 0
        for v in views:
            fresh = found.get("changed") or (v.live and found.get("running"))
            updates += v.read(name, *values[at:at + len(v.inputs)]) if fresh else [gr.skip()] * len(v.outputs)
            at += len(v.inputs)
        return updates

    panel_io = dict(fn=poll, inputs=[run_name, seen],
                    outputs=[panel.bar, panel.status, panel.stop, panel.log, *redo, seen, news, panel.timer])
    views_io = dict(fn=refresh, inputs=[run_name, news, *(c for v in views for c in v.inputs)],
                    outputs=[c for v in views for c in v.outputs], **internal())

    def chained(dep):
        dep = dep.then(**panel_io, **internal())
        return dep.then(**views_io) if views else dep

    tick = panel.timer.tick(**panel_io, **internal(f"job_{stage}"))
    if views:
        tick.then(**views_io)
    panel.poll = chained
    panel.stop.click(lambda name: _stop(name, stage), inputs=[run_name], outputs=[panel.status],
                     api_name=f"stop_{stage}")


def redo_updates(st: dict) -> list:
    """[accordion, command line, YAML download] of a finished job (done, failed or stopped), else hidden: the exact
    `python -m lab` line the app ran, and its settings as a file for `--config` (lab.configfile)."""
    argv = st.get("argv") or []
    if st.get("state") not in ("done", "failed", "stopped") or len(argv) < 3:
        return [gr.update(visible=False), gr.skip(), gr.skip()]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # a job line from an older version of the lab: nothing to offer
        return [gr.update(visible=False), gr.skip(), gr.skip()]
    settings = BY_NAME[args.stage].settings.from_args(args)  # a hosted page shows no server path in either:
    shown = hosting.public_text  # an upload's path reads runs/<run>/uploads/..., as a checkout of the lab has it
    return [gr.update(visible=True), shown(command_line(argv)),
            str(yaml_download(args.stage, args.run, settings, shown))]


def wire_start(panel: JobPanel, button: gr.Button, fn: Callable, inputs: list, api_name: str):
    """The tab's start button: fn(*inputs) -> status text, under the API name of this action; the panel is polled
    at once after it, so the bar never shows the previous job's count while the new one starts."""
    dep = button.click(fn, inputs=inputs, outputs=[panel.status], api_name=api_name)
    if panel.poll is not None:
        panel.poll(dep)
    return dep


def _latest_job(name: str | None) -> dict:
    """The status of the run's running or last job, whatever its stage ({"state": "none"} if none)."""
    if not name:
        return {"state": "none"}
    try:
        return jobs.status(Run.open(name))
    except LabError:
        return {"state": "none"}


def _job_of(name: str | None, stage: str) -> dict:
    st = _latest_job(name)
    return st if st.get("argv", [None])[0] == stage else {"state": "none"}


def _stop(name: str, stage: str) -> str:
    """Stop the tab's running job, or take its queued one out of the queue."""
    st = _job_of(name, stage)
    if st.get("state") not in ("running", "queued"):
        return "Nothing is running in this tab."
    st = checked(jobs.stop, Run.open(name), wait=False)  # returns at once: the panel's poll shows the end
    if st.get("state") != "running":
        return status_text(st)
    return (f"**{st.get('label', 'The job')}**: stop requested; it is stopped at its next safe point (what it finished "
            "is saved).")


def start_job(name: str, stage: str, argv: list[str], label: str, secret_env: dict[str, str] | None = None,
              admitted: "Admitted | None" = None) -> str:
    """Start `python -m lab <stage> --run NAME argv...` for the chosen run; user errors become a gr.Error toast.
    The job gets the run's name (it resolves under the same runs root), never a path. secret_env (a key typed into
    this page) goes to that job's environment only (see lab.jobs.start). A stage already running on the run in
    another process (a terminal, say) is refused here, before the job starts (lab.store.Run.lock). admitted: what
    the tab's own admit of this command line gave (it checks before its own work): not checked twice per click."""
    run = open_run(name)
    full = [stage, "--run", run.name, *argv]
    cfg = admitted.settings if admitted is not None and admitted.argv == full else admit(full).settings
    checked(run.check_unlocked, stage)
    token = limits.owner_token(hosting.model_specs(run, cfg)) if limits.hosted() else None
    secrets = {**(secret_env or {}), **({"HF_TOKEN": token} if token else {})}  # the owner's, for listed models
    who, where = visitors.requester() if limits.hosted() else (None, None)
    st = checked(jobs.start, run, full, label, secret_env=secrets or None, who=who, where=where)
    return f"**{label}** started." if st.get("state") != "queued" else status_text(st)


@dataclass(frozen=True)
class Admitted:
    """A command line that passed the hosted app's checks, and its settings as the job will parse them."""

    argv: list[str]
    settings: object


def admit(argv: list[str]) -> Admitted:
    """The checks the job's own process will make first (a hosted app's rules, the owner's caps: lab.hosting),
    made here too so that a refusal is a message on the page, before anything is written or queued.
    -> the command line admitted, with the stage's settings (start_job takes it: one check per click)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # argparse's own refusal; the forms only build valid command lines
        raise gr.Error(f"These settings do not make a valid `{argv[0]}` command line.") from None
    cfg = BY_NAME[args.stage].settings.from_args(args)
    checked(hosting.admit, args.stage, args.run, cfg)
    return Admitted(list(argv), cfg)


def served_copies(files: dict[str, Path], key: str) -> list[str]:
    """Copies of `files` ({name to serve it as: path}) for Gradio to hand to the browser: Gradio serves files from the
    temp folder only, never the runs root (that would serve every visitor's runs). One folder per `key` (a run's
    report, a run's export), refilled by each call, since Gradio copies what a handler returns into its own cache:
    a folder per call only piled up (/write_report left a /tmp/lab-report-* each time)."""
    import hashlib
    import shutil
    import tempfile

    folder = Path(tempfile.gettempdir()) / "preference-lab-served" / hashlib.sha256(key.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in files:
            old.unlink(missing_ok=True)
    for name, path in files.items():
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(folder / name)
    return [str(folder / name) for name in files]


URL_FILE_REFUSED = ("Files are uploaded from your computer, not fetched from a URL: download the file and upload "
                    "it (or drop it on the box).")


@contextmanager
def upload_into(run: Run, upload: str, kind: str = "instructions") -> Iterator[Path]:
    """Keep a file uploaded in the page with the run (Run.save_upload) for the block, which starts the job that reads
    it. If the block fails (a refused setting, a cap), the run's previous upload is put back: nothing changes."""
    if client_utils.is_http_url_like(str(upload)):  # a URL sent as a stream's path reaches here unfetched
        raise gr.Error(URL_FILE_REFUSED)
    checked(limits.check_upload, upload)
    dest = run.upload_path(Path(upload).suffix.lower(), kind)
    before = dest.read_bytes() if dest.exists() else None
    checked(run.save_upload, upload, kind)
    try:
        check_instruction_file(dest, Path(upload).name)
        yield dest
    except BaseException:
        if before is None:
            dest.unlink(missing_ok=True)
            if not any(dest.parent.iterdir()):
                dest.parent.rmdir()
        else:
            dest.write_bytes(before)
        raise


def check_instruction_file(path: Path, shown_as: str) -> None:
    """Read an uploaded instruction file now (the job would only find a fault later, in its log), in a child process
    bounded in time and memory (lab.instructions.check_apart), and name it in the message as the user knows it
    (`shown_as`, their file's name), not as the server's copy in the run."""
    try:
        check_apart(path, shown_as)
    except LabError as e:
        raise gr.Error(page_text(ui_text(e))) from None


def refuse_url_files() -> None:
    """Gradio fetches a URL that arrives as a file's path (`{"path": "https://...", "meta": {"_type":
    "gradio.FileData"}}`) into its cache on the server, and it does so for *any* event input, a Textbox or the chat
    history included, before a handler runs and with no size cap (launch's max_file_size only bounds uploads): an API
    caller could make a public Space fetch gigabytes into its disk. The app never needs the server to fetch a URL
    (files are uploaded; models come through huggingface_hub), so moving a URL into a component's cache is refused
    with what to do instead; uploads and the app's own files move as before. Installed once, by build_app, on
    Gradio's Block (every component inherits both methods)."""
    from gradio.blocks import Block

    if getattr(Block.move_resource_to_block_cache, "refuses_urls", False):
        return
    move, move_async = Block.move_resource_to_block_cache, Block.async_move_resource_to_block_cache

    def refuse(path) -> None:
        if path is not None and client_utils.is_http_url_like(str(path)):
            raise gr.Error(URL_FILE_REFUSED)

    def move_local(self, url_or_file_path):
        refuse(url_or_file_path)
        return move(self, url_or_file_path)

    async def move_local_async(self, url_or_file_path):
        refuse(url_or_file_path)
        return await move_async(self, url_or_file_path)

    move_local.refuses_urls = move_local_async.refuses_urls = True
    Block.move_resource_to_block_cache, Block.async_move_resource_to_block_cache = move_local, move_local_async


def api_key_box(visible: bool = True) -> gr.Textbox:
    """A visitor's own API key for an API judge: it stays in this browser tab and goes to the one job it starts."""
    return gr.Textbox("", type="password", label="API judge key (optional)", visible=visible,
                      info="kept in this browser tab only and handed to the job you start; never saved. Empty = "
                           f"the app's {' / '.join(KEY_ENV.values())}, which go only to the app's own provider URL")


def typed_key_env(judge: str, typed: str | None) -> dict[str, str] | None:
    """{"LAB_API_KEY_<JUDGE>": key} for a key typed in the page, for lab.jobs.start(secret_env=...); None when nothing was
    typed or the judge needs no key. Its own variable, never the provider's: the job can then tell the visitor's
    key (it may go to the URL the visitor gave) from the owner's (only to the owner's URL; lab.judge_backends)."""
    typed = (typed or "").strip()
    return {TYPED_KEY_ENV[judge]: typed} if typed and judge in KEY_ENV else None


def check_base_url(url: str) -> str:
    """A base URL typed in the page, refused when it carries userinfo (user:password@): the job's command line, and
    so job.json, would hold it. Returns the URL stripped."""
    url = (url or "").strip()
    if URL_USERINFO.search(url):
        raise gr.Error("The base URL holds a user name or password (user:...@host): remove it and type the key in "
                       "the API key box instead (it stays in this browser tab and goes to the job only).")
    return url


def checked(fn: Callable, *args, **kwargs):
    """Call a core function, turning its LabError into a message in the page (a settings' validate() names its
    flags by the labels of that stage's inputs)."""
    try:
        return fn(*args, **kwargs)
    except LabError as e:
        raise gr.Error(hosting.public_text(say(e, stage_of(getattr(fn, "__self__", None))))) from e
