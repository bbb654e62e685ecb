"""Spot-check tab: walk through the judged pairs and the pairs the IFEval checks decided (unchecked first): the
instruction, both responses, the judge's verdict and reasoning in each order, PairRM's preference, each answer's
checks passed and failed; agree, overrule, call a tie, or skip. Every decision is saved in the run at once and the
pairs it overrides (pairs-judge.jsonl, pairs-checks.jsonl) are rebuilt from it; the judge's, PairRM's and the checks'
agreement with the person is shown as it grows.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import gradio as gr

from lab import spotcheck
from lab.pairs import record_spotcheck
from lab.rank import RANKERS
from lab.records.verdicts import RULES
from lab.store import Run
from lab.ui.common import checked, noise_md, open_run
from lab.ui.views import View, chain
from lab.ui.wording import count

VERDICT_WORDS = {"a": "Response 1 is better", "b": "Response 2 is better", "tie": "Tie", "skip": "Skipped",
                 "inconsistent": "Inconsistent (the two orders disagreed)", "invalid": "Invalid (unparsable output)"}


@dataclass
class SpotcheckTab:
    load: gr.Button
    position: gr.Markdown
    prompt: gr.HTML
    text_a: gr.HTML
    text_b: gr.HTML
    judge: gr.HTML
    buttons: dict[str, gr.Button]  # "a" | "b" | "tie" | "skip"
    prev: gr.Button
    next: gr.Button
    saved: gr.Markdown
    agreement: gr.Markdown
    keys: gr.State  # [(instruction_id, a, b)] in the order shown
    at: gr.State  # index into keys
    views: list = field(default_factory=list)  # lab.ui.views.View: the queue, re-read when the tab is opened


def build(ctx) -> SpotcheckTab:
    gr.Markdown("Check the judge (and the verifiable checks) on a sample of pairs. Your verdict replaces theirs in "
                "`pairs-judge.jsonl` and `pairs-checks.jsonl` (a tie removes the pair; skip leaves their verdict). "
                "Pairs you have not checked come first.")
    load = gr.Button("Load pairs", size="sm")
    position = gr.Markdown()
    prompt = gr.HTML()
    # on a phone the two answers stack, each the page's width: in columns, since Gradio 6.31's HTML block drops its
    # own min_width (side by side at 390 px they were two 157 px slivers)
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            text_a = gr.HTML(label="Response 1")
        with gr.Column(min_width=300):
            text_b = gr.HTML(label="Response 2")
    judge = gr.HTML()
    with gr.Row():
        buttons = {"a": gr.Button("1 is better", variant="primary"), "b": gr.Button("2 is better", variant="primary"),
                   "tie": gr.Button("Tie"), "skip": gr.Button("Skip")}
    with gr.Row():
        prev, next_ = gr.Button("◀ Previous", size="sm"), gr.Button("Next ▶", size="sm")
    saved, agreement = gr.Markdown(), gr.Markdown()
    tab = SpotcheckTab(load, position, prompt, text_a, text_b, judge, buttons, prev, next_, saved, agreement,
                       gr.State([]), gr.State(0))
    _wire(tab, ctx)
    return tab


API_NAMES = {"a": "spotcheck_first_better", "b": "spotcheck_second_better", "tie": "spotcheck_tie",
             "skip": "spotcheck_skip"}


def _wire(tab: SpotcheckTab, ctx) -> None:
    view = [tab.position, tab.prompt, tab.text_a, tab.text_b, tab.judge, tab.agreement]
    tab.views = [View(load_queue, [tab.keys, tab.at, *view])]  # the judge may have run since: no "Load pairs" needed
    chain(ctx.run_name.change, ctx.run_name, tab.views)
    tab.load.click(load_queue, inputs=[ctx.run_name], outputs=[tab.keys, tab.at, *view], api_name="load_pairs")
    state = [ctx.run_name, tab.keys, tab.at]
    for human, button in tab.buttons.items():
        button.click(lambda r, k, i, h=human: decide(r, k, i, h), inputs=state, outputs=[tab.at, tab.saved, *view],
                     api_name=API_NAMES[human])
    tab.prev.click(lambda r, k, i: move(r, k, i, -1), inputs=state, outputs=[tab.at, *view],
                   api_name="spotcheck_previous")
    tab.next.click(lambda r, k, i: move(r, k, i, 1), inputs=state, outputs=[tab.at, *view], api_name="spotcheck_next")


def load_queue(run_name: str | None):
    """(keys, 0, *view): every judged pair of the run, unchecked first."""
    if not run_name:
        return [], 0, *_blank("")
    run = Run.open(run_name)
    if not run.read("judgments") and not run.pairs_file("checks").exists():
        return [], 0, *_blank("No judged pairs in this run yet: judge first (Judge tab), or build checks pairs on a "
                              "verifiable set (PairRM tab, source: checks); they appear here then.")
    keys = [(i["instruction_id"], i["a"], i["b"]) for i in checked(spotcheck.items, run)]
    return keys, 0, *render(run, keys, 0)


def decide(run_name: str, keys: list, at: int, human: str):
    """Save the human's verdict on the pair shown, rebuild the judge pairs, move to the next pair."""
    if not keys:
        raise gr.Error("Load the pairs first.")
    run = open_run(run_name, create=False)
    iid, a, b = keys[at]
    out = checked(record_spotcheck, run, iid, a, b, human)
    pairs = out["pairs"]
    files = " and ".join(f"`pairs-{s}.jsonl`" for s in out["rebuilt"])
    note = (f"Saved: {VERDICT_WORDS[human].lower()} on pair {at + 1}. {files} rebuilt: "
            f"{count(pairs['pairs'], 'pair')} ({pairs['human_overrides']} from your checks).")
    nxt = min(at + 1, len(keys) - 1)
    return nxt, note, *render(run, keys, nxt)


def move(run_name: str, keys: list, at: int, step: int):
    if not keys:
        return 0, *_blank("Load the pairs first.")
    nxt = max(0, min(len(keys) - 1, at + step))
    return nxt, *render(Run.open(run_name), keys, nxt)


def _blank(message: str) -> list:
    return [message, "", "", "", "", ""]


def render(run: Run, keys: list, at: int) -> list:
    """[position, prompt, response 1, response 2, judge + PairRM, agreement] for the pair at `at`."""
    items = {(i["instruction_id"], i["a"], i["b"]): i for i in spotcheck.items(run)}
    item = items.get(tuple(keys[at]))
    if item is None:
        return _blank("This pair is no longer in the run's judgments: press Load pairs.")
    done = sum(i["human"] is not None for i in items.values())
    mine = f" · your verdict: **{VERDICT_WORDS[item['human']]}**" if item["human"] else ""
    position = noise_md(run, "judge") + f"Pair **{at + 1}** of {len(keys)} · {done} checked{mine}"
    prompt = f"<p><b>Instruction</b> ({html.escape(item['instruction_id'])}): {html.escape(item['prompt'])}</p>"
    return [position, prompt, _response(1, item["a"], item["text_a"]), _response(2, item["b"], item["text_b"]),
            judge_html(item), agreement_md(spotcheck.agreement(run))]


def _response(n: int, index: int, text: str) -> str:
    return (f'<div class="lab-response"><b>Response {n}</b> (#{index})'
            f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre></div>')


def judge_html(item: dict) -> str:
    """The judge's pair verdict, its reasoning in each order, PairRM's preference and the checks' results
    (canonical a/b = 1/2)."""
    parts = _judge_parts(item) if item["judge"] is not None else []
    if item.get("checks"):
        parts.append(checks_html(item["checks"]))
    if item["pairrm"]:
        p = item["pairrm"]
        parts.append(f"<p><b>PairRM</b>: prefers response {1 if p['prefers'] == 'a' else 2} "
                     f"(both-orders logit {p['logit']:+.2f})</p>")
    return "".join(parts)


def _judge_parts(item: dict) -> list[str]:
    shown = {"ab": "1 shown first", "ba": "2 shown first"}
    how = RULES.get(item.get("rule"), "")
    parts = [f"<p><b>Judge</b>: {VERDICT_WORDS.get(item['judge'], item['judge'])} <i>({html.escape(how)})</i></p><ul>"]
    for o in item["orders"]:
        conf = f" · confidence {o['confidence']:.2f}" if o.get("confidence") is not None else ""
        parts.append(f"<li><i>{shown.get(o['order'], o['order'])}</i>: {VERDICT_WORDS.get(o['verdict'], o['verdict'])}"
                     f"{conf}<br>{html.escape(o.get('reasoning') or '')}</li>")
    parts.append("</ul>")
    return parts


def checks_html(found: dict) -> str:
    """Each answer's IFEval checks, passed or failed (strict; 'loose only' where only IFEval's loose variants pass),
    and which answer the checks prefer."""
    mark = lambda r: "passed" if r["strict"] else "passed loosely" if r["loose"] else "failed"  # noqa: E731
    rows = [f"<li>Response {n}: " + "; ".join(f"{html.escape(r['type'])} <b>{mark(r)}</b>" for r in found[side])
            + "</li>" for n, side in ((1, "a"), (2, "b"))]
    prefers = {"a": "prefer response 1", "b": "prefer response 2", "tie": "see a tie"}[found["prefers"]]
    return f"<p><b>Verifiable checks</b> (IFEval's checkers) {prefers}:</p><ul>{''.join(rows)}</ul>"


def agreement_md(agree: dict) -> str:
    if not agree["checked"]:
        return "No pairs checked yet."
    out = [f"**Agreement with your {agree['checked']} checks** ({agree['skipped']} skipped)"]
    for who, name in (("judge", "Judge"), *((kind, r.label) for kind, r in RANKERS.items()), ("checks", "Checks")):
        a = agree.get(who) or {"n": 0}
        if a["n"]:
            kappa = "n/a" if a["kappa"] is None else f"{a['kappa']:.2f}"
            out.append(f"- {name}: {a['agree']}/{a['n']} ({a['rate']:.0%}), Cohen's kappa {kappa}")
    return "\n".join(out)
