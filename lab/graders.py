"""Who made a number: every win rate and score names its grader, and says when that grader also made the pairs the
adapter was trained on (then the number is partly circular: the adapter learned that grader's taste, e.g. length).

A grader is a dict, the same for a compare scorer and for the source of an adapter's training pairs:

    {"kind": "judge" | "ranker" | "self" | "checks", "id": str, "label": str}

`id` is what makes two graders the same one: the judge backend and model ("judge:groq:llama-3.3-70b-versatile"),
the ranker spec ("ranker:llm-blender/PairRM"), the model scoring its own answers ("self:<model spec>"), or IFEval's
checks ("checks:ifeval"). An API judge scoring on the 5-point scale is the same model as that judge comparing pairs,
so both read "judge:<backend>:<model>".
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lab.adapters import read_state
from lab.judge_backends import DEFAULT_MODELS
from lab.store import Run

CHECKS = {"kind": "checks", "id": "checks:ifeval", "label": "IFEval checks (if-verifiable)"}


def judge(backend: str, model: str = "") -> dict:
    model = model or DEFAULT_MODELS.get(backend, "")
    return {"kind": "judge", "id": f"judge:{backend}:{model}", "label": f"LLM judge {backend}:{model}"}


def ranker(spec: str) -> dict:
    return {"kind": "ranker", "id": f"ranker:{spec}", "label": f"ranker {spec}"}


def self_judge(model: str) -> dict:
    return {"kind": "self", "id": f"self:{model}", "label": f"self-scores of {model}"}


def scorer(score: str, score_model: str, base_model: str) -> dict:
    """Compare's 5-point scorer: "base" (the base model scores every answer) or an API backend."""
    return self_judge(base_model) if score == "base" else judge(score, score_model)


def of_source(run: Run, source: str) -> dict | None:
    """The grader behind a run's pairs-<source>.jsonl, by its lab.pairs.SOURCES entry's `grader` (None: unknown)."""
    from lab.pairs import SOURCES  # pairs names these graders: read its registry when asked

    return SOURCES[source].grader(run) if source in SOURCES else None


# ---- the pair sources' graders (a lab.pairs.SOURCES entry's `grader`): from the settings run.json recorded ----------
def checks_grader(run: Run) -> dict:
    return CHECKS


def judge_grader(run: Run) -> dict | None:
    st = run.settings().get("stages", {}).get("judge")
    return judge(st.get("backend", ""), st.get("model", "")) if st else None


def ranker_grader(kind: str) -> Callable[[Run], dict | None]:
    """The ranker of that kind's latest rankings (a lab.rank.RANKERS kind), if they all come from one ranker."""
    def grader(run: Run) -> dict | None:
        from lab.records.rankings import latest_rankings

        specs = {r.get("ranker") for r in latest_rankings(run, kind).values()}
        return ranker(specs.pop()) if len(specs) == 1 else None
    return grader


def self_grader(run: Run) -> dict | None:
    """The self-scores' judge: the sampling model itself, or the API judge that scored."""
    stages = run.settings().get("stages", {})
    s, model = stages.get("score"), (stages.get("sample") or {}).get("model", "")
    if not s:
        return None
    return self_judge(model) if s.get("judge") == "self" else judge(s.get("judge", ""), s.get("judge_model", ""))


def of_adapter(folder: Path) -> dict | None:
    """The grader whose pairs an adapter folder was trained on (its training.json names the pairs file)."""
    from lab.noise import pairs_source

    try:  # a damaged training.json or run.json makes the grader unknown, not the comparison fail
        state = read_state(folder) or {}
        path = (state.get("pairs") or {}).get("path") or ""
        source = pairs_source(path)
        return of_source(Run(Path(path).parent), source) if source and path else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def trained_on(run: Run, st: dict, adapter: str) -> dict | None:
    """The training grader of a compared model (None for the base or an adapter of unknown pairs)."""
    path = (st.get("adapter_paths") or {}).get(adapter) or (run.adapter_dir(adapter) if adapter in
                                                            run.adapters() else None)
    return of_adapter(Path(path)) if path else None


def circular(grader: dict, trained: dict | None) -> str | None:
    """The words that go next to a number from `grader` for an adapter trained on `trained`'s pairs (None: not the
    same grader)."""
    if not trained or trained["id"] != grader["id"]:
        return None
    if grader["kind"] == "checks":
        return ("Trained on checks pairs: the same kind of checks, on held-out prompts. A check knows the answer, so "
                "this measures learning the constraints, not a grader's taste.")
    return (f"Circular: this adapter was trained on pairs from the same grader ({grader['label']}); the number "
            "partly measures how well it learned that grader's taste (length, style), not quality alone.")


def provenance(grader: dict, trained: dict | None) -> dict:
    """The fields a win rate carries: who graded it, and the circular label where it applies."""
    return {"grader": grader["label"], "grader_id": grader["id"], "circular": circular(grader, trained)}
