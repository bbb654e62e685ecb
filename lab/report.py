"""The report stage: runs/<run>/report/, the evidence of a run for a write-up, numbers and figures only.

`python -m lab report --run RUN` (or the app's "Write the report" button) rewrites the whole folder at once (a
temp folder renamed into place: a reader sees the old report or the new one). Files (lab.store.REPORT_FILES):

    README.md            the index: every file below, and its numbers as tables; no prose about the results
    efficiency.csv       one row per run of a stage (lab.efficiency records of the run and its nested runs)
    judge-examples.md    ReportConfig.examples judged pairs (spot-checked ones first): the instruction, both
                         responses, both orders' verdicts, grades and reasoning, the pair verdict and the rule that
                         made it (calibrated or not), the human override, PairRM's preference
    judge.csv            one row per judged pair: verdict, rule, averaged grades, each order's verdict, human verdict
    training.csv         one row per adapter (the run's and every self-rewarding round's): steps, pairs, final metrics
    curves-<adapter>.png training curves of an adapter: one panel per plot of its method (lab.methods: loss, reward
                         margin and accuracy, log-probs), train and eval; round adapters: curves-iteration-<k>-<name>
    rounds.csv, rounds.png   self-rewarding runs: per round the final loss, reward margin and accuracy, answer
                         lengths (all, chosen, rejected), mean self-score, win rate against the previous round and
                         the base with their intervals
    scores.csv           the comparison's numbers per model: lengths, distinct-n, refusals, and per scorer the win
                         rate and the length-controlled win rate with intervals (compare-scores.json)
    comparison.md        the comparison grid: one row per held-out instruction, one column per model
    notes.md             the user's own notes (notes.json)
Parts a run does not have (no comparison, no rounds) are left out and the index says which.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lab import cards, efficiency, noise, spotcheck
from lab.adapters import read_metrics, read_state
from lab.config import Settings, opt
from lab.records.comparisons import grid, read_notes
from lab.records.rankings import latest_rankings, preference
from lab.records.samples import groups
from lab.records.verdicts import RULES, report as judge_report, run_verdicts, tie_band_of
from lab.stats import LC_NOTE
from lab.errors import LabError
from lab.methods import METHODS
from lab.progress import Progress
from lab.store import REPORT_FILES, Run, build_folder

F = REPORT_FILES


@dataclass
class ReportConfig(Settings):
    examples: int = opt(8, "judged pairs written out in judge-examples.md (spot-checked ones first)",
                        label="Judge examples")

    def validate(self) -> "ReportConfig":
        if self.examples < 0:
            raise LabError(f"--examples must be 0 or more (got {self.examples}).")
        return self


# ---- small writers ----------------------------------------------------------------------------------------------
def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; cells escaped as in cards (no markup from the run reaches the page)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else cards.cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(v, digits: int = 4):
    return round(v, digits) if isinstance(v, float) else v


# ---- parts: each writes its files into `folder` and returns its README section ('' when the run lacks it) ------
def efficiency_part(run: Run, folder: Path) -> str:
    records = efficiency.read_all(run)
    header = ["run", *efficiency.COLUMNS]
    (folder / F["efficiency"]).write_text(csv_text(header, efficiency.rows(records) if records else []))
    body = md_table(header, [[_num(v) for v in row] for row in efficiency.rows(records)]) if records else \
        "_(no stage has recorded its cost yet)_\n"
    return f"## Efficiency\n\n[{F['efficiency']}]({F['efficiency']}): one row per run of a stage.\n\n{body}"


def judge_part(run: Run, folder: Path, n: int) -> str:
    verdicts = run_verdicts(run)
    if not verdicts:
        return ""
    human = spotcheck.latest(run)
    rows = [[v["instruction_id"], v["a"], v["b"], v["verdict"], v["rule"],
             *((v["calibrated"] or {}).get(k) for k in ("a", "b")),
             *(next((o["verdict"] for o in v["orders"] if o["order"] == order), None) for order in ("ab", "ba")),
             (human.get((v["instruction_id"], v["a"], v["b"])) or {}).get("human")] for v in verdicts]
    header = ["instruction_id", "a", "b", "verdict", "rule", "calibrated_a", "calibrated_b", "verdict_a_first",
              "verdict_b_first", "human"]
    (folder / F["judge"]).write_text(csv_text(header, rows))
    picked = pick_examples(verdicts, human, n)
    (folder / F["examples"]).write_text(examples_md(run, picked, human))
    r = judge_report(run)
    figures = [["calls", r["calls"]], ["pairs", r["pairs"]], ["pairs judged in both orders", r["pairs_both_orders"]],
               ["position consistency (raw)", r["consistency_rate"]],
               ["first-position win rate (raw)", r["first_position_win_rate"]],
               ["longer-answer win rate", r["longer_answer_win_rate"]],
               ["instructions with a preference", f"{r['instructions_with_preference']}/{r['instructions_judged']}"],
               ["tie band", tie_band_of(run.stage_settings("judge"))],
               *[[f"verdict: {k}", v] for k, v in r["verdicts"].items()],
               *[[f"rule: {RULES[k]}", v] for k, v in r["rules"].items()],
               ["prompt tokens", r["prompt_tokens"]], ["completion tokens", r["completion_tokens"]],
               ["cost (USD)", r["cost_usd"]]]
    return (f"## Judge\n\n[{F['judge']}]({F['judge']}): every judged pair. [{F['examples']}]({F['examples']}): "
            f"{len(picked)} judged pairs in full.\n\n" + md_table(["figure", "value"], figures))


def pick_examples(verdicts: list[dict], human: dict, n: int) -> list[dict]:
    """Spot-checked pairs first, then one pair per instruction in turn (judging order), n in all."""
    checked = [v for v in verdicts if (v["instruction_id"], v["a"], v["b"]) in human]
    rest: dict[str, list[dict]] = {}
    for v in verdicts:
        if v not in checked:
            rest.setdefault(v["instruction_id"], []).append(v)
    turns = [v for depth in range(max((len(x) for x in rest.values()), default=0))
             for x in rest.values() if depth < len(x) for v in [x[depth]]]
    return (checked + turns)[:n]


def examples_md(run: Run, picked: list[dict], human: dict) -> str:
    texts = {g.instruction_id: (g.prompt, dict(zip(g.indices, g.texts))) for g in groups(run, required=False)}
    band, ranks = tie_band_of(run.stage_settings("judge")), latest_rankings(run, "pairrm")
    parts = [f"# Judge examples: run {cards.code(run.name)}\n",
             f"{len(picked)} judged pairs. Canonical pair (a, b) = (#a, #b), a < b; each pair judged in both orders. "
             f"Tie band of the calibrated verdict: {band}.\n"]
    for n, v in enumerate(picked, 1):
        prompt, by_index = texts.get(v["instruction_id"], ("", {}))
        parts.append(_example(n, v, prompt, by_index, human.get((v["instruction_id"], v["a"], v["b"])),
                              ranks.get(v["instruction_id"])))
    return "\n".join(parts)


def _example(n: int, v: dict, prompt: str, texts: dict, human: dict | None, ranking: dict | None) -> str:
    a, b = v["a"], v["b"]
    name = {"a": f"#{a}", "b": f"#{b}"}
    rows = [[f"#{a if o['order'] == 'ab' else b} first", name.get(o["verdict"], o["verdict"]),
             _grades(o["grades"], a, b), o.get("confidence"), o["reasoning"] or "(none)"] for o in v["orders"]]
    cal = v.get("calibrated")
    pairrm = "not ranked"
    if ranking and "logits" in ranking and {a, b} <= set(ranking.get("sample_indices") or []):
        logit = preference(ranking, a, b)
        pairrm = f"prefers #{a if logit > 0 else b} (both-orders logit {logit:+.4f})"
    lines = [f"## {n}. {cards.code(v['instruction_id'])}: #{a} vs #{b}\n", "Instruction:\n", cards.fence(prompt),
             f"\nResponse #{a} ({len(texts.get(a, ''))} characters):\n", cards.fence(texts.get(a, "")),
             f"\nResponse #{b} ({len(texts.get(b, ''))} characters):\n", cards.fence(texts.get(b, "")), "",
             md_table(["order shown", "verdict", "grades", "confidence", "reasoning"], rows),
             f"- Pair verdict: **{name.get(v['verdict'], v['verdict'])}** ({RULES[v['rule']]})",
             f"- Calibrated grades (mean over both orders): {_grades(cal, a, b) if cal else 'n/a'}",
             f"- Human override: {name.get(human['human'], human['human']) if human else 'none'}",
             f"- PairRM: {pairrm}\n"]
    return "\n".join(lines)


def _grades(g: dict | None, a: int, b: int) -> str:
    return "" if not g else f"#{a} {g['a']:.4f}, #{b} {g['b']:.4f}"


def pairs_part(run: Run) -> str:
    rows = []
    for source in run.pair_sources():
        s = (run.stage_settings(f"pairs-{source}") or {}).get("stats") or {}
        rows.append([source, s.get("pairs"), s.get("instructions"), s.get("instructions_without_pair"),
                     s.get("human_overrides"), s.get("mean_chars_chosen"), s.get("mean_chars_rejected"),
                     s.get("longer_chosen_rate"), json.dumps(s.get("dropped") or {})])
    return "## Preference pairs\n\n" + md_table(["source", "pairs", "instructions", "without a pair",
                                                 "human overrides", "chosen chars", "rejected chars",
                                                 "longer chosen", "dropped"], rows) if rows else ""


# ---- training curves and rounds ----------------------------------------------------------------------------------
def adapters_of(run: Run) -> list[tuple[str, Path]]:
    """(figure name, adapter folder) of every finished adapter: the run's, then each round's."""
    out = [(name, run.adapter_dir(name)) for name in run.adapters()]
    for k in run.iterations():
        out += [(f"iteration-{k}-{name}", run.iteration(k).adapter_dir(name)) for name in run.iteration(k).adapters()]
    return out


def curves_png(path: Path, metrics: list[dict], plots: dict[str, tuple[str, ...]], title: str) -> None:
    """One panel per plot (train lines solid, eval lines dashed), against the optimizer step."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe inside the app's threads

    fig = Figure(figsize=(4.2 * len(plots), 3.4), layout="constrained")
    for ax, (name, keys) in zip(fig.subplots(1, len(plots), squeeze=False)[0], plots.items()):
        for key in keys:
            for split, style in (("train", "-"), ("eval", "--")):
                pts = [(m["step"], m[key]) for m in metrics if m.get("split") == split and isinstance(m.get(key),
                                                                                                   (int, float))]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", markersize=3, label=f"{split} {key}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:  # a panel with nothing to draw gets no empty legend
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)


def training_part(run: Run, folder: Path) -> str:
    rows, images = [], []
    for name, path in adapters_of(run):
        state, metrics = read_state(path) or {}, read_metrics(path)
        final = state.get("final") or {}
        rows.append([name, state.get("method"), state.get("status"), state.get("global_step"),
                     (state.get("pairs") or {}).get("n_train"), *(_num(final.get(k)) for k in TRAIN_FINAL)])
        if metrics:
            png = f"curves-{name}.png"
            plots = METHODS.get(state.get("method") or "dpo", METHODS["dpo"]).plots
            curves_png(folder / png, metrics, plots, f"{name} ({state.get('method') or 'dpo'})")
            images.append(f"### {name}\n\n![training curves of {name}]({png})\n")
    if not rows:
        return ""
    table = md_table(["adapter", "method", "status", "steps", "train pairs", *TRAIN_FINAL], rows)
    (folder / F["training"]).write_text(csv_text(["adapter", "method", "status", "steps", "train_pairs",
                                                  *TRAIN_FINAL], rows))
    return (f"## Training\n\n[{F['training']}]({F['training']}): the final metrics of every adapter.\n\n{table}\n"
            + "\n".join(images))


TRAIN_FINAL = ("train/loss", "train/rewards/margins", "train/rewards/accuracies", "eval/loss",
               "eval/rewards/margins", "eval/rewards/accuracies")
ROUND_COLUMNS = ["round", "pairs", "loss", "reward_margin", "reward_accuracy", "chars_mean", "chosen_chars_mean",
                 "rejected_chars_mean", "score_mean", "win_rate_vs_previous", "ci_low_vs_previous",
                 "ci_high_vs_previous", "win_rate_vs_base", "ci_low_vs_base", "ci_high_vs_base"]


def round_row(line: dict) -> list:
    final = (line.get("train") or {}).get("final") or {}
    ev = line.get("eval") or {}
    wins = [(w or {}).get(k) for w in (ev.get("win_rate_vs_previous"), ev.get("win_rate_vs_base"))
            for k in ("win_rate", "ci_low", "ci_high")]
    return [line["round"], line.get("pairs_kept"), final.get("train/loss"), final.get("train/rewards/margins"),
            final.get("train/rewards/accuracies"), line.get("chars_mean"), line.get("chosen_chars_mean"),
            line.get("rejected_chars_mean"), line.get("score_mean"), *wins]


def rounds_png(path: Path, rows: list[list]) -> None:
    """Per round: training's final loss, margin and accuracy; answer lengths; win rate vs the previous round (CI)."""
    from matplotlib.figure import Figure

    col = {c: [r[i] for r in rows] for i, c in enumerate(ROUND_COLUMNS)}
    x = col["round"]
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    train_ax, len_ax, win_ax = fig.subplots(1, 3)
    for key in ("loss", "reward_margin", "reward_accuracy"):
        train_ax.plot(x, [v if v is not None else float("nan") for v in col[key]], marker="o", label=key)
    for key in ("chars_mean", "chosen_chars_mean", "rejected_chars_mean"):
        len_ax.plot(x, [v if v is not None else float("nan") for v in col[key]], marker="o", label=key)
    for tag, off in (("previous", -0.05), ("base", 0.05)):
        pts = [(k + off, w, lo, hi) for k, w, lo, hi in zip(x, col[f"win_rate_vs_{tag}"], col[f"ci_low_vs_{tag}"],
                                                            col[f"ci_high_vs_{tag}"]) if w is not None]
        if pts:
            xs, ws, los, his = zip(*pts)
            win_ax.errorbar(xs, ws, yerr=[[w - lo for w, lo in zip(ws, los)], [hi - w for w, hi in zip(ws, his)]],
                            fmt="o", capsize=3, label=f"vs {tag}")
    for ax, title in ((train_ax, "training (final)"), (len_ax, "answer length (characters)"),
                      (win_ax, "win rate (95% CI)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks(x)
        if ax.get_legend_handles_labels()[0]:  # a panel with nothing to draw gets no empty legend
            ax.legend(fontsize=7)
    win_ax.set_ylim(-0.05, 1.05)
    fig.savefig(path, dpi=100)


def rounds_part(run: Run, folder: Path) -> str:
    lines = sorted(run.read("iterate"), key=lambda line: line["round"])
    if not lines:
        return ""
    rows = [round_row(line) for line in lines]
    (folder / F["rounds"]).write_text(csv_text(ROUND_COLUMNS, rows))
    rounds_png(folder / F["rounds_png"], rows)
    return (f"## Self-rewarding rounds\n\n[{F['rounds']}]({F['rounds']})\n\n"
            + md_table(ROUND_COLUMNS, [[_num(v) for v in row] for row in rows])
            + f"\n![per-round stability]({F['rounds_png']})\n")


# ---- comparison and notes ----------------------------------------------------------------------------------------
SCORE_STATS = ("mean_chars", "mean_tokens", "chars_change_pct", "truncated_rate", "distinct_1", "distinct_2",
               "refusal_rate")
WIN_KEYS = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "lc_ci_low", "lc_ci_high", "n", "grader", "circular")
VALUE_KEYS = ("mean_value", "diff_vs_base", "diff_ci_low", "diff_ci_high")  # scorers that grade answers alone


def score_rows(scores: dict) -> tuple[list[str], list[list]]:
    """compare-scores.json -> (header, one row per model and scorer; the base's rows carry no win rate). A scorer
    that grades each answer alone (the reward model) adds its mean value and the paired difference against the
    base (compare-scores.json "values")."""
    scorers = sorted({s for w in scores["win_rates"].values() for s in w}) or [""]
    header = ["model", "scorer", *SCORE_STATS, *WIN_KEYS, *VALUE_KEYS]
    rows = []
    for model, stats in scores["per_model"].items():
        for scorer in scorers:
            w = scores["win_rates"].get(model, {}).get(scorer) or {}
            rows.append([model, scorer, *(_num(stats.get(k)) for k in SCORE_STATS),
                         *(_num(w.get(k)) for k in WIN_KEYS), *_values(scores, scorer, model)])
    for pair, by_scorer in scores.get("head_to_head", {}).items():
        for scorer, w in by_scorer.items():
            rows.append([pair, scorer, *([None] * len(SCORE_STATS)), *(_num(w.get(k)) for k in WIN_KEYS),
                         *([None] * len(VALUE_KEYS))])
    return header, rows


def checks_rows(found: dict) -> tuple[list[str], list[list]]:
    """compare-scores.json's "checks" -> (header, one row per model and IFEval level: the accuracy with its interval,
    and for an adapter the paired difference against the base with its interval)."""
    header = ["model", "level", "accuracy", "ci_low", "ci_high", "n", "diff_vs_base", "diff_ci_low", "diff_ci_high",
              "better", "worse"]
    rows = []
    for model, levels in found["per_model"].items():
        for lv in found["levels"]:
            a, d = levels[lv], (found["vs_base"].get(model) or {}).get(lv) or {}
            rows.append([model, lv, *(_num(a.get(k)) for k in ("value", "ci_low", "ci_high", "n")),
                         *(_num(d.get(k)) for k in ("diff", "ci_low", "ci_high", "better", "worse"))])
    return header, rows


def _values(scores: dict, scorer: str, model: str) -> list:
    """[mean value, paired difference against the base, its interval] of one model under one scorer (or Nones)."""
    v = (scores.get("values") or {}).get(scorer) or {}
    d = (v.get("difference") or {}).get(model) or {}
    return [_num((v.get("mean") or {}).get(model)), _num(d.get("diff")), _num(d.get("ci_low")),
            _num(d.get("ci_high"))]


def compare_part(run: Run, folder: Path) -> str:
    try:
        wide = grid(run)
    except LabError:
        return ""
    (folder / F["grid"]).write_text(cards.markdown_table(wide))
    path = run.file("compare_scores")
    table = ""
    if path.exists():
        scores = json.loads(path.read_text(encoding="utf-8"))
        header, rows = score_rows(scores)
        (folder / F["scores"]).write_text(csv_text(header, rows))
        table = f"[{F['scores']}]({F['scores']})\n\n" + md_table(header, rows) + f"\n{LC_NOTE}\n"
        if scores.get("checks"):
            header, rows = checks_rows(scores["checks"])
            (folder / F["checks"]).write_text(csv_text(header, rows))
            table += (f"\n\n### Verifiable checks (IFEval's checkers; no model grades these)\n\n[{F['checks']}]"
                      f"({F['checks']})\n\n" + md_table(header, rows))
    return (f"## Comparison\n\n[{F['grid']}]({F['grid']}): {len(wide)} held-out instructions x "
            f"{len(wide.columns) - 2} models.\n\n{table}")


def notes_part(run: Run, folder: Path) -> str:
    notes = read_notes(run)
    if not notes["overall"] and not notes["instructions"]:
        return ""
    text = ["# Notes\n", notes["overall"] or "_(no overall notes)_", ""]
    text += [f"## {cards.code(iid)}\n\n{note}\n" for iid, note in notes["instructions"].items()]
    (folder / F["notes"]).write_text("\n".join(text))
    return f"## Notes\n\n[{F['notes']}]({F['notes']}): your notes ({len(notes['instructions'])} on instructions).\n"


# ---- the stage ---------------------------------------------------------------------------------------------------
def run(run: Run, cfg: ReportConfig, progress: Progress | None = None) -> dict:
    """The report stage: rewrite runs/<run>/report/ (format in the module docstring). -> {"run", "folder",
    "files": [names], "noise": labels}. Holds the run's "report" lock."""
    cfg.validate()
    if not run.read("samples") and not run.read("iterate"):
        raise LabError(f"Run '{run.name}' has nothing to report yet: sample first (the Sample tab, or `python -m lab "
                       f"sample --run {run.name}`).")
    with run.lock("report"), efficiency.measure(run, "report"):
        return _report_locked(run, cfg)


def _report_locked(run: Run, cfg: ReportConfig) -> dict:
    labels = noise.notes(run, "report")

    def build(folder: Path) -> None:
        sections = [judge_part(run, folder, cfg.examples), pairs_part(run), training_part(run, folder),
                    rounds_part(run, folder), compare_part(run, folder), notes_part(run, folder),
                    efficiency_part(run, folder)]
        files = sorted(p.name for p in folder.iterdir())
        head = [f"# Report: run {cards.code(run.name)}\n", f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by "
                "`python -m lab report` from the run's files. Numbers and figures only.\n",
                "## Labels\n\n" + (noise.markdown(labels) or "_(none)_") + "\n",
                "## Files\n\n" + "\n".join(f"- [{n}]({n})" for n in files) + "\n"]
        (folder / F["readme"]).write_text("\n".join(head + [s for s in sections if s]))

    folder = build_folder(run.file("report"), build)
    return {"run": run.name, "folder": str(folder), "files": sorted(p.name for p in folder.iterdir())}
