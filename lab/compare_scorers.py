"""A comparison's scores: text statistics per model, and the compare scorers (SCORERS), each a registry entry that
turns the comparison's completions into per-instruction outcomes of one model against another, from which `score`
computes the win rates of compare-scores.json (its format: lab/compare.py's docstring; compare.jsonl's:
lab/records/comparisons.py).

Scorers: "pairrm" (PairRM's both-orders preference), "judge" (the LLM judge, every pair of models in both orders,
position-calibrated where they disagree (lab.records.verdicts)), "score" (mean 5-point scores, lab.score), "reward"
(a reward model's reward per answer, lab.reward) and "checks" (IFEval's checks of verifiable instructions,
lab.checks).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from lab import checks, graders, rank
from lab.adapters import BASE
from lab.generation import Completion
from lab.judge import JudgeConfig, judge_run
from lab.progress import Progress
from lab.records.comparisons import current
from lab.records.rankings import latest_rankings, preference
from lab.records.samples import sample_record
from lab.records.scores import mean_scores
from lab.records.verdicts import run_verdicts
from lab.score import Scorer, api_backend, model_scorer, score_rows
from lab.stats import LOSS, TIE, WIN, lc_win_rate, mean_ci, outcome, paired_difference, win_rate
from lab.stats import mean as stat_mean
from lab.store import Run, atomic_write_json, write_jsonl

if TYPE_CHECKING:
    from lab.compare import CompareConfig

REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i am sorry,? but|i can(?:'|no)t (?:help|assist|provide|do|answer|comply|fulfil)|"
    r"i (?:am|'m) (?:not able|unable) to|i won'?t be able to|as an ai\b|as a language model|i must decline|"
    r"i cannot (?:help|assist|provide|comply)|i can'?t (?:help|assist|provide|comply))",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 300  # a refusal shows in the opening of an answer; later "I can't stress enough" is not one


# ---- scores ------------------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over every text of one model (0 if none)."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text[:REFUSAL_WINDOW]))


def text_stats(records: list[dict], base_chars: float | None) -> dict:
    """Length, its change against the base, distinct-1/2 and refusal rate of one model's completions."""
    texts = [r["text"] for r in records]
    chars = sum(map(len, texts)) / max(len(texts), 1)
    change = None if base_chars is None else chars - base_chars
    return {"n": len(texts), "mean_chars": chars, "mean_tokens": sum(r["completion_tokens"] for r in records) /
            max(len(texts), 1), "chars_change": change,
            "chars_change_pct": None if not base_chars or change is None else 100 * change / base_chars,
            "truncated_rate": sum(r["finish_reason"] == "length" for r in records) / max(len(texts), 1),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "refusal_rate": sum(map(is_refusal, texts)) / max(len(texts), 1)}


def by_model(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{model: {instruction_id: record}}"""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        out.setdefault(r["model"], {})[r["instruction_id"]] = r
    return out


Outcome = Callable[[str, str, str], "float | None"]  # (instruction id, model a, model b) -> a's outcome against b


@dataclass(frozen=True)
class CompareScorer:
    label: str  # in the app and the tables
    enabled: Callable[[CompareConfig, dict], bool]  # (cfg, the comparison's settings)
    outcomes: Callable[..., Outcome]  # (run, cfg, table, st, progress, api_key) -> Outcome
    grader: Callable[[CompareConfig, dict], dict]  # (cfg, st) -> lab.graders grader dict: who made the numbers
    summary: Callable[..., dict] | None = None  # (table, st, cfg) -> more numbers, under the scorer's name


def score(run: Run, cfg: CompareConfig, progress: Progress | None = None, api_key: str | None = None,
          settings: dict | None = None) -> dict:
    """Compute every score of a comparison (`settings` as compare_run records them; default: the latest in
    run.json) and write compare-scores.json: text statistics per model, and for each scorer switched on the win
    rate of every adapter against the base and of every adapter against each adapter before it."""
    records, st = current(run, settings)
    table = by_model(records)
    flagged = sorted(i for i in st.get("duplicates_found", {}) if i in set(st["instruction_ids"]))
    base = list(table.get(BASE, {}).values())
    base_chars = text_stats(base, None)["mean_chars"] if base else None
    per_model = {m: text_stats(list(table.get(m, {}).values()), None if m == BASE else base_chars)
                 for m in st["models"]}
    adapters = [m for m in st["models"] if m != BASE]
    wins, h2h, per_instruction, more, values = {m: {} for m in adapters}, {}, {m: {} for m in adapters}, {}, {}
    for name, scorer in SCORERS.items():
        if not scorer.enabled(cfg, st):
            continue
        of, grader = scorer.outcomes(run, cfg, table, st, progress, api_key), scorer.grader(cfg, st)
        if isinstance(of, Values):
            values[name] = of.summary(st, adapters, cfg)
        for n, m in enumerate(adapters):
            per_instruction[m][name] = outcomes_of(of, st, m, BASE)
            wins[m][name] = {**rate_of(per_instruction[m][name], cfg, table, m, BASE),
                             **graders.provenance(grader, graders.trained_on(run, st, m))}
            for earlier in adapters[:n]:
                h2h.setdefault(f"{m} vs {earlier}", {})[name] = rate_of(outcomes_of(of, st, m, earlier), cfg,
                                                                        table, m, earlier)
        if scorer.summary:
            more[name] = scorer.summary(table, st, cfg)
    scores = {"key": st["key"], "models": st["models"], "n_instructions": len(st["instruction_ids"]),
              "flagged": flagged, "confidence": cfg.confidence, "bootstrap": cfg.bootstrap,
              "per_model": per_model, "win_rates": wins, "outcomes": per_instruction, "head_to_head": h2h,
              "values": values, **more, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(run.file("compare_scores"), scores)
    return scores


def outcomes_of(of: Outcome, st: dict, a: str, b: str) -> dict[str, float | None]:
    """{instruction id: model a's outcome against model b} over the comparison's instructions."""
    return {iid: of(iid, a, b) for iid in st["instruction_ids"]}


def rate_of(got: dict[str, float | None], cfg: CompareConfig, table: dict, a: str, b: str) -> dict:
    """The win rate of model a against model b over per-instruction outcomes (unreadable ones, None, left out), and
    beside it the length-controlled win rate (lab.stats.lc_win_rate: the win rate at equal answer length)."""
    kept = [(g, iid) for iid, g in got.items() if g is not None]
    gaps = [len(table[a][iid]["text"]) - len(table[b][iid]["text"]) for _, iid in kept]
    outcomes = [g for g, _ in kept]
    return {**win_rate(outcomes, cfg.bootstrap, cfg.confidence, cfg.seed),
            **lc_win_rate(outcomes, gaps, cfg.bootstrap, cfg.confidence, cfg.seed)}


def read_scores(run: Run) -> dict | None:
    """compare-scores.json if it belongs to the run's latest comparison (the same key and models), else None."""
    path, st = run.file("compare_scores"), run.stage_settings("compare")
    if not path.exists() or not st:
        return None
    scores = json.loads(path.read_text(encoding="utf-8"))
    return scores if scores.get("key") == st.get("key") and scores.get("models") == st.get("models") else None


def scoring_run(run: Run, table: dict, st: dict) -> tuple[Run, dict[str, int]]:
    """The comparison as a nested run that lab.rank and lab.judge read like any other: one instruction per held-out
    instruction, sample 0 the base's completion, sample i the i-th adapter's. One folder per comparison key and
    model list, so sample indices always mean the same models (and the judge's cache still skips repeated calls).
    Returns (nested run, {model name: sample index})."""
    tag = hashlib.sha1(json.dumps([st["key"], st["models"]]).encode()).hexdigest()[:10]
    nested = Run(run.file("compare_scoring") / tag)
    index = {m: i for i, m in enumerate(st["models"])}
    samples = []
    for iid in st["instruction_ids"]:
        seen: dict[str, int] = {}
        for m, i in index.items():
            r = table.get(m, {}).get(iid)
            if r is not None:
                first = seen.setdefault(r["text"], i)
                samples.append(sample_record(iid, i, r["prompt"], _completion(r), m, r["adapter_path"] or
                                             r["base_path"], r["decoding"], first if first != i else None))
    write_jsonl(nested.file("samples"), samples)
    return nested, index


def _completion(record: dict) -> Completion:
    return Completion(record["text"], record["prompt_tokens"], record["completion_tokens"], record["finish_reason"])


def pairrm_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Outcome:
    """PairRM's both-orders preference between two models' completions (rankings: lab.rank records in the nested
    scoring run; a rerun with the same texts ranks nothing again)."""
    nested, index = scoring_run(run, table, st)
    rank.run(nested, rank.RankConfig(ranker=cfg.pairrm, device=cfg.device, dtype=cfg.dtype), progress)
    records = latest_rankings(nested, ranker=cfg.pairrm)

    def of(iid: str, a: str, b: str) -> float | None:
        rec, i, j = records.get(iid), index[a], index[b]
        if rec is None or not {i, j} <= set(rec["sample_indices"]):
            return None
        return outcome(preference(rec, i, j), 0.0)
    return of


@dataclass
class Values:
    """The outcomes of a scorer that grades each answer alone: {model: {instruction id: value}}; the higher value
    wins (an Outcome), and score() also reports the mean per model and the paired difference against the base."""

    values: dict[str, dict[str, float]]

    def __call__(self, iid: str, a: str, b: str) -> float | None:
        va, vb = self.values.get(a, {}).get(iid), self.values.get(b, {}).get(iid)
        return None if va is None or vb is None else outcome(va, vb)

    def summary(self, st: dict, adapters: list[str], cfg: CompareConfig) -> dict:
        """{"mean": {model: mean value}, "difference": {adapter: lab.stats.paired_difference against the base}}."""
        means = {m: stat_mean(self.values.get(m, {}).values()) for m in st["models"]}
        base = self.values.get(BASE, {})
        both = {m: [iid for iid in self.values.get(m, {}) if iid in base] for m in adapters}
        return {"mean": means, "difference": {
            m: paired_difference([self.values[m][i] for i in ids], [base[i] for i in ids], cfg.bootstrap,
                                 cfg.confidence, cfg.seed) for m, ids in both.items()}}


def reward_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Values:
    """A reward model's reward for every model's answer (lab.rank records of the nested scoring run, kind
    "reward"; a rerun with the same texts scores nothing again): the higher reward wins."""
    nested, index = scoring_run(run, table, st)
    rank.run(nested, rank.RankConfig(ranker=cfg.reward, device=cfg.device, dtype=cfg.dtype), progress)
    values: dict[str, dict[str, float]] = {}
    for iid, rec in latest_rankings(nested, ranker=cfg.reward).items():
        reward_of = dict(zip(rec["sample_indices"], rec["scores"]))
        for m, i in index.items():
            if i in reward_of:
                values.setdefault(m, {})[iid] = reward_of[i]
    return Values(values)


def judge_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                   api_key: str | None = None) -> Outcome:
    """The LLM judge (lab.judge, plan "full": every pair of models judged in both orders, calibrated where they
    disagree: lab.records.verdicts.run_verdicts): win 1; tie or an undecided disagreement 0.5; loss 0; unreadable
    verdicts left out. Identical completions tie without a call."""
    nested, index = scoring_run(run, table, st)
    samples = nested.read("samples")
    twin = {(s["instruction_id"], s["sample_index"]): s["duplicate_of"] for s in samples}  # the judge skips twins
    if any(d is None and s["sample_index"] > 0 for s, d in zip(samples, twin.values())):
        judge_run(nested, JudgeConfig(backend=cfg.judge, model=cfg.judge_model, plan="full", rpm=cfg.judge_rpm,
                                      device=cfg.device, dtype=cfg.dtype), progress, api_key=api_key)
    verdicts = {(v["instruction_id"], v["a"], v["b"]): v["verdict"] for v in run_verdicts(nested)}
    value = {"a": WIN, "b": LOSS, "tie": TIE, "inconsistent": TIE}  # for the lower sample index

    def of(iid: str, a: str, b: str) -> float | None:
        if (iid, index[a]) not in twin or (iid, index[b]) not in twin:
            return None
        i, j = (twin[(iid, x)] if twin[(iid, x)] is not None else x for x in (index[a], index[b]))
        if i == j:
            return TIE
        v = value.get(verdicts.get((iid, min(i, j), max(i, j)), "invalid"))
        return v if v is None or i < j else WIN + LOSS - v
    return of


def score_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                   api_key: str | None = None) -> Outcome:
    """Mean 5-point scores (lab.score, written to this run's scores.jsonl as set "eval"): the higher mean wins."""
    scfg = cfg.score_config()
    rows = [{**r, "set": "eval"} for m in st["models"] for r in table.get(m, {}).values()]
    judge = api_backend(scfg, api_key)
    with nullcontext(Scorer(scfg, judge)) if judge else model_scorer(scfg, cfg.model, None) as scorer:
        score_rows(run, rows, scorer, progress or Progress("scoring", quiet=True), "scoring (5-point)")
    means = mean_scores([s for s in run.read("scores") if s["judge"] == scfg.name], "eval")

    def of(iid: str, a: str, b: str) -> float | None:
        if (a, iid) not in means or (b, iid) not in means:
            return None
        return outcome(means[(a, iid)], means[(b, iid)])
    return of


def checked_answers(table: dict, st: dict) -> dict[str, dict[str, checks.Checked]]:
    """{model: {instruction id: its answer checked}} for the comparison's verifiable instructions."""
    ids = set(st["instruction_ids"])
    return {m: {iid: checks.check(r, r["text"]) for iid, r in table.get(m, {}).items()
                if iid in ids and checks.has_checks(r)} for m in st["models"]}


def checks_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Outcome:
    """IFEval checks (lab.checks): the answer with the higher check score (strict pass 1, loose-only 0.5, per check)
    wins; instructions without checks have no outcome."""
    done = checked_answers(table, st)

    def of(iid: str, a: str, b: str) -> float | None:
        if iid not in done.get(a, {}) or iid not in done.get(b, {}):
            return None
        return outcome(done[a][iid].score, done[b][iid].score)
    return of


def checks_summary(table: dict, st: dict, cfg: CompareConfig) -> dict:
    """IFEval's four accuracies per model over its checked answers, with percentile bootstrap intervals over prompts,
    each adapter's paired difference against the base on the prompts both answered (per prompt: adapter minus base,
    resampled together; its own "n"), and per model the failed checks of each answer ("n": the base's prompts):
        {"n", "levels": [lab.checks.LEVELS], "grader": {...},
         "per_model": {model: {level: {"value", "ci_low", "ci_high", "n"}}},
         "vs_base": {adapter: {level: {"diff", "ci_low", "ci_high", "n", "better", "worse"}}},
         "failed": {model: {instruction id: [check types failed, strict]}}}"""
    done = checked_answers(table, st)
    boot = dict(resamples=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    level = lambda m, ids, lv: [checks.per_prompt(done[m][i])[lv] for i in ids]  # noqa: E731
    own = {m: [i for i in st["instruction_ids"] if i in done[m]] for m in st["models"]}
    per_model = {m: {lv: mean_ci(level(m, ids, lv), **boot) for lv in checks.LEVELS} for m, ids in own.items()}
    both = {m: [i for i in own[m] if i in done[BASE]] for m in st["models"] if m != BASE}  # pairs: base answered too
    vs_base = {m: {lv: paired_difference(level(m, ids, lv), level(BASE, ids, lv), **boot) for lv in checks.LEVELS}
               for m, ids in both.items()}
    failed = {m: {i: c.failed() for i, c in done[m].items()} for m in st["models"]}
    return {"n": len(own.get(BASE, [])), "levels": list(checks.LEVELS), "grader": graders.CHECKS,
            "per_model": per_model, "vs_base": vs_base, "failed": failed}


def _has_checks(cfg: CompareConfig, st: dict) -> bool:
    return cfg.checks and bool(st.get("checked_ids"))


SCORERS: dict[str, CompareScorer] = {
    "pairrm": CompareScorer("PairRM", lambda cfg, st: bool(cfg.pairrm), pairrm_outcomes,
                            lambda cfg, st: graders.ranker(cfg.pairrm)),
    "reward": CompareScorer("Reward model", lambda cfg, st: bool(cfg.reward), reward_outcomes,
                            lambda cfg, st: graders.ranker(cfg.reward)),
    "judge": CompareScorer("LLM judge", lambda cfg, st: cfg.judge != "none", judge_outcomes,
                           lambda cfg, st: graders.judge(cfg.judge, cfg.judge_model)),
    "score": CompareScorer("5-point score", lambda cfg, st: cfg.score != "none", score_outcomes,
                           lambda cfg, st: graders.scorer(cfg.score, cfg.score_model, cfg.model)),
    "checks": CompareScorer("Verifiable checks", _has_checks, checks_outcomes, lambda cfg, st: graders.CHECKS,
                            checks_summary),
}
