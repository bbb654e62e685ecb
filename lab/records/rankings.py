"""rankings.jsonl: one line per ranked instruction and ranker, written by the rank stage (lab.rank; built by
`ranking_record`). The last line of an instruction for a kind of ranker wins (`latest_rankings`); a re-run with
another ranker or new samples appends, so nothing is overwritten:

    {"instruction_id": str,
     "kind": "pairrm" | "reward",    # RANKERS key (lines written before reward models have none: "pairrm")
     "sample_indices": [int],        # the K responses ranked, by samples.jsonl "sample_index"
     "scores": [float],              # parallel to sample_indices; higher is better: the sum over the K-1 other
                                     #   responses j of logits[i][j] - logits[j][i], divided by K (not K-1: what
                                     #   llm-blender's "max_logits" policy computes, a mean over a row whose
                                     #   diagonal is 0)
     "ranks": [int],                 # parallel; 1 = best (equal scores share a rank)
     "logits": [[float]],            # K x K; logits[i][j] = PairRM logit that response i beats j when i is shown
                                     #   first (diagonal 0). Both-orders preference of i over j:
                                     #   logits[i][j] - logits[j][i] (what Blender.compare returns)
     "ranker": str, "ranker_path": str, "quantize": "none" | "int8",
     "source_max_length": int, "candidate_max_length": int,
     "truncated": [bool],            # parallel; True where the response was cut (to candidate_max_length tokens
                                     #   plus half of what the instruction leaves of source_max_length)
     "time": str}
A reward model's line has the same instruction_id, kind, sample_indices, ranks, truncated, ranker, ranker_path,
quantize ("none") and time, and in place of the PairRM fields:
     "scores": [float],              # parallel; the reward model's logit for prompt + that response
     "tokens_cut": [int],            # parallel; tokens of the rendered conversation beyond max_length, not read
     "max_length": int               # the reward model's own maximum length
The both-orders preference of response a over b (`preference`) is PairRM's logits[a][b] - logits[b][a], or the
reward difference scores[a] - scores[b].
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lab.store import Run

if TYPE_CHECKING:
    from lab.records.samples import Group


def preference(record: dict, a: int, b: int) -> float:
    """How much a rankings record prefers sample a over sample b (> 0: a): PairRM's both-orders logit, or a reward
    model's reward difference."""
    idx = record["sample_indices"]
    i, j = idx.index(a), idx.index(b)
    if "logits" not in record:
        return record["scores"][i] - record["scores"][j]
    return record["logits"][i][j] - record["logits"][j][i]


def latest_rankings(run: Run, kind: str | None = None, ranker: str | None = None) -> dict[str, dict]:
    """instruction_id -> its last rankings record (of that RANKERS kind, or of that ranker spec, when given)."""
    return {r["instruction_id"]: r for r in run.read("rankings")
            if kind in (None, r.get("kind", "pairrm")) and ranker in (None, r.get("ranker"))}


def ranking_record(group: Group, fields: dict, ranker) -> dict:
    """One rankings.jsonl line: the ranker's own fields (its RANKERS kind's `fields`) between the instruction's
    and the ranker's names."""
    return {"instruction_id": group.instruction_id, "kind": ranker.kind, "sample_indices": group.indices, **fields,
            "ranker": ranker.spec, "ranker_path": ranker.path, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
