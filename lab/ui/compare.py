"""Compare tab: base vs adapters on held-out instructions, run as a job; scores, the side-by-side grid (lab/ui/grid.py)
with an instruction picker and pages, the user's notes, and exports of the wide table (CSV, JSONL, Markdown).

The page writes no analysis of its own: the numbers, the grid and the user's notes are the analysis.
"""
from __future__ import annotations

import html
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from lab import checks, compare, compare_scorers, noise
from lab.adapters import resolve_adapters
from lab.compare import CompareConfig
from lab.errors import LabError
from lab.judge_backends import API_BACKENDS, BACKENDS
from lab.records import comparisons
from lab.store import Run
from lab.ui import forms, grid
from lab.ui.common import JobPanel, admit, api_key_box, checked, job_panel, labels_view, open_run, served_copies, \
    start_job, typed_key_env, upload_into, wire_job_panel, wire_start
from lab.rank import REWARD_EXAMPLE
from lab.stats import LC_NOTE
from lab.ui.tables import html_table
from lab.ui.views import View, chain, internal, made_with, wire_restore

SOURCE_CHOICES = [("Bundled held-out set (offline)", "heldout"),
                  ("Bundled verifiable held-out set (IFEval checks: a grader that knows the answer)", "checks-heldout"),
                  ("My file", "file")]
JUDGE_CHOICES = [("none", "none"), *((b.label, name) for name, b in BACKENDS.items())]
SCORE_CHOICES = [("none", "none"), ("the base model (offline; weak at 135M)", "base"),
                 *((BACKENDS[name].label, name) for name in API_BACKENDS)]
SCORE_COLUMNS = ["model", "mean chars", "change", "mean tokens", "cut at max", "distinct-1", "distinct-2",
                 "refusals", "PairRM win rate", "judge win rate", "5-point win rate", "mean reward",
                 "reward vs base", "reward win rate", "checks win rate"]
CHECKS_COLUMNS = ["model", *(checks.LEVEL_LABELS[lv] for lv in checks.LEVELS), "prompt-level strict vs base"]


@dataclass
class CompareTab:
    adapters: gr.CheckboxGroup
    source: gr.Radio
    upload: gr.File
    fields: dict  # CompareConfig field name -> component
    scorer_note: gr.Markdown
    api_key: gr.Textbox
    start: gr.Button
    panel: JobPanel
    results: "Results"
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files
    labels: gr.Markdown | None = None  # noise labels of the comparison (lab.noise)


@dataclass
class Results:
    """The comparison's results: scores, the side-by-side grid with its picker and pages, notes, exports."""

    scores: gr.HTML
    made: gr.Markdown
    pick: gr.Dropdown
    prev: gr.Button
    next: gr.Button
    page: gr.Markdown
    grid: gr.HTML
    note: gr.Textbox
    save_note: gr.Button
    overall: gr.Textbox
    save_overall: gr.Button
    saved: gr.Markdown
    fmt: gr.Radio
    export: gr.Button
    file: gr.File

    @property
    def shown(self) -> list:
        """What refresh() fills, in its order."""
        return [self.scores, self.made, self.pick, self.grid, self.page, self.note, self.overall]


FORM = ["n", "max_new_tokens", "temperature", "top_p", "seed", "pairrm", "judge", "judge_model", "duplicates",
        "near_duplicate", "batch_size", "score", "score_model", "reward", "checks"]  # start_compare reads this order
MADE_WITH = ["temperature", "top_p", "max_new_tokens", "seed", "pairrm", "reward", "judge", "judge_model", "score",
             "score_model", "checks"]
SCORER_FIELDS = ("pairrm", "reward", "judge", "score")
NO_SCORER = ("⚠️ **No scorer chosen** (PairRM, reward model, LLM judge or 5-point scorer, under *Scores and "
             "duplicates*; or the verifiable held-out set, whose checks score every answer): the comparison will "
             "show the answers, their lengths and diversity, but **no win rates**.")


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
            made |= inp(["pairrm", "judge", "judge_model"],  # a placeholder reads as a value: say what empty is
                        pairrm=dict(placeholder="none (type llm-blender/PairRM or tiny-random to score)"),
                        judge=dict(choices=JUDGE_CHOICES))
        with gr.Row():
            made |= inp(["score", "score_model"], score=dict(choices=SCORE_CHOICES))
            made |= inp(["reward", "checks"], reward=dict(placeholder=f"none (e.g. {REWARD_EXAMPLE})"))
        with gr.Row():
            made |= inp(["duplicates", "near_duplicate", "batch_size"], duplicates=dict(kind="Radio"),
                        near_duplicate=dict(kind="Slider", minimum=0.3, maximum=1, step=0.05),
                        batch_size=dict(minimum=1))
    return {name: made[name] for name in FORM}


def _results() -> Results:
    gr.Markdown("### Scores")
    scores, made = gr.HTML(), gr.Markdown(elem_classes="lab-made")
    gr.Markdown("### Side by side\nEach model's answer in its own column, with its length, whether it hit the "
                "token limit, and each scorer's verdict against the base on that instruction.")
    with gr.Row(equal_height=True):
        pick = gr.Dropdown([], label="Instruction", interactive=True, scale=4, min_width=240)
        prev = gr.Button("◀ Previous page", size="sm", scale=0, min_width=130)
        nxt = gr.Button("Next page ▶", size="sm", scale=0, min_width=130)
    page, grid = gr.Markdown(), gr.HTML()
    note = gr.Textbox(label="Your note on the picked instruction", lines=2)
    save_note = gr.Button("Save note", size="sm")
    overall = gr.Textbox(label="Your overall notes on the comparison", lines=4)
    save_overall = gr.Button("Save overall notes", size="sm")
    saved = gr.Markdown()
    with gr.Row():
        fmt = gr.Radio([("CSV", "csv"), ("JSONL", "jsonl"), ("Markdown", "md")], value="csv",
                       label="Export the grid (one row per instruction, one column per model)")
        export = gr.Button("Export the grid", size="sm")
        file = gr.File(label="Exported file", interactive=False)
    return Results(scores, made, pick, prev, nxt, page, grid, note, save_note, overall, save_overall, saved, fmt,
                   export, file)


def build(ctx) -> CompareTab:
    gr.Markdown("Answer **held-out instructions** with the base model and each adapter: one model in memory, adapters "
                "switched on it, the same decoding and seeds for all. Win rates against the base come with 95% "
                "bootstrap intervals; with a few dozen instructions they are wide. An API judge's key comes from the "
                "app's environment (`GROQ_API_KEY` / `OPENAI_API_KEY`) or the key box that shows when one is "
                "picked (this tab only). Details: `docs/iterative.md`.")
    with gr.Row():
        adapters = gr.CheckboxGroup([], label="Adapters", info="none ticked = every adapter of the run")
        source = gr.Radio(SOURCE_CHOICES, value="heldout", label="Held-out instructions",
                          info=forms.help_of(CompareConfig)("instructions"))
    upload = gr.File(label="Held-out file (.jsonl with a prompt field, .csv with a prompt column, .txt, .parquet, "
                           ".arrow)", file_types=[".jsonl", ".csv", ".txt", ".parquet", ".arrow"], visible=False)
    fields = _settings_inputs()
    scorer_note = gr.Markdown(NO_SCORER)
    api_key = api_key_box(visible=False)  # shown when an API judge or scorer is picked
    start = gr.Button("Compare", variant="primary")
    panel = job_panel()
    labels, noise = labels_view("compare")
    results = _results()
    tab = CompareTab(adapters, source, upload, fields, scorer_note, api_key, start, panel, results, labels=labels)
    tab.views = [View(adapter_choices, [adapters], inputs=[adapters]), noise,
                 View(refresh, results.shown, inputs=[results.pick], api_name="compare_results")]
    _wire(tab, ctx)
    return tab


def _wire(tab: CompareTab, ctx) -> None:
    r, f = tab.results, tab.fields
    tab.source.change(lambda s: gr.update(visible=s == "file"), tab.source, tab.upload, **internal())
    watched = [*(f[n] for n in SCORER_FIELDS), f["checks"], tab.source]
    for box in watched:
        box.change(scorers_changed, watched, [tab.scorer_note, tab.api_key], **internal())
    wire_job_panel(tab.panel, ctx.run_name, "compare", tab.views)
    wire_start(tab.panel, tab.start, lambda *values: start_compare(*values[:-1], api_key=values[-1]),
               [ctx.run_name, tab.adapters, tab.source, tab.upload, *f.values(), tab.api_key], "start_compare")
    page = View(show_page, [r.grid, r.page, r.note], inputs=[r.pick])
    r.pick.change(page.handler(), inputs=[ctx.run_name, r.pick], outputs=page.outputs, **internal())
    r.prev.click(lambda name, at: turn(name, at, -1), [ctx.run_name, r.pick], [r.pick], api_name="grid_previous")
    r.next.click(lambda name, at: turn(name, at, 1), [ctx.run_name, r.pick], [r.pick], api_name="grid_next")
    r.save_note.click(save_instruction_note, inputs=[ctx.run_name, r.pick, r.note], outputs=[r.saved],
                      api_name="save_note")
    r.save_overall.click(save_overall_note, inputs=[ctx.run_name, r.overall], outputs=[r.saved],
                         api_name="save_overall_note")
    r.export.click(export_grid, inputs=[ctx.run_name, r.fmt], outputs=[r.file], api_name="export_grid")
    after = chain(ctx.run_name.change, ctx.run_name, tab.views)
    wire_restore(after, ctx.run_name, "compare", [tab.adapters, tab.source, *f.values()], restored)


def restored(cfg: CompareConfig) -> list:
    """The form's values for a comparison job's settings (lab.ui.views.wire_restore)."""
    source = cfg.instructions if cfg.instructions in ("heldout", "checks-heldout") else "file"
    return [[a for a in cfg.adapters.split(",") if a], source, *forms.values_of(cfg, dict.fromkeys(FORM))]


def scorers_changed(pairrm: str, reward: str, judge: str, score: str, use_checks: bool = False, source: str = ""):
    """[the no-scorer note, the API key box]: the box shows only when an API judge or scorer is picked. The checks
    count as a scorer on the verifiable held-out set (an uploaded file may carry checks too: not known before)."""
    none = not (pairrm or "").strip() and not (reward or "").strip() and judge == "none" and score == "none" and \
        not (use_checks and source in ("checks-heldout", "file"))
    return NO_SCORER if none else "", gr.update(visible=judge in API_BACKENDS or score in API_BACKENDS)


def start_compare(run_name, adapters, source, upload, *values, api_key: str = ""):
    run = open_run(run_name, create=False)
    if source == "file" and not upload:
        raise gr.Error("Upload a held-out instruction file first, or pick the bundled held-out set.")
    with upload_into(run, upload, "heldout") if source == "file" else nullcontext(source) as where:
        return _start_compare(run, run_name, adapters, str(where), values, api_key, source)


def _start_compare(run: Run, run_name: str, adapters, source: str, values, api_key: str, choice: str) -> str:
    cfg = forms.read(CompareConfig, dict.fromkeys(FORM), values, instructions=source,
                     adapters=",".join(adapters or []))
    checked(cfg.validate)
    ok = admit(["compare", "--run", run.name, *cfg.to_argv()])  # a hosted app's rules first: no path is looked at
    checked(resolve_adapters, run, cfg.adapters)  # "no adapters yet" shows at once, not in the job log
    checked(compare.check_scorers, cfg, (api_key or "").strip() or None)
    apis = {b for b in (cfg.judge, cfg.score) if b in API_BACKENDS}
    if (api_key or "").strip() and len(apis) > 1:
        raise gr.Error("The LLM judge and the 5-point scorer use two API providers, and a typed key belongs to one: "
                       "pick the same provider for both, or leave the key box empty to use the app's own keys.")
    api = next(iter(apis), "")
    status = start_job(run_name, "compare", cfg.to_argv(), "Comparing", secret_env=typed_key_env(api, api_key),
                       admitted=ok)
    return status + ("" if scorers_changed(cfg.pairrm, cfg.reward, cfg.judge, cfg.score, cfg.checks, choice)[0] == ""
                     else
                     " No scorer was chosen: no win rates will be computed.")


def adapter_choices(run_name: str | None, ticked: list | None = None):
    """The run's adapters; those ticked stay ticked while they are still there."""
    if not run_name:
        return gr.update(choices=[], value=[])
    run = Run.open(run_name)
    names = [*run.adapters(), *run.round_adapters()]  # the self-rewarding rounds' adapters too
    return gr.update(choices=names, value=[a for a in ticked or [] if a in names])


def refresh(run_name: str | None, picked: str | None = None):
    """[scores table, what made them, instruction picker, grid page, page line, the picked instruction's note,
    overall notes] of the run's latest comparison; the pick is kept while it is still in it."""
    if not run_name:
        return ["", "", gr.update(choices=[], value=None), "", "", "", ""]
    run = Run.open(run_name)
    notes = comparisons.read_notes(run)
    try:
        ids = grid.instruction_ids(run)
    except LabError:
        empty = '<p class="lab-empty">No comparison in this run yet: press Compare.</p>'
        return [empty, "", gr.update(choices=[], value=None), "", "", "", notes["overall"]]
    scores = compare_scorers.read_scores(run)
    table = scores_html(scores, run.stage_settings("compare") or {}) if scores else \
        '<p class="lab-empty">The scores appear when the comparison has finished.</p>'
    picked = picked if picked in ids else (ids[0] if ids else None)
    page, info = grid.render(run, picked)
    return [table, made_with_md(run.stage_settings("compare")), gr.update(choices=grid.choices(run, notes[
        "instructions"]), value=picked), page, info, notes["instructions"].get(picked, ""), notes["overall"]]


def made_with_md(st: dict | None) -> str:
    if not st:
        return ""
    scorers = any(st.get(k) not in (None, "", "none") for k in SCORER_FIELDS) or bool(
        st.get("checks") and st.get("checked_ids"))
    made = made_with(st, "compare", MADE_WITH, {"base model": st.get("model"),
                                                "instructions": len(st.get("instruction_ids", []))})
    return made + ("" if scorers else " · no scorer, so no win rates")


def show_page(run_name: str | None, picked: str | None):
    """[grid page holding the picked instruction, page line, its note]."""
    if not run_name:
        return "", "", ""
    run = Run.open(run_name)
    page, info = grid.render(run, picked)
    return page, info, comparisons.read_notes(run)["instructions"].get(picked, "") if picked else ""


def turn(run_name: str | None, picked: str | None, step: int):
    """Previous / next page: the picker moves to that page's first instruction (which shows the page)."""
    if not run_name:
        return gr.skip()
    return gr.update(value=checked(grid.neighbour, open_run(run_name, create=False), picked, step))


def _rate(w: dict | None) -> str:
    """A win rate with its interval, the length-controlled one beside it (older comparisons have none), and a mark
    where the grader also made the adapter's training pairs (the words are under the table)."""
    if not w or not w.get("n"):
        return ""
    lc = f" · LC {w['lc_win_rate']:.2f} [{w['lc_ci_low']:.2f}, {w['lc_ci_high']:.2f}]" if "lc_win_rate" in w else ""
    mark = "" if not w.get("circular") else " ↺ same checks as training" if w.get("grader_id") == \
        "checks:ifeval" else " ⚠️ circular: trained on this grader's pairs"
    return f"{w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]{lc} (n={w['n']}){mark}"


def circular_notes(scores: dict) -> str:
    """Each circular label once, under the table: what the marks next to the numbers mean."""
    found = {w["circular"] for by in scores["win_rates"].values() for w in by.values() if w.get("circular")}
    return "".join(f'<p class="lab-note">{"↺" if "knows the answer" in t else "⚠️"} {html.escape(t)}</p>'
                   for t in sorted(found))


def checks_table(found: dict) -> pd.DataFrame:
    """IFEval accuracies per model with 95% intervals, and each adapter's paired difference against the base."""
    fmt = lambda v, lo, hi: f"{v:.0%} [{lo:.0%}, {hi:.0%}]"  # noqa: E731
    rows = []
    for m, levels in found["per_model"].items():
        diff = (found["vs_base"].get(m) or {}).get("prompt_strict")
        rows.append([m, *(fmt(levels[lv]["value"], levels[lv]["ci_low"], levels[lv]["ci_high"]) for lv in
                          checks.LEVELS), "" if not diff else f"{diff['diff']:+.0%} [{diff['ci_low']:+.0%}, "
                     f"{diff['ci_high']:+.0%}] ({diff['better']} better, {diff['worse']} worse)"])
    return pd.DataFrame(rows, columns=CHECKS_COLUMNS)


def scores_html(scores: dict, settings: dict) -> str:
    """The scores table, the checks' accuracies where the instructions carry checks, and the circular labels."""
    out = html_table(scores_table(scores, settings), caption=LC_NOTE) + circular_notes(scores)
    if scores.get("checks"):
        n = scores["checks"]["n"]
        out += (f"<p><b>Verifiable checks</b> ({n} held-out prompts; IFEval's checkers via if-verifiable: no model "
                "grades these): accuracy with 95% bootstrap intervals over prompts; the last column is the paired "
                "difference against the base.</p>" + html_table(checks_table(scores["checks"])))
    return out


def _value(v: float | None) -> str:
    return "" if v is None or v != v else f"{v:+.3f}"


def _difference(d: dict | None) -> str:
    """A paired difference against the base with its interval (lab.stats.paired_difference)."""
    if not d or not d.get("n"):
        return ""
    return f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']})"


def scorer_marks(settings: dict) -> dict[str, str]:
    """Win-rate column -> its header with the scorer's noise mark next to the numbers ("random ranker", "weak
    judge"), from the comparison's recorded settings (lab.noise knows which scorers are noise)."""
    judge = settings.get("judge_model") or noise.BUNDLED if settings.get("judge") == "local" else None
    used = {"PairRM win rate": ("ranker", settings.get("pairrm")), "judge win rate": ("judge", judge),
            "mean reward": ("ranker", settings.get("reward")), "reward vs base": ("ranker", settings.get("reward")),
            "reward win rate": ("ranker", settings.get("reward")),
            "5-point win rate": ("judge", settings.get("model") if settings.get("score") == "base" else None)}
    marks = {}
    for column, (kind, spec) in used.items():
        words = noise.label(kind, spec) or ""
        mark = f"⚠️ {'random' if words.startswith('Noise') else 'weak'} {kind}"
        marks[column] = f"{column} {mark}" if words else column
    return marks


def scores_table(scores: dict, settings: dict | None = None) -> pd.DataFrame:
    """compare-scores.json -> one row per model; a win rate from a random or weak scorer says so in its header."""
    rows = []
    rewards = (scores.get("values") or {}).get("reward") or {}
    for m, s in scores["per_model"].items():
        w = scores["win_rates"].get(m, {})
        change = "" if s["chars_change"] is None else f"{s['chars_change']:+.0f} ({s['chars_change_pct']:+.0f}%)"
        rows.append([m, round(s["mean_chars"]), change, round(s["mean_tokens"], 1), f"{s['truncated_rate']:.0%}",
                     round(s["distinct_1"], 3), round(s["distinct_2"], 3), f"{s['refusal_rate']:.0%}",
                     _rate(w.get("pairrm")), _rate(w.get("judge")), _rate(w.get("score")),
                     _value(rewards.get("mean", {}).get(m)), _difference(rewards.get("difference", {}).get(m)),
                     _rate(w.get("reward")), _rate(w.get("checks"))])
    return pd.DataFrame(rows, columns=SCORE_COLUMNS).rename(columns=scorer_marks(settings or {}))


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
    run = open_run(run_name, create=False)
    path = checked(compare.export, run, fmt)
    return served_copies({f"{run.name}-{path.name}": path}, f"export:{run.path}:{fmt}")[0]
