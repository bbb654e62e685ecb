"""The Gradio app: a run picker on top, then one tab per stage.

To add a tab: write lab/ui/<tab>.py with `build(ctx) -> <Tab dataclass>` (see lab/ui/sample.py), and add
("Title", "lab.ui.<tab>") to TABS in lab/ui/tabs.py, in pipeline order. Only tabs that work are listed. The holder's `views`
(lab.ui.views.View: what the tab shows of the run, choice lists included) are re-read when the tab is opened, as
they are when the run changes and when the tab's job ends; `on_show(holder, ctx, tab)` is there for anything else.

The API (gradio_client, README "Use it from Python") is the users' actions: every button has an api_name; what
the page does by itself (timers, refreshes, change handlers) is kept out of it (lab.ui.views.internal).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import gradio as gr

from lab import jobs, limits
from lab.errors import LabError
from lab.store import validate_run_name
from lab.ui import common, views, visitors
from lab.ui.tabs import TABS
from lab.ui.style import CSS, HEAD
from lab.ui.wording import say


INTRO = """# Preference Lab
Turn a chat model into a better one with preference data and DPO, and check honestly whether it got better.
**Sample** responses → **judge** them (LLM judge, you spot-check) and **rank** them (PairRM) → **train** DPO LoRA adapters
→ **compare** base vs adapters → **chat** with them → **iterate** (self-rewarding DPO) → **share** on the Hub.
Everything a stage writes lands in the run folder (`runs/<run>/`), so a reload or a restart loses nothing."""


@dataclass
class Ctx:
    """What every tab may read: the chosen run's name (a component) and the browser-stored copy of it.
    On a hosted app every handler that reads run_name reaches only the visitor's runs (lab.ui.visitors)."""

    run_name: gr.Dropdown
    remembered: gr.BrowserState
    visitor: gr.BrowserState  # the visitor's random id (hosted apps only; never shown, never an input of a tab)


def _run_picker() -> Ctx:
    with gr.Row():
        run_name = gr.Dropdown(choices=[], value=None, label="Run", allow_custom_value=True, scale=4,
                               info="Pick a run, or type a new name (letters, digits, . _ -) to start one.")
        refresh = gr.Button("↻ Runs", size="sm", scale=0, min_width=90)
    remembered = visitors.browser_state("preference-lab-run")
    refresh.click(lambda: gr.update(choices=visitors.run_choices()), outputs=run_name, api_name="runs")
    run_name.change(_remember, inputs=run_name, outputs=remembered, **views.internal())
    return Ctx(run_name, remembered, visitors.browser_state(visitors.STORAGE_KEY))


@visitors.action  # picking someone else's run is refused with a message, once
def _remember(name: str | None):
    if not name:
        return None
    try:
        return validate_run_name(name)
    except LabError as e:
        raise gr.Error(say(e)) from e


def build_app() -> gr.Blocks:
    limits.seal_owner_token()  # a hosted app: the owner's Hub token leaves os.environ (lab.limits)
    common.refuse_url_files()  # no input makes the server fetch a URL
    with gr.Blocks(title="Preference Lab") as app:
        gr.Markdown(INTRO)
        ctx = _run_picker()
        tabs, timers = [], []
        with gr.Tabs(overflow_behavior="wrap"):  # every tab in sight at phone width, none behind a "⋯" menu
            for title, module in TABS:
                with gr.Tab(title, id=title.lower().replace(" ", "-")) as tab:
                    mod = importlib.import_module(module)
                    holder = mod.build(ctx)
                views.on_open(tab, ctx.run_name, getattr(holder, "views", []))
                if hasattr(mod, "on_show"):
                    mod.on_show(holder, ctx, tab)
                tabs.append(tab)
                timers.append(getattr(getattr(holder, "panel", None), "timer", None))
        _poll_only_the_shown_tab(tabs, timers, ctx.run_name)
        app.load(visitors.arrive, inputs=[ctx.visitor, ctx.remembered], outputs=[ctx.visitor, ctx.run_name],
                 **views.internal("arrive")) \
            .then(_remember, inputs=ctx.run_name, outputs=ctx.remembered, **views.internal())  # typed before it
        # an API client on a hosted app calls /arrive first (README)
        app.unload(visitors.leave)
    visitors.install(app, ctx.run_name)
    jobs.start_pumping()  # queued jobs start here, one at a time (lab.jobs)
    _quiet_idle_queue(app)
    return app


# Gradio's event queue looks for new events every 1 ms when it has none (its default off Windows: 50 ms there), and
# for progress to send every 10 ms: an app nobody uses spent 4.0% of a core on those wake-ups (measured on this
# 2-core machine, no page open; 0.7% with these values). An event now waits up to 50 ms before it starts, and the
# one gr.Progress bar (the Share tab's upload) moves every 100 ms; jobs' progress comes from the lab's own timers.
IDLE_POLL_S = {"sleep_when_free": 0.05, "progress_update_sleep_when_free": 0.1}


def _quiet_idle_queue(app: gr.Blocks) -> None:
    for name, seconds in IDLE_POLL_S.items():
        if not hasattr(app._queue, name):  # tests/test_api.py fails on a Gradio that renamed them
            return
        setattr(app._queue, name, seconds)


def _poll_only_the_shown_tab(tabs: list[gr.Tab], timers: list[gr.Timer | None], run_name: gr.Component) -> None:
    """Only the tab on screen polls, and only while a job of the run is queued or running (lab.ui.common: a tick that
    finds no job under way stops its timer): opening a tab starts its timer for one look (which may find a job and
    keep ticking) and stops every other tab's; picking a run starts the shown tab's. An idle page sends nothing."""
    live = [t for t in timers if t is not None]
    shown = gr.State(0)  # the index of the tab on screen
    for i, tab in enumerate(tabs):
        tab.select(lambda i=i: [i, *shown_tab_timers(live, timers[i])], outputs=[shown, *live], **views.internal())
    run_name.change(lambda i: shown_tab_timers(live, timers[i], others=False), inputs=shown, outputs=live,
                    **views.internal())
    if timers and timers[0] is not None:
        timers[0].active = True  # the first look of the page's first tab


def shown_tab_timers(live: list[gr.Timer], shown: gr.Timer | None, others: bool = True) -> list:
    """Timer updates: the shown tab's starts (one look, which keeps ticking while a job is under way); the others
    stop, or (others=False) are left as they are. A run picked (the page load restores it) leaves them: that event
    may read which tab is shown before a tab click that came first has landed, and stopping the clicked tab's timer
    left its job panel blank after a reload (seen in a browser test: Compare clicked while the run was restored)."""
    return [gr.Timer(active=True) if t is shown else gr.Timer(active=False) if others else gr.skip() for t in live]


def launch_kwargs() -> dict:
    """Styling passed to launch() (gradio 6 takes css/theme there), and the owner's upload cap (lab.limits): Gradio
    refuses a bigger upload before it reaches a handler."""
    if limits.hosted():  # the requester's address is lab.hosting.client_address's to work out, from the raw peer:
        os.environ.setdefault("FORWARDED_ALLOW_IPS", "")  # uvicorn would take a local client's X-Forwarded-For
    limit = limits.upload_limit_bytes()
    return {"css": CSS, "head": HEAD, "theme": gr.themes.Soft(), **({"max_file_size": limit} if limit else {})}
