"""Noise labelled as noise: the one place that knows which models, rankers and judges give random or near-random
results, and the words that say so. The CLI (a "noise" field in every summary, one stderr line each), every tab that
shows results, the cards and the report all call `notes`.

Known (WORDS):
  - model tiny-random (sample, train, compare, iterate, chat): a random 2-layer model: its answers are random text;
  - ranker tiny-random (rank, compare's PairRM scorer): random weights: its rankings and win rates are random;
  - ranker tiny-reward (rank, compare's reward scorer): a random reward model: its rewards and win rates are random;
  - judge tiny-random (the local judge, compare's "base" 5-point scorer, self-scoring): its verdicts are random;
  - judge bundled (SmolLM2-135M as a judge, offline or from the hub): weak, close to noise.
A stage's results carry the labels of its own settings (its lab.stages row's `noise` rule, one of the `*_specs`
below) and of the stages it builds on (the row's `upstream`; for pairs and their training, the stage that made the
source's preferences: lab.pairs.SOURCES' `stage`): adapters trained on a random ranker's pairs are labelled, and so
is their comparison. A row's `labels_as` gives its labels from another stage's (a merged model: its adapter's
training).
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

def _spec(spec: str | None) -> str:
    """The bundled model however it was named (its hub id is the same model)."""
    spec = (spec or "").strip()
    return BUNDLED if spec == BUNDLED_HUB_ID else spec


def label(kind: str, spec: str | None) -> str | None:
    """The words for results of a model ("model"), ranker ("ranker") or judge ("judge") spec; None if not noise."""
    return WORDS.get((kind, _spec(spec)))


# ---- the stages' noise rules (a lab.stages row's `noise`): (its settings, the run's sampling model) -> (kind, spec)
def model_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """The model a stage samples, trains or chats with."""
    return [("model", s.get("model") or sampled)]


def judge_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """The judge stage's local judge (API judges are no noise we know of)."""
    return [("judge", s.get("model") or BUNDLED)] if s.get("backend") == "local" else []


def ranker_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    return [("ranker", s.get("ranker"))]


def self_judge_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """Self-scores: the model that sampled the run judges its own answers."""
    return [("judge", sampled)] if s.get("judge") == "self" else []


def compare_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """The compared models and every scorer compare used."""
    model = s.get("model") or sampled
    return [("model", model), ("ranker", s.get("pairrm")), ("ranker", s.get("reward")),
            *([("judge", s.get("judge_model") or BUNDLED)] if s.get("judge") == "local" else []),
            *([("judge", model)] if s.get("score") == "base" else [])]


def iterate_specs(s: dict, sampled: str = "") -> list[tuple[str, str]]:
    model = s.get("model") or sampled
    return [("model", model), *([("judge", model)] if s.get("judge") == "self" else [])]


def built_source(s: dict) -> str | None:
    """The pairs stage's source (its row's `source`)."""
    return s.get("source")


def trained_source(s: dict) -> str | None:
    """The source of the pairs a training's --pairs names (the train row's `source`)."""
    return pairs_source(s.get("pairs", ""))


def adapter_training(run: Run, s: dict) -> tuple[str, dict]:
    """A merged model is its adapter's training: ("train", the settings that trained it) (the merge row's
    `labels_as`)."""
    state = (read_state(run.adapter_dir(s["adapter"])) or {}) if s.get("adapter") else {}
    return "train", {**(state.get("settings") or {}), "model": state.get("base_model", "")}


def pairs_source(pairs: str) -> str | None:
    """The source a train's --pairs names: 'judge', or a run's pairs-judge.jsonl; None for any other file."""
    name = Path(str(pairs)).name
    source = name[len("pairs-"):-len(".jsonl")] if name.startswith("pairs-") and name.endswith(".jsonl") else name
    from lab.pairs import SOURCES  # pairs imports what labels noise: read its registry when asked

    return source if source in SOURCES else None


def notes(run: Run, stage: str, settings: dict | None = None) -> list[str]:
    """The noise labels of `stage` run with `settings` on `run`: its own specs and those of the stages it builds on
    (from run.json), each sentence once, in words for a page. settings default to the stage's run.json entry."""
    from lab.pairs import SOURCES
    from lab.stages import BY_NAME  # the stages import what labels noise (report, cards): read their rows when asked

    recorded = run.settings().get("stages", {})
    sampled = (recorded.get("sample") or {}).get("model", "")
    own = dict(settings if settings is not None else recorded.get(stage) or {})
    row = BY_NAME.get(stage)
    if row and row.labels_as:
        return notes(run, *row.labels_as(run, own))
    upstream = list(row.upstream if row else ())
    source = row.source(own) if row and row.source else None
    if source:
        upstream = ["sample", SOURCES[source].stage]
    found = specs(stage, own, sampled)
    for up in upstream:
        if up != stage and recorded.get(up):
            found += specs(up, recorded[up], sampled)
    words = [label(kind, spec) for kind, spec in found]
    return list(dict.fromkeys(w for w in words if w))


def specs(stage: str, s: dict, sampled: str = "") -> list[tuple[str, str]]:
    """(kind, spec) pairs a stage's settings `s` (its run.json entry or its config) use, by its row's noise rule;
    `sampled`: the model the run sampled with (the self-scoring judge)."""
    from lab.stages import BY_NAME

    row = BY_NAME.get(stage)
    return row.noise(s, sampled) if row and row.noise else []


def markdown(lines: list[str]) -> str:
    """The labels as Markdown paragraphs for a page or a card ('' when there are none)."""
    return "\n\n".join(f"⚠️ **{w}**" for w in lines)
