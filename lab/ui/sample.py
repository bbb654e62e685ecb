"""Sample tab: choose model, instructions and decoding; run as a job; browse the responses per instruction.

Pattern for every tab: `build(ctx)` lays out components and returns a small dataclass holding them; handlers read
components, build the stage's settings dataclass, validate it, and start a job (or call a quick core function).
"""
from __future__ import annotations

import html
from contextlib import nullcontext
from dataclasses import dataclass, field

import gradio as gr

from lab.records.samples import groups
from lab.sample import SampleConfig, summarize
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, checked, job_panel, noise_md, open_run, start_job, upload_into, wire_job_panel, \
    wire_start
from lab.ui.views import View, chain, internal, made_with, wire_restore

MODEL_CHOICES = [
    ("bundled: SmolLM2-135M-Instruct (offline, small and weak)", "bundled"),
    ("meta-llama/Llama-3.2-1B-Instruct (hub: token + accepted licence)", "meta-llama/Llama-3.2-1B-Instruct"),
    ("meta-llama/Llama-3.2-3B-Instruct (hub: token + accepted licence)", "meta-llama/Llama-3.2-3B-Instruct"),
    ("tiny-random: writes noise, for smoke tests only", "tiny-random"),
]
SOURCE_CHOICES = [("Bundled set (offline)", "bundled"),
                  ("Bundled verifiable set: IFEval checks, a grader that knows the answer (offline)", "checks"),
                  ("LIMA (hub, gated)", "lima"), ("My file", "file")]


@dataclass
class SampleTab:
    form: dict  # SampleConfig field name -> input (FORM order)
    source: gr.Radio
    upload: gr.File
    start: gr.Button
    panel: JobPanel
    summary: gr.Markdown
    pick: gr.Dropdown
    responses: gr.HTML
    views: list = field(default_factory=list)  # lab.ui.views.View: the results, re-read on every change


FORM = ["model", "n", "k", "temperature", "top_p", "max_new_tokens", "seed", "batch_size",
        "instruction_column"]  # the handler's order
MADE_WITH = ["model", "adapter", "k", "temperature", "top_p", "max_new_tokens", "seed"]


def _settings_inputs() -> tuple[dict, gr.Radio, gr.File]:
    """The form (lab.ui.forms: each input from its SampleConfig field) plus where the instructions come from."""
    with gr.Row():
        model = forms.input_for(SampleConfig, "model", kind="Dropdown", choices=MODEL_CHOICES,
                                allow_custom_value=True, min_width=300)  # the whole line at phone width
        source = gr.Radio(SOURCE_CHOICES, value="bundled", label="Instructions",
                          info=forms.help_of(SampleConfig)("instructions"), min_width=300)
    with gr.Row():
        upload = gr.File(label="Instruction file (.jsonl with a prompt field, .csv with a prompt column, .txt, "
                               ".parquet or .arrow; LIMA-style conversations too)",
                         file_types=[".jsonl", ".csv", ".txt", ".parquet", ".arrow"], visible=False)
        column = forms.input_for(SampleConfig, "instruction_column", visible=False, placeholder="prompt")
    with gr.Row():
        counts = forms.inputs(SampleConfig, ["n", "k", "max_new_tokens"], n=dict(value=20, minimum=1),
                              k=dict(minimum=1), max_new_tokens=dict(value=128, minimum=1))
    with gr.Accordion("Decoding", open=False):
        with gr.Row():
            sliders = forms.inputs(SampleConfig, ["temperature", "top_p"],
                                   temperature=dict(kind="Slider", minimum=0, maximum=2, step=0.05),
                                   top_p=dict(kind="Slider", minimum=0.05, maximum=1, step=0.01))
        with gr.Row():
            rest = forms.inputs(SampleConfig, ["seed", "batch_size"], batch_size=dict(minimum=1))
    made = {"model": model, **counts, **sliders, **rest, "instruction_column": column}
    return {name: made[name] for name in FORM}, source, upload


def _results() -> tuple[gr.Markdown, gr.Dropdown, gr.HTML]:
    summary = gr.Markdown()
    pick = gr.Dropdown(label="Instruction", choices=[], interactive=True)
    return summary, pick, gr.HTML()


def build(ctx) -> SampleTab:
    gr.Markdown("Generate **K** responses per instruction with the model's own chat template. "
                "On CPU, the bundled 135M model writes about 100-200 tokens/s: start small.")
    form, source, upload = _settings_inputs()
    start = gr.Button("Sample", variant="primary")
    panel = job_panel()
    summary, pick, responses = _results()
    tab = SampleTab(form, source, upload, start=start, panel=panel, summary=summary, pick=pick, responses=responses)
    tab.views = [View(refresh, [summary, pick, responses], inputs=[pick], api_name="sample_results")]
    _wire(tab, ctx)
    return tab


def _wire(tab: SampleTab, ctx) -> None:
    tab.source.change(lambda s: [gr.update(visible=s == "file")] * 2, tab.source,
                      [tab.upload, tab.form["instruction_column"]], **internal())
    f = tab.form
    wire_job_panel(tab.panel, ctx.run_name, "sample", tab.views)
    wire_start(tab.panel, tab.start, start_sampling, [ctx.run_name, f["model"], tab.source, tab.upload,
                                                      *(f[n] for n in FORM[1:])], "start_sampling")
    tab.pick.change(show_responses, inputs=[ctx.run_name, tab.pick], outputs=[tab.responses], **internal())
    after = chain(ctx.run_name.change, ctx.run_name, tab.views)
    wire_restore(after, ctx.run_name, "sample", [f["model"], tab.source, *(f[n] for n in FORM[1:])], restored)


def restored(cfg: SampleConfig) -> list:
    """The form's values for a sampling job's settings (lab.ui.views.wire_restore); a file's upload is not kept
    in the page: its source shows as "My file"."""
    source = cfg.instructions if cfg.instructions in ("bundled", "checks", "lima") else "file"
    return [cfg.model, source, *forms.values_of(cfg, {n: None for n in FORM[1:]})]


def start_sampling(run_name, model, source, upload, *values):
    """values: the FORM inputs after "model", in order."""
    run = open_run(run_name)
    if source == "file" and not upload:
        raise gr.Error("Upload an instruction file first, or pick the bundled set.")
    with upload_into(run, upload) if source == "file" else nullcontext(source) as where:
        cfg = forms.read(SampleConfig, {n: None for n in FORM}, (model, *values), instructions=str(where))
        checked(cfg.validate)
        return start_job(run_name, "sample", cfg.to_argv(), "Sampling")


def refresh(run_name: str | None, picked: str | None = None):
    """Summary line (with what made the samples), the instruction picker (the pick kept while it is still there)
    and the picked instruction's responses, from the run's files."""
    if not run_name:
        return "", gr.update(choices=[], value=None), ""
    run = Run.open(run_name)
    s = summarize(run)
    if not s["samples"]:
        return "No samples in this run yet.", gr.update(choices=[], value=None), ""
    choices = [(f"{g.prompt[:80]} ({len(g.samples)})", g.instruction_id) for g in groups(run)]
    picked = picked if picked in {c[1] for c in choices} else None
    made = made_with(run.stage_settings("sample"), "sample", MADE_WITH)
    text = noise_md(run, "sample") + (f"**{s['samples']}** responses to **{s['instructions']}** instructions · "
            f"{s['duplicates']} duplicates · {s['truncated']} cut at max tokens" + (f"\n\n{made}" if made else ""))
    return text, gr.update(choices=choices, value=picked), show_responses(run_name, picked)


def show_responses(run_name: str, instruction_id: str | None) -> str:
    if not run_name or not instruction_id:
        return ""
    group = next((g for g in groups(Run.open(run_name), False) if g.instruction_id == instruction_id),
                 None)
    if group is None:
        return ""
    parts = [f"<p><b>Instruction</b>: {html.escape(group.prompt)}</p>"]
    for s in group.samples:
        dup = f" · duplicate of #{s['duplicate_of']}" if s["duplicate_of"] is not None else ""
        parts.append(f'<div class="lab-response"><b>#{s["sample_index"]}</b> · {s["completion_tokens"]} tokens · '
                     f'{s["finish_reason"]}{dup}<pre style="white-space:pre-wrap">{html.escape(s["text"])}</pre></div>')
    return "\n".join(parts)
