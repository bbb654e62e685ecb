"""PairRM tab: rank each instruction's responses with PairRM or a reward model (as a job), browse the ranks per
instruction, and build the preference pairs (a ranker's or the judge's) with a strategy, with their statistics and
the judge-ranker agreement.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import gradio as gr
import pandas as pd

from lab.pairs import SOURCES, STRATEGIES, PairsConfig, build_pairs
from lab.rank import RANKERS, REWARD_EXAMPLE, RankConfig, default_ranker
from lab.records.rankings import latest_rankings
from lab.records.samples import groups as sample_groups
from lab.store import Run
from lab.ui import forms
from lab.ui.common import JobPanel, checked, job_panel, noise_md, open_run, start_job, wire_job_panel, wire_start
from lab.ui.tables import html_table
from lab.ui.views import View, chain, internal, made_with, wire_restore
from lab.ui.wording import count

RANKER_CHOICES = [
    ("llm-blender/PairRM (hub; ~40 s per instruction on CPU, well under 1 s on a GPU)", "llm-blender/PairRM"),
    (f"{REWARD_EXAMPLE} (reward model, hub; one pass per answer; RewardBench 85.2 against PairRM's 59.2)",
     REWARD_EXAMPLE),
    ("tiny-random: random PairRM weights, for smoke tests only", "tiny-random"),
    ("tiny-reward: random reward model, for smoke tests only", "tiny-reward")]
TABLE_COLUMNS = ["instruction", "prompt", "responses", "best", "worst", "score spread", "cut"]


@dataclass
class RankTab:
    ranker: gr.Dropdown
    batch_size: gr.Number
    start: gr.Button
    panel: JobPanel
    summary: gr.Markdown
    table: gr.HTML
    pick: gr.Dropdown
    responses: gr.HTML
    source: gr.Radio
    strategy: gr.Radio
    margin: gr.Number
    make: gr.Button
    stats: gr.Markdown
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files


def build(ctx) -> RankTab:
    h = forms.help_of(RankConfig)
    gr.Markdown("PairRM compares every two responses of an instruction in both orders and ranks them. "
                "It reads at most 1,224 tokens of instruction and about 412 of each response: long answers are "
                "ranked on their beginning. A reward model (a hub id or folder of a one-label sequence classifier) "
                "scores each response alone, up to its own maximum length; it is stronger and needs K passes, not "
                "K·(K-1) (`docs/pairs.md`).")
    with gr.Row():
        default, why = default_ranker()  # offline: the ranker that loads, and why
        ranker = gr.Dropdown(RANKER_CHOICES, value=default, label="Ranker", info=h("ranker"), allow_custom_value=True,
                             elem_classes="lab-wide-dropdown", scale=3)
        batch_size = gr.Number(32, label="Rows per pass", precision=0, minimum=1, info=h("batch_size"))
    gr.Markdown(f"⚠ {why}" if why else "", elem_classes="lab-offline-note")
    start = gr.Button("Rank", variant="primary")
    panel = job_panel()
    summary = gr.Markdown()
    table = gr.HTML()
    pick = gr.Dropdown(label="Instruction", choices=[], interactive=True)
    responses = gr.HTML()
    source, strategy, margin, make, stats = _pairs_inputs()
    tab = RankTab(ranker, batch_size, start, panel, summary, table, pick, responses, source, strategy, margin, make,
                  stats)
    tab.views = [View(refresh, [summary, table, pick, responses], inputs=[pick], api_name="rank_results"),
                 View(last_pairs, [stats], inputs=[source])]
    _wire(tab, ctx)
    return tab


def _pairs_inputs() -> tuple:
    h = forms.help_of(PairsConfig)
    gr.Markdown("### Preference pairs\nBuilt from the judge's verdicts (with your spot-check overrides), PairRM's "
                "rankings or a reward model's, in TRL's conversational format: `pairs-judge.jsonl`, "
                "`pairs-pairrm.jsonl`, `pairs-reward.jsonl`.")
    with gr.Row():
        source = gr.Radio([(src.label, name) for name, src in SOURCES.items()], value="pairrm", label="Source",
                          info=h("source"))
        strategy = gr.Radio([(st.label, name) for name, st in STRATEGIES.items()], value="best-vs-worst",
                            label="Strategy", info=h("strategy"))
        margin = gr.Number(0.0, label="Margin", minimum=0, info=h("margin"))
    make = gr.Button("Build pairs")
    return source, strategy, margin, make, gr.Markdown()


def _wire(tab: RankTab, ctx) -> None:
    wire_job_panel(tab.panel, ctx.run_name, "rank", tab.views)
    wire_start(tab.panel, tab.start, start_ranking, [ctx.run_name, tab.ranker, tab.batch_size], "start_ranking")
    tab.pick.change(show_ranking, inputs=[ctx.run_name, tab.pick], outputs=[tab.responses], **internal())
    tab.make.click(make_pairs, inputs=[ctx.run_name, tab.source, tab.strategy, tab.margin], outputs=[tab.stats],
                   api_name="make_pairs")
    tab.source.input(last_pairs, inputs=[ctx.run_name, tab.source], outputs=[tab.stats], **internal())
    after = chain(ctx.run_name.change, ctx.run_name, tab.views)
    wire_restore(after, ctx.run_name, "rank", [tab.ranker, tab.batch_size], lambda c: [c.ranker, c.batch_size])


def start_ranking(run_name: str, ranker: str, batch_size) -> str:
    cfg = RankConfig(ranker=(ranker or "").strip(), batch_size=int(32 if batch_size is None else batch_size))
    checked(cfg.validate)
    return start_job(run_name, "rank", cfg.to_argv(), "Ranking")


def ranks_table(run: Run) -> pd.DataFrame:
    """One row per ranked instruction: best and worst response (sample index, score), the score spread."""
    prompts = {g.instruction_id: g.prompt for g in sample_groups(run)}
    rows = []
    for iid, r in latest_rankings(run).items():
        order = sorted(range(len(r["scores"])), key=lambda i: r["ranks"][i])
        best, worst = order[0], order[-1]
        rows.append([iid, prompts.get(iid, "")[:80], len(order),
                     f"#{r['sample_indices'][best]} ({r['scores'][best]:+.3f})",
                     f"#{r['sample_indices'][worst]} ({r['scores'][worst]:+.3f})",
                     round(r["scores"][best] - r["scores"][worst], 4), sum(r.get("truncated", []))])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def refresh(run_name: str | None, picked: str | None = None):
    """Summary (with the ranker that made the ranks), ranks table, instruction picker (the pick kept while it is
    still there) and the picked instruction's ranking, from the run's files."""
    nothing = gr.update(choices=[], value=None)
    if not run_name:
        return "", "", nothing, ""
    run = Run.open(run_name)
    if not run.read("samples"):
        return "No samples in this run yet: sample first (Sample tab).", "", nothing, ""
    table = ranks_table(run)
    if table.empty:
        return "Not ranked yet.", "", nothing, ""
    rec = latest_rankings(run)[table["instruction"].iloc[0]]
    kind = RANKERS[rec.get("kind", "pairrm")]
    how = "one pass per response" if kind.pointwise else "every pair of responses, in both orders"
    made = made_with(run.stage_settings("rank"), "rank", ["ranker", "batch_size"])
    text = noise_md(run, "rank") + (f"**{len(table)}** instructions ranked with `{html.escape(rec['ranker'])}` "
            f"({kind.label}: {how}) · "
            f"{int(table['cut'].sum())} responses cut to the ranker's length limit" + (f"\n\n{made}" if made else ""))
    choices = [(f"{p} ({iid})", iid) for iid, p in zip(table["instruction"], table["prompt"])]
    picked = picked if picked in set(table["instruction"]) else None
    return text, html_table(table), gr.update(choices=choices, value=picked), show_ranking(run_name, picked)


def last_pairs(run_name: str | None, source: str | None) -> str:
    """The statistics of the pairs last built from `source` in this run (run.json), or nothing."""
    if not run_name or not source:
        return ""
    run = Run.open(run_name)
    stats = (run.stage_settings(f"pairs-{source}") or {}).get("stats")
    return noise_md(run, "pairs", {"source": source}) + stats_md({"file": f"pairs-{source}.jsonl", **stats}) \
        if stats else ""


def show_ranking(run_name: str | None, instruction_id: str | None) -> str:
    """The instruction's responses from best to worst, with the ranker's scores (PairRM's, or rewards)."""
    if not run_name or not instruction_id:
        return ""
    run = Run.open(run_name)
    rec = latest_rankings(run).get(instruction_id)
    group = next((g for g in sample_groups(run) if g.instruction_id == instruction_id), None)
    if rec is None or group is None:
        return ""
    texts = dict(zip(group.indices, group.texts))
    parts = [f"<p><b>Instruction</b>: {html.escape(group.prompt)}</p>"]
    for i in sorted(range(len(rec["scores"])), key=lambda i: rec["ranks"][i]):
        idx = rec["sample_indices"][i]
        cut = cut_note(rec, i)
        parts.append(f'<div class="lab-response"><b>rank {rec["ranks"][i]}</b> · #{idx} · score '
                     f'{rec["scores"][i]:+.3f}{cut}<pre style="white-space:pre-wrap">'
                     f'{html.escape(texts.get(idx, ""))}</pre></div>')
    return "\n".join(parts)


def cut_note(rec: dict, i: int) -> str:
    """' · cut ...' when the ranker did not read all of response i (a reward model says how many tokens), else ''."""
    if not rec.get("truncated", [False] * 99)[i]:
        return ""
    if "tokens_cut" in rec:
        return f" · {rec['tokens_cut'][i]} tokens cut at the reward model's limit ({rec['max_length']})"
    return " · cut to PairRM's limit"


def make_pairs(run_name: str, source: str, strategy: str, margin) -> str:
    run = open_run(run_name, create=False)
    cfg = PairsConfig(source=source, strategy=strategy, margin=float(margin or 0))
    return noise_md(run, "pairs", {"source": source}) + stats_md(checked(build_pairs, run, cfg))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


NO_JUDGE_PAIRS = ("⚠️ **The judge gave no pair to train on**: its verdicts were ties, inconsistent between the two "
                  "orders, or unreadable. Decide pairs yourself in the **Spot-check** tab (each of your verdicts "
                  "becomes a pair here), or judge again with an **API judge** (Judge tab: Groq or an "
                  "OpenAI-compatible endpoint); a small local judge is close to noise. PairRM's pairs are the "
                  "other source.")


def stats_md(s: dict) -> str:
    """The statistics of one pairs data set (lab.pairs.build_pairs summary) as Markdown."""
    dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in s["dropped"].items()) or "none"
    name = html.escape(s["file"].replace("\\", "/").rsplit("/", 1)[-1])
    lines = [f"**{count(s['pairs'], 'pair')}** in `{name}` ({s['source']}, {s['strategy']}, margin {s['margin']})",
             f"- instructions without a pair: {s['instructions_without_pair']} of {s['instructions']} "
             f"({s['single_response']} with a single response)",
             f"- dropped: {dropped}"]
    if s["pairs"]:
        lines.append(f"- mean length chosen vs rejected: {s['mean_chars_chosen']} vs {s['mean_chars_rejected']} "
                     f"characters; longer answer chosen in {_pct(s['longer_chosen_rate'])} of pairs")
    elif s["source"] == "judge":
        lines.insert(0, NO_JUDGE_PAIRS + "\n")
    if s.get("human_overrides"):
        lines.append(f"- human spot-check verdicts used: {s['human_overrides']}")
    for kind, ranker in RANKERS.items():
        agree = s.get(f"judge_vs_{kind}")
        if agree and agree["n"]:
            kappa = "n/a" if agree["kappa"] is None else f"{agree['kappa']:.2f}"
            lines.append(f"- judge vs {ranker.label} on the same {agree['n']} response pairs: agree "
                         f"{_pct(agree['rate'])}, Cohen's kappa {kappa}")
    if s.get("length_warning"):
        lines.append(f"\n⚠️ {s['length_warning']}")
    if s.get("no_pairs"):
        lines.append(f"\n**{s['no_pairs']}**")
    return "\n".join(lines)

