"""Generation behind one interface: k completions per chat prompt, from the base model or with a LoRA adapter on.

`generate(cm, prompts, k, dec, ...)` is what compare, the self-scorer and the local tools call; the sample stage
calls `run_units` to resume exactly the samples it lacks. Engines (ENGINES): "lab", the hand-written sampler below,
and "vllm" (lab.engine_vllm, a worker in vLLM's own environment; see docs/engines.md).

Why a hand-written decode loop instead of `model.generate(num_return_sequences=K)` per prompt:
  - each prompt is pre-filled once and its KV cache copied K times (generate pre-fills K copies);
  - many prompts share one batch, so each forward pass does more useful work;
  - finished sequences leave the batch (their cache rows are dropped), so long answers don't drag short ones;
  - top-p is exact but cheap: the nucleus is found inside the top 256 tokens (a sort over a 50k-128k vocabulary per
    step is what made plain generate slow), falling back to a full sort only for rows whose top 256 don't cover it;
  - only the last position's logits are computed during pre-fill (`logits_to_keep=1`).
Determinism: the same seed, batch size and prompts give the same completions. Each batch draws from a torch RNG
seeded by the run seed and what the batch holds (its salt), so a resumed run draws the same numbers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from lab import models
from lab.progress import Progress

NUCLEUS_TOP_K = 256  # candidates searched for the top-p nucleus before falling back to a full sort
# Called after every decode step of a batch: (share of the batch's work done, 0..1; tokens generated so far in it).
# A finished sequence counts whole, a live one by the steps it has taken out of max_new_tokens (an upper bound on
# what it still needs), so the share only grows. Callers throttle what they do with it (lab.progress does).
OnStep = Callable[[float, int], None]


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0

    def to_dict(self) -> dict:
        """The "decoding" field of samples.jsonl and compare.jsonl."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed}


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def sample_next(logits, dec: Decoding, gen):
    """Next token per row. logits: [B, V] -> ids [B]."""
    import torch

    if dec.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / dec.temperature).softmax(-1)
    if dec.top_p >= 1:
        return torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return _sample_nucleus(probs, dec.top_p, gen)


def _sample_nucleus(probs, top_p: float, gen):
    """Exact top-p sampling without sorting the whole vocabulary for every row.

    Each row's nucleus (the smallest set of most likely tokens holding >= top_p of the mass) is looked for among its
    top 256 tokens, then its top 4,096, and only then in a full sort; rows are sampled as soon as their nucleus is
    covered. probs: [B, V] -> ids [B].
    """
    import torch

    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    todo = torch.arange(probs.shape[0], device=probs.device)
    for k in (NUCLEUS_TOP_K, 16 * NUCLEUS_TOP_K, probs.shape[-1]):
        k = min(k, probs.shape[-1])
        top, ids = probs[todo].topk(k, dim=-1)  # sorted, descending
        covered = (top.sum(-1) >= top_p) | (k == probs.shape[-1])
        top, ids = top[covered], ids[covered]
        keep = (top.cumsum(-1) - top) < top_p  # the mass strictly above a token is still short of top_p
        choice = torch.multinomial(top * keep, 1, generator=gen)
        out[todo[covered]] = ids.gather(-1, choice).squeeze(1)
        todo = todo[~covered]
        if todo.numel() == 0:
            break
    return out


def left_pad(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; older 5.x (e.g. a GPU image's 5.17) only knows the old name."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class _Batch:
    """Live decoding state. Row i of every tensor belongs to sequence `rows[i]` of the batch."""

    def __init__(self, cm: models.ChatModel, prompts: list[list[int]], counts: list[int]):
        import torch
        from transformers import DynamicCache

        self.cm = cm
        ids, self.mask = left_pad(prompts, cm.tokenizer.pad_token_id, cm.device)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=cm.model.config)
        self.cache_arg = cache_kwarg(cm.model)
        out = cm.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{self.cache_arg: self.cache})
        expand = torch.arange(len(prompts), device=cm.device).repeat_interleave(
            torch.tensor(counts, device=cm.device))  # each prompt's cache copied once per wanted sample
        self.cache.batch_select_indices(expand)
        self.logits = out.logits[:, -1][expand]
        self.mask, self.pos = self.mask[expand], positions[:, -1][expand]
        self.rows = torch.arange(len(expand), device=cm.device)
        self.tokens: list[list[int]] = [[] for _ in range(len(expand))]
        self.finish: list[str | None] = [None] * len(expand)

    def step(self, next_ids) -> None:
        import torch

        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.pos = self.pos + 1
        out = self.cm.model(input_ids=next_ids[:, None], attention_mask=self.mask, position_ids=self.pos[:, None],
                            use_cache=True, **{self.cache_arg: self.cache})
        self.logits = out.logits[:, -1]

    def keep(self, alive) -> None:
        """Drop finished rows from every tensor and the KV cache."""
        idx = alive.nonzero().squeeze(1)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.rows, self.logits = self.mask[idx], self.pos[idx], self.rows[idx], self.logits[idx]


def generate_batch(cm: models.ChatModel, prompts: list[list[int]], counts: list[int], dec: Decoding,
                   gen, on_step: OnStep | None = None) -> list[Completion]:
    """Sample counts[i] completions of prompt i (token ids, already chat-rendered). Returns them prompt by prompt.
    on_step: told the batch's progress after each decode step (see OnStep)."""
    import torch

    b = _Batch(cm, prompts, counts)
    eos = torch.tensor(cm.eos_ids, device=cm.device)
    alive = torch.ones(len(b.tokens), dtype=torch.bool, device=cm.device)
    made, finished = 0, 0
    for step in range(dec.max_new_tokens):
        nxt = sample_next(b.logits, dec, gen)
        stop = torch.isin(nxt, eos) & alive
        for row, tok, is_stop, live in zip(b.rows.tolist(), nxt.tolist(), stop.tolist(), alive.tolist()):
            if live and not is_stop:
                b.tokens[row].append(tok)
                made += 1
            elif live:
                b.finish[row] = "stop"
                finished += 1
        alive = alive & ~stop
        if on_step is not None:
            n = len(b.tokens)
            on_step((finished + (n - finished) * (step + 1) / dec.max_new_tokens) / n, made)
        if not bool(alive.any()) or step == dec.max_new_tokens - 1:
            break
        if int((~alive).sum()) * 8 >= len(alive):  # prune once 1/8 of the rows are done: a cache copy is not free
            b.keep(alive)
            nxt, alive = nxt[alive], alive[alive]
        b.step(nxt)
    prompt_lens = [len(p) for p, c in zip(prompts, counts) for _ in range(c)]
    texts = cm.tokenizer.batch_decode(b.tokens, skip_special_tokens=True)
    return [Completion(t.strip(), n, len(toks), f or "length")
            for t, n, toks, f in zip(texts, prompt_lens, b.tokens, b.finish)]


def make_generator(cm: models.ChatModel, seed: int, salt: str):
    """A torch RNG seeded from the run seed and what the batch holds, so a resumed run draws the same numbers."""
    import torch

    g = torch.Generator(device=cm.device)
    g.manual_seed(int(hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest()[:15], 16))
    return g


def generate(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding, batch_size: int = 64,
             progress: Progress | None = None) -> list[list[Completion]]:
    """k completions for each prompt (plain text; rendered with the model's chat template). Batched and
    length-sorted; returns one list per prompt, in the order given. Used by compare and iterate too.
    progress: told the completions done after each batch, and the work inside a batch as it decodes."""
    encoded = [cm.encode_prompt(p) for p in prompts]
    units = [(i, list(range(k))) for i in range(len(prompts))]
    out: list[list[Completion]] = [[] for _ in prompts]
    for batch in plan_batches(units, encoded, batch_size):
        have, rows = sum(len(o) for o in out), sum(len(idx) for _, idx in batch)
        step = None if progress is None else (
            lambda share, _tokens: progress.update(have, len(prompts) * k, partial=share * rows))
        done = run_units(cm, batch, encoded, dec, salt="|".join(_unit_salt(prompts[i], idx, k) for i, idx in batch),
                         on_step=step)
        for (i, _), comps in zip(batch, done):
            out[i].extend(comps)
        if progress:
            progress.update(sum(len(o) for o in out), len(prompts) * k)
            progress.check_stop()
    return out


def _unit_salt(prompt: str, indices: list[int], k: int) -> str:
    """What seeds a unit's share of a batch's RNG in `generate`: the prompt, plus which samples when the prompt's K
    were split over several batches (else every part of it would draw the same numbers, and repeat its samples)."""
    return prompt[:64] if len(indices) == k else f"{prompt[:64]}#{indices[0]}-{indices[-1]}"


def _split_units(units: list[tuple[int, list[int]]], batch_size: int) -> list[tuple[int, list[int]]]:
    """A unit wanting more samples than fit in a batch becomes several units of at most batch_size samples."""
    return [(i, idx[start:start + batch_size]) for i, idx in units for start in range(0, len(idx), batch_size)]


def plan_batches(units: list[tuple[int, list[int]]], encoded, batch_size: int):
    """Group (prompt index, sample indices) units, shortest prompts first, at most batch_size sequences a batch.

    A prompt's K samples may span several batches when K > batch_size (its parts keep their order), so no batch ever
    holds more than batch_size rows: memory follows --batch-size, not K. Units of up to batch_size samples are packed
    exactly as before the split existed, so seeded runs with K <= batch_size draw the same samples as they did."""
    batch, size = [], 0
    for unit in sorted(_split_units(units, batch_size), key=lambda u: len(encoded[u[0]])):
        if batch and size + len(unit[1]) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(unit)
        size += len(unit[1])
    if batch:
        yield batch


def run_units(cm, batch, encoded, dec: Decoding, salt: str, on_step: OnStep | None = None) -> list[list[Completion]]:
    """Generate one batch; returns the completions grouped per unit. on_step: see OnStep."""
    import torch

    counts = [len(idx) for _, idx in batch]
    with torch.inference_mode():
        flat = generate_batch(cm, [encoded[i] for i, _ in batch], counts, dec, make_generator(cm, dec.seed, salt),
                              on_step)
    grouped, start = [], 0
    for c in counts:
        grouped.append(flat[start:start + c])
        start += c
    return grouped




def stream_completion(cm: models.ChatModel, prompt: list[int], dec: Decoding, gen):
    """Token ids of one completion of `prompt` (chat-rendered ids), yielded as they are drawn: the chat playground
    streams them. The same decode loop as generate_batch (one row), so a greedy stream is generate's answer token
    for token. Each step runs in its own inference_mode block: a caller may take the next token from another thread
    (Gradio does), and grad mode is per thread."""
    import torch

    with torch.inference_mode():
        b = _Batch(cm, [prompt], [1])
    for step in range(dec.max_new_tokens):
        with torch.inference_mode():
            nxt = sample_next(b.logits, dec, gen)
        token = int(nxt[0])
        if token in cm.eos_ids:
            return
        yield token
        if step < dec.max_new_tokens - 1:
            with torch.inference_mode():
                b.step(nxt)
