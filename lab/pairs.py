"""Preferences -> chosen / rejected pairs in TRL's conversational format, with the strategy and its statistics.

Two sources, read from the run:
  - judge:  lab.judge.pair_verdicts(judgments) -> one verdict per judged response pair. Only "a" / "b" count:
            ties, "inconsistent" (the two orders disagreed) and "invalid" are dropped. A human spot-check verdict
            (spotcheck.jsonl, lab.spotcheck) replaces the judge's for its pair unless use_spotcheck is off. A verdict
            has strength 1; a response's score is its net win rate (wins - losses) / pairs judged, in [-1, 1].
  - pairrm: rankings.jsonl (lab.rank): every pair of responses, preferred by the sign of PairRM's both-orders logit,
            strength = |logit|; a response's score is its PairRM score.
Strategies (per instruction, on the preferences whose strength reaches the margin):
  - best-vs-worst (default): one pair, the preferred pair whose winner scores highest and loser lowest (largest
    score gap; with PairRM that is best vs worst). Every pair is a direct comparison, never an inferred one.
  - all-pairs: every preferred pair.
Pairs whose two texts are identical are dropped (they carry no preference and only add noise to DPO).

pairs-<source>.jsonl, one line per pair (TRL's conversational preference format, plus "meta"):
    {"prompt":   [{"role": "user", "content": str}],
     "chosen":   [{"role": "assistant", "content": str}],
     "rejected": [{"role": "assistant", "content": str}],
     "meta": {"instruction_id": str, "chosen_index": int, "rejected_index": int,   # samples.jsonl sample_index
              "source": "judge" | "pairrm", "strategy": str, "by": "judge" | "human" | "pairrm",
              "strength": float, "score_chosen": float, "score_rejected": float,
              "single": true}     # only on a judge verdict that rests on one order (lab.judge.pair_verdicts)
The file is rewritten whole (atomically) on every build; the statistics go to run.json under "pairs-<source>".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lab.errors import LabError
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
    by: str  # "judge" | "human" | "pairrm"
    single: bool = False  # a judge verdict that rests on one order only (the other missing or invalid)


@dataclass
class Preferences:
    """Everything a source says about the responses of one instruction."""

    prefs: list[Preference]
    scores: dict[int, float]


# ---- sources ------------------------------------------------------------------------------------------------------
def judge_verdicts(run: Run) -> list[dict]:
    """lab.judge.pair_verdicts over judgments.jsonl (one verdict per judged pair, both orders folded)."""
    from lab.judge import pair_verdicts

    return pair_verdicts(run.read("judgments"))


def human_verdicts(run: Run) -> dict[tuple[str, int, int], str]:
    """(instruction_id, a, b) -> the last human verdict ("a" | "b" | "tie"); skips are not verdicts."""
    from lab.spotcheck import latest

    return {key: r["human"] for key, r in latest(run).items() if r["human"] != "skip"}


def judge_preferences(run: Run, use_spotcheck: bool = True) -> tuple[dict[str, Preferences], Counter]:
    """Judge verdicts (with human overrides) -> Preferences per instruction, and a count of what was dropped."""
    verdicts = {(v["instruction_id"], v["a"], v["b"]): (v["verdict"], "judge", bool(v.get("single")))
                for v in judge_verdicts(run)}
    if use_spotcheck:
        verdicts.update({k: (h, "human", False) for k, h in human_verdicts(run).items()})
    if not verdicts:
        raise LabError(f"Run '{run.name}' has no judgments: run `python -m lab judge --run {run.name}` first "
                       "(or build PairRM pairs with --source pairrm).")
    by_id: dict[str, list[Preference]] = {}
    dropped: Counter = Counter()
    for (iid, a, b), (verdict, by, single) in verdicts.items():
        if verdict not in ("a", "b"):
            dropped[verdict] += 1
            continue
        win, lose = (a, b) if verdict == "a" else (b, a)
        by_id.setdefault(iid, []).append(Preference(iid, win, lose, 1.0, by, single))
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


def pairrm_preferences(run: Run) -> tuple[dict[str, Preferences], Counter]:
    """rankings.jsonl -> Preferences per instruction: every pair, by the sign of PairRM's both-orders logit."""
    from lab.rank import latest_rankings, preference

    rankings = latest_rankings(run)
    if not rankings:
        raise LabError(f"Run '{run.name}' has no PairRM rankings: run `python -m lab rank --run {run.name}` first.")
    out, dropped = {}, Counter()
    for iid, rec in rankings.items():
        idx = rec["sample_indices"]
        prefs = []
        for n, a in enumerate(idx):
            for b in idx[n + 1:]:
                d = preference(rec, a, b)
                if d == 0:
                    dropped["tie"] += 1
                    continue
                win, lose = (a, b) if d > 0 else (b, a)
                prefs.append(Preference(iid, win, lose, abs(d), "pairrm"))
        out[iid] = Preferences(prefs, dict(zip(idx, rec["scores"])))
    return out, dropped


# ---- strategies ---------------------------------------------------------------------------------------------------
def best_vs_worst(p: Preferences) -> list[Preference]:
    """The direct comparison with the largest score gap between winner and loser; on equal gaps a human-checked
    verdict first, then the strongest, then the lowest sample indices (deterministic)."""
    if not p.prefs:
        return []
    gap = lambda x: (p.scores[x.winner] - p.scores[x.loser], x.by == "human", x.strength, -x.winner, -x.loser)  # noqa: E731
    return [max(p.prefs, key=gap)]


STRATEGIES = {"best-vs-worst": best_vs_worst, "all-pairs": lambda p: list(p.prefs)}


def select(prefs: dict[str, Preferences], strategy: str, margin: float, dropped: Counter) -> list[Preference]:
    """Apply the margin, then the strategy, instruction by instruction."""
    if strategy not in STRATEGIES:
        raise LabError(f"Unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}.")
    out = []
    for iid, p in prefs.items():
        kept = [x for x in p.prefs if x.strength >= margin]
        dropped["below_margin"] += len(p.prefs) - len(kept)
        out += STRATEGIES[strategy](Preferences(kept, p.scores))
    return out


# ---- records and statistics ---------------------------------------------------------------------------------------
def to_record(pref: Preference, group, source: str, strategy: str, scores: dict[int, float]) -> dict:
    """A Preference + the instruction's samples (lab.rank.Group) -> one pairs line."""
    text = dict(zip(group.indices, group.texts))
    return {"prompt": [{"role": "user", "content": group.prompt}],
            "chosen": [{"role": "assistant", "content": text[pref.winner]}],
            "rejected": [{"role": "assistant", "content": text[pref.loser]}],
            "meta": {"instruction_id": pref.instruction_id, "chosen_index": pref.winner,
                     "rejected_index": pref.loser, "source": source, "strategy": strategy, "by": pref.by,
                     "strength": round(pref.strength, 6), "score_chosen": round(scores[pref.winner], 6),
                     "score_rejected": round(scores[pref.loser], 6), **({"single": True} if pref.single else {})}}


def length_stats(records: list[dict]) -> dict:
    """Mean characters of chosen vs rejected, how often the longer answer was chosen, and a warning when length
    alone explains the preferences."""
    chosen = [len(r["chosen"][0]["content"]) for r in records]
    rejected = [len(r["rejected"][0]["content"]) for r in records]
    differ = [(c, r) for c, r in zip(chosen, rejected) if c != r]
    longer = sum(c > r for c, r in differ) / len(differ) if differ else None
    out = {"mean_chars_chosen": round(sum(chosen) / len(chosen), 1) if chosen else None,
           "mean_chars_rejected": round(sum(rejected) / len(rejected), 1) if rejected else None,
           "longer_chosen_rate": round(longer, 4) if longer is not None else None, "length_warning": None}
    if longer is not None and len(differ) >= LENGTH_WARN_MIN_PAIRS and max(longer, 1 - longer) >= LENGTH_WARN_RATE:
        side = "longer" if longer >= 0.5 else "shorter"
        out["length_warning"] = (
            f"The {side} answer is chosen in {max(longer, 1 - longer):.0%} of pairs: response length alone explains "
            "most of these preferences, and DPO will learn it. Check a few pairs in the spot-check, or compare with "
            "the other source's agreement.")
    return out


def to_records(chosen: list[Preference], prefs: dict[str, Preferences], groups: dict, cfg,
               dropped: Counter) -> list[dict]:
    """Selected preferences -> pairs lines; a preference whose responses are not in samples.jsonl (or whose two
    texts are identical) is dropped and counted."""
    records = []
    for pref in chosen:
        group = groups.get(pref.instruction_id)
        if group is None or not {pref.winner, pref.loser} <= set(group.indices):
            dropped["missing_response"] += 1
            continue
        rec = to_record(pref, group, cfg.source, cfg.strategy, prefs[pref.instruction_id].scores)
        if rec["chosen"][0]["content"] == rec["rejected"][0]["content"]:
            dropped["identical"] += 1
            continue
        records.append(rec)
    return records


def build_pairs(run: Run, cfg) -> dict:
    """Build pairs-<cfg.source>.jsonl (whole file, atomically) and return its statistics.
    Holds the run's "pairs-<source>" lock (the two sources may be built at once)."""
    cfg.validate()
    with run.lock(f"pairs-{cfg.source}"):
        return _pairs_locked(run, cfg)


def _pairs_locked(run: Run, cfg) -> dict:
    from lab.rank import sample_groups

    groups = {g.instruction_id: g for g in sample_groups(run)}
    if cfg.source == "judge":
        prefs, dropped = judge_preferences(run, cfg.use_spotcheck)
    else:
        prefs, dropped = pairrm_preferences(run)
    records = to_records(select(prefs, cfg.strategy, cfg.margin, dropped), prefs, groups, cfg, dropped)
    path = run.pairs_file(cfg.source)
    write_jsonl(path, records)
    stats = summarize(records, groups, cfg, dropped)
    if run.read("judgments") and run.read("rankings"):
        stats["judge_vs_pairrm"] = judge_vs_pairrm(run)
    run.record_stage(f"pairs-{cfg.source}", {**cfg.to_dict(), "stats": stats})
    return {"run": run.name, "file": str(path), **stats}


def summarize(records: list[dict], groups: dict, cfg, dropped: Counter) -> dict:
    """Per data set: pair count, instructions without a pair (and why), what was dropped, length balance."""
    with_pair = {r["meta"]["instruction_id"] for r in records}
    single = sum(len(g.indices) < 2 for g in groups.values())
    return {"source": cfg.source, "strategy": cfg.strategy, "margin": cfg.margin, "pairs": len(records),
            "instructions": len(groups), "instructions_without_pair": len(groups) - len(with_pair),
            "single_response": single, "human_overrides": sum(r["meta"]["by"] == "human" for r in records),
            "dropped": {k: v for k, v in sorted(dropped.items()) if v}, **length_stats(records)}


# ---- agreement ----------------------------------------------------------------------------------------------------
def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e): agreement beyond what the two raters' label rates give by chance.
    None when undefined (both raters always used the same single label)."""
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if p_e == 1 else round((p_o - p_e) / (1 - p_e), 4)


def agreement(labels: list[tuple[str, str]]) -> dict:
    """[(rater 1, rater 2)] -> {"n", "agree", "rate", "kappa"}."""
    x, y = [a for a, _ in labels], [b for _, b in labels]
    agree = sum(a == b for a, b in labels)
    return {"n": len(labels), "agree": agree, "rate": round(agree / len(labels), 4) if labels else None,
            "kappa": cohen_kappa(x, y)}


def judge_vs_pairrm(run: Run) -> dict:
    """Agreement between the judge's verdict and PairRM's preference on the same response pairs, over the pairs
    where the judge was decisive ("a" / "b"); how many judged pairs the judge left undecided is reported too."""
    from lab.rank import latest_rankings, preference

    rankings = latest_rankings(run)
    labels, undecided = [], Counter()
    for v in judge_verdicts(run):
        rec = rankings.get(v["instruction_id"])
        if rec is None or not {v["a"], v["b"]} <= set(rec["sample_indices"]):
            continue
        if v["verdict"] not in ("a", "b"):
            undecided[v["verdict"]] += 1
            continue
        labels.append((v["verdict"], "a" if preference(rec, v["a"], v["b"]) > 0 else "b"))
    return {**agreement(labels), "judge_undecided": dict(undecided)}
