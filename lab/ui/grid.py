"""The Compare tab's side-by-side grid, as HTML rendered here (every text escaped).

Per instruction: the prompt, then one column per model (base first, then each adapter) of equal width, each cell
the model's answer (wrapped, long answers scroll inside the cell), its length in characters and tokens, whether it
hit the token limit (finish_reason "length"), on a verifiable instruction its checks failed (or "all checks passed"),
and each scorer's verdict against the base on this instruction (the per-instruction outcomes lab.compare's win rates
count, from compare-scores.json). At phone width the columns stack
(CSS in lab/ui/style.py). PER_PAGE instructions a page; the page shown is the one holding the picked instruction.

The wide table (one row per instruction, one column per model) stays the export: lab.compare.export.
"""
from __future__ import annotations

import html

from lab import compare_scorers
from lab.adapters import BASE
from lab.records import comparisons
from lab.store import Run

PER_PAGE = 3
VERDICT = {1.0: ("win", "better than base"), 0.5: ("tie", "tie with base"), 0.0: ("loss", "worse than base")}


def instruction_ids(run: Run) -> list[str]:
    """The latest comparison's instructions, in its order (LabError when there is none)."""
    _, st = comparisons.current(run)
    return list(st["instruction_ids"])


def choices(run: Run, noted: dict) -> list[tuple[str, str]]:
    """The instruction picker's (label, id) pairs: the prompt's start, marked when the user wrote a note on it."""
    records, st = comparisons.current(run)
    prompts = {r["instruction_id"]: r["prompt"] for r in records}
    return [(f"{prompts.get(i, i)[:80]}{' (noted)' if i in noted else ''}", i) for i in st["instruction_ids"]]


def page_of(ids: list[str], picked: str | None) -> int:
    return ids.index(picked) // PER_PAGE if picked in ids else 0


def neighbour(run: Run, picked: str | None, step: int) -> str | None:
    """The first instruction of the page `step` pages away from the picked one's (clamped to the pages)."""
    ids = instruction_ids(run)
    if not ids:
        return None
    last = (len(ids) - 1) // PER_PAGE
    page = min(max(page_of(ids, picked) + step, 0), last)
    return ids[page * PER_PAGE]


def render(run: Run, picked: str | None) -> tuple[str, str]:
    """(grid HTML of the page holding `picked`, "instructions 1-3 of 8 · page 1 of 3")."""
    records, st = comparisons.current(run)
    ids, models = list(st["instruction_ids"]), list(st["models"])
    if not records:
        return '<p class="lab-empty">The comparison has no answers yet.</p>', ""
    cells = {(r["instruction_id"], r["model"]): r for r in records}
    scores = compare_scorers.read_scores(run) or {}
    outcomes, failed = scores.get("outcomes", {}), (scores.get("checks") or {}).get("failed", {})
    page = page_of(ids, picked)
    shown = ids[page * PER_PAGE:(page + 1) * PER_PAGE]
    body = "".join(_instruction(iid, models, cells, outcomes, failed, iid == picked) for iid in shown)
    pages = (len(ids) - 1) // PER_PAGE + 1
    info = (f"Instructions {page * PER_PAGE + 1}-{page * PER_PAGE + len(shown)} of {len(ids)} · "
            f"page {page + 1} of {pages}")
    return f'<div class="lab-grid-page">{body}</div>', info


def _instruction(iid: str, models: list[str], cells: dict, outcomes: dict, failed: dict, picked: bool) -> str:
    first = next((cells[(iid, m)] for m in models if (iid, m) in cells), None)
    prompt = first["prompt"] if first else ""
    dup = (first or {}).get("duplicate")
    note = f' <span class="lab-flag">duplicates training instruction {html.escape(str(dup["of"]))}</span>' \
        if isinstance(dup, dict) else ""
    cols = "".join(_cell(cells.get((iid, m)), m, _verdicts(outcomes.get(m, {}), iid), failed.get(m, {}).get(iid))
                   for m in models)
    mark = " lab-picked" if picked else ""
    return (f'<section class="lab-grid-item{mark}" data-instruction="{html.escape(iid)}">'
            f'<p class="lab-grid-prompt"><b>{html.escape(iid)}</b>{note}: {html.escape(prompt)}</p>'
            f'<div class="lab-grid" data-models="{len(models)}">{cols}</div></section>')


def _verdicts(by_scorer: dict, iid: str) -> list[tuple[str, str, str]]:
    """[(scorer label, css class, words)] of one adapter on one instruction, against the base."""
    out = []
    for name, per in by_scorer.items():
        value = per.get(iid)
        css, words = VERDICT.get(value, ("none", "no verdict"))
        out.append((compare_scorers.SCORERS[name].label if name in compare_scorers.SCORERS else name, css, words))
    return out


def _checks_line(failed: list[str] | None) -> str:
    """An answer's IFEval checks: the types it failed (strict), or that it passed them all; '' if it has none."""
    if failed is None:
        return ""
    if not failed:
        return '<footer class="lab-cell-checks lab-v-win">all checks passed</footer>'
    return (f'<footer class="lab-cell-checks">failed: <span class="lab-v-loss">'
            f'{html.escape(", ".join(failed))}</span></footer>')


def _cell(rec: dict | None, model: str, verdicts: list, failed: list[str] | None = None) -> str:
    head = f'<header><b>{html.escape(model)}</b></header>'
    if rec is None:
        return f'<article class="lab-cell" data-model="{html.escape(model)}">{head}<p>(no answer)</p></article>'
    cut = rec["finish_reason"] == "length"
    meta = (f'{len(rec["text"]):,} chars · {rec["completion_tokens"]} tokens · '
            + ('<span class="lab-cut">hit max tokens</span>' if cut else "ended by itself"))
    if model == BASE:
        judged = '<span class="lab-ref">the reference for the verdicts</span>'
    elif verdicts:
        judged = " · ".join(f'{html.escape(label)}: <span class="lab-v-{css}">{words}</span>'
                            for label, css, words in verdicts)
    else:
        judged = '<span class="lab-ref">no scorer was chosen</span>'
    return (f'<article class="lab-cell" data-model="{html.escape(model)}" data-cut="{str(cut).lower()}">{head}'
            f'<div class="lab-cell-text">{html.escape(rec["text"]) or "<i>(empty)</i>"}</div>'
            f'<footer class="lab-cell-meta">{meta}</footer>{_checks_line(failed)}'
            f'<footer class="lab-cell-verdict">{judged}</footer></article>')
