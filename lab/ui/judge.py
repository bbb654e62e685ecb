"""Judge tab: backend, plan and prompt; the plan's calls, time and cost before it runs; the judge as a job; then the
position-consistency / first-position / longer-answer figures and, per instruction, each pair's verdict with the
judge's reasoning in both orders.

API keys come from the app's environment (GROQ_API_KEY / OPENAI_API_KEY, or a Space secret), or a visitor types
their own into a password field: that key lives only in this browser tab's page (never stored, never shown back)
and is handed to the one judge job it starts through that process's environment (see lab.jobs.start), so on a
shared Space each visitor's calls run on their own key.
"""
from __future__ import annotations

import html
import os
from collections import Counter
from dataclasses import dataclass, field

import gradio as gr

from lab.judge import JudgeConfig
from lab.errors import LabError
from lab import limits
from lab.judge import CALIBRATE, DEFAULT_TEMPLATE, check_template, estimate
from lab.pairs import SOURCES
from lab.judge_backends import BACKENDS as REGISTRY, DEFAULT_MODELS, KEY_ENV, resolve_key
from lab.records.verdicts import RULES, TIE_BAND, report, run_verdicts
from lab.store import Run, atomic_write_text
from lab.ui import forms
from lab.ui.common import JobPanel, admit, api_key_box, check_base_url, checked, job_panel, noise_md, open_run, \
    start_job, typed_key_env, wire_job_panel, wire_start
from lab.ui.views import View, chain, internal, made_with, wire_restore
from lab.ui.wording import count, say

BACKENDS = [(b.label, name) for name, b in REGISTRY.items()]
def plan_choices_for(k: int = 5) -> list[tuple[str, str]]:
    """The plan radio's choices, the calls per instruction worked out for the run's K responses."""
    return [(f"Knockout: 2(K-1) calls per instruction ({2 * (k - 1)} for K={k})", "knockout"),
            (f"Full: every pair in both orders, K(K-1) calls ({k * (k - 1)} for K={k})", "full")]


PLAN_CHOICES = plan_choices_for()
BUILD_PAIRS = ("**Next**: turn these verdicts into training pairs with **Build pairs** at the bottom of the "
               "**PairRM** tab (source: judge), after spot-checking some in **Spot-check** if you like.")
WEAK = ("**The local judge is weak.** SmolLM2-135M's verdicts are close to noise (its verdict is read from label "
        "probabilities, so it always gives one): use it to try the pipeline, and Groq or an OpenAI-compatible "
        "endpoint for preference data worth training on.")


@dataclass
class JudgeTab:
    backend: gr.Radio
    model: gr.Textbox
    base_url: gr.Textbox
    key_note: gr.Markdown
    api_key: gr.Textbox
    plan: gr.Radio
    rpm: gr.Number
    concurrency: gr.Number
    reasoning_tokens: gr.Number
    prompt: gr.Code
    reset_prompt: gr.Button
    cost: gr.Markdown
    start: gr.Button
    panel: JobPanel
    figures: gr.Markdown
    pick: gr.Dropdown
    pairs: gr.HTML
    calibrate: gr.Radio | None = None  # position calibration (JudgeConfig.calibrate) and its tie band
    tie_band: gr.Number | None = None
    views: list = field(default_factory=list)  # lab.ui.views.View: re-read on every change of the run's files

    @property
    def settings(self) -> list:
        """The inputs start_judging and show_cost read first, in their order."""
        return [self.backend, self.model, self.base_url, self.plan, self.rpm, self.concurrency,
                self.reasoning_tokens, self.prompt]

    @property
    def calibration(self) -> list:
        """The inputs they read last (start_judging: after the API key, so callers of the older form still fit)."""
        return [self.calibrate, self.tie_band]


def _settings_inputs() -> dict:
    h = forms.help_of(JudgeConfig)
    with gr.Row():
        backend = gr.Radio(BACKENDS, value="local", label="Judge", info=h("backend"))
        plan = gr.Radio(PLAN_CHOICES, value="knockout", label="Call plan", info="the cost is shown below before anything runs")
    with gr.Row():
        model = gr.Textbox("", label="Model", placeholder=DEFAULT_MODELS["local"], info=h("model"))
        base_url = gr.Textbox("", label="Base URL", placeholder="provider default", info=h("base_url"), visible=False)
    key_note = gr.Markdown(WEAK)
    api_key = api_key_box(visible=False)  # shown for the API backends
    with gr.Accordion("Rate limit and local judge", open=False):
        with gr.Row():
            rpm = gr.Number(JudgeConfig().rpm, label="Requests per minute", minimum=0, info=h("rpm"))
            concurrency = gr.Number(JudgeConfig().concurrency, label="Concurrent requests", precision=0, minimum=1,
                                    info=h("concurrency"))
            reasoning_tokens = gr.Number(JudgeConfig().reasoning_tokens, label="Local reasoning tokens", precision=0,
                                         minimum=0, info=h("reasoning_tokens"))
        with gr.Row():
            calibrate = forms.input_for(JudgeConfig, "calibrate", kind="Radio", choices=list(CALIBRATE))
            tie_band = forms.input_for(JudgeConfig, "tie_band", minimum=0, maximum=0.99)
    with gr.Accordion("Judge prompt (editable; its hash is recorded with every verdict)", open=False):
        prompt = gr.Code(DEFAULT_TEMPLATE, language="markdown", lines=18, label="Template: {instruction}, "
                         "{response_a}, {response_b} are filled in; the reply must be JSON with reasoning and verdict")
        reset_prompt = gr.Button("Restore the default prompt", size="sm")
    return dict(backend=backend, model=model, base_url=base_url, key_note=key_note, api_key=api_key, plan=plan, rpm=rpm,
                concurrency=concurrency, reasoning_tokens=reasoning_tokens, prompt=prompt, reset_prompt=reset_prompt,
                calibrate=calibrate, tie_band=tie_band)


def build(ctx) -> JudgeTab:
    gr.Markdown("Compare each instruction's responses two at a time. Every pair is judged in **both orders**: when "
                "the two verdicts disagree, each response's grade is averaged over both orders (position "
                "calibration) and decides the pair, or makes it a tie; without grades the pair is *inconsistent* "
                "and left out of the training pairs.")
    inputs = _settings_inputs()
    cost = gr.Markdown()
    start = gr.Button("Judge", variant="primary")
    panel = job_panel()
    figures = gr.Markdown()
    pick = gr.Dropdown(label="Instruction", choices=[], interactive=True)
    pairs = gr.HTML()
    tab = JudgeTab(**inputs, cost=cost, start=start, panel=panel, figures=figures, pick=pick, pairs=pairs)
    tab.views = [View(refresh, [figures, pick, pairs], inputs=[pick], api_name="judge_results"),
                 View(plan_choices, [tab.plan]),
                 View(show_cost, [cost], inputs=[*tab.settings, *tab.calibration],
                      api_name="show_cost")]
    _wire(tab, ctx)
    return tab


def _wire(tab: JudgeTab, ctx) -> None:
    tab.backend.change(backend_changed, tab.backend, [tab.model, tab.base_url, tab.key_note, tab.api_key],
                       **internal())
    for comp in [*tab.settings, *tab.calibration]:
        comp.change(show_cost, [ctx.run_name, *tab.settings, *tab.calibration], tab.cost, **internal())
    tab.reset_prompt.click(lambda: DEFAULT_TEMPLATE, outputs=tab.prompt, api_name="default_judge_prompt")
    wire_job_panel(tab.panel, ctx.run_name, "judge", tab.views)
    wire_start(tab.panel, tab.start, start_judging, [ctx.run_name, *tab.settings, tab.api_key, *tab.calibration],
               "start_judging")
    tab.pick.change(show_pairs, inputs=[ctx.run_name, tab.pick], outputs=[tab.pairs], **internal())
    after = chain(ctx.run_name.change, ctx.run_name, [View(saved_prompt, [tab.prompt]), *tab.views])
    wire_restore(after, ctx.run_name, "judge", [tab.backend, tab.model, tab.base_url, tab.plan, tab.rpm,
                                                 tab.concurrency, tab.reasoning_tokens, *tab.calibration], restored)


def restored(cfg: JudgeConfig) -> list:
    """The form's values for a judge job's settings (lab.ui.views.wire_restore)."""
    model = "" if cfg.model == DEFAULT_MODELS.get(cfg.backend) else cfg.model  # the default shows as the placeholder
    return [cfg.backend, model, cfg.base_url, cfg.plan, cfg.rpm, cfg.concurrency, cfg.reasoning_tokens,
            cfg.calibrate, cfg.tie_band]


def backend_changed(backend: str):
    """Model placeholder, base URL visibility and the key / weak-judge note for the chosen backend."""
    return (gr.update(placeholder=DEFAULT_MODELS[backend]), gr.update(visible=shows_base_url(backend)),
            key_note(backend), gr.update(visible=backend != "local"))


def shows_base_url(backend: str) -> bool:
    """Whether the form offers a Base URL for this backend: its entry says it talks to servers of any address."""
    return REGISTRY[backend].custom_url


def key_note(backend: str) -> str:
    if backend == "local":
        return WEAK
    env = KEY_ENV[backend]
    if os.environ.get(env):
        return (f"API key: `{env}` is set in the app's environment; it goes only to the app's own {backend} URL. "
                "For another Base URL, type your own key below.")
    return (f"API key: **`{env}` is not set.** Type your key below (kept in this browser tab only), or set "
            f"{env} where the app runs (on a Space: a secret named {env}). The page never shows a key.")


def config_from(backend, model, base_url, plan, rpm, concurrency, reasoning_tokens, calibrate="auto",
                tie_band=TIE_BAND) -> JudgeConfig:
    return JudgeConfig.from_form({"backend": backend, "model": model, "plan": plan, "rpm": rpm or 0,
                                  "concurrency": concurrency or 1, "reasoning_tokens": reasoning_tokens or 0,
                                  "base_url": base_url if shows_base_url(backend) else "",
                                  "calibrate": calibrate or "auto",
                                  "tie_band": TIE_BAND if tie_band is None else tie_band})


def show_cost(run_name, backend, model, base_url, plan, rpm, concurrency, reasoning_tokens, prompt, calibrate="auto",
              tie_band=TIE_BAND) -> str:
    """The plan's cost for this run, as a line of Markdown (or why it cannot be judged yet)."""
    if not run_name:
        return ""
    try:
        cfg = config_from(backend, model, base_url, plan, rpm, concurrency, reasoning_tokens, calibrate, tie_band)
        est = estimate(Run.open(run_name), cfg, check_template(prompt or ""))
    except LabError as e:
        return f"⚠ {html.escape(say(e))}"
    return cost_md(est)


def cost_md(est: dict) -> str:
    when = (f" · about **{est['minutes_at_rpm']} min** at the rate limit" if est["minutes_at_rpm"] is not None
            else " · runs on this machine (no rate limit)")
    money = f" · about **${est['est_cost_usd']:.4f}**" if est["est_cost_usd"] else ""
    skipped = f" · {est['skipped_instructions']} instructions with one response skipped" \
        if est["skipped_instructions"] else ""
    return (f"**{est['calls_to_make']}** calls to make ({est['calls_total']} in the plan, {est['calls_cached']} "
            f"already cached) for {est['instructions']} instructions{when}{money}{skipped} · judge `{est['model']}`; "
            f"~{est['est_prompt_tokens'] + est['est_completion_tokens']:,} tokens")


def start_judging(run_name, backend, model, base_url, plan, rpm, concurrency, reasoning_tokens, prompt,
                  api_key: str = "", calibrate: str = "auto", tie_band: float = TIE_BAND) -> str:
    """Validate, hand the prompt to the job in a file (uploads/judge-prompt.txt; the job copies it to
    judge-prompt.txt with its first judgment) and start `python -m lab judge`. A typed api_key goes to that job's
    environment only."""
    run = open_run(run_name, create=False)
    cfg = config_from(backend, model, check_base_url(base_url), plan, rpm, concurrency, reasoning_tokens, calibrate,
                      tie_band)
    checked(cfg.validate)
    checked(check_template, prompt or "")
    checked(limits.check_text, "The judge prompt", prompt or "")
    est = checked(estimate, run, cfg, prompt)
    typed = (api_key or "").strip()
    if cfg.backend != "local":
        if not typed and not os.environ.get(KEY_ENV[cfg.backend]):
            raise gr.Error(key_note(cfg.backend).replace("**", "").replace("`", ""))
        checked(resolve_key, cfg.backend, cfg.base_url, typed or None)  # the app's key goes to the app's URL only
    checked(run.check_unlocked, "judge")  # a judge running elsewhere keeps its prompt file
    path = run.upload_path(".txt", "judge-prompt")  # not judge-prompt.txt: a job that fails keeps the run as it was
    cfg.prompt_file = str(path)
    ok = admit(["judge", "--run", run.name, *cfg.to_argv()])  # before the prompt is saved: a refusal changes nothing
    checked(atomic_write_text, path, prompt)
    start_job(run_name, "judge", cfg.to_argv(), "Judging", secret_env=typed_key_env(cfg.backend, typed), admitted=ok)
    return f"**Judging** started: {cost_md(est)}"


def saved_prompt(run_name: str | None) -> str:
    """The prompt this run was last judged with, else the default."""
    if not run_name:
        return DEFAULT_TEMPLATE
    try:
        path = Run.open(run_name).file("judge_prompt")
    except LabError:
        return DEFAULT_TEMPLATE
    return path.read_text(encoding="utf-8") if path.exists() else DEFAULT_TEMPLATE


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


NO_PREFERENCE = ("⚠️ **No instruction has a preference yet**, so the judge's pair set would be empty: every verdict "
                 "was a tie, a disagreement between the two orders that calibration left undecided, or unreadable. "
                 f"{SOURCES['judge'].no_pairs_fix} A small local judge is close to noise.")


def figures_md(r: dict) -> str:
    if not r["calls"]:
        return "No judgments in this run yet."
    v = r["verdicts"]
    cost = f" · ${r['cost_usd']:.4f}" if r.get("cost_usd") else ""
    judged = r["instructions_judged"]
    figures = (f"**{r['pairs']}** pairs from {r['calls']} calls · **{r['instructions_with_preference']}** of "
               f"{count(judged, 'instruction')} {'has' if judged == 1 else 'have'} a preference\n\n"
               f"| position consistency | first-position wins | longer-answer wins |\n|---|---|---|\n"
               f"| {_rate(r['consistency_rate'])} | {_rate(r['first_position_win_rate'])} (50% = unbiased) | "
               f"{_rate(r['longer_answer_win_rate'])} |\n\n"
               f"Verdicts per pair: {v['a'] + v['b']} decided · {v['tie']} ties · {v['inconsistent']} inconsistent "
               f"· {v['invalid']} invalid · {r['calibrated_pairs']} decided by position calibration · tokens "
               f"{r['prompt_tokens']:,} in / {r['completion_tokens']:,} out{cost}")
    return figures if r["instructions_with_preference"] else f"{NO_PREFERENCE}\n\n{figures}"


MADE_WITH = ["backend", "model", "plan", "reasoning_tokens"]


def refresh(run_name: str | None, picked: str | None = None):
    """The figures (with what made the verdicts), the instruction picker (the pick kept while it is still there)
    and the picked instruction's pairs, from the run's files."""
    if not run_name:
        return "", gr.update(choices=[], value=None), ""
    run = Run.open(run_name)
    judged = {r["instruction_id"] for r in run.read("judgments")}
    prompts = {i["id"]: i["prompt"] for i in run.read("instructions")}
    choices = [(f"{prompts.get(i, i)[:80]}", i) for i in sorted(judged, key=lambda i: (prompts.get(i) is None, i))]
    picked = picked if picked in judged else None
    st = run.stage_settings("judge") or {}
    made = made_with(st, "judge", MADE_WITH if st.get("backend") == "local" else MADE_WITH[:3],
                     {"prompt": (st.get("prompt_hash") or "")[:8]})
    figures = noise_md(run, "judge") + figures_md(report(run)) + (f"\n\n{made}" if made and judged else "") + \
        (f"\n\n{BUILD_PAIRS}" if judged else "")
    return figures, gr.update(choices=choices, value=picked), show_pairs(run_name, picked)


def plan_choices(run_name: str | None):
    """The plan radio worded for the run's K (the most common number of responses per instruction)."""
    counts = Counter(s["instruction_id"] for s in Run.open(run_name).read("samples")) if run_name else Counter()
    k = Counter(counts.values()).most_common(1)[0][0] if counts else 5
    return gr.update(choices=plan_choices_for(max(k, 2)))


def show_pairs(run_name: str | None, instruction_id: str | None) -> str:
    """Each judged pair of one instruction: the verdict, both responses, and the reasoning of each order."""
    if not run_name or not instruction_id:
        return ""
    run = Run.open(run_name)
    texts = {s["sample_index"]: s["text"] for s in run.read("samples") if s["instruction_id"] == instruction_id}
    prompt = next((s["prompt"] for s in run.read("samples") if s["instruction_id"] == instruction_id), "")
    parts = [f"<p><b>Instruction</b>: {html.escape(prompt)}</p>"]
    for p in (p for p in run_verdicts(run) if p["instruction_id"] == instruction_id):
        parts.append(_pair_html(p, texts))
    return "\n".join(parts)


def _calibrated(p: dict) -> str:
    c = p.get("calibrated")
    return f": #{p['a']} {c['a']:.3f} vs #{p['b']} {c['b']:.3f}" if c and p["rule"] == "calibrated" else ""


def _pair_html(p: dict, texts: dict) -> str:
    a, b = p["a"], p["b"]
    verdict = {"a": f"#{a} preferred", "b": f"#{b} preferred"}.get(p["verdict"], p["verdict"])
    single = f" ({RULES[p['rule']]}{_calibrated(p)})"
    rows = []
    for o in p["orders"]:
        shown = f"#{a} shown first" if o["order"] == "ab" else f"#{b} shown first"
        said = {"a": f"#{a}", "b": f"#{b}"}.get(o["verdict"], o["verdict"])
        conf = f" · confidence {o['confidence']:.2f}" if o.get("confidence") is not None else ""
        rows.append(f"<li>{shown}: <b>{html.escape(said)}</b>{conf} — {html.escape(o['reasoning'] or '(no reasoning)')}</li>")
    resp = "".join(f'<div class="lab-response"><b>#{i}</b><pre style="white-space:pre-wrap">'
                   f'{html.escape(texts.get(i, "")[:1500])}</pre></div>' for i in (a, b))
    return (f"<details><summary><b>#{a} vs #{b}</b>: {html.escape(verdict)}{single}</summary>"
            f"<ul>{''.join(rows)}</ul>{resp}</details>")
