"""Preference pairs: from a source's preferences, by a strategy, to chosen / rejected pairs in TRL's conversational
format; and the one reader that checks a pairs file before training.

Sources (SOURCES), read from the run:
  - judge:  lab.records.verdicts.run_verdicts(run) -> one verdict per judged response pair (both orders agreeing, or
            position-calibrated where they disagree). Only "a" / "b" count: ties, "inconsistent" (the two orders
            disagreed and no grades could settle it) and "invalid" are dropped. A human spot-check verdict
            (spotcheck.jsonl, lab.spotcheck) replaces the judge's for its pair unless use_spotcheck is off. A verdict
            has strength 1; a response's score is its net win rate (wins - losses) / pairs judged, in [-1, 1].
  - pairrm: rankings.jsonl (lab.rank), PairRM's lines: every pair of responses, preferred by the sign of PairRM's
            both-orders logit, strength = |logit|; a response's score is its PairRM score.
  - reward: rankings.jsonl, a reward model's lines (lab.reward): every pair of responses, preferred by the higher
            reward, strength = the reward difference; a response's score is its reward (best vs worst: the highest
            against the lowest reward).
  - self:   scores.jsonl (lab.score): every pair of answers with different mean 5-point scores, strength = the gap;
            a response's score is its mean score (self-rewarding DPO: best vs worst is the paper's pair).
  - checks: checks.jsonl (lab.checks, rebuilt from the samples): on instructions that carry IFEval checks, every
            pair of answers whose check scores differ (a strict pass 1, a loose-only pass 0.5, per check, averaged),
            strength = the gap; equal scores are ties, dropped and counted. A human spot-check verdict replaces the
            checks' for its pair, as for the judge, unless use_spotcheck is off.
Strategies (STRATEGIES; per instruction, on the preferences whose strength reaches the margin):
  - best-vs-worst (default): one pair, the preferred pair whose winner scores highest and loser lowest (largest
    score gap; with PairRM that is best vs worst). Every pair is a direct comparison, never an inferred one.
  - all-pairs: every preferred pair.
Pairs whose two texts are identical are dropped (they carry no preference and only add noise to DPO).
To add a source or a strategy: one entry in its registry below (and a line in docs/pairs.md); the settings'
choices and the app's menus follow.

pairs-<source>.jsonl's format, `pair_record` and `load_pairs` (which checks a user's pairs file) are
lab/records/pairs.py.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import checks, efficiency, graders, spotcheck
from lab.config import Settings, opt
from lab.errors import LabError
from lab.progress import Progress
from lab.rank import RANKERS, REWARD_EXAMPLE
from lab.records.pairs import answer_lengths, pair_record
from lab.records.rankings import latest_rankings, preference
from lab.records.samples import Group, groups
from lab.records.scores import mean_scores
from lab.records.verdicts import run_verdicts
from lab.stats import agreement, length_balance
from lab.store import Run, write_jsonl

LENGTH_WARN_RATE = 0.8  # when the longer (or the shorter) answer wins this often, length alone explains the data
LENGTH_WARN_MIN_PAIRS = 5
@dataclass(frozen=True)
class Preference:
    """One direct comparison: response `winner` beat `loser` (sample indices) for an instruction."""

    instruction_id: str
    winner: int
    loser: int
    strength: float
    by: str  # "judge" | "human" | "pairrm" | "reward" | "self" | "checks" (a lab.rank.RANKERS kind or a source)
    single: bool = False  # a judge verdict that rests on one order only (the other missing or invalid)
    rule: str = ""  # judge verdicts: the lab.records.verdicts.RULES key that decided it ("human" for a spot-check)


@dataclass
class Preferences:
    """Everything a source says about the responses of one instruction."""

    prefs: list[Preference]
    scores: dict[int, float]


# ---- sources ------------------------------------------------------------------------------------------------------
def human_verdicts(run: Run) -> dict[tuple[str, int, int], str]:
    """(instruction_id, a, b) -> the last human verdict ("a" | "b" | "tie"); skips are not verdicts."""
    return {key: r["human"] for key, r in spotcheck.latest(run).items() if r["human"] != "skip"}


def judge_preferences(run: Run, cfg: "PairsConfig") -> tuple[dict[str, Preferences], Counter]:
    """Judge verdicts (with human overrides) -> Preferences per instruction, and a count of what was dropped."""
    verdicts = {(v["instruction_id"], v["a"], v["b"]): (v["verdict"], "judge", bool(v.get("single")), v["rule"])
                for v in run_verdicts(run)}
    if cfg.use_spotcheck:
        verdicts.update({k: (h, "human", False, "human") for k, h in human_verdicts(run).items()})
    if not verdicts:
        raise LabError(f"Run '{run.name}' has no judgments: run the judge first (`python -m lab judge --run "
                       f"{run.name}`), or build PairRM pairs instead.",
                       ui=f"Run '{run.name}' has no judgments: judge first in the Judge tab, or pick PairRM as the "
                       "source.")
    by_id: dict[str, list[Preference]] = {}
    dropped: Counter = Counter()
    for (iid, a, b), (verdict, by, single, rule) in verdicts.items():
        if verdict not in ("a", "b"):
            dropped[verdict] += 1
            continue
        win, lose = (a, b) if verdict == "a" else (b, a)
        by_id.setdefault(iid, []).append(Preference(iid, win, lose, 1.0, by, single, rule))
    return {iid: Preferences(p, net_win_rates(p)) for iid, p in by_id.items()}, dropped


def net_win_rates(prefs: list[Preference]) -> dict[int, float]:
    """(wins - losses) / comparisons, per response."""
    won, seen = Counter(), Counter()
    for p in prefs:
        won[p.winner] += 1
        won[p.loser] -= 1
        seen[p.winner] += 1
        seen[p.loser] += 1
    return {i: won[i] / seen[i] for i in seen}


def ranker_preferences(kind: str) -> Callable[[Run, "PairsConfig"], tuple[dict[str, Preferences], Counter]]:
    """The source of a lab.rank.RANKERS kind: its rankings.jsonl lines -> Preferences per instruction, every pair
    by the sign of lab.records.rankings.preference (PairRM's both-orders logit, a reward difference)."""
    def preferences(run: Run, cfg: "PairsConfig") -> tuple[dict[str, Preferences], Counter]:
        rankings = latest_rankings(run, kind)
        if not rankings:
            what = RANKERS[kind].label
            raise LabError(f"Run '{run.name}' has no {what} rankings: rank first (`python -m lab rank --run "
                           f"{run.name} --ranker {RANKER_HINT[kind]}`).", ui=f"Run '{run.name}' has no {what} "
                           "rankings: press Rank first with such a ranker, or pick another source.")
        out, dropped = {}, Counter()
        for iid, rec in rankings.items():
            prefs = every_pair(rec, kind, dropped)
            out[iid] = Preferences(prefs, dict(zip(rec["sample_indices"], rec["scores"])))
        return out, dropped
    return preferences


RANKER_HINT = {"pairrm": "llm-blender/PairRM", "reward": REWARD_EXAMPLE}  # what the "rank first" message suggests


def every_pair(rec: dict, by: str, dropped: Counter) -> list[Preference]:
    """Every pair of a rankings record's responses, the preferred one first; ties are counted in `dropped`."""
    idx, prefs = rec["sample_indices"], []
    for n, a in enumerate(idx):
        for b in idx[n + 1:]:
            d = preference(rec, a, b)
            if d == 0:
                dropped["tie"] += 1
                continue
            win, lose = (a, b) if d > 0 else (b, a)
            prefs.append(Preference(rec["instruction_id"], win, lose, abs(d), by))
    return prefs


def self_preferences(run: Run, cfg: "PairsConfig") -> tuple[dict[str, Preferences], Counter]:
    """scores.jsonl (train set) -> Preferences per instruction: every pair of answers whose mean scores differ.
    Instructions with fewer than two scored answers are dropped ("unscored"), equal means count as ties."""
    means = mean_scores(run.read("scores"))
    if not means:
        raise LabError(f"Run '{run.name}' has no self-rewarding scores: score the answers first (`python -m lab "
                       f"score --run {run.name}`).", ui=f"Run '{run.name}' has no self-rewarding scores: the Iterate "
                       "tab scores its rounds' answers itself; pick the judge or PairRM as the source here.")
    out, dropped = {}, Counter()
    for g in groups(run):
        scored = [i for i in g.indices if (g.instruction_id, i) in means]
        if len(scored) < 2:
            dropped["unscored"] += 1
            continue
        scores = {i: means[(g.instruction_id, i)] for i in scored}
        prefs = []
        for n, a in enumerate(scored):
            for b in scored[n + 1:]:
                gap = scores[a] - scores[b]
                if gap == 0:
                    dropped["tie"] += 1
                    continue
                win, lose = (a, b) if gap > 0 else (b, a)
                prefs.append(Preference(g.instruction_id, win, lose, abs(gap), "self"))
        out[g.instruction_id] = Preferences(prefs, scores)
    return out, dropped


def checks_preferences(run: Run, cfg: "PairsConfig") -> tuple[dict[str, Preferences], Counter]:
    """IFEval checks (lab.checks.check_run, with human overrides) -> Preferences per instruction: every pair of
    answers whose check scores differ; equal scores are ties, dropped and counted."""
    scores: dict[str, dict[int, float]] = {}
    for rec in checks.check_run(run):
        scores.setdefault(rec["instruction_id"], {})[rec["sample_index"]] = rec["score"]
    human = human_verdicts(run) if cfg.use_spotcheck else {}
    out, dropped = {}, Counter()
    for iid, by_index in scores.items():
        idx, prefs = sorted(by_index), []
        for n, a in enumerate(idx):
            for b in idx[n + 1:]:
                pref = _checked_pair(iid, a, b, by_index, human.get((iid, a, b)))
                if isinstance(pref, str):
                    dropped[pref] += 1
                else:
                    prefs.append(pref)
        out[iid] = Preferences(prefs, by_index)
    return out, dropped


def _checked_pair(iid: str, a: int, b: int, scores: dict[int, float], human: str | None) -> Preference | str:
    """The preference between answers a < b: a person's verdict where there is one, else the checks' (a str: why
    there is none, as counted in "dropped")."""
    if human in ("a", "b"):
        win, lose = (a, b) if human == "a" else (b, a)
        return Preference(iid, win, lose, 1.0, "human", rule="human")
    if human == "tie":
        return "human_tie"
    gap = scores[a] - scores[b]
    if gap == 0:
        return "tie"
    win, lose = (a, b) if gap > 0 else (b, a)
    return Preference(iid, win, lose, abs(gap), "checks")


@dataclass(frozen=True)
class Source:
    label: str  # in the app
    preferences: Callable[[Run, "PairsConfig"], tuple[dict[str, Preferences], Counter]]
    stage: str  # the stage whose records hold its preferences: its grader's noise labels are the pairs' (lab.noise)
    who: str  # its grader, in words for the page ("No preference pairs: ... from the judge")
    no_pairs_fix: str  # what to do about an empty data set, in words for the page
    grader: Callable[[Run], dict | None]  # who made its preferences, from run.json (lab.graders: provenance labels)


SOURCES: dict[str, Source] = {
    "judge": Source("LLM judge (with your spot-check verdicts)", judge_preferences, "judge", "the judge",
                    "Decide some pairs yourself in the Spot-check tab (every verdict you give becomes a pair at once), "
                    "or judge again with an API judge (Groq, or an OpenAI-compatible endpoint) in the Judge tab.",
                    graders.judge_grader),
    "pairrm": Source("PairRM", ranker_preferences("pairrm"), "rank", "PairRM",
                     "Rank with the real PairRM (llm-blender/PairRM) rather than the tiny random one, or sample more "
                     "varied responses (a higher temperature, more responses per instruction).",
                     graders.ranker_grader("pairrm")),
    "reward": Source("Reward model", ranker_preferences("reward"), "rank", "the reward model",
                     f"Rank with a real reward model ({REWARD_EXAMPLE}) rather than the tiny random one, or sample "
                     "more varied responses (a higher temperature, more responses per instruction).",
                     graders.ranker_grader("reward")),
    "self": Source("Self-rewarding scores", self_preferences, "score", "the self-scores",
                   "Sample more answers per instruction or at a higher temperature, or let an API judge score them.",
                   graders.self_grader),
    # IFEval's checkers run on the samples: no grader of their own, the sampled model's labels only
    "checks": Source("Verifiable checks (IFEval, with your spot-check verdicts)", checks_preferences, "sample",
                     "the checks", "Sample more answers per instruction or at a higher temperature, so that some "
                     "pass a check and some fail it.", graders.checks_grader),
}


# ---- strategies ---------------------------------------------------------------------------------------------------
def best_vs_worst(p: Preferences) -> list[Preference]:
    """The direct comparison with the largest score gap between winner and loser; on equal gaps a human-checked
    verdict first, then the strongest, then the lowest sample indices (deterministic)."""
    if not p.prefs:
        return []
    gap = lambda x: (p.scores[x.winner] - p.scores[x.loser], x.by == "human", x.strength, -x.winner, -x.loser)  # noqa: E731
    return [max(p.prefs, key=gap)]


def all_pairs(p: Preferences) -> list[Preference]:
    return list(p.prefs)


@dataclass(frozen=True)
class Strategy:
    label: str  # in the app
    pick: Callable[[Preferences], list[Preference]]


STRATEGIES: dict[str, Strategy] = {
    "best-vs-worst": Strategy("Best vs worst: one pair per instruction", best_vs_worst),
    "all-pairs": Strategy("All pairs above the margin", all_pairs),
}


@dataclass
class PairsConfig(Settings):
    source: str = opt("judge", "where preferences come from: " + "; ".join(f"{k}: {v.label}" for k, v in
                      SOURCES.items()), choices=tuple(SOURCES), label="Source")
    strategy: str = opt("best-vs-worst", "which preferences whose strength reaches --margin become pairs: " +
                        "; ".join(f"{k}: {v.label}" for k, v in STRATEGIES.items()), choices=tuple(STRATEGIES),
                        label="Strategy")
    margin: float = opt(0.0, "smallest preference strength kept: PairRM's both-orders logit, the reward difference, "
                        "the self-score gap; a "
                        "judge verdict counts 1 (so margins up to 1 keep every verdict)", label="Margin")
    use_spotcheck: bool = opt(True, "let human spot-check verdicts override the judge's or the checks' (judge and "
                              "checks pairs)")

    def validate(self) -> "PairsConfig":
        if self.margin < 0:
            raise LabError(f"--margin must be >= 0 (got {self.margin}): it is the smallest preference kept.")
        return self


def select(prefs: dict[str, Preferences], strategy: str, margin: float, dropped: Counter) -> list[Preference]:
    """Apply the margin, then the strategy, instruction by instruction."""
    out = []
    for p in prefs.values():
        kept = [x for x in p.prefs if x.strength >= margin]
        dropped["below_margin"] += len(p.prefs) - len(kept)
        out += STRATEGIES[strategy].pick(Preferences(kept, p.scores))
    return out


# ---- records and statistics ---------------------------------------------------------------------------------------
def to_record(pref: Preference, group: Group, source: str, strategy: str, scores: dict[int, float]) -> dict:
    """A Preference + the instruction's samples -> one pairs line."""
    text = dict(zip(group.indices, group.texts))
    return pair_record(group.prompt, text[pref.winner], text[pref.loser], {
        "instruction_id": pref.instruction_id, "chosen_index": pref.winner, "rejected_index": pref.loser,
        "source": source, "strategy": strategy, "by": pref.by, "strength": round(pref.strength, 6),
        "score_chosen": round(scores[pref.winner], 6), "score_rejected": round(scores[pref.loser], 6),
        **({"rule": pref.rule} if pref.rule else {}), **({"single": True} if pref.single else {})})


def length_stats(records: list[dict]) -> dict:
    """Mean characters of chosen vs rejected, how often the longer answer was chosen, and a warning when length
    alone explains the preferences."""
    bal = length_balance(*answer_lengths(records))
    longer = bal["longer_chosen_rate"]
    differ = sum(c != r for c, r in zip(*answer_lengths(records)))
    out = {"mean_chars_chosen": _round(bal["chosen_chars_mean"]), "mean_chars_rejected":
           _round(bal["rejected_chars_mean"]), "longer_chosen_rate": longer, "length_warning": None}
    if longer is not None and differ >= LENGTH_WARN_MIN_PAIRS and max(longer, 1 - longer) >= LENGTH_WARN_RATE:
        side = "longer" if longer >= 0.5 else "shorter"
        out["length_warning"] = (
            f"The {side} answer is chosen in {max(longer, 1 - longer):.0%} of pairs: response length alone explains "
            "most of these preferences, and DPO will learn it. Check a few pairs in the spot-check, or compare with "
            "the other source's agreement.")
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def to_records(chosen: list[Preference], prefs: dict[str, Preferences], by_id: dict[str, Group],
               cfg: "PairsConfig", dropped: Counter) -> list[dict]:
    """Selected preferences -> pairs lines; a preference whose responses are not in samples.jsonl (or whose two
    texts are identical) is dropped and counted."""
    records = []
    for pref in chosen:
        group = by_id.get(pref.instruction_id)
        if group is None or not {pref.winner, pref.loser} <= set(group.indices):
            dropped["missing_response"] += 1
            continue
        rec = to_record(pref, group, cfg.source, cfg.strategy, prefs[pref.instruction_id].scores)
        if rec["chosen"][0]["content"] == rec["rejected"][0]["content"]:
            dropped["identical"] += 1
            continue
        records.append(rec)
    return records


def build_pairs(run: Run, cfg: PairsConfig) -> dict:
    """Build pairs-<cfg.source>.jsonl (whole file, atomically) and return its statistics.
    Holds the run's "pairs-<source>" lock (the sources may be built at once)."""
    cfg.validate()
    with run.lock(f"pairs-{cfg.source}"), efficiency.measure(run, "pairs", cfg.source):
        return _pairs_locked(run, cfg)


def _pairs_locked(run: Run, cfg: PairsConfig) -> dict:
    by_id = {g.instruction_id: g for g in groups(run)}
    prefs, dropped = SOURCES[cfg.source].preferences(run, cfg)
    records = to_records(select(prefs, cfg.strategy, cfg.margin, dropped), prefs, by_id, cfg, dropped)
    path = run.pairs_file(cfg.source)
    write_jsonl(path, records)
    stats = summarize(records, by_id, cfg, dropped)
    if run.read("judgments"):
        stats.update({f"judge_vs_{kind}": judge_vs_ranker(run, kind) for kind in RANKERS
                      if latest_rankings(run, kind)})
    run.record_stage(entry_name(cfg.to_dict()), {**cfg.to_dict(), "stats": stats})
    return {"run": run.name, "file": str(path), **stats, "warnings": [stats["no_pairs"]] if stats["no_pairs"] else []}


def summarize(records: list[dict], by_id: dict[str, Group], cfg: PairsConfig, dropped: Counter) -> dict:
    """Per data set: pair count, instructions without a pair (and why), what was dropped, length balance."""
    with_pair = {r["meta"]["instruction_id"] for r in records}
    single = sum(len(g.indices) < 2 for g in by_id.values())
    return {"source": cfg.source, "strategy": cfg.strategy, "margin": cfg.margin, "pairs": len(records),
            "instructions": len(by_id), "instructions_without_pair": len(by_id) - len(with_pair),
            "single_response": single, "human_overrides": sum(r["meta"]["by"] == "human" for r in records),
            "dropped": {k: v for k, v in sorted(dropped.items()) if v}, **length_stats(records),
            "no_pairs": None if records else why_no_pairs(cfg.source, len(by_id), dropped)}


def _fix(source: str) -> str:
    return SOURCES[source].no_pairs_fix if source in SOURCES else ""


def why_no_pairs(source: str, instructions: int, dropped: Counter) -> str:
    """Why a pairs build kept nothing, and what to do, in words for the page (no command-line flags)."""
    words = {"tie": "ties", "inconsistent": "undecided disagreements between the two orders", "invalid":
             "unreadable verdicts", "below_margin": "preferences below the margin", "identical": "identical answers",
             "unscored": "instructions without two scored answers", "missing_response": "answers no longer sampled",
             "human_tie": "pairs you called a tie"}
    seen = ", ".join(f"{n} {words.get(k, k)}" for k, n in sorted(dropped.items()) if n)
    margin = " Or lower the margin." if dropped.get("below_margin") else ""
    entry = SOURCES.get(source)
    return (f"No preference pairs: none of the {instructions} instructions has a decided preference from "
            f"{entry.who if entry else source}"
            + (f" ({seen})" if seen else "") + ". "
            + (entry.no_pairs_fix if entry else "") + margin)


def rebuild(run: Run, source: str) -> dict:
    """Rebuild pairs-<source>.jsonl with the settings it was last built with (defaults if never built)."""
    last = run.stage_settings(f"pairs-{source}") or {}
    fields = {k: v for k, v in last.items() if k in PairsConfig.__dataclass_fields__}
    return build_pairs(run, PairsConfig(**{**fields, "source": source}))


def record_spotcheck(run: Run, instruction_id: str, a: int, b: int, human: str) -> dict:
    """Save one human spot-check decision (lab.spotcheck.record) and rebuild at once the pairs it overrides: the
    judge's where the pair was judged, the checks' where they decided it.
    -> {"saved": line, "pairs": the first rebuild's statistics, "rebuilt": {source: statistics}}."""
    saved = spotcheck.record(run, instruction_id, a, b, human)
    sources = [s for s, on in (("judge", saved["judge"] is not None), ("checks", "checks" in saved)) if on]
    rebuilt = {s: rebuild(run, s) for s in sources}
    return {"saved": saved, "pairs": rebuilt[sources[0]], "rebuilt": rebuilt}


# ---- agreement ----------------------------------------------------------------------------------------------------
def judge_vs_ranker(run: Run, kind: str = "pairrm") -> dict:
    """Agreement between the judge's verdict and a ranker's preference (a lab.rank.RANKERS kind: PairRM, a reward
    model) on the same response pairs, over the pairs where the judge was decisive ("a" / "b"); how many judged
    pairs the judge left undecided is reported too."""
    rankings = latest_rankings(run, kind)
    labels, undecided = [], Counter()
    for v in run_verdicts(run):
        rec = rankings.get(v["instruction_id"])
        if rec is None or not {v["a"], v["b"]} <= set(rec["sample_indices"]):
            continue
        if v["verdict"] not in ("a", "b"):
            undecided[v["verdict"]] += 1
            continue
        labels.append((v["verdict"], "a" if preference(rec, v["a"], v["b"]) > 0 else "b"))
    return {**agreement(labels), "judge_undecided": dict(undecided)}


# ---- reading a pairs file for training -----------------------------------------------------------------------------
# Chat-template markup, by the template family it comes from: such text in a pair was rendered for some model
def resolve_pairs(run: Run, pairs: str | os.PathLike) -> Path:
    """A SOURCES name ('judge', 'pairrm', 'reward', ...) -> run.pairs_file(name); anything else is a file path."""
    raw = str(pairs).strip()
    path = Path(raw).expanduser()
    if not raw:
        raise LabError(f"Give --pairs: a source name ({', '.join(SOURCES)}) or a pairs .jsonl file.")
    if path.is_file():
        return path.resolve()
    if "/" not in raw and not raw.endswith(".jsonl"):
        source = run.pairs_file(raw)
        if source.is_file() and not source.read_text(encoding="utf-8").strip():
            stats = (run.stage_settings(f"pairs-{raw}") or {}).get("stats") or {}
            raise LabError(stats.get("no_pairs") or f"{source.name} holds no pairs. {_fix(raw)}")
        if source.is_file():
            return source
        raise LabError(f"No pairs for source {raw!r} in run {run.name} ({source.name} is missing): build them "
                       f"first (PairRM tab: Build pairs; or `python -m lab pairs --run {run.name} --source {raw}`), "
                       "or pass a file.")
    raise LabError(f"Pairs file {path} does not exist: give a source name ({', '.join(SOURCES)}) or an existing "
                   ".jsonl file.")


def entry_name(s: dict) -> str:
    """The pairs stage's run.json entry for settings `s`: one per source ("pairs-judge")."""
    return f"pairs-{s['source']}"


def run(run: Run, cfg: PairsConfig, progress: Progress | None = None) -> dict:
    """The pairs stage in the stages' shape (it reads records only: nothing to show progress of)."""
    return build_pairs(run, cfg)
