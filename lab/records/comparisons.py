"""compare.jsonl: one line per (instruction, model) completion of the compare stage (lab.compare; built by
`compare_record`); `current` reads the latest comparison's, `grid` lays them out side by side, `read_notes` reads
the user's notes on them (notes.json):

    {"instruction_id": str, "prompt": str, "model": "base" | adapter name, "adapter_path": str | null,
     "text": str, "prompt_tokens": int, "completion_tokens": int, "finish_reason": "stop" | "length",
     "base_model": spec, "base_path": str, "decoding": {"temperature", "top_p", "max_new_tokens", "seed"},
     "key": str,                               # hash of base + decoding: records of other settings are history
     "adapter_hash": str | null,               # hash of the adapter's files (a retrained adapter is redone)
     "duplicate": null | {"of": training instruction id, "kind": "exact" | "near", "similarity": float},
     "instruction_id_list": [str], "kwargs": [dict]}   # only for verifiable instructions: their IFEval checks
"""
from __future__ import annotations

import json
from pathlib import Path

from lab import checks
from lab.errors import LabError
from lab.store import Run


def current(run: Run, st: dict | None = None) -> tuple[list[dict], dict]:
    """Records of a comparison (its key, its instructions, its models) and its settings: those given (a comparison
    not recorded yet), else the latest in run.json."""
    st = st or run.stage_settings("compare")
    if not st:
        raise LabError(f"Run {run.name} has no comparison yet: compare first (`python -m lab compare --run "
                       f"{run.name}`).", ui=f"Run {run.name} has no comparison yet: press Compare first.")
    ids, names = set(st["instruction_ids"]), set(st["models"])
    latest: dict[tuple, dict] = {}
    for r in run.read("compare"):
        if r.get("key") == st["key"] and r["instruction_id"] in ids and r["model"] in names:
            latest[(r["instruction_id"], r["model"])] = r
    return list(latest.values()), st


def compare_record(item: dict, completion, name: str, adapter: Path | None, base_path: str, cfg, key: str,
                   duplicate: dict | None, adapter_hash: str | None) -> dict:
    """One compare.jsonl line (the format in the module docstring); cfg: the lab.compare.CompareConfig."""
    return {"instruction_id": item["id"], "prompt": item["prompt"], "model": name,
            "adapter_path": str(adapter) if adapter else None, "text": completion.text,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason, "base_model": cfg.model, "base_path": base_path,
            "decoding": cfg.decoding().to_dict(), "key": key, "duplicate": duplicate, "adapter_hash": adapter_hash,
            **checks.fields_of(item)}


def grid(run: Run):
    """pandas DataFrame: one row per instruction (index: instruction_id), columns prompt, duplicate_of, then one
    column per model (base first) holding its completion."""
    import pandas as pd

    records, st = current(run)
    order = {i: n for n, i in enumerate(st["instruction_ids"])}
    df = pd.DataFrame(records)
    if df.empty:
        return pd.DataFrame(columns=["prompt", "duplicate_of", *st["models"]]).rename_axis("instruction_id")
    wide = df.pivot(index="instruction_id", columns="model", values="text")
    meta = df.drop_duplicates("instruction_id").set_index("instruction_id")
    dup_of = [d["of"] if isinstance(d, dict) else None for d in meta["duplicate"].reindex(wide.index)]
    wide.insert(0, "duplicate_of", pd.Series(dup_of, index=wide.index, dtype=object))
    wide.insert(0, "prompt", meta["prompt"])
    wide = wide.reindex(columns=["prompt", "duplicate_of", *st["models"]])
    wide.columns.name = None
    return wide.sort_index(key=lambda ix: ix.map(order))


def read_notes(run: Run) -> dict:
    """notes.json, the user's own notes on a comparison (lab.compare.save_note writes it):
    {"overall": str, "instructions": {instruction_id: str}}"""
    path = run.file("notes")
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {"overall": data.get("overall", ""), "instructions": data.get("instructions", {})}
