"""Share tab: stage (dry run) or push the run's data sets, adapters and merged models to the Hugging Face Hub, and
list the links; merge an adapter into its base (lab.merge, as a job) so it can be pushed as a plain model; write the
run's report for a write-up (lab.report) and show what each stage cost (lab.efficiency).

Pushing runs inside the web server, not as a job: the token (the visitor's own sign-in on a Space, HF_TOKEN on a
machine of one's own) stays in this process's memory. A job would carry it in its command line or environment, and
job.json records the command line. On a Space the sign-in button appears and the visitor's token is the only one
lab.hub accepts; locally there is no button (Gradio's local stand-in for the sign-in needs `gradio[oauth]` and the
Hub) and the page says where the token comes from. The page never shows a token.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
from gradio.utils import get_space

from lab import cards, efficiency, hub, report
from lab.hub import PushConfig
from lab.limits import hosted, on_space
from lab.merge import MergeConfig
from lab.progress import Progress
from lab.report import ReportConfig
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, admit, checked, job_panel, open_run, served_copies, start_job, wire_job_panel, \
    wire_start
from lab.ui.tables import html_table
from lab.ui.views import View, chain, internal


@dataclass
class ShareTab:
    login: gr.LoginButton | None
    who: gr.Markdown
    fields: dict  # PushConfig field name -> component
    dry_run: gr.Button
    push: gr.Button
    status: gr.Markdown
    links: gr.Markdown
    pick: gr.Dropdown
    card: gr.HTML
    merge_pick: gr.Dropdown  # the adapter to fold into its base
    merge: gr.Button
    panel: JobPanel  # the merge job
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files
    examples: gr.Number | None = None  # the report (lab.report) and the efficiency table (lab.efficiency)
    write_report: gr.Button | None = None
    report_status: gr.Markdown | None = None
    report_files: gr.File | None = None
    report_preview: gr.HTML | None = None  # the report's README.md rendered
    report_figures: gr.Gallery | None = None  # its PNG figures
    efficiency: gr.HTML | None = None


class PageProgress(Progress):
    """lab.progress numbers -> Gradio's progress bar over the output (a push is short: no job panel)."""

    def __init__(self, bar: gr.Progress):
        super().__init__("push", quiet=True)
        self.bar = bar

    def update(self, done: int, total: int, desc: str | None = None, **extra) -> None:
        super().update(done, total, desc, **extra)
        self.bar((done, total), desc=f"{desc or self.desc} {extra.get('repo', '')}".strip())


def _settings_inputs() -> dict:
    h = forms.help_of(PushConfig)
    with gr.Row():
        namespace = gr.Textbox(label="Namespace", placeholder="your user name or an organisation", info=h("namespace"))
        prefix = gr.Textbox(label="Repo name prefix", placeholder="the run name", info=h("prefix"))
    with gr.Row():
        private = gr.Checkbox(True, label="Private", info=h("private"))
        datasets = gr.Checkbox(True, label="Data sets", info=h("datasets"))
        adapters = gr.Checkbox(True, label="Adapters", info=h("adapters"))
        iterations = gr.Checkbox(True, label="Self-rewarding rounds", info=h("iterations"))
        merged = gr.Checkbox(True, label="Merged models", info=h("merged"))
    only = gr.Textbox(label="Only these", placeholder="e.g. judge, dpo-judge", info=h("only"))
    return dict(namespace=namespace, prefix=prefix, private=private, datasets=datasets, adapters=adapters,
                iterations=iterations, only=only, merged=merged)


def _merge_inputs() -> tuple[gr.Dropdown, gr.Button, JobPanel]:
    """Merge an adapter into its base: a plain transformers checkpoint the push above then publishes."""
    with gr.Accordion("Merge an adapter into its base model (a plain transformers checkpoint)", open=False):
        with gr.Row():
            pick = gr.Dropdown([], label="Adapter to merge", info=forms.help_of(MergeConfig)("adapter"), scale=3)
            merge = gr.Button("Merge into the base", scale=1)
        panel = job_panel()
    return pick, merge, panel


def build(ctx) -> ShareTab:
    gr.Markdown("Push each preference data set (with its samples and judgments), each adapter and each merged "
                "model (below: an adapter folded into its base) to the Hugging Face Hub, with cards that say how they "
                "were made. **Dry run** writes the exact folders under "
                "`runs/<run>/hub/` and uploads nothing: read the cards there first. Repos are private by default.")
    login = gr.LoginButton() if get_space() else None  # where Gradio serves the real sign-in routes
    who = gr.Markdown(_who_text(None, hosted()))
    fields = _settings_inputs()
    with gr.Row():
        dry_run = gr.Button("Dry run (stage only)")
        push = gr.Button("Push to the Hub", variant="primary")
    status = gr.Markdown()
    links = gr.Markdown()
    with gr.Accordion("Card previews (the README of each staged repo)", open=False):  # a card can be pages long
        pick = gr.Dropdown(label="Staged repo", choices=[], interactive=True)
        card = gr.HTML()
    merge_pick, merge, panel = _merge_inputs()
    merged = gr.Markdown(elem_classes="lab-made")  # where the merged models went (merged_note)
    tab = ShareTab(login, who, fields, dry_run, push, status, links, pick, card, merge_pick, merge, panel,
                   **_report_section())
    tab.views = [View(refresh, [links, pick], inputs=[pick]), View(merge_choices, [merge_pick], inputs=[merge_pick]),
                 View(merged_note, [merged]),
                 View(efficiency_html, [tab.efficiency])]  # a merge, or any other tab's job, adds a record
    _wire(tab, ctx)
    return tab


def _report_section() -> dict:
    gr.Markdown("### Report for a write-up\nWrites `runs/<run>/report/`: an index, tables (CSV), training curves "
                "and per-round figures (PNG), judged pairs in full and the efficiency record. Numbers only: the "
                "analysis is yours.")
    with gr.Row():
        examples = gr.Number(ReportConfig().examples, label="Judge examples", precision=0, minimum=0,
                             info=forms.help_of(ReportConfig)("examples"))
        write_report = gr.Button("Write the report", size="sm")
    status, files = gr.Markdown(), gr.File(label="Report files", file_count="multiple", interactive=False)
    with gr.Accordion("Report preview: its README and figures", open=False):  # folded: the tab stays short
        preview = gr.HTML()
        figures = gr.Gallery(label="Report figures", columns=2, height="auto", interactive=False)
    gr.Markdown("#### Efficiency: one row per run of a stage")
    table = gr.HTML()
    return dict(examples=examples, write_report=write_report, report_status=status, report_files=files,
                efficiency=table, report_preview=preview, report_figures=figures)


def _wire(tab: ShareTab, ctx) -> None:
    inputs = [ctx.run_name, *tab.fields.values()]
    outputs = [tab.status, tab.links, tab.pick]
    tab.dry_run.click(stage_only, inputs=inputs, outputs=outputs, api_name="dry_run")
    tab.push.click(push, inputs=inputs, outputs=outputs, api_name="push")
    tab.pick.change(View(card_preview, [tab.card]).handler(), inputs=[ctx.run_name, tab.pick], outputs=[tab.card],
                    **internal())
    chain(ctx.run_name.change, ctx.run_name, tab.views)
    ctx.run_name.change(who_text, outputs=[tab.who], **internal())  # also fires when the page load restores the run
    wire_job_panel(tab.panel, ctx.run_name, "merge", tab.views)
    wire_start(tab.panel, tab.merge, start_merge, [ctx.run_name, tab.merge_pick], "start_merge")
    tab.write_report.click(make_report, inputs=[ctx.run_name, tab.examples],
                           outputs=[tab.report_status, tab.report_files, tab.efficiency, tab.report_preview,
                                    tab.report_figures], api_name="write_report")


def _who_text(token: str | None, hosted: bool) -> str:
    source = hub.token_source(token)
    if source:
        return f"Pushing as: {source}."
    if hosted and on_space():
        return "Sign in with Hugging Face to push: the repos are created in **your** account, with your permission."
    if hosted:
        return ("Pushing needs a Hugging Face sign-in, which this hosted app does not offer: run the lab on your own "
                "machine to push. A dry run needs none.")
    return ("No Hugging Face token on this machine: set `HF_TOKEN` (a token with write access, "
            "https://huggingface.co/settings/tokens) before starting the app, or run `hf auth login`. "
            "A dry run needs none.")


def who_text(oauth_token: gr.OAuthToken | None = None) -> str:
    return _who_text(oauth_token.token if oauth_token else None, hosted())


def _config(namespace, prefix, private, datasets, adapters, iterations, only, dry_run: bool,
            merged: bool = True) -> PushConfig:
    cfg = PushConfig(namespace=(namespace or "").strip(), prefix=(prefix or "").strip(), private=bool(private),
                     datasets=bool(datasets), adapters=bool(adapters), iterations=bool(iterations),
                     only=(only or "").strip(), dry_run=dry_run, merged=bool(merged))
    return checked(cfg.validate)


def stage_only(run_name, namespace, prefix, private, datasets, adapters, iterations, only, merged=True,
               progress=gr.Progress()):
    run = open_run(run_name, create=False)
    cfg = _config(namespace, prefix, private, datasets, adapters, iterations, only, dry_run=True, merged=merged)
    out = checked(hub.push_run, run, cfg, progress=PageProgress(progress))
    return _staged_text(out), render_links(run), _picker(run, out)


def push(run_name, namespace, prefix, private, datasets, adapters, iterations, only, merged=True,
         oauth_token: gr.OAuthToken | None = None, progress=gr.Progress()):
    run = open_run(run_name, create=False)
    cfg = _config(namespace, prefix, private, datasets, adapters, iterations, only, dry_run=False, merged=merged)
    token = oauth_token.token if oauth_token else None  # None: lab.hub takes HF_TOKEN (refused on a Space)
    out = checked(hub.push_run, run, cfg, token=token, progress=PageProgress(progress))
    warnings = [r["warning"] for r in out["repos"] if r.get("warning")]
    text = f"Pushed **{len(out['repos'])}** repos as `{out['namespace']}`."
    text += "".join(f"\n\n⚠️ {w}" for w in warnings)
    return text, render_links(run), _picker(run, out)


def _staged_text(out: dict) -> str:
    lines = [f"Dry run: **{len(out['repos'])}** repos staged, nothing uploaded. They would go to:"]
    for r in out["repos"]:
        lines.append(f"- {r['kind']} `{r['repo_id']}` ({'private' if r['private'] else 'public'}): "
                     f"{len(r['files'])} files in the run's `hub/{Path(r['folder']).name}/`")
    if out["namespace"] == hub.PLACEHOLDER_NAMESPACE:
        lines.append(f"\nGive a namespace to have final links in the cards (`{hub.PLACEHOLDER_NAMESPACE}` for now).")
    return "\n".join(lines)


def _picker(run: Run, out: dict):
    names = [r["repo_id"].split("/", 1)[1] for r in out["repos"]] or hub.staged(run)
    return gr.update(choices=names, value=names[0] if names else None)


def start_merge(run_name, adapter):
    """Start `python -m lab merge --run R --adapter A` as a job (loading and saving a model takes a while)."""
    run = open_run(run_name, create=False)
    if not adapter:
        raise gr.Error("Choose an adapter to merge (train one in the Train tab first).")
    cfg = checked(MergeConfig(adapter=str(adapter).strip()).validate)
    ok = admit(["merge", "--run", run.name, *cfg.to_argv()])  # a hosted app's rules: the run's own adapters only
    return start_job(run_name, "merge", cfg.to_argv(), f"Merging {cfg.adapter}", admitted=ok)


def merge_choices(run_name: str | None, picked: str | None = None):
    """The run's finished adapters; the pick kept while it is still there, else the first."""
    names = Run.open(run_name).adapters() if run_name else []
    return gr.update(choices=names, value=picked if picked in names else (names[0] if names else None))


def merged_note(run_name: str | None) -> str:
    """Where each merged model of the run is: its folder (relative to the runs folder: no server path)."""
    names = Run.open(run_name).merged() if run_name else []
    if not names:
        return ""
    where = ", ".join(f"`{html.escape(run_name)}/merged/{html.escape(n)}/`" for n in names)
    return (f"Merged models (plain transformers checkpoints, under the runs folder): {where}. Push them above with "
            "*Merged models* ticked.")


def render_links(run: Run) -> str:
    """The repos pushed from this run so far (push.jsonl), newest state per repo."""
    records = hub.pushed(run)
    if not records:
        return "Nothing pushed from this run yet."
    rows = [f"| {r['kind']} | [{html.escape(r['repo_id'])}]({r['url']}) | "
            f"{'private' if r['private'] else '**public**'} | {r['time']} |" for r in records]
    return "| kind | repo | visibility | pushed |\n|---|---|---|---|\n" + "\n".join(rows)


def refresh(run_name: str | None, picked: str | None = None):
    """The links pushed so far and the staged repos to preview (the pick kept while it is still staged)."""
    if not run_name:
        return "", gr.update(choices=[], value=None)
    run = Run.open(run_name)
    names = hub.staged(run)
    return render_links(run), gr.update(choices=names, value=picked if picked in names else
                                        (names[0] if names else None))


def card_preview(run_name: str | None, name: str | None) -> str:
    """A staged repo's README.md rendered to HTML (its YAML header in a code block), with no live markup from the
    run: the card is Markdown whatever it holds, so raw HTML in it (an <img onerror>, a <form> from a judge prompt)
    is shown as text, and images are not loaded. Links stay links."""
    if not run_name or not name or "/" in name or name.startswith("."):
        return ""
    run = Run.open(run_name)
    if name not in hub.staged(run):  # a typed "../other-run/..." must not read outside the run's staged folders
        return ""
    path = run.file("hub") / name / "README.md"
    if not path.exists():
        return ""
    text, meta = path.read_text(encoding="utf-8"), ""
    if text.startswith("---\n") and text.count("---\n") >= 2:  # the card opens on its text; the Hub's YAML folded
        _, header, text = text.split("---\n", 2)
        meta = (f"<details><summary>Card metadata (the YAML header the Hub reads)</summary>"
                f"{render_markdown(cards.fence(header.rstrip(), 'yaml'))}</details>")
    return f'<div class="prose lab-card">{render_markdown(text)}{meta}</div>'


def render_markdown(text: str) -> str:
    """CommonMark + tables to HTML with raw HTML escaped and images off (markdown-it-py, installed with gradio)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").disable("image").render(text)



def efficiency_frame(run_name: str | None) -> pd.DataFrame:
    """The run's efficiency records (and its nested runs'), one row per run of a stage."""
    records = efficiency.read_all(Run.open(run_name)) if run_name else []
    cols = ["run", *efficiency.COLUMNS]
    return pd.DataFrame(efficiency.rows(records), columns=cols) if records else pd.DataFrame(columns=cols)


def efficiency_html(run_name: str | None) -> str:
    """efficiency_frame as the page's table (lab.ui.tables), or a line saying there is nothing yet."""
    return html_table(efficiency_frame(run_name), empty="No stage has run yet." if run_name else "")


def make_report(run_name: str | None, examples):
    """Write the run's report; -> [status, copies of the report's files to download, the efficiency table].
    The copies sit in a temp folder (served_copies), as the grid's export's do."""
    run = open_run(run_name, create=False)
    out = checked(report.run, run, checked(ReportConfig(examples=int(examples or 0)).validate))
    folder = run.file("report")
    files = {name: folder / name for name in out["files"] if (folder / name).is_file()}
    served = served_copies(files, f"report:{run.path}")
    readme = folder / "README.md"
    preview = f'<div class="prose lab-card">{render_markdown(readme.read_text(encoding="utf-8"))}</div>' \
        if readme.is_file() else ""
    return (f"Report written: **{len(files)}** files in the run's `report/` folder (`{html.escape(run.name)}/report/`"
            " under the runs folder); download them below, or read it here.", served, efficiency_html(run_name),
            preview, [(path, Path(path).name) for path in served if path.endswith(".png")])
