"""Train tab: a LoRA adapter (DPO, KTO, SimPO or ORPO) on one of the run's pair sets, as a job; live plots, progress
+ ETA, stop, warnings.

The plots read `adapters/<name>/metrics.jsonl` on every tick of the job panel's timer, so a page reload re-attaches
to a running training (the adapter shown is the one the running job trains, else the one picked, else the one the
run's last training job trained, else the adapter whose metrics were written last). They draw the
metrics of the method the shown adapter is trained with (lab.methods.METHODS[...].plots).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from lab import jobs
from lab.adapters import read_metrics, read_state
from lab.methods import MAX_PLOTS, METHODS
from lab.store import Run, adapter_file
from lab.train import TrainConfig, precheck
from lab.train_monitor import diagnose
from lab.ui import forms
from lab.ui.common import JobPanel, admit, checked, job_panel, noise_md, open_run, plot, start_job, wire_job_panel, \
    wire_start
from lab.ui.views import View, chain, internal, made_with, wire_restore

PLOTS = METHODS["dpo"].plots  # plot title -> metric names drawn on it, until an adapter of another method is shown


@dataclass
class TrainTab:
    pairs: gr.Dropdown
    adapter: gr.Textbox
    init_adapter: gr.Dropdown
    fields: dict  # TrainConfig field name -> component
    start: gr.Button
    panel: JobPanel
    shown: gr.Dropdown
    summary: gr.Markdown
    warnings: gr.Markdown
    plots: list
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files


FORM = ["epochs", "max_steps", "lr", "beta", "batch_size", "loss_type", "model", "target_modules", "lora_r",
        "lora_alpha", "lora_dropout", "grad_accum", "max_length", "warmup_ratio", "eval_fraction", "save_steps", "seed",
        "gradient_checkpointing", "precompute_ref", "resume", "method", "report_to"]  # start_training's order


def _settings_inputs() -> dict:
    """The form: each input built from its TrainConfig field (lab.ui.forms)."""
    inp = lambda names, **kw: forms.inputs(TrainConfig, names, **kw)  # noqa: E731
    # One line of help per input, so the inputs of a row sit level (a 4-line Beta help pushed its box down) and
    # the method dropdown is wide enough for its whole label; the longer help is in "About the methods" below.
    with gr.Row():
        made = inp(["method"], method=dict(choices=[(m.label, k) for k, m in METHODS.items()], scale=2,
                                           min_width=420, info="the training objective: see About the methods"))
        made |= inp(["epochs", "max_steps"], max_steps=dict(info="-1 = run the epochs"),
                    epochs=dict(minimum=0, info="passes over the pairs (unless Max steps > 0)"))
    with gr.Row():
        made |= inp(["lr", "beta", "batch_size"], lr=dict(minimum=0, info="peak, for the LoRA weights"),
                    beta=dict(minimum=0, info="pull back to the reference: higher = stay closer"),
                    batch_size=dict(minimum=1))
    h = forms.help_of(TrainConfig)  # in the page's words
    with gr.Accordion("About the methods", open=False):
        gr.Markdown("\n".join(f"- **{k}**: {m.label}" for k, m in METHODS.items()) +
                    f"\n\n**Beta**: {h('beta').split(': ', 1)[-1]}. **Learning rate**: {h('lr').split(': ', 1)[-1]}. "
                    "DPO and KTO train against a frozen reference (the base, or the adapter continued from); "
                    "SimPO and ORPO need none. Details: `docs/training.md`.")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            made |= inp(["loss_type", "model", "target_modules"],
                        loss_type=dict(kind="Dropdown", choices=list(METHODS["dpo"].loss_types()), value=[],
                                       multiselect=True, info="empty = the method's own"),
                        model=dict(placeholder="the run's model"))
        with gr.Row():
            made |= inp(["lora_r", "lora_alpha", "lora_dropout", "grad_accum", "max_length"],
                        lora_r=dict(minimum=1), lora_alpha=dict(minimum=1), lora_dropout=dict(minimum=0),
                        grad_accum=dict(minimum=1), max_length=dict(minimum=16))
        with gr.Row():
            made |= inp(["warmup_ratio", "eval_fraction", "save_steps", "seed"], warmup_ratio=dict(minimum=0),
                        eval_fraction=dict(minimum=0), save_steps=dict(minimum=1))
        with gr.Row():
            made |= inp(["gradient_checkpointing", "precompute_ref", "resume", "report_to"])
    return {name: made[name] for name in FORM}


def build(ctx) -> TrainTab:
    gr.Markdown("Train a **LoRA adapter** on one of the run's preference data sets with DPO, KTO, SimPO or ORPO "
                "(TRL). DPO's and KTO's reference is the base model (adapter off), or the adapter you continue from; "
                "SimPO and ORPO need none. Stop keeps what is trained so far; starting the same adapter again resumes "
                "it. Parameters: `docs/training.md`.")
    with gr.Row():
        pairs = gr.Dropdown([], label="Pairs", allow_custom_value=True,
                            info="the run's pairs-<source>.jsonl, or a path")
        adapter = gr.Textbox("dpo-1", label="Adapter name", info="folder under adapters/ (letters, digits, . _ -)")
        init_adapter = gr.Dropdown([("(none: start from the base model)", "")], value="",
                                   label="Continue from adapter (optional)",
                                   info="its weights start training and serve as the frozen reference")
    fields = _settings_inputs()
    start = gr.Button("Train", variant="primary")
    panel = job_panel()
    shown = gr.Dropdown([], label="Adapter shown", allow_custom_value=True,
                        info="follows the running training; pick any other to inspect it")
    summary, warnings = gr.Markdown(), gr.Markdown()
    with gr.Row():  # min_width: on a phone the plots wrap into a column, titles and legends whole
        plots = [gr.LinePlot(x="step", y="value", color="series", title=title, height=260, min_width=320)
                 for title in [*PLOTS, *[""] * (MAX_PLOTS - len(PLOTS))]]
    tab = TrainTab(pairs, adapter, init_adapter, fields, start, panel, shown, summary, warnings, plots)
    picks = [pairs, init_adapter, shown]
    tab.views = [View(choices, picks, inputs=picks),
                 View(live_view, [shown, summary, warnings, *plots], inputs=[shown], live=True)]
    _wire(tab, ctx)
    return tab


def _wire(tab: TrainTab, ctx) -> None:
    wire_job_panel(tab.panel, ctx.run_name, "train", tab.views)
    wire_start(tab.panel, tab.start, start_training, [ctx.run_name, tab.pairs, tab.adapter, tab.init_adapter,
                                                      *tab.fields.values()], "start_training") \
        .success(lambda name: gr.update(value=name.strip()), [tab.adapter], [tab.shown], **internal())
    tab.fields["method"].change(loss_choices, inputs=[tab.fields["method"]], outputs=[tab.fields["loss_type"]],
                                **internal())
    view = [tab.shown, tab.summary, tab.warnings, *tab.plots]
    tab.shown.input(tab.views[1].handler(), inputs=[ctx.run_name, tab.shown], outputs=view, **internal())
    after = chain(ctx.run_name.change, ctx.run_name, tab.views)
    wire_restore(after, ctx.run_name, "train", [tab.pairs, tab.adapter, tab.init_adapter, *tab.fields.values()],
                 lambda cfg: [cfg.pairs, cfg.adapter, cfg.init_adapter, *forms.values_of(cfg, tab.fields)])


def start_training(run_name, pairs, adapter, init_adapter, *values):
    run = open_run(run_name)
    if not pairs:
        raise gr.Error("Choose a pairs set (build one in the Pairs tab first).")
    cfg = TrainConfig.from_form(dict(zip(FORM, values)), pairs=str(pairs).strip(), adapter=(adapter or "").strip(),
                                init_adapter=(init_adapter or "").strip())
    argv = cfg.to_argv()
    ok = admit(["train", "--run", run.name, *argv])  # a hosted app's rules first: a server path is never read
    checked(precheck, run, cfg.pairs, cfg.adapter, cfg)
    return start_job(run_name, "train", argv, f"Training {cfg.adapter}", admitted=ok)


def loss_choices(method: str):
    """The loss-type menu of the method picked (DPO's many, KTO's two, one for SimPO and ORPO), left empty."""
    return gr.update(choices=list(METHODS[method].loss_types()) if method in METHODS else [], value=[])


def config_from(values: dict) -> TrainConfig:
    """Form values (named as in FORM) -> TrainConfig; the loss types arrive as a list."""
    return TrainConfig.from_form(values)


def choices(run_name: str | None, pairs: str | None = None, init: str | None = "", shown: str | None = None):
    """Pairs sets, finished adapters (to continue from) and every adapter folder (to show); what is picked stays
    picked while it is still there (a typed pairs path too), and so does the adapter of a training just queued whose
    folder is not there yet (a short training could end before any poll saw it run)."""
    if not run_name:
        return gr.update(choices=[]), gr.update(choices=[]), gr.update(choices=[])
    run = Run.open(run_name)
    sources, adapters, folders = run.pair_sources(), run.adapters(), run.adapter_folders()
    keep_pairs = pairs if pairs and (pairs in sources or "/" in str(pairs)) else (sources[0] if sources else None)
    return (gr.update(choices=sources, value=keep_pairs),
            gr.update(choices=[("(none: start from the base model)", ""), *adapters],
                      value=init if init in adapters else ""),
            gr.update(choices=folders, value=shown if shown in folders or shown == job_adapter(run) else None))


def running_adapter(run: Run) -> str | None:
    """The adapter the run's live training job writes, if one runs (this is what re-attaches after a reload)."""
    return job_adapter(run, ("running",))


def job_adapter(run: Run, states: tuple[str, ...] = ("queued", "running", "done", "stopped", "failed")) -> str | None:
    """The adapter of the run's latest job if it is a training in one of `states`, else None."""
    st = jobs.status(run)
    argv = st.get("argv") or []
    if st.get("state") not in states or not argv or argv[0] != "train" or "--adapter" not in argv:
        return None
    return argv[argv.index("--adapter") + 1]


def last_trained(run: Run) -> str | None:
    """The run's adapter whose metrics were written last: what a reload shows when the run's latest job is not a
    training (a comparison ran after it), rather than an empty "Adapter shown" and no plots."""
    written = [(adapter_file(run.adapter_dir(n), "metrics"), n) for n in run.adapter_folders()]
    found = [(path.stat().st_mtime, n) for path, n in written if path.exists()]
    return max(found)[1] if found else None


def live_view(run_name: str | None, shown: str | None):
    """[shown adapter, summary, warnings, *plots] for the adapter being trained (or the one picked)."""
    if not run_name:
        return [gr.skip()] * (3 + MAX_PLOTS)
    run = Run.open(run_name)
    name = running_adapter(run) or shown or job_adapter(run) or last_trained(run)  # a reload: the last training
    if not name or not adapter_file(run.adapter_dir(name), "metrics").exists():  # nothing to plot: no empty boxes
        return [gr.skip(), "", "", *[gr.update(value=None, visible=False)] * MAX_PLOTS]
    metrics, state = read_metrics(run.adapter_dir(name)), read_state(run.adapter_dir(name)) or {}
    beta = (state.get("settings") or {}).get("beta", 0.1)
    method = state.get("method") if state.get("method") in METHODS else "dpo"
    warns = diagnose(metrics, state.get("pairs"), beta, method=method)
    labels = noise_md(run, "train", {**(state.get("settings") or {}), "model": state.get("base_model", "")})
    return [gr.update(value=name), labels + summary_md(name, state, metrics),
            "\n".join(f"⚠️ {html.escape(w)}" for w in warns), *method_plots(metrics, method)]


def method_plots(metrics: list[dict], method: str) -> list:
    """One update per plot slot: the method's plots (title and data), the slots it does not use hidden."""
    plots = list(METHODS[method].plots.items())[:MAX_PLOTS]
    shown = [{**plot(frame(metrics, keys)), "title": title} for title, keys in plots]
    return shown + [gr.update(value=None, visible=False)] * (MAX_PLOTS - len(shown))


def frame(metrics: list[dict], keys: tuple[str, ...]) -> pd.DataFrame:
    """Long format for gr.LinePlot: one row per (step, series); eval points are their own series. Typed even when
    empty: a plot first given text columns keeps category axes (and draws no line) when the numbers come."""
    rows = [{"step": m["step"], "value": m[k], "series": k if m["split"] == "train" else f"eval {k}"}
            for m in metrics if m.get("split") in ("train", "eval") for k in keys if k in m]
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype({"step": int, "value": float,
                                                                            "series": str})


MADE_WITH = ["method", "beta", "lr", "epochs", "max_steps", "lora_r", "batch_size"]


def made_with_md(state: dict) -> str:
    """What trained the adapter: its base model, pairs and key settings (from its training.json)."""
    pairs = Path(str((state.get("pairs") or {}).get("path") or "")).name
    return made_with(state.get("settings"), "train", MADE_WITH, {"base model": state.get("base_model"),
                                                                   "pairs": pairs,
                                                                   "continued from": state.get("init_adapter")})


def summary_md(name: str, state: dict, metrics: list[dict]) -> str:
    train = [m for m in metrics if m.get("split") == "train"]
    if not train:
        return f"**{name}**: starting…"
    last = train[-1]
    tps = f" · {last['tokens_per_s']:.0f} tokens/s" if last.get("tokens_per_s") else ""
    p = state.get("pairs") or {}
    acc = f" · reward accuracy {last['rewards/accuracies']:.2f}" if "rewards/accuracies" in last else ""
    method = state.get("method") or "dpo"
    made = made_with_md(state)
    return (f"**{name}** · {method} · {state.get('status', '?')} · step {last['step']}/{last.get('max_steps')} · "
            f"loss {last.get('loss', float('nan')):.4f}{acc}"
            f"{tps} · {p.get('n_train', '?')} train / {p.get('n_eval', '?')} eval pairs" +
            (f"\n\n{made}" if made else ""))
