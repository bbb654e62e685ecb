"""Iterate tab: self-rewarding DPO rounds as a job, with live progress, a table of rounds and per-round plots.

Everything shown comes from iterate.jsonl (one line per finished round) and the rounds' folders, re-read on every
tick of the job panel's timer, so a page reload re-attaches to a running iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from lab.iterate import IterateConfig, lineage
from lab.judge_backends import API_BACKENDS, BACKENDS
from lab.score import api_backend
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, api_key_box, checked, job_panel, labels_box, open_run, start_job, \
    typed_key_env, wire_job_panel

JUDGE_CHOICES = [("the model itself (as in the paper)", "self"), *((BACKENDS[n].label, n) for n in API_BACKENDS)]
ROUND_COLUMNS = ["round", "pairs kept", "ties dropped", "unscored dropped", "mean score", "mean chars",
                 "chosen / rejected chars", "win rate vs base", "win rate vs previous", "adapter"]
FORM = ["rounds", "samples", "evaluations", "n", "max_new_tokens", "judge", "judge_model", "start_adapter", "eval_n",
        "beta", "lr", "epochs", "max_steps", "lora_r", "seed"]  # the order start_iterating reads them in


@dataclass
class IterateTab:
    fields: dict  # IterateConfig field name -> component
    start: gr.Button
    panel: JobPanel
    table: gr.Dataframe
    win_plot: gr.LinePlot
    length_plot: gr.LinePlot
    hist_plot: gr.BarPlot
    api_key: gr.Textbox | None = None
    labels: gr.Markdown | None = None  # noise labels of the rounds (lab.noise)


def _settings_inputs() -> dict:
    """The form: each input built from its IterateConfig field (lab.ui.forms)."""
    inp = lambda names, **kw: forms.inputs(IterateConfig, names, **kw)  # noqa: E731
    with gr.Row():
        made = inp(["rounds", "samples", "evaluations", "n", "max_new_tokens"], rounds=dict(minimum=1),
                   samples=dict(label="Answers per instruction (N)", minimum=2),
                   evaluations=dict(label="Scores per answer (R)", minimum=1),
                   n=dict(label="Instructions (0 = all of the run's)", minimum=0),
                   max_new_tokens=dict(value=128, minimum=1))
    with gr.Row():
        made |= inp(["judge", "judge_model", "start_adapter", "eval_n"], judge=dict(choices=JUDGE_CHOICES),
                    start_adapter=dict(kind="Dropdown", choices=[("(none: the plain base)", "")], value="",
                                       label="Round 1 starts from"),
                    eval_n=dict(label="Held-out instructions per round", minimum=0))
    with gr.Accordion("Training each round", open=False):
        with gr.Row():
            made |= inp(["beta", "lr", "epochs", "max_steps", "lora_r", "seed"], beta=dict(minimum=0),
                        lr=dict(minimum=0), epochs=dict(minimum=0), lora_r=dict(minimum=1))
    return {name: made[name] for name in FORM}


def build(ctx) -> IterateTab:
    gr.Markdown("**Self-rewarding DPO**: each round the current model answers the run's instructions N times, scores "
                "its own answers R times with a 5-point rubric, and trains on its best answer against its worst, "
                "with the previous round as the DPO reference. A 135M model is a weak judge of itself: the plots "
                "show whether the rounds help. Details: `docs/iterative.md`.")
    fields = _settings_inputs()
    api_key = api_key_box()
    start = gr.Button("Iterate", variant="primary")
    panel = job_panel()
    labels = labels_box(ctx, "iterate", panel.timer)
    table = gr.Dataframe(headers=ROUND_COLUMNS, label="Rounds", interactive=False, wrap=True)
    with gr.Row():
        win_plot = gr.LinePlot(x="round", y="win rate", color="against", title="Win rate of round k (held-out)",
                               y_lim=[0, 1], height=260)
        length_plot = gr.LinePlot(x="round", y="characters", color="answers", title="Answer length", height=260)
        hist_plot = gr.BarPlot(x="score", y="count", color="round", title="Self-scores (rounded)", height=260)
    tab = IterateTab(fields, start, panel, table, win_plot, length_plot, hist_plot, api_key=api_key, labels=labels)
    _wire(tab, ctx)
    return tab


def _wire(tab: IterateTab, ctx) -> None:
    tab.start.click(lambda name, *values: start_iterating(name, *values[:-1], api_key=values[-1]),
                    inputs=[ctx.run_name, *tab.fields.values(), tab.api_key], outputs=[tab.panel.status],
                    api_name="start_iterating")
    views = [tab.table, tab.win_plot, tab.length_plot, tab.hist_plot]
    wire_job_panel(tab.panel, ctx.run_name, "iterate")
    tab.panel.timer.tick(refresh_if_changed, inputs=[ctx.run_name, tab.table], outputs=views, show_progress="hidden")
    ctx.run_name.change(refresh, inputs=[ctx.run_name], outputs=views) \
        .then(start_choices, inputs=[ctx.run_name], outputs=[tab.fields["start_adapter"]])


def start_iterating(run_name, *values, api_key: str = ""):
    open_run(run_name, create=False)
    cfg = forms.read(IterateConfig, dict.fromkeys(FORM), values)
    checked(cfg.validate)
    if cfg.judge != "self":
        checked(api_backend, cfg.score_config(1), (api_key or "").strip() or None)  # a missing key shows at once
    return start_job(run_name, "iterate", cfg.to_argv(), f"Iterating ({cfg.rounds} rounds)",
                     secret_env=typed_key_env(cfg.judge, api_key))


def start_choices(run_name: str | None):
    base = [("(none: the plain base)", "")]
    return gr.update(choices=base + (Run.open(run_name).adapters() if run_name else []), value="")


def refresh(run_name: str | None):
    """[rounds table, win-rate plot, length plot, score histogram] from iterate.jsonl."""
    lines = lineage(Run.open(run_name)) if run_name else []
    return [rounds_table(lines), win_frame(lines), length_frame(lines), hist_frame(lines)]


def refresh_if_changed(run_name: str | None, shown):
    if not run_name:
        return [gr.skip()] * 4
    n = len(lineage(Run.open(run_name)))
    if shown is not None and len(shown) == n:
        return [gr.skip()] * 4
    return refresh(run_name)


def _rate(w: dict | None) -> str:
    return "" if not w or not w.get("n") else f"{w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]"


def _fmt(x, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def rounds_table(lines: list[dict]) -> pd.DataFrame:
    rows = [[ln["round"], ln["pairs_kept"], ln["dropped_ties"], ln["dropped_unscored"], _fmt(ln["score_mean"]),
             _fmt(ln["chars_mean"], 0), f"{_fmt(ln['chosen_chars_mean'], 0)} / {_fmt(ln['rejected_chars_mean'], 0)}",
             _rate((ln.get("eval") or {}).get("win_rate_vs_base")),
             _rate((ln.get("eval") or {}).get("win_rate_vs_previous")), ln["adapter"]] for ln in lines]
    return pd.DataFrame(rows, columns=ROUND_COLUMNS)


def win_frame(lines: list[dict]) -> pd.DataFrame:
    rows = [{"round": ln["round"], "win rate": w["win_rate"], "against": label}
            for ln in lines for key, label in (("win_rate_vs_base", "base"), ("win_rate_vs_previous", "previous"))
            if (w := (ln.get("eval") or {}).get(key)) and w.get("n")]
    return pd.DataFrame(rows, columns=["round", "win rate", "against"])


def length_frame(lines: list[dict]) -> pd.DataFrame:
    rows = [{"round": ln["round"], "characters": ln[key], "answers": label} for ln in lines
            for key, label in (("chars_mean", "all"), ("chosen_chars_mean", "chosen"),
                               ("rejected_chars_mean", "rejected")) if ln.get(key) is not None]
    return pd.DataFrame(rows, columns=["round", "characters", "answers"])


def hist_frame(lines: list[dict]) -> pd.DataFrame:
    rows = [{"score": s, "count": c, "round": f"round {ln['round']}"} for ln in lines
            for s, c in ln["score_hist"].items()]
    return pd.DataFrame(rows, columns=["score", "count", "round"])


def on_show(tab: IterateTab, ctx, shown: gr.Tab) -> None:
    """Adapters trained since the run was picked appear when the tab is opened."""
    shown.select(start_choices, inputs=[ctx.run_name], outputs=[tab.fields["start_adapter"]])
