"""The bundled instruction sets (assets/instructions-*.jsonl): well-formed, varied, short, and no train/held-out leak.

Each line: {"id": "train-001" | "heldout-001", "prompt": str, "category": str}.
"""
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SETS = {"train": (ASSETS / "instructions-train.jsonl", 64), "heldout": (ASSETS / "instructions-heldout.jsonl", 12)}
NEAR = 0.6  # token Jaccard at or above this counts as the same instruction reworded


def _records(name: str) -> list[dict]:
    path, _ = SETS[name]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), f"{path.name}: blank line"
    return [json.loads(line) for line in lines]  # raises on invalid JSON


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _jaccard(a: str, b: str) -> float:
    ta, tb = _tokens(a), _tokens(b)
    return len(ta & tb) / len(ta | tb)


@pytest.mark.parametrize("name", SETS)
def test_records_are_well_formed(name):
    recs = _records(name)
    assert len(recs) >= SETS[name][1]
    for n, r in enumerate(recs, 1):
        assert set(r) == {"id", "prompt", "category"}, r
        assert r["id"] == f"{name}-{n:03d}"
        assert isinstance(r["prompt"], str) and r["prompt"].strip() == r["prompt"] and r["prompt"]
        assert isinstance(r["category"], str) and r["category"]
    assert len({r["id"] for r in recs}) == len(recs)
    assert len({r["prompt"].lower() for r in recs}) == len(recs)


@pytest.mark.parametrize("name", SETS)
def test_prompts_are_short_enough_for_a_small_model(name):
    words = [len(r["prompt"].split()) for r in _records(name)]
    assert max(words) <= 60
    assert sum(w < 40 for w in words) >= 0.85 * len(words)


def test_sets_cover_the_same_varied_mix():
    train = Counter(r["category"] for r in _records("train"))
    heldout = Counter(r["category"] for r in _records("heldout"))
    assert len(train) >= 10 and min(train.values()) >= 3
    assert set(heldout) == set(train)
    # the first few lines already span many categories, because `load_instructions(n=...)` takes the first n
    assert len({r["category"] for r in _records("train")[:16]}) >= 10


def test_no_exact_or_near_overlap_between_train_and_heldout():
    train, heldout = _records("train"), _records("heldout")
    assert not {r["prompt"].lower() for r in train} & {r["prompt"].lower() for r in heldout}
    close = [(t["id"], h["id"], round(_jaccard(t["prompt"], h["prompt"]), 2))
             for t, h in itertools.product(train, heldout) if _jaccard(t["prompt"], h["prompt"]) >= NEAR]
    assert not close, f"near-duplicate train/held-out prompts: {close}"


@pytest.mark.parametrize("name", SETS)
def test_no_near_duplicates_within_a_set(name):
    recs = _records(name)
    close = [(a["id"], b["id"]) for a, b in itertools.combinations(recs, 2) if _jaccard(a["prompt"], b["prompt"]) >= NEAR]
    assert not close, close


def test_jaccard_flags_a_reworded_prompt():
    # guards the overlap test itself: a light rewording must count as near
    assert _jaccard("List five ways to save water at home.", "List five easy ways to save water at home") >= NEAR
    assert _jaccard("Why do we have leap years?", "List five ways to save water at home.") < NEAR

