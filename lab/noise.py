"""Noise labelled as noise: the one place that knows which models, rankers and judges give random or near-random
results, and the words that say so. The CLI (a "noise" field in every summary, one stderr line each), every tab that
shows results, the cards and the report all call `notes`.

Known (WORDS):
  - model tiny-random (sample, train, compare, iterate, chat): a random 2-layer model: its answers are random text;
  - ranker tiny-random (rank, compare's PairRM scorer): random weights: its rankings and win rates are random;
  - ranker tiny-reward (rank, compare's reward scorer): a random reward model: its rewards and win rates are random;
  - judge tiny-random (the local judge, compare's "base" 5-point scorer, self-scoring): its verdicts are random;
  - judge bundled (SmolLM2-135M as a judge, offline or from the hub): weak, close to noise.
A stage's results carry the labels of its own settings and of the stages it builds on (its lab.stages row's `upstream`): adapters trained
on a random ranker's pairs are labelled, and so is their comparison.
"""
from __future__ import annotations

from pathlib import Path

from lab.adapters import read_state
from lab.models import BUNDLED_HUB_ID
from lab.store import Run

TINY, TINY_REWARD, BUNDLED = "tiny-random", "tiny-reward", "bundled"
API_JUDGE_HINT = "use an API judge (Groq, or an OpenAI-compatible endpoint) for preference data worth training on"
WORDS = {
    ("model", TINY): "Noise: the answers come from tiny-random, a random 2-layer model; they are random text.",
    ("ranker", TINY): "Noise: the PairRM ranker is tiny-random (random weights); its rankings, pairs and win rates "
                      "are random.",
    ("ranker", TINY_REWARD): "Noise: the reward model is tiny-reward (random weights); its rewards, rankings, pairs "
                             "and win rates are random.",
    ("judge", TINY): "Noise: the judge is tiny-random, a random model; its verdicts and scores are random.",
    ("judge", BUNDLED): "Weak judge: the bundled SmolLM2-135M judges close to chance, so its verdicts and scores are "
                        f"close to noise; {API_JUDGE_HINT}.",
}
# the stage a pairs source comes from (the checks are IFEval's checkers, run on the samples: no grader of their own)
SOURCE_STAGE = {"judge": "judge", "pairrm": "rank", "reward": "rank", "self": "score", "checks": "sample"}



def _spec(spec: str | None) -> str:
    """The bundled model however it was named (its hub id is the same model)."""
    spec = (spec or "").strip()
    return BUNDLED if spec == BUNDLED_HUB_ID else spec


def label(kind: str, spec: str | None) -> str | None:
    """The words for results of a model ("model"), ranker ("ranker") or judge ("judge") spec; None if not noise."""
    return WORDS.get((kind, _spec(spec)))


def specs(stage: str, s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """(kind, spec) pairs a stage's settings `s` (its run.json entry or its config) use; `sampled`: the model the
    run sampled with (the self-scoring judge)."""
    model = s.get("model") or sampled
    found = {
        "sample": [("model", model)],
        "judge": [("judge", s.get("model") or BUNDLED)] if s.get("backend") == "local" else [],
        "rank": [("ranker", s.get("ranker"))],
        "score": [("judge", sampled)] if s.get("judge") == "self" else [],
        "train": [("model", model)],
        "compare": [("model", model), ("ranker", s.get("pairrm")), ("ranker", s.get("reward")),
                    *([("judge", s.get("judge_model") or BUNDLED)] if s.get("judge") == "local" else []),
                    *([("judge", model)] if s.get("score") == "base" else [])],
        "iterate": [("model", model), *([("judge", model)] if s.get("judge") == "self" else [])],
        "chat": [("model", model)],
    }
    return found.get(stage, [])


def pairs_source(pairs: str) -> str | None:
    """The source a train's --pairs names: 'judge', or a run's pairs-judge.jsonl; None for any other file."""
    name = Path(str(pairs)).name
    source = name[len("pairs-"):-len(".jsonl")] if name.startswith("pairs-") and name.endswith(".jsonl") else name
    return source if source in SOURCE_STAGE else None


def notes(run: Run, stage: str, settings: dict | None = None) -> list[str]:
    """The noise labels of `stage` run with `settings` on `run`: its own specs and those of the stages it builds on
    (from run.json), each sentence once, in words for a page. settings default to the stage's run.json entry."""
    recorded = run.settings().get("stages", {})
    sampled = (recorded.get("sample") or {}).get("model", "")
    own = dict(settings if settings is not None else recorded.get(stage) or {})
    if stage == "merge":  # a merged model is its adapter's training: the labels of what that trained on
        state = (read_state(run.adapter_dir(own["adapter"])) or {}) if own.get("adapter") else {}
        return notes(run, "train", {**(state.get("settings") or {}), "model": state.get("base_model", "")})
    from lab.stages import BY_NAME  # the stages import what labels noise (report, cards): read their rows when asked

    upstream = list(BY_NAME[stage].upstream if stage in BY_NAME else ())
    source = own.get("source") if stage == "pairs" else pairs_source(own.get("pairs", "")) if stage == "train" else None
    if source:
        upstream = ["sample", SOURCE_STAGE[source]]
    found = specs(stage, own, sampled)
    for up in upstream:
        if up != stage and recorded.get(up):
            found += specs(up, recorded[up], sampled)
    words = [label(kind, spec) for kind, spec in found]
    return list(dict.fromkeys(w for w in words if w))


def markdown(lines: list[str]) -> str:
    """The labels as Markdown paragraphs for a page or a card ('' when there are none)."""
    return "\n\n".join(f"⚠️ **{w}**" for w in lines)
