"""Compare tab: base vs adapters on held-out instructions, run as a job; scores, the side-by-side grid, a
per-instruction view with the user's notes, and exports (CSV, JSONL, Markdown).

The page writes no analysis of its own: the numbers, the grid and the user's notes are the analysis.
"""
from __future__ import annotations

import html
import json
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from lab import compare
from lab.adapters import resolve_adapters
from lab.compare import CompareConfig
from lab.errors import LabError
from lab.judge_backends import API_BACKENDS, BACKENDS
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, admit, api_key_box, checked, job_panel, open_run, start_job, typed_key_env, \
    upload_into, wire_job_panel

SOURCE_CHOICES = [("Bundled held-out set (offline)", "heldout"), ("My file", "file")]
JUDGE_CHOICES = [("none", "none"), *((b.label, name) for name, b in BACKENDS.items())]
SCORE_CHOICES = [("none", "none"), ("the base model (offline; weak at 135M)", "base"),
                 *((BACKENDS[name].label, name) for name in API_BACKENDS)]
SCORE_COLUMNS = ["model", "mean chars", "change", "mean tokens", "cut at max", "distinct-1", "distinct-2",
                 "refusals", "PairRM win rate", "judge win rate", "5-point win rate"]


@dataclass
class CompareTab:
    adapters: gr.CheckboxGroup
    source: gr.Radio
    upload: gr.File
    fields: dict  # CompareConfig field name -> component
    start: gr.Button
    panel: JobPanel
    scores: gr.Dataframe
    grid: gr.Dataframe
    pick: gr.Dropdown
    view: gr.HTML
    note: gr.Textbox
    save_note: gr.Button
    overall: gr.Textbox
    save_overall: gr.Button
    saved: gr.Markdown
    fmt: gr.Radio
    export: gr.Button
    file: gr.File
    api_key: gr.Textbox | None = None


FORM = ["n", "max_new_tokens", "temperature", "top_p", "seed", "pairrm", "judge", "judge_model", "duplicates",
        "near_duplicate", "batch_size", "score", "score_model"]  # the order start_compare reads them in


def _settings_inputs() -> dict:
    """The form: each input built from its CompareConfig field (lab.ui.forms)."""
    inp = lambda names, **kw: forms.inputs(CompareConfig, names, **kw)  # noqa: E731
    with gr.Row():
        made = inp(["n", "max_new_tokens", "temperature", "top_p", "seed"], n=dict(minimum=0),
                   max_new_tokens=dict(value=128, minimum=1),
                   temperature=dict(kind="Slider", minimum=0, maximum=2, step=0.05),
                   top_p=dict(kind="Slider", minimum=0.05, maximum=1, step=0.01))
    with gr.Accordion("Scores and duplicates", open=False):
        with gr.Row():
            made |= inp(["pairrm", "judge", "judge_model"], pairrm=dict(placeholder="llm-blender/PairRM"),
                        judge=dict(choices=JUDGE_CHOICES))
        with gr.Row():
            made |= inp(["score", "score_model"], score=dict(choices=SCORE_CHOICES))
        with gr.Row():
            made |= inp(["duplicates", "near_duplicate", "batch_size"], duplicates=dict(kind="Radio"),
                        near_duplicate=dict(kind="Slider", minimum=0.3, maximum=1, step=0.05),
                        batch_size=dict(minimum=1))
    return {name: made[name] for name in FORM}


def build(ctx) -> CompareTab:
    gr.Markdown("Answer **held-out instructions** with the base model and each adapter: one model in memory, adapters "
                "switched on it, the same decoding and seeds for all. Win rates against the base come with 95% "
                "bootstrap intervals; with a few dozen instructions they are wide. An API judge's key comes from the "
                "app's environment (`GROQ_API_KEY` / `OPENAI_API_KEY`) or the key field below (this tab only). "
                "Details: `docs/iterative.md`.")
    with gr.Row():
        adapters = gr.CheckboxGroup([], label="Adapters", info="none ticked = every adapter of the run")
        source = gr.Radio(SOURCE_CHOICES, value="heldout", label="Held-out instructions", info=CompareConfig.help(
            "instructions"))
    upload = gr.File(label="Held-out file (.jsonl with a prompt field, .csv with a prompt column, .txt)",
                     file_types=[".jsonl", ".csv", ".txt"], visible=False)
    fields = _settings_inputs()
    api_key = api_key_box()
    start = gr.Button("Compare", variant="primary")
    panel = job_panel()
    scores = gr.Dataframe(headers=SCORE_COLUMNS, label="Scores", interactive=False, wrap=True)
    grid = gr.Dataframe(label="Side by side (one row per instruction)", interactive=False, wrap=True,
                        max_height=520)
    pick = gr.Dropdown([], label="Instruction", interactive=True)
    view = gr.HTML()
    note = gr.Textbox(label="Your note on this instruction", lines=2)
    save_note = gr.Button("Save note", size="sm")
    overall = gr.Textbox(label="Your overall notes on the comparison", lines=4)
    save_overall = gr.Button("Save overall notes", size="sm")
    saved = gr.Markdown()
    with gr.Row():
        fmt = gr.Radio([("CSV", "csv"), ("JSONL", "jsonl"), ("Markdown", "md")], value="csv", label="Export format")
        export = gr.Button("Export the grid", size="sm")
        file = gr.File(label="Exported file", interactive=False)
    tab = CompareTab(adapters, source, upload, fields, start, panel, scores, grid, pick, view, note, save_note,
                     overall, save_overall, saved, fmt, export, file, api_key=api_key)
    _wire(tab, ctx)
    return tab


def _wire(tab: CompareTab, ctx) -> None:
    tab.source.change(lambda s: gr.update(visible=s == "file"), tab.source, tab.upload)
    tab.start.click(lambda *values: start_compare(*values[:-1], api_key=values[-1]),
                    inputs=[ctx.run_name, tab.adapters, tab.source, tab.upload, *tab.fields.values(), tab.api_key],
                    outputs=[tab.panel.status], api_name="start_compare")
    results = [tab.scores, tab.grid, tab.pick, tab.overall]
    wire_job_panel(tab.panel, ctx.run_name, "compare")
    tab.panel.timer.tick(refresh_if_finished, inputs=[ctx.run_name, tab.grid], outputs=results,
                         show_progress="hidden")
    ctx.run_name.change(refresh, inputs=[ctx.run_name], outputs=results) \
        .then(adapter_choices, inputs=[ctx.run_name], outputs=[tab.adapters])
    tab.pick.change(show_instruction, inputs=[ctx.run_name, tab.pick], outputs=[tab.view, tab.note])
    tab.save_note.click(save_instruction_note, inputs=[ctx.run_name, tab.pick, tab.note], outputs=[tab.saved])
    tab.save_overall.click(save_overall_note, inputs=[ctx.run_name, tab.overall], outputs=[tab.saved])
    tab.export.click(export_grid, inputs=[ctx.run_name, tab.fmt], outputs=[tab.file])


def start_compare(run_name, adapters, source, upload, *values, api_key: str = ""):
    run = open_run(run_name, create=False)
    if source == "file" and not upload:
        raise gr.Error("Upload a held-out instruction file first, or pick the bundled held-out set.")
    with upload_into(run, upload, "heldout") if source == "file" else nullcontext(source) as where:
        return _start_compare(run, run_name, adapters, str(where), values, api_key)


def _start_compare(run: Run, run_name: str, adapters, source: str, values, api_key: str) -> str:
    cfg = forms.read(CompareConfig, dict.fromkeys(FORM), values, instructions=source,
                     adapters=",".join(adapters or []))
    checked(cfg.validate)
    admit(["compare", "--run", run.name, *cfg.to_argv()])  # a hosted app's rules first: no path is looked at
    checked(resolve_adapters, run, cfg.adapters)  # "no adapters yet" shows at once, not in the job log
    checked(compare.check_scorers, cfg, (api_key or "").strip() or None)
    apis = {b for b in (cfg.judge, cfg.score) if b in API_BACKENDS}
    if (api_key or "").strip() and len(apis) > 1:
        raise gr.Error("The LLM judge and the 5-point scorer use two API providers, and a typed key belongs to one: "
                       "pick the same provider for both, or leave the key box empty to use the app's own keys.")
    api = next(iter(apis), "")
    return start_job(run_name, "compare", cfg.to_argv(), "Comparing", secret_env=typed_key_env(api, api_key))


def adapter_choices(run_name: str | None):
    if not run_name:
        return gr.update(choices=[], value=[])
    return gr.update(choices=Run.open(run_name).adapters(), value=[])


def refresh(run_name: str | None):
    """[scores table, grid, instruction picker, overall notes] of the run's latest comparison."""
    empty = [pd.DataFrame(columns=SCORE_COLUMNS), pd.DataFrame(), gr.update(choices=[], value=None), ""]
    if not run_name:
        return empty
    run = Run.open(run_name)
    notes = compare.read_notes(run)
    try:
        grid = compare.grid(run)
    except LabError:
        return [*empty[:3], notes["overall"]]
    scores = run.file("compare_scores")
    table = scores_table(json.loads(scores.read_text(encoding="utf-8"))) if scores.exists() else empty[0]
    picks = [(f"{p[:80]}{' (noted)' if i in notes['instructions'] else ''}", i) for i, p in grid["prompt"].items()]
    return [table, grid.reset_index(), gr.update(choices=picks), notes["overall"]]


def refresh_if_finished(run_name: str | None, shown):
    """Timer: reload the results when the comparison on disk is newer than what the page shows."""
    if not run_name:
        return [gr.skip()] * 4
    try:
        rows = len(compare.grid(Run.open(run_name)))
    except LabError:
        return [gr.skip()] * 4
    if shown is not None and len(shown) == rows and rows:
        return [gr.skip()] * 4
    return refresh(run_name)


def _rate(w: dict | None) -> str:
    if not w or not w.get("n"):
        return ""
    return f"{w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}] (n={w['n']})"


def scores_table(scores: dict) -> pd.DataFrame:
    """compare-scores.json -> one row per model."""
    rows = []
    for m, s in scores["per_model"].items():
        w = scores["win_rates"].get(m, {})
        change = "" if s["chars_change"] is None else f"{s['chars_change']:+.0f} ({s['chars_change_pct']:+.0f}%)"
        rows.append([m, round(s["mean_chars"]), change, round(s["mean_tokens"], 1), f"{s['truncated_rate']:.0%}",
                     round(s["distinct_1"], 3), round(s["distinct_2"], 3), f"{s['refusal_rate']:.0%}",
                     _rate(w.get("pairrm")), _rate(w.get("judge")), _rate(w.get("score"))])
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def show_instruction(run_name: str | None, iid: str | None):
    """The instruction, each model's answer side by side, and the user's note on it."""
    if not run_name or not iid:
        return "", ""
    run = Run.open(run_name)
    grid = checked(compare.grid, run)
    if iid not in grid.index:
        return "", ""
    row = grid.loc[iid]
    models = [c for c in grid.columns if c not in ("prompt", "duplicate_of")]
    dup = f" · duplicates training instruction {html.escape(str(row['duplicate_of']))}" if row["duplicate_of"] else ""
    cols = "".join(f'<div class="lab-response" style="flex:1;min-width:220px"><b>{html.escape(m)}</b>'
                   f'<pre style="white-space:pre-wrap">{html.escape(str(row[m] or ""))}</pre></div>' for m in models)
    page = (f"<p><b>Instruction</b>{dup}: {html.escape(row['prompt'])}</p>"
            f'<div style="display:flex;gap:.8rem;flex-wrap:wrap">{cols}</div>')
    return page, compare.read_notes(run)["instructions"].get(iid, "")


def save_instruction_note(run_name: str | None, iid: str | None, text: str) -> str:
    if not iid:
        raise gr.Error("Pick an instruction first.")
    compare.save_note(open_run(run_name, create=False), text or "", iid)
    return f"Note on {iid} saved."


def save_overall_note(run_name: str | None, text: str) -> str:
    compare.save_note(open_run(run_name, create=False), text or "")
    return "Overall notes saved."


def export_grid(run_name: str | None, fmt: str) -> str:
    """The export, as a copy in a temp folder: Gradio serves files from there (the runs root may be /data/runs, which
    it does not serve, and must not: that would serve every run)."""
    path = checked(compare.export, open_run(run_name, create=False), fmt)
    copy = Path(tempfile.mkdtemp(prefix="lab-export-")) / f"{run_name}-{path.name}"
    shutil.copyfile(path, copy)
    return str(copy)


def on_show(tab: CompareTab, ctx, shown: gr.Tab) -> None:
    """Adapters trained since the run was picked appear when the tab is opened."""
    shown.select(adapter_choices, inputs=[ctx.run_name], outputs=[tab.adapters])
