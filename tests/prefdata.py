"""Samples and judge calls written in their documented formats (lab/sample.py, lab/judge.py), so the PairRM, pairs
and spot-check tests run on records exactly like the real stages write, without sampling or calling a judge."""
from __future__ import annotations

from lab.store import Run


def sample_line(iid: str, prompt: str, index: int, text: str) -> dict:
    """One samples.jsonl record (lab/sample.py format)."""
    return {"instruction_id": iid, "sample_index": index, "prompt": prompt, "text": text, "model": "tiny-random",
            "model_path": "/nowhere", "decoding": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64, "seed": 0},
            "prompt_tokens": 10, "completion_tokens": len(text.split()), "finish_reason": "stop",
            "duplicate_of": None}


def write_samples(run: Run, data: dict[str, tuple[str, list[str]]]) -> None:
    """{instruction_id: (prompt, [response texts])} -> samples.jsonl (sample_index = position in the list)."""
    run.append("samples", [sample_line(iid, prompt, i, t) for iid, (prompt, texts) in data.items()
                           for i, t in enumerate(texts)])


def judge_call(iid: str, a: int, b: int, order: str, verdict: str, reasoning: str = "") -> dict:
    """One judgments.jsonl record (lab/judge.py format); verdict in canonical terms."""
    shown_first = a if order == "ab" else b
    position = {"tie": "tie", "invalid": None}.get(verdict) or ("A" if (verdict == "a") == (shown_first == a) else "B")
    return {"instruction_id": iid, "a": a, "b": b, "order": order, "verdict": verdict, "position_verdict": position,
            "reasoning": reasoning or f"{verdict} in order {order}", "raw": "{}", "backend": "openai",
            "model": "test-judge", "prompt_hash": "0" * 16, "cache_key": f"{iid}-{a}-{b}-{order}",
            "usage": {"prompt_tokens": 100, "completion_tokens": 20}, "cost_usd": None, "confidence": None,
            "label_probs": None, "attempts": 1, "latency_s": 0.01, "time": 0.0}


def judge_pair(iid: str, a: int, b: int, ab: str, ba: str | None = None) -> list[dict]:
    """A pair judged in both orders (ba defaults to ab: a consistent verdict); ba="" judges one order only."""
    calls = [judge_call(iid, a, b, "ab", ab)]
    if ba != "":
        calls.append(judge_call(iid, a, b, "ba", ab if ba is None else ba))
    return calls
