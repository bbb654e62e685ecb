"""pairs-<source>.jsonl: one line per pair, built by the pairs stage (lab.pairs) with `pair_record`:

    {"prompt":   [{"role": "user", "content": str}],
     "chosen":   [{"role": "assistant", "content": str}],
     "rejected": [{"role": "assistant", "content": str}],
     "meta": {"instruction_id": str, "chosen_index": int, "rejected_index": int,   # samples.jsonl sample_index
              "source": a SOURCES name, "strategy": str, "by": "judge" | "human" | "pairrm" | "reward" | "self"
                                                                                   | "checks",
              "strength": float, "score_chosen": float, "score_rejected": float,
              "rule": str,        # judge verdicts: how the pair was decided (lab.records.verdicts.RULES key)
              "single": true}     # only on a judge verdict that rests on one order (lab.records.verdicts.pair_verdicts)
The file is rewritten whole (atomically) on every build; the statistics go to run.json under "pairs-<source>".
A user's own pairs file may also hold plain strings for prompt / chosen / rejected, and longer conversations
(earlier turns in "prompt"); `load_pairs` checks it line by line before any training.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.stats import length_balance
from lab.store import iter_user_jsonl


MIN_EVAL_GROUPS = 2  # fewer held-out instructions than this give an eval loss too noisy to read


def pair_record(prompt: list[dict] | str, chosen: str, rejected: str, meta: dict) -> dict:
    """One pairs line (the format in the module docstring); a str prompt becomes one user message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "meta": meta}


def answer_lengths(records: list[dict]) -> tuple[list[int], list[int]]:
    """Characters of the final chosen and rejected message of each pair, in order."""
    return ([len(r["chosen"][-1]["content"]) for r in records], [len(r["rejected"][-1]["content"]) for r in records])


TEMPLATE_MARKERS = {
    "<|im_start|>": "ChatML (SmolLM2, Qwen)", "<|im_end|>": "ChatML (SmolLM2, Qwen)",
    "<|start_header_id|>": "Llama 3", "<|eot_id|>": "Llama 3", "<|begin_of_text|>": "Llama 3",
    "[INST]": "Llama 2 / Mistral", "[/INST]": "Llama 2 / Mistral", "<<SYS>>": "Llama 2",
    "<start_of_turn>": "Gemma", "<end_of_turn>": "Gemma",
    "<|user|>": "Zephyr / Phi-3", "<|assistant|>": "Zephyr / Phi-3",
}


def _as_messages(value: Any, role: str, where: str) -> list[dict]:
    """A plain string becomes one message; a list must hold {"role", "content"} dicts with non-empty text."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise LabError(f"{where}: expected a list of chat messages or a string, got {type(value).__name__}.")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise LabError(f"{where}: each message needs a 'role' (system/user/assistant) and a 'content' string.")
    if not value[-1]["content"].strip():
        raise LabError(f"{where}: the message text is empty.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _check_record(rec: Any, n: int) -> dict:
    """One pairs line -> {"prompt", "chosen", "rejected", "meta"}; raises LabError naming the line."""
    where = f"pairs line {n}"
    if not isinstance(rec, dict) or not {"prompt", "chosen", "rejected"} <= rec.keys():
        raise LabError(f"{where}: each line needs 'prompt', 'chosen' and 'rejected' (TRL conversational format, "
                       "see lab/records/pairs.py); rebuild the file with `python -m lab pairs`.")
    out = {"prompt": _as_messages(rec["prompt"], "user", f"{where}, prompt"),
           "chosen": _as_messages(rec["chosen"], "assistant", f"{where}, chosen"),
           "rejected": _as_messages(rec["rejected"], "assistant", f"{where}, rejected"),
           "meta": rec.get("meta") if isinstance(rec.get("meta"), dict) else {}}
    if out["prompt"][-1]["role"] != "user":
        raise LabError(f"{where}: the prompt must end with a user message.")
    for side in ("chosen", "rejected"):  # DPO trains on these tokens as the model's own answer
        if any(m["role"] != "assistant" for m in out[side]):
            raise LabError(f"{where}, {side}: every message must have role 'assistant' (the answer to the prompt); "
                           "earlier turns, user ones included, belong in 'prompt'.")
    return out


def _text_of(rec: dict) -> str:
    return "\n".join(m["content"] for part in ("prompt", "chosen", "rejected") for m in rec[part])


def _markup_error(n: int, marker: str, own: set[str], model: str) -> LabError:
    family = TEMPLATE_MARKERS.get(marker, "a chat template")
    if marker in own:
        why = (f"it is {model}'s own template markup, so the text was already rendered: the trainer renders the "
               "messages again and the markup would be doubled")
    else:
        why = f"it is markup of another model's template ({family}), not {model}'s"
    return LabError(f"pairs line {n} contains the chat-template token {marker!r}: {why}. Pairs must hold plain "
                    "message text; rebuild them with `python -m lab pairs`, or strip the template from the text.")


def check_markup(records: list[dict], tokenizer, model: str) -> None:
    """Refuse pairs whose text holds chat-template tokens (rendered for this or another model)."""
    own = {t for t in tokenizer.all_special_tokens if len(t) > 3 and t not in ("<unk>",)}
    own |= {t for t in TEMPLATE_MARKERS if t in (tokenizer.chat_template or "")}
    markers = sorted(set(TEMPLATE_MARKERS) | own, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(m) for m in markers))
    for n, rec in enumerate(records, 1):
        hit = pattern.search(_text_of(rec))
        if hit:
            raise _markup_error(n, hit.group(0), own, model)


def load_pairs(path: Path) -> list[dict]:
    """Read and check a pairs file (a user's file: UTF-8, its last line counts with or without a newline, see
    lab.store.iter_user_jsonl). Returns [{"prompt", "chosen", "rejected", "meta"}] (messages lists)."""
    records = [_check_record(r, n) for n, r in iter_user_jsonl(path, "Pairs file")]
    if not records:
        raise LabError(f"{path} holds no pairs: build them with `python -m lab pairs` (judge or pairrm first).")
    same = [n for n, r in enumerate(records, 1) if r["chosen"][-1]["content"].strip() ==
            r["rejected"][-1]["content"].strip()]
    if same:
        raise LabError(f"{len(same)} of {len(records)} pairs have the same chosen and rejected text (lines "
                       f"{', '.join(map(str, same[:5]))}{'...' if len(same) > 5 else ''}): they carry no preference "
                       "and only add noise. Drop ties and duplicate answers when building pairs (lab.pairs does), "
                       "or delete those lines.")
    return records


def split_pairs(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole instructions (never one pair of an instruction on each side). -> (train, eval)."""
    key = lambda r: r["meta"].get("instruction_id") or r["prompt"][-1]["content"]  # noqa: E731
    groups = sorted({key(r) for r in records})
    random.Random(seed).shuffle(groups)
    n_eval = round(len(groups) * fraction)
    if n_eval < MIN_EVAL_GROUPS or len(groups) - n_eval < 1:
        return records, []
    held = set(groups[:n_eval])
    return [r for r in records if key(r) not in held], [r for r in records if key(r) in held]


def pair_stats(path: Path, records: list[dict]) -> dict:
    """Size, checksum and the chosen-vs-rejected length balance of a pairs file (what the card and warnings need)."""
    bal = length_balance(*answer_lengths(records))
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "n": len(records),
            "chosen_chars_mean": bal["chosen_chars_mean"], "rejected_chars_mean": bal["rejected_chars_mean"],
            "chosen_longer_fraction": bal["chosen_longer_fraction"]}
