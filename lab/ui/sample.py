"""Sample tab: choose model, instructions and decoding; run as a job; browse the responses per instruction.

Pattern for every tab: `build(ctx)` lays out components and returns a small dataclass holding them; handlers read
components, build the stage's settings dataclass, validate it, and start a job (or call a quick core function).
"""
from __future__ import annotations

import html
from contextlib import nullcontext
from dataclasses import dataclass

import gradio as gr

from lab.config import SampleConfig
from lab.sample import grouped, summarize
from lab.store import Run
from lab.ui.common import JobPanel, checked, job_panel, open_run, start_job, upload_into, wire_job_panel

MODEL_CHOICES = [
    ("bundled: SmolLM2-135M-Instruct (offline, small and weak)", "bundled"),
    ("meta-llama/Llama-3.2-1B-Instruct (hub: token + accepted licence)", "meta-llama/Llama-3.2-1B-Instruct"),
    ("meta-llama/Llama-3.2-3B-Instruct (hub: token + accepted licence)", "meta-llama/Llama-3.2-3B-Instruct"),
    ("tiny-random: writes noise, for smoke tests only", "tiny-random"),
]
SOURCE_CHOICES = [("Bundled set (offline)", "bundled"), ("LIMA (hub, gated)", "lima"), ("My file", "file")]


@dataclass
class SampleTab:
    model: gr.Dropdown
    source: gr.Radio
    upload: gr.File
    n: gr.Number
    k: gr.Number
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Number
    seed: gr.Number
    batch_size: gr.Number
    start: gr.Button
    panel: JobPanel
    summary: gr.Markdown
    pick: gr.Dropdown
    responses: gr.HTML


def _settings_inputs() -> dict:
    h = SampleConfig.help
    with gr.Row():
        model = gr.Dropdown(MODEL_CHOICES, value="bundled", label="Model", info=h("model"), allow_custom_value=True)
        source = gr.Radio(SOURCE_CHOICES, value="bundled", label="Instructions", info=h("instructions"))
    upload = gr.File(label="Instruction file (.jsonl with a prompt field, .csv with a prompt column, .txt)",
                     file_types=[".jsonl", ".csv", ".txt"], visible=False)
    with gr.Row():
        n = gr.Number(20, label="Instructions (N)", precision=0, minimum=1, info=h("n"))
        k = gr.Number(5, label="Responses each (K)", precision=0, minimum=1, info=h("k"))
        max_new_tokens = gr.Number(128, label="Max new tokens", precision=0, minimum=1, info=h("max_new_tokens"))
    with gr.Accordion("Decoding", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", info=h("temperature"))
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", info=h("top_p"))
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0, info=h("seed"))
            batch_size = gr.Number(64, label="Batch size", precision=0, minimum=1, info=h("batch_size"))
    return dict(model=model, source=source, upload=upload, n=n, k=k, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)


def build(ctx) -> SampleTab:
    gr.Markdown("Generate **K** responses per instruction with the model's own chat template. "
                "On CPU, the bundled 135M model writes about 100-200 tokens/s: start small.")
    inputs = _settings_inputs()
    start = gr.Button("Sample", variant="primary")
    panel = job_panel()
    summary = gr.Markdown()
    pick = gr.Dropdown(label="Instruction", choices=[], interactive=True)
    responses = gr.HTML()
    tab = SampleTab(**inputs, start=start, panel=panel, summary=summary, pick=pick, responses=responses)
    _wire(tab, ctx)
    return tab


def _wire(tab: SampleTab, ctx) -> None:
    tab.source.change(lambda s: gr.update(visible=s == "file"), tab.source, tab.upload)
    fields = [tab.model, tab.source, tab.upload, tab.n, tab.k, tab.temperature, tab.top_p, tab.max_new_tokens,
              tab.seed, tab.batch_size]
    tab.start.click(start_sampling, inputs=[ctx.run_name, *fields], outputs=[tab.panel.status])
    wire_job_panel(tab.panel, ctx.run_name, "sample", on_done=refresh, done_outputs=[tab.summary, tab.pick])
    tab.pick.change(show_responses, inputs=[ctx.run_name, tab.pick], outputs=[tab.responses])
    ctx.run_name.change(refresh, inputs=[ctx.run_name], outputs=[tab.summary, tab.pick])


def start_sampling(run_name, model, source, upload, n, k, temperature, top_p, max_new_tokens, seed, batch_size):
    run = open_run(run_name)
    if source == "file" and not upload:
        raise gr.Error("Upload an instruction file first, or pick the bundled set.")
    with upload_into(run, upload) if source == "file" else nullcontext(source) as where:
        cfg = SampleConfig(model=model, instructions=str(where), n=int(n), k=int(k), temperature=float(temperature),
                           top_p=float(top_p), max_new_tokens=int(max_new_tokens), seed=int(seed),
                           batch_size=int(batch_size))
        checked(cfg.validate)
        return start_job(run_name, "sample", cfg.to_argv(), "Sampling")


def refresh(run_name: str):
    """Summary line and the instruction picker, from the run's files."""
    if not run_name:
        return "", gr.update(choices=[], value=None)
    run = Run.open(run_name)
    s = summarize(run)
    if not s["samples"]:
        return "No samples in this run yet.", gr.update(choices=[], value=None)
    choices = [(f"{g['prompt'][:80]} ({len(g['responses'])})", g["id"]) for g in grouped(run)]
    text = (f"**{s['samples']}** responses to **{s['instructions']}** instructions · "
            f"{s['duplicates']} duplicates · {s['truncated']} cut at max tokens")
    return text, gr.update(choices=choices)


def show_responses(run_name: str, instruction_id: str | None) -> str:
    if not run_name or not instruction_id:
        return ""
    group = next((g for g in grouped(Run.open(run_name)) if g["id"] == instruction_id), None)
    if group is None:
        return ""
    parts = [f"<p><b>Instruction</b>: {html.escape(group['prompt'])}</p>"]
    for s in group["responses"]:
        dup = f" · duplicate of #{s['duplicate_of']}" if s["duplicate_of"] is not None else ""
        parts.append(f'<div class="lab-response"><b>#{s["sample_index"]}</b> · {s["completion_tokens"]} tokens · '
                     f'{s["finish_reason"]}{dup}<pre style="white-space:pre-wrap">{html.escape(s["text"])}</pre></div>')
    return "\n".join(parts)
