"""Iterate tab: self-rewarding DPO rounds as a job, with live progress, a table of rounds and per-round plots.

Everything shown comes from iterate.jsonl (one line per finished round) and the rounds' folders, re-read on every
tick of the job panel's timer, so a page reload re-attaches to a running iteration.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from lab.errors import LabError
from lab.iterate import IterateConfig, estimate, lineage
from lab.judge_backends import API_BACKENDS, BACKENDS
from lab.score import api_backend
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, api_key_box, checked, duration, job_panel, labels_view, open_run, plot, \
    start_job, typed_key_env, wire_job_panel, wire_start
from lab.ui.tables import html_table
from lab.ui.views import View, chain, internal, made_with, wire_restore
from lab.ui.wording import count, say

JUDGE_CHOICES = [("the model itself (as in the paper)", "self"), *((BACKENDS[n].label, n) for n in API_BACKENDS)]
ROUND_COLUMNS = ["round", "pairs kept", "ties dropped", "unscored dropped", "mean score", "mean chars",
                 "chosen / rejected chars", "win rate vs base", "win rate vs previous",
                 "checks accuracy (IFEval, prompt-level strict): round vs base", "adapter"]
FORM = ["rounds", "samples", "evaluations", "n", "max_new_tokens", "judge", "judge_model", "start_adapter", "eval_n",
        "eval_instructions", "beta", "lr", "epochs", "max_steps", "lora_r", "seed", "judge_tokens", "temperature",
        "judge_temperature", "train_batch_size", "gradient_checkpointing"]  # start_iterating's order
EVAL_CHOICES = [("bundled held-out set", "heldout"),
                ("bundled verifiable held-out set (IFEval checks: a number no judge produced)", "checks-heldout")]
MADE_WITH = ["model", "judge", "judge_model", "samples", "evaluations", "max_new_tokens", "beta", "lr", "max_steps"]
# Each plot's colour categories are all there from its first row on: Gradio 6.31 keeps the colour scale of a plot's
# first data, so a series that appears later (round 2's bars, the "previous" line) would never be drawn.
SCORE_COLORS = {"0": "#d73027", "1": "#fc8d59", "2": "#fee08b", "3": "#d9ef8b", "4": "#91cf60", "5": "#1a9850"}
CHECKS_COLORS = {"base": "#9e9e9e", "this round": "#1f77b4"}


@dataclass
class IterateTab:
    fields: dict  # IterateConfig field name -> component
    start: gr.Button
    panel: JobPanel
    table: gr.HTML
    win_plot: gr.Plot  # matplotlib: markers (one round is one point) and integer round ticks, which LinePlot lacks
    length_plot: gr.Plot
    hist_plot: gr.BarPlot
    checks_plot: gr.BarPlot
    made: gr.Markdown
    caption: gr.Markdown  # what the plots can and cannot show yet, under them (a plot's own caption is clipped)
    shown: gr.State  # [run name, rounds] the table and plots show (a new round redraws them, nothing else)
    api_key: gr.Textbox | None = None
    labels: gr.Markdown | None = None  # noise labels of the rounds (lab.noise)
    plan: gr.Markdown | None = None  # what the iteration will do, before it runs (show_plan)
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files

    @property
    def results(self) -> list:
        return [self.table, self.win_plot, self.length_plot, self.hist_plot, self.checks_plot, self.made,
                self.caption, self.shown]


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
        made |= inp(["judge", "judge_model", "start_adapter"], judge=dict(choices=JUDGE_CHOICES),
                    start_adapter=dict(kind="Dropdown", choices=[("(none: the plain base)", "")], value="",
                                       label="Round 1 starts from"))
    with gr.Row():  # the README's knobs: the self-judge's token budget sets most of a round's scoring time
        made |= inp(["judge_tokens", "temperature", "judge_temperature"],
                    judge_tokens=dict(label="Judge tokens (longest judgment)", minimum=1),
                    temperature=dict(label="Answer temperature", minimum=0),
                    judge_temperature=dict(label="Judge temperature", minimum=0))
    with gr.Row():
        made |= inp(["eval_n", "eval_instructions"], eval_n=dict(label="Held-out instructions per round", minimum=0),
                    eval_instructions=dict(kind="Dropdown", choices=EVAL_CHOICES, label="Held-out instructions",
                                           allow_custom_value=True))  # a CLI job's file restores as it was
    with gr.Accordion("Training each round", open=False):
        with gr.Row():
            made |= inp(["beta", "lr", "epochs", "max_steps", "lora_r", "train_batch_size", "seed"],
                        beta=dict(minimum=0), lr=dict(minimum=0), epochs=dict(minimum=0), lora_r=dict(minimum=1),
                        train_batch_size=dict(label="Pairs per step", minimum=1))
        with gr.Row():  # a row of its own: beside seven number boxes its label and help were cut to a sliver
            made |= inp(["gradient_checkpointing"])
    return {name: made[name] for name in FORM}


def build(ctx) -> IterateTab:
    gr.Markdown("**Self-rewarding DPO**: each round the current model answers the run's instructions N times, scores "
                "its own answers R times with a 5-point rubric, and trains on its best answer against its worst, "
                "with the previous round as the DPO reference. A 135M model is a weak judge of itself: the plots "
                "show whether the rounds help. Details: `docs/iterative.md`.")
    fields = _settings_inputs()
    api_key = api_key_box(visible=False)  # shown when an API judge is picked
    plan = gr.Markdown(elem_classes="lab-plan")  # the work before it runs, as the Judge tab shows its calls
    start = gr.Button("Iterate", variant="primary")
    panel = job_panel()
    labels, noise = labels_view("iterate")
    gr.Markdown("### Rounds")
    table, made = gr.HTML(), gr.Markdown(elem_classes="lab-made")
    with gr.Row(elem_classes="lab-plots"):  # min_width: on a phone the plots wrap into a column
        # the title is drawn in the figure: Gradio's label badge covered its top-left corner
        win_plot = gr.Plot(label="Win rate of round k (held-out)", show_label=False, format="png", min_width=300,
                           visible=False)
        length_plot = gr.Plot(label="Answer length", show_label=False, format="png", min_width=300, visible=False)
        hist_plot = gr.BarPlot(x="round", y="count", color="score", title="Self-scores (rounded) per round",
                               color_map=SCORE_COLORS, height=260, min_width=300)
        checks_plot = gr.BarPlot(x="round", y="accuracy", color="model", title="Held-out checks accuracy (IFEval)",
                                 color_map=CHECKS_COLORS, y_lim=[0, 1], height=260, min_width=300)
    caption = gr.Markdown(elem_classes="lab-made")
    tab = IterateTab(fields, start, panel, table, win_plot, length_plot, hist_plot, checks_plot, made, caption,
                     gr.State(None), api_key=api_key, labels=labels)
    start_from = fields["start_adapter"]
    tab.plan = plan
    tab.views = [View(start_choices, [start_from], inputs=[start_from]), noise,
                 View(show_plan, [plan], inputs=list(fields.values()), api_name="iterate_plan"),
                 View(refresh_if_changed, tab.results, inputs=[tab.shown], live=True, api_name="iterate_results")]
    _wire(tab, ctx)
    return tab


def _wire(tab: IterateTab, ctx) -> None:
    judge = tab.fields["judge"]
    judge.change(lambda j: gr.update(visible=j != "self"), judge, tab.api_key, **internal())
    for comp in tab.fields.values():
        comp.change(show_plan, [ctx.run_name, *tab.fields.values()], tab.plan, **internal())
    wire_job_panel(tab.panel, ctx.run_name, "iterate", tab.views)
    wire_start(tab.panel, tab.start, lambda name, *values: start_iterating(name, *values[:-1], api_key=values[-1]),
               [ctx.run_name, *tab.fields.values(), tab.api_key], "start_iterate")
    after = chain(ctx.run_name.change, ctx.run_name, tab.views)
    wire_restore(after, ctx.run_name, "iterate", list(tab.fields.values()),
                 lambda cfg: forms.values_of(cfg, tab.fields))


def start_iterating(run_name, *values, api_key: str = ""):
    open_run(run_name, create=False)
    cfg = forms.read(IterateConfig, dict.fromkeys(FORM), values)
    checked(cfg.validate)
    if cfg.judge != "self":
        checked(api_backend, cfg.score_config(1), (api_key or "").strip() or None)  # a missing key shows at once
    est = checked(estimate, Run.open(run_name), cfg)
    started = start_job(run_name, "iterate", cfg.to_argv(), f"Iterating ({count(cfg.rounds, 'round')})",
                        secret_env=typed_key_env(cfg.judge, api_key))
    return f"{started} {plan_md(est)}"


def show_plan(run_name: str | None, *values) -> str:
    """The plan for the form's settings on this run, as Markdown (or why it cannot run yet)."""
    if not run_name:
        return ""
    try:
        return plan_md(estimate(Run.open(run_name), forms.read(IterateConfig, dict.fromkeys(FORM), values)))
    except (LabError, ValueError, TypeError) as e:
        return f"⚠ {html.escape(say(e) if isinstance(e, LabError) else str(e))}"


def plan_md(est: dict) -> str:
    """"**2** rounds to run: 4 answers … · at most ~3,000 new tokens · about 6 min at this machine's pace"."""
    if not est["rounds_to_run"]:
        return "Every round asked for is done: raise Rounds to run more."
    calls = f" ({est['judge_calls']} API calls)" if est["judge_calls"] else ""
    pace = est["tokens_per_s"]
    when = (f" · at most about **{duration(est['generation_s'])}** of generation at this run's measured "
            f"{pace:.0f} tokens/s" if pace else " · no measured pace on this run yet (sample first)")
    train = (f", plus about {duration(est['train_s_per_round'])} of training a round (as round 1 took here)"
             if est["train_s_per_round"] else ", plus each round's training")
    return (f"**{est['rounds_to_run']}** round{'s' if est['rounds_to_run'] != 1 else ''} to run on "
            f"{est['instructions']} instructions: {est['answers']} answers and {est['judgments']} self-scores"
            f"{calls}, {est['eval_answers']} held-out answers ({count(est['eval_instructions'], 'instruction')}) and "
            f"{est['eval_judgments']} of their scores · at most ~{est['max_tokens']:,} new tokens{when}{train}.")


def start_choices(run_name: str | None, picked: str | None = ""):
    """The adapters round 1 may start from; the one picked stays picked while it is still there."""
    adapters = Run.open(run_name).adapters() if run_name else []
    return gr.update(choices=[("(none: the plain base)", ""), *adapters], value=picked if picked in adapters else "")


def refresh(run_name: str | None):
    """[rounds table, win-rate plot, length plot, score histogram, what made them] from iterate.jsonl."""
    run = Run.open(run_name) if run_name else None
    lines = lineage(run) if run else []
    made = made_with(run.stage_settings("iterate"), "iterate", MADE_WITH) if lines else ""
    one = "One round so far: its points join into lines from round 2 on." if len(lines) == 1 else ""
    no_eval = "No held-out evaluation in these rounds (held-out instructions per round: 0)." if lines and not any(
        (ln.get("eval") or {}).get("instructions") for ln in lines) else one
    shown = bool(lines)  # no empty plot boxes before the first round
    checked_rounds, wins = checks_frame(lines), win_frame(lines)
    return [html_table(rounds_table(lines), "No rounds in this run yet."),
            figure_update(rounds_figure(wins, "win rate", "against", "Win rate of round k (held-out)", (0, 1)),
                          bool(len(wins))),
            figure_update(rounds_figure(length_frame(lines), "characters", "answers", "Answer length"), shown),
            plot(hist_frame(lines), "", shown), plot(checked_rounds, "", bool(len(checked_rounds))), made,
            " ".join(c for c in (no_eval if no_eval != one else "", one) if c)]


def refresh_if_changed(run_name: str | None, shown):
    """refresh() and what it shows ([run, rounds]) when that differs from `shown`, else nothing changes: the plots
    are not redrawn every second of a round."""
    n = len(lineage(Run.open(run_name))) if run_name else 0
    if shown == [run_name, n]:
        return [gr.skip()] * 8
    return [*refresh(run_name), [run_name, n]]


def rounds_figure(frame: pd.DataFrame, y: str, color: str, title: str, y_lim: tuple | None = None):
    """A line per `color` over the rounds, every round a marker (round 1 alone is a point), integer round ticks.
    None for an empty frame."""
    if not len(frame):
        return None
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe inside the app's threads

    fig = Figure(figsize=(4.6, 2.8), layout="constrained")
    ax = fig.subplots()
    for name, part in frame.groupby(color, sort=False):
        ax.plot(part["round"], part[y], marker="o", label=str(name))
    rounds = sorted(set(frame["round"]))
    ax.set_xticks(rounds)
    ax.set_xlim(rounds[0] - 0.5, rounds[-1] + 0.5)
    if y_lim:
        ax.set_ylim(y_lim[0] - 0.03, y_lim[1] + 0.03)
    ax.set_xlabel("round")
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title=color, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the points
    return fig


def figure_update(fig, visible: bool):
    return gr.update(value=fig, visible=visible and fig is not None)


FEW_FOR_INTERVAL = 5  # held-out instructions below which a bootstrap interval says nothing (2 of 2: [1.00, 1.00])


def _rate(w: dict | None) -> str:
    """'0.75 [0.50, 1.00]'; on fewer than FEW_FOR_INTERVAL instructions (or a zero-width interval, which reads as
    certainty) the rate alone and why there is no interval."""
    if not w or not w.get("n"):
        return ""
    if w["n"] < FEW_FOR_INTERVAL or w["ci_low"] == w["ci_high"]:
        return f"{w['win_rate']:.2f} (n={w['n']}: too few for an interval)"
    return f"{w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]"


def _fmt(x, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def rounds_table(lines: list[dict]) -> pd.DataFrame:
    rows = [[ln["round"], ln["pairs_kept"], ln["dropped_ties"], ln["dropped_unscored"], _fmt(ln["score_mean"]),
             _fmt(ln["chars_mean"], 0), f"{_fmt(ln['chosen_chars_mean'], 0)} / {_fmt(ln['rejected_chars_mean'], 0)}",
             _rate((ln.get("eval") or {}).get("win_rate_vs_base")),
             _rate(vs_previous(ln)), _checks((ln.get("eval") or {}).get("checks"), f"round-{ln['round']}"),
             Path(ln["adapter"]).name]
            for ln in lines]
    return pd.DataFrame(rows, columns=ROUND_COLUMNS)


def _checks(found: dict | None, adapter: str) -> str:
    """'42% vs 30%: +12% [+2%, +22%] (n=60)': the round's adapter against the base, paired over prompts."""
    if not found or adapter not in found["accuracy"]:
        return ""
    acc, d = found["accuracy"], found["vs_base"]
    return (f"{acc[adapter]['value']:.0%} vs {acc['base']['value']:.0%}: {d['diff']:+.0%} [{d['ci_low']:+.0%}, "
            f"{d['ci_high']:+.0%}] (n={found['n']})")


def checks_frame(lines: list[dict]) -> pd.DataFrame:
    """Per round with checks: the base's and the round's adapter's held-out checks accuracy, as bars."""
    rows = [{"round": f"round {ln['round']}", "accuracy": acc["value"], "model": "base" if m == "base" else
             "this round"} for ln in lines for m, acc in (((ln.get("eval") or {}).get("checks") or {}).get(
                 "accuracy") or {}).items() if m in ("base", f"round-{ln['round']}")]
    return typed(rows, {"round": str, "accuracy": float, "model": str})


def vs_previous(line: dict) -> dict | None:
    """Round k's win rate against round k-1; for a round that started from the plain base, that is the base."""
    ev = line.get("eval") or {}
    return ev.get("win_rate_vs_previous") or (ev.get("win_rate_vs_base") if not line.get("policy") else None)


def win_frame(lines: list[dict]) -> pd.DataFrame:
    rows = [{"round": ln["round"], "win rate": w["win_rate"], "against": label} for ln in lines
            for w, label in (((ln.get("eval") or {}).get("win_rate_vs_base"), "base"), (vs_previous(ln), "previous"))
            if w and w.get("n")]
    return typed(rows, {"round": int, "win rate": float, "against": str})


def length_frame(lines: list[dict]) -> pd.DataFrame:
    rows = [{"round": ln["round"], "characters": ln[key], "answers": label} for ln in lines
            for key, label in (("chars_mean", "all"), ("chosen_chars_mean", "chosen"),
                               ("rejected_chars_mean", "rejected")) if ln.get(key) is not None]
    return typed(rows, {"round": int, "characters": float, "answers": str})


def hist_frame(lines: list[dict]) -> pd.DataFrame:
    """Per round, how many self-scores rounded to each of 0-5 (every score a row, zero counts too)."""
    width = len(str(max((ln["round"] for ln in lines), default=1)))  # "round 02" sorts before "round 10"
    rows = [{"score": s, "count": ln["score_hist"].get(s, 0), "round": f"round {ln['round']:0{width}d}"}
            for ln in lines for s in SCORE_COLORS]
    return typed(rows, {"score": str, "count": int, "round": str})


def typed(rows: list[dict], columns: dict[str, type]) -> pd.DataFrame:
    """A plot's frame with its column types fixed even when empty: a plot first given untyped (object) columns
    keeps category axes and draws no line when the numbers come."""
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)
