"""Reward models as rankers: a sequence-classification model with one label scores each answer alone.

A reward model (e.g. `Skywork/Skywork-Reward-V2-Qwen3-0.6B`, RewardBench v1 85.2 against PairRM's 59.2) reads the
conversation prompt + answer rendered by its own chat template (with the lab's template arguments,
lab.models.CHAT_TEMPLATE_KWARGS) and gives one logit: the answer's reward. K answers cost K passes, not PairRM's
K*(K-1). The lab runs it through plain transformers (`AutoModelForSequenceClassification`): answers of similar
length share a pass, right-padded with the model's pad token (the model reads its score at the last non-pad token).

Specs (lab.rank resolves them; a checkpoint is a reward model when its config.json names a
*ForSequenceClassification architecture with one label):
  - a hub id (downloaded with the hub's own cache) or a local folder;
  - `tiny-reward`: a 2-layer random Llama reward model with the bundled tokenizer, built once into the lab cache
    fully offline. Its rewards are noise: tests and smoke runs only.
Long conversations are cut to the model's own maximum length (its tokenizer's model_max_length, else its context):
the end of a long answer is not read. The tokens cut are counted per answer (rankings.jsonl "tokens_cut", lab.rank).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.models import build_once, cache_dir, load_tokenizer, render_chat

TINY = "tiny-reward"
TINY_MAX_LENGTH = 512  # the tiny model's own limit: small, so that truncation shows up in tests
NO_LIMIT = 10 ** 6  # tokenizers without a limit say model_max_length = 1e30


def is_reward_config(config: dict) -> bool:
    """Whether a checkpoint's config.json describes a reward model: a *ForSequenceClassification with one label."""
    archs = config.get("architectures") or []
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2  # transformers' default is 2
    return any(a.endswith("ForSequenceClassification") for a in archs) and labels == 1


def _build_tiny(out: Path) -> None:
    """A 2-layer random LlamaForSequenceClassification (one label) with the bundled tokenizer (its ChatML template)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = load_tokenizer("tiny-random")  # the bundled tokenizer, with a pad token that ends no turn
    tok.model_max_length = TINY_MAX_LENGTH
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, num_labels=1,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         initializer_range=0.2)  # wider than 0.02, so random rewards differ visibly per answer
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)


def tiny_path() -> str:
    return str(build_once(cache_dir() / "tiny-reward-llama", _build_tiny))


@dataclass
class RewardModel:
    """A loaded reward model: one logit per (prompt, answer) conversation."""

    spec: str
    path: str
    model: Any
    tokenizer: Any
    device: str
    max_length: int
    quantize: str = "none"
    kind: str = "reward"


def max_length_of(tok, config) -> int:
    """The model's own limit: its tokenizer's model_max_length where set, else its context length."""
    context = getattr(config, "max_position_embeddings", None) or NO_LIMIT
    limit = tok.model_max_length if tok.model_max_length and tok.model_max_length < NO_LIMIT else context
    return int(min(limit, context))


def load(spec: str, folder: Path, device: str, torch_dtype, quantize: str = "none") -> RewardModel:
    """The reward model in `folder` on `device` (lab.rank.load_ranker resolves, caches and checks the device)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if quantize != "none":
        raise LabError(f"--quantize {quantize} is for PairRM rankers; a reward model runs with --quantize none.")
    tok = AutoTokenizer.from_pretrained(folder)
    if not tok.chat_template:
        raise LabError(f"Reward model {spec} has no chat template: the lab renders prompt + answer with the model's "
                       "own template, so give a chat reward model (e.g. Skywork/Skywork-Reward-V2-Qwen3-0.6B).")
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch_dtype).to(device).eval()
    if model.config.pad_token_id is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    return RewardModel(spec, str(folder), model, tok, device, max_length_of(tok, model.config))


def encode(rm: RewardModel, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the conversation as the reward model reads it (its own template renders BOS, so no special
    tokens are added again), cut to its maximum length -> (ids, tokens cut)."""
    text = render_chat(rm.tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                       add_generation_prompt=False)
    ids = rm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # verbose: the cut is counted
    return ids[:rm.max_length], max(0, len(ids) - rm.max_length)


def rewards(rm: RewardModel, sequences: list[list[int]], batch_size: int) -> list[float]:
    """One reward per token sequence, in order; sequences of similar length share a pass (one at a time when the
    model has no pad token: it could not find where a padded answer ends)."""
    import torch

    pad = rm.model.config.pad_token_id
    size = batch_size if pad is not None else 1
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.tensor([sequences[i] + [pad] * (width - len(sequences[i])) for i in chunk], device=rm.device)
        mask = torch.tensor([[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in chunk],
                            device=rm.device)
        with torch.inference_mode():
            logits = rm.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
        for i, value in zip(chunk, logits.tolist()):
            out[i] = value
    return out


def ranks_of(scores: list[float]) -> list[int]:
    """1 = highest; equal scores share the better rank."""
    return [1 + sum(other > s for other in scores) for s in scores]


def rank_fields(rm: RewardModel, groups: list[tuple[str, list[str]]], batch_size: int = 32) -> list[dict]:
    """For each (prompt, K answers) the fields of its rankings.jsonl record (format: lab.rank): "scores" (the
    rewards), "ranks", "truncated", "tokens_cut", "max_length", "quantize"."""
    encoded = [[encode(rm, prompt, a) for a in answers] for prompt, answers in groups]
    flat = rewards(rm, [ids for group in encoded for ids, _ in group], batch_size)
    out, at = [], 0
    for group in encoded:
        scores = flat[at:at + len(group)]
        at += len(group)
        cut = [c for _, c in group]
        out.append({"scores": scores, "ranks": ranks_of(scores), "truncated": [c > 0 for c in cut],
                    "tokens_cut": cut, "max_length": rm.max_length, "quantize": rm.quantize})
    return out
