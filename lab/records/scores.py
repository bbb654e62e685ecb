"""scores.jsonl: one line per evaluation of the self-rewarding scorer (lab.score; built by `score_record`):

    {"set": "train" | "eval",          # train: an answer of samples.jsonl; eval: a completion of compare.jsonl
     "instruction_id": str,
     "sample_index": int | null,        # train: which answer of samples.jsonl
     "model": str | null,               # eval: "base" or an adapter name (rows of compare.jsonl)
     "text_hash": str,                  # sha1[:12] of the scored text: a changed text is scored again
     "eval_index": int,                 # 0..R-1
     "score": float | null,             # 0-5; null when the judgment could not be read
     "method": "parsed" | "probabilities" | "invalid",
                                        # parsed: "Score: <points>" found in the text; probabilities: a local judge
                                        # that wrote no score is asked to continue "Score: " and the expected value
                                        # over the digits 0-5 is taken (a 135M model rarely ends with the format);
                                        # read on the judge prompt's cache from the sampling batch (lab engine)
     "probs": [p0..p5] | null, "raw": str, "judge": str, "prompt_hash": str,
     "usage": {"prompt_tokens", "completion_tokens"}}       # API judges
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.store import Run


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def score_key(s: dict) -> tuple:
    """What makes two evaluations the same: the set, the answer (or the model's completion) and its text, the judge."""
    return (s["set"], s["instruction_id"], s.get("sample_index"), s.get("model"), s.get("text_hash"), s.get("judge"))


def score_record(row: dict, eval_index: int, ev: dict, judge: str, prompt_hash: str) -> dict:
    """One scores.jsonl line (the format in the module docstring): ev holds "score", "method", "probs", "raw"
    (and "usage"); judge is the ScoreConfig's name, prompt_hash the scoring prompt's."""
    train = row["set"] == "train"
    return {"set": row["set"], "instruction_id": row["instruction_id"],
            "sample_index": row["sample_index"] if train else None, "model": None if train else row["model"],
            "text_hash": text_hash(row["text"]), "eval_index": eval_index, **ev, "judge": judge,
            "prompt_hash": prompt_hash}


def mean_scores(scores: list[dict], which: str = "train") -> dict[tuple, float]:
    """{(instruction_id, sample_index) (train) or (model, instruction_id) (eval): mean of its readable scores}."""
    acc: dict[tuple, list[float]] = {}
    for s in scores:
        if s["set"] == which and s["score"] is not None:
            key = (s["instruction_id"], s["sample_index"]) if which == "train" else (s["model"], s["instruction_id"])
            acc.setdefault(key, []).append(s["score"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def score_summary(run: Run, judge: str | None = None) -> dict:
    """Counts and the histogram of the run's train-set scores, of one judge (a ScoreConfig's name) or of all (the
    score stage's summary, iterate's per round; the CLI and the app show these)."""
    train = [s for s in run.read("scores") if s["set"] == "train" and (judge is None or s["judge"] == judge)]
    valid = [s["score"] for s in train if s["score"] is not None]
    return {"run": run.name, "evaluations": len(train), "unscored": len(train) - len(valid),
            "score_hist": {str(d): sum(round(v) == d for v in valid) for d in range(6)},
            "score_mean": sum(valid) / len(valid) if valid else None,
            "methods": {m: sum(s["method"] == m for s in train) for m in ("parsed", "probabilities", "invalid")}}
