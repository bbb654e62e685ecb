"""What a tab shows of the run, kept fresh by one mechanism, and its form filled from the run's last job.

A tab lists its result views (`View`: a function of the run name, and of some inputs, giving one value per output).
The same views are re-read on every occasion the files may have changed under them:
  - the run picker changes (the page load restores it, so a reload too)      `chain(ctx.run_name.change, ...)`
  - the tab is opened (another tab's job may have written what it shows)     lab.ui.build_app, `chain(tab.select)`
  - the tab's job starts or ends, and every tick while it runs if `live`     lab.ui.common.wire_job_panel
  - another tab's job on the run starts or ends (while this tab is shown)    lab.ui.common.wire_job_panel
A view never raises on these events: a run name that is not a run (half typed, refused) leaves the page as it is
instead of writing a traceback to the server log every poll second.

`wire_restore` fills a tab's form, when a run is picked, with the settings of the run's running or last job of
that tab's stage: the job's command line (jobs/job.json, parsed by lab.cli's parser into the stage's settings) if
the run's latest job is of that stage, else the settings run.json recorded for the stage; forms.values_of maps
them back to the inputs. `made_with` is the one-line caption of what made a result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from lab import jobs
from lab.cli import build_parser
from lab.stages import BY_NAME
from lab.errors import LabError
from lab.store import Run


def internal(name: str | None = None) -> dict:
    """Event arguments for what the page does by itself (refreshes, timers, change handlers): kept out of the API
    (lab.ui's user actions are the API). A `name` keeps it callable by that name (tests reach the visitor gate of
    reads through it) while still unlisted."""
    if name:
        return {"api_name": name, "api_visibility": "undocumented", "show_progress": "hidden"}
    return {"api_name": False, "api_visibility": "private", "show_progress": "hidden"}  # False: takes no fn name


@dataclass
class View:
    """fn(run_name, *values of inputs) -> one value per output (a single output: the value itself)."""

    fn: Callable[..., Any]
    outputs: list
    inputs: list = field(default_factory=list)
    live: bool = False  # re-read every tick while the tab's job runs (a training's plots)
    api_name: str | None = None  # see internal()

    def read(self, run_name: str | None, *values) -> list:
        """The outputs' new values; on a LabError (not a run, a file half written) every output is left alone."""
        try:
            out = self.fn(run_name, *values)
        except LabError:
            return [gr.skip()] * len(self.outputs)
        return list(out) if len(self.outputs) != 1 else [out]

    def handler(self) -> Callable:
        def show(run_name, *values):
            out = self.read(run_name, *values)
            return out[0] if len(out) == 1 else out
        show.__name__ = getattr(self.fn, "__name__", "view")
        return show


def chain(trigger, run_name: gr.Component, views: list[View]):
    """Re-read `views` one after the other when `trigger` fires (one event listener, e.g. run_name.change):
    in order, so that a later step (a form restored) sees what an earlier one set. -> the last event, to chain on."""
    dep = None
    for v in views:
        kwargs = dict(fn=v.handler(), inputs=[run_name, *v.inputs], outputs=v.outputs, **internal(v.api_name))
        dep = trigger(**kwargs) if dep is None else dep.then(**kwargs)
    return dep


def on_open(tab: gr.Tab, run_name: gr.Component, views: list[View]) -> None:
    """Opening a tab re-reads its views (what other tabs' jobs wrote meanwhile)."""
    if views:
        chain(tab.select, run_name, views)


# ---- the form of the last job --------------------------------------------------------------------------------------
def last_settings(run: Run, stage: str):
    """The settings (the stage's dataclass) of the run's running or last job of `stage`, else None: see the module
    docstring."""
    cls = BY_NAME[stage].settings
    argv = jobs.status(run).get("argv") or []
    if argv and argv[0] == stage:
        try:
            return cls.from_args(build_parser().parse_args(argv))
        except SystemExit:  # a job.json from another version of the lab: fall back on run.json
            pass
    recorded = run.stage_settings(stage) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls.from_dict({k: v for k, v in recorded.items() if k in names}) if recorded else None
    except (LabError, TypeError):
        return None


def wire_restore(after, run_name: gr.Component, stage: str, outputs: list, to_values: Callable[[Any], list]) -> None:
    """When a run is picked (`after`: the end of the tab's run-change chain), fill `outputs` with
    to_values(settings of the run's last `stage` job); a run without one leaves the form as it is."""
    def restore(name: str | None):
        skip = [gr.skip()] * len(outputs)
        try:
            settings = last_settings(Run.open(name, create=False), stage) if name else None
        except LabError:
            return skip
        return skip if settings is None else to_values(settings)

    event = after.then if after is not None else run_name.change
    event(restore, inputs=[run_name], outputs=outputs, **internal())


# ---- captions -----------------------------------------------------------------------------------------------------
def made_with(settings: dict | None, stage: str, names: list[str], extra: dict | None = None) -> str:
    """"Made with model tiny-random · temperature 0.8 · …": the named settings (labels from the stage's settings
    fields, lower case) of what the stage recorded; empty values are left out. extra: more {label: value}."""
    if not settings:
        return ""
    cls = BY_NAME[stage].settings
    fields = {f.name: f for f in dataclasses.fields(cls)}
    parts = []
    for name in names:
        value = settings.get(name)
        if value in (None, "", "none") or name not in fields:
            continue
        label = fields[name].metadata.get("label") or name.replace("_", " ")
        word = label.split(" ")[0]  # "Temperature" -> "temperature", but "LoRA rank" and "PairRM" keep their case
        parts.append(f"{label[0].lower() + label[1:] if word[1:] == word[1:].lower() else label} {value}")
    parts += [f"{k} {v}" for k, v in (extra or {}).items() if v not in (None, "")]
    return "Made with " + " · ".join(parts) if parts else ""
