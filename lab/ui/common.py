"""Pieces every tab shares: the job panel (progress bar, status, stop, log) and small helpers.

A tab never runs long work in the web server: it builds its stage's settings dataclass, validates it (so mistakes
show at once), and hands `python -m lab <stage> ...` to `lab.jobs`. A `gr.Timer` polls the job's files, so a page
reload (or a restarted app) re-attaches to whatever is running.
"""
from __future__ import annotations

import html
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from lab import hosting, jobs, limits
from lab.ui import visitors
from lab.cli import BY_NAME, build_parser, load
from lab.errors import LabError
from lab.judge_backends import KEY_ENV, TYPED_KEY_ENV
from lab.store import URL_USERINFO, Run

POLL_S = 1.0


@dataclass
class JobPanel:
    """Components of one tab's view of the run's job."""

    bar: gr.HTML
    status: gr.Markdown
    stop: gr.Button
    log: gr.Code
    timer: gr.Timer


def open_run(name: str | None, create: bool = True) -> Run:
    if not name or not str(name).strip():
        raise gr.Error("Choose a run first (top of the page): pick one or type a new name.")
    try:
        return Run.open(str(name).strip(), create=create)
    except LabError as e:
        raise gr.Error(str(e)) from e


def progress_html(st: dict) -> str:
    """A plain HTML progress bar with the job's description, counts and ETA."""
    p = st.get("progress") or {}
    done, total = p.get("done", 0), p.get("total") or 0
    frac = done / total if total else (1.0 if st.get("state") == "done" else 0.0)
    eta = p.get("eta_s")
    eta_txt = f" · about {eta / 60:.1f} min left" if eta and st.get("state") == "running" else ""
    label = html.escape(f"{p.get('desc') or st.get('label', '')}: {done}/{total}{eta_txt}") if total else ""
    if st.get("state") == "queued":
        label = html.escape(f"{st.get('label', 'job')}: {queue_text(st)}")
    return (f'<div class="lab-progress" data-state="{st.get("state", "none")}">'
            f'<div class="lab-progress-fill" style="width:{frac * 100:.1f}%"></div>'
            f'<span>{label}</span></div>')


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
    return f"**{label}** {state}: {html.escape(hosting.public_text(st.get('error') or ''))}"


def job_panel() -> JobPanel:
    with gr.Group():
        bar = gr.HTML(progress_html({}))
        with gr.Row():
            status = gr.Markdown()
            stop = gr.Button("Stop", variant="stop", size="sm", scale=0)
    with gr.Accordion("Job log", open=False):
        log = gr.Code(language=None, lines=10, max_lines=20, interactive=False)
    return JobPanel(bar, status, stop, log, gr.Timer(POLL_S, active=False))  # the app activates the shown tab's


def wire_job_panel(panel: JobPanel, run_name: gr.Component, stage: str,
                   on_done: Callable[[str], list] | None = None, done_outputs: list | None = None) -> None:
    """Poll the run's job each tick. The tab's results are refreshed via on_done(run_name) only when something
    changed (another run picked, a job of `stage` started or ended), not every second: re-reading a run's files
    each tick is wasted work, and re-sending a dropdown's choices would close it under the user's cursor."""
    extra = done_outputs or []
    seen = gr.State(None)

    def poll(name: str, last):
        st = _job_of(name, stage)
        key = [name, st.get("state"), st.get("started") or st.get("queued"), st.get("position")]
        if key == last and st.get("state") != "running":
            return [gr.skip()] * (3 + len(extra)) + [last]
        updates = [progress_html(st), status_text(st), hosting.public_text(st.get("log_tail", ""))]
        if on_done is not None:
            ended = st.get("state") not in ("running", "queued") and name
            updates += on_done(name) if ended else [gr.skip()] * len(extra)
        return [*updates, key]

    panel.timer.tick(poll, inputs=[run_name, seen], outputs=[panel.bar, panel.status, panel.log, *extra, seen],
                     show_progress="hidden", api_name=f"job_{stage}")
    panel.stop.click(lambda name: _stop(name, stage), inputs=[run_name], outputs=[panel.status],
                     api_name=f"stop_{stage}")


def _job_of(name: str | None, stage: str) -> dict:
    if not name:
        return {"state": "none"}
    try:
        st = jobs.status(Run.open(name))
    except LabError:
        return {"state": "none"}
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


def start_job(name: str, stage: str, argv: list[str], label: str, secret_env: dict[str, str] | None = None) -> str:
    """Start `python -m lab <stage> --run NAME argv...` for the chosen run; user errors become a gr.Error toast.
    The job gets the run's name (it resolves under the same runs root), never a path. secret_env (a key typed into
    this page) goes to that job's environment only (see lab.jobs.start). A stage already running on the run in
    another process (a terminal, say) is refused here, before the job starts (lab.store.Run.lock)."""
    run = open_run(name)
    full = [stage, "--run", run.name, *argv]
    cfg = admit(full)
    checked(run.check_unlocked, stage)
    token = limits.owner_token(hosting.model_specs(run, cfg)) if limits.hosted() else None
    secrets = {**(secret_env or {}), **({"HF_TOKEN": token} if token else {})}  # the owner's, for listed models
    who, where = visitors.requester() if limits.hosted() else (None, None)
    st = checked(jobs.start, run, full, label, secret_env=secrets or None, who=who, where=where)
    return f"**{label}** started." if st.get("state") != "queued" else status_text(st)


def admit(argv: list[str]):
    """The checks the job's own process will make first (a hosted app's rules, the owner's caps: lab.hosting),
    made here too so that a refusal is a message on the page, before anything is written or queued.
    -> the stage's settings, as the job will parse them."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # argparse's own refusal; the forms only build valid command lines
        raise gr.Error(f"These settings do not make a valid `{argv[0]}` command line.") from None
    cfg = load(BY_NAME[args.stage].settings).from_args(args)
    checked(hosting.admit, args.stage, args.run, cfg)
    return cfg


@contextmanager
def upload_into(run: Run, upload: str, kind: str = "instructions") -> Iterator[Path]:
    """Keep a file uploaded in the page with the run (Run.save_upload) for the block, which starts the job that reads
    it. If the block fails (a refused setting, a cap), the run's previous upload is put back: nothing changes."""
    checked(limits.check_upload, upload)
    dest = run.upload_path(Path(upload).suffix.lower(), kind)
    before = dest.read_bytes() if dest.exists() else None
    checked(run.save_upload, upload, kind)
    try:
        yield dest
    except BaseException:
        if before is None:
            dest.unlink(missing_ok=True)
            if not any(dest.parent.iterdir()):
                dest.parent.rmdir()
        else:
            dest.write_bytes(before)
        raise


def api_key_box(visible: bool = True) -> gr.Textbox:
    """A visitor's own API key for an API judge: it stays in this browser tab and goes to the one job it starts."""
    return gr.Textbox("", type="password", label="API judge key (optional)", visible=visible,
                      info="kept in this browser tab only and handed to the job you start; never saved. Empty = "
                           "the app's GROQ_API_KEY / OPENAI_API_KEY, which go only to the app's own provider URL")


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
    """Call a core function, turning its LabError into a message in the page."""
    try:
        return fn(*args, **kwargs)
    except LabError as e:
        raise gr.Error(hosting.public_text(str(e))) from e


CSS = """
.lab-progress { position: relative; height: 1.6rem; border-radius: 6px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden; }
.lab-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: .35; transition: width .4s; }
.lab-progress span { position: relative; padding-left: .6rem; line-height: 1.6rem; font-size: .9rem; }
.lab-response { border-left: 3px solid var(--color-accent); padding-left: .6rem; margin-bottom: .8rem; }
@media (max-width: 640px) { .gradio-container { padding: 4px !important; } }
"""
