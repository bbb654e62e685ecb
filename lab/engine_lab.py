"""The lab's own generation engine: a hand-written batched sampler on weights loaded in this process (lab.models),
adapters loaded onto that one base with PEFT and switched per batch (lab.adapters.adapters_on). The fastest engine
on CPU, and the only one that reads a ReadAfter inside its batches (the self-scorer's digits).

Why a hand-written decode loop instead of `model.generate(num_return_sequences=K)` per prompt:
  - each prompt is pre-filled once and its KV cache copied K times (generate pre-fills K copies);
  - many prompts share one batch, so each forward pass does more useful work;
  - finished sequences leave the batch (their cache rows are dropped), so long answers don't drag short ones;
  - top-p is exact but cheap: the nucleus is found inside the top 256 tokens (a sort over a 50k-128k vocabulary per
    step is what made plain generate slow), falling back to a full sort only for rows whose top 256 don't cover it;
  - only the last position's logits are computed during pre-fill (`logits_to_keep=1`);
  - the KV cache keeps room for the answer and decode steps write into it (transformers' DynamicLayer copies the
    whole cache on every step: half of a CPU decode step);
  - prompts that start alike (the self-scoring rubric) pre-fill that start once per batch;
  - on CPU, decode steps read each prompt's keys and values once for all its rows, and a shared start once for the
    whole batch (lab.shared_attention), instead of a copy per row;
  - a ReadAfter (the self-scorer's digit probabilities) runs on the decode's own cache, feeding only what follows
    the generated tokens.
Determinism: the same seed, batch size and units give the same completions. Each batch draws from a torch RNG
seeded by the run seed and what the batch holds (its units' salts, lab.generation.Unit), so a resumed run draws the
same numbers.
"""
from __future__ import annotations

import copy
import hashlib
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from lab import efficiency, models, shared_attention
from lab.adapters import adapters_on
from lab.generation import Completion, Decoding, Engine, OnDone, ReadAfter, ShiftedProgress, Unit
from lab.kvcache import cache_kwarg, new_cache, plain_layers, reserved_layer
from lab.progress import Progress

NUCLEUS_TOP_K = 256  # candidates searched for the top-p nucleus before drawing from the whole vocabulary
NUCLEUS_DRAWS = 32  # rejection rounds for a row whose nucleus is wider than that, before a full sort
# Called after every decode step of a batch: (share of the batch's work done, 0..1; tokens generated so far in it).
# A finished sequence counts whole, a live one by the steps it has taken out of max_new_tokens (an upper bound on
# what it still needs), so the share only grows. Callers throttle what they do with it (lab.progress does).
OnStep = Callable[[float, int], None]


@dataclass
class PromptState:
    """A batch's pre-filled prompts: the cache's layers as the pre-fill left them (shallow copies: keys and values
    [P, heads, width, dim], left-padded, or a shared start then the rest left-padded); mask [P, width]; last [P],
    the position of each prompt's last token."""

    layers: list
    mask: object
    last: object
    common: int = 0  # leading columns every prompt shares (pre-filled once), 0 where they were not split off


def sample_next(logits, dec: Decoding, gen):
    """Next token per row. logits: [B, V] -> ids [B]."""
    if dec.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / dec.temperature).softmax(-1)
    if dec.top_p >= 1:
        return draw(probs, gen)
    return _sample_nucleus(probs, dec.top_p, gen)


def draw(probs, gen):
    """One token per row from probs [B, V], by inverse transform: the first token whose cumulative mass (float64)
    exceeds a uniform draw. -> ids [B]. torch.multinomial makes the same draw but took 18 ms for 16 rows of a 49k
    vocabulary on one CPU core, this 3.6 ms (1.7 ms in float32, too coarse near 1); it stays where a device has no
    float64 (Apple's mps)."""
    import torch

    if not has_float64(probs.device):
        return torch.multinomial(probs, 1, generator=gen).squeeze(1)
    cdf = probs.double().cumsum(-1)
    u = torch.rand((cdf.shape[0], 1), generator=gen, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)


def has_float64(device) -> bool:
    return device.type != "mps"


def _sample_nucleus(probs, top_p: float, gen):
    """Exact top-p sampling without sorting the whole vocabulary for every row.

    A row's nucleus is the smallest set of most likely tokens holding >= top_p of the mass: the tokens whose more
    likely tokens hold less than top_p. It is looked for among the row's top 256 tokens (a peaked distribution:
    most rows of a trained model); a flatter row draws from its whole distribution and keeps a draw that lies in the
    nucleus, drawing again otherwise (rejection: the kept draws follow the nucleus's renormalised probabilities
    exactly, and a draw is kept with probability >= top_p); a row still unlucky after NUCLEUS_DRAWS rounds is
    sorted in full. probs: [B, V] -> ids [B]."""
    import torch

    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    top, ids = probs.topk(min(NUCLEUS_TOP_K, probs.shape[-1]), dim=-1)  # sorted, descending
    covered = top.sum(-1) >= top_p
    top, ids = top[covered], ids[covered]
    keep = (top.cumsum(-1) - top) < top_p  # the mass strictly above a token is still short of top_p
    out[covered] = ids.gather(-1, torch.multinomial(top * keep, 1, generator=gen)).squeeze(1)
    todo = (~covered).nonzero().squeeze(1)
    for _ in range(NUCLEUS_DRAWS):
        if todo.numel() == 0:
            return out
        rows = probs[todo]
        x = draw(rows, gen)
        inside = (rows * (rows > rows.gather(-1, x[:, None]))).sum(-1) < top_p
        out[todo[inside]] = x[inside]
        todo = todo[~inside]
    if todo.numel():
        top, ids = probs[todo].sort(dim=-1, descending=True)
        keep = (top.cumsum(-1) - top) < top_p
        out[todo] = ids.gather(-1, torch.multinomial(top * keep, 1, generator=gen)).squeeze(1)
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


SHARED_PREFIX_MIN = 64  # prompts of a batch that start with this many equal tokens pre-fill them once
READ_ROOM = 32  # cache positions kept past the answer for a ReadAfter ("\nScore: " and a re-tokenized end)


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (less one, so each prompt keeps a token of its own)."""
    if len(prompts) < 2:
        return 0
    return max(0, min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1))


def prefill(cm: models.ChatModel, prompts: list[list[int]], reserve: int = 0):
    """Run the prompts through the model once. -> (last-position logits [P, V], the cache (room for `reserve`
    more positions), PromptState). Where the prompts share a long start (SHARED_PREFIX_MIN tokens: the self-scoring
    rubric, a judge's instructions) and the model's layers are plain (plain_layers), that start runs once and its
    keys and values are copied to every row; the rest of each prompt follows, left-padded, the gap masked and
    positions continuing from the shared part. The state holds shallow copies of the cache's layers as the pre-fill
    left them: their tensors are views that later updates write past (or replace), so it stays valid while the
    cache grows."""
    import torch

    cache = new_cache(cm.model, reserve)
    common = shared_prefix(prompts) if plain_layers(cache) else 0
    if common < SHARED_PREFIX_MIN:
        ids, mask = left_pad(prompts, cm.tokenizer.pad_token_id, cm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = cm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_kwarg(cm.model): cache})
    else:
        ids, rest = left_pad([p[common:] for p in prompts], cm.tokenizer.pad_token_id, cm.device)
        cache = new_cache(cm.model, ids.shape[1] + reserve)  # room for the rests too
        head = torch.tensor([prompts[0][:common]], device=cm.device)
        cm.model(input_ids=head, position_ids=torch.arange(common, device=cm.device)[None], use_cache=True,
                 logits_to_keep=1, **{cache_kwarg(cm.model): cache})
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=cm.device))
        mask = torch.cat([torch.ones((len(prompts), common), dtype=rest.dtype, device=cm.device), rest], dim=1)
        positions = common - 1 + rest.cumsum(-1)
        out = cm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_kwarg(cm.model): cache})
        positions = torch.cat([positions.new_zeros((len(prompts), common)), positions], dim=1)
    state = PromptState([copy.copy(layer) for layer in cache.layers], mask, positions[:, -1],
                        common if common >= SHARED_PREFIX_MIN else 0)
    return out.logits[:, -1], cache, state


def read_tails(cm: models.ChatModel, state: PromptState, of: list[int], tails: list[list[int]],
               ids: tuple[int, ...]) -> list[list[float]]:
    """P(ids) after prompt of[i] + tails[i], renormalised over ids, in one forward pass over the tails only.

    The tails are left-padded in a block after the (left-padded) cached prompts, so every row ends in the last
    column and only that column's logits are computed; the gap between prompt and tail is masked out and the tail's
    positions continue from its prompt's last one. -> [len(tails)][len(ids)]."""
    import torch

    idx = torch.tensor(of, device=cm.device)
    cache = new_cache(cm.model)
    cache.layers = [copy.copy(layer) for layer in state.layers]
    for layer in cache.layers:  # the rows' prompts, copied (a sliding layer keeps its count of columns seen)
        layer.batch_select_indices(idx)
    tail_ids, tail_mask = left_pad(tails, cm.tokenizer.pad_token_id, cm.device)
    logits = cm.model(input_ids=tail_ids, attention_mask=torch.cat([state.mask[idx], tail_mask], dim=1),
                      position_ids=state.last[idx][:, None] + tail_mask.cumsum(-1), use_cache=True,
                      logits_to_keep=1, **{cache_kwarg(cm.model): cache}).logits[:, -1]
    return logits[:, list(ids)].float().softmax(-1).tolist()


def read_whole(cm: models.ChatModel, texts: list[list[int]], ids: tuple[int, ...]) -> list[list[float]]:
    """P(ids) after each token list (prompt + tail), renormalised over ids: one plain forward pass, left-padded, no
    cache reused. For models whose layers are not plain (plain_layers): a sliding window counts the masked gap
    between a cached prompt and a tail as columns, so those reads could not run on a cache."""
    x, mask = left_pad(texts, cm.tokenizer.pad_token_id, cm.device)
    logits = cm.model(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      logits_to_keep=1).logits[:, -1]
    return logits[:, list(ids)].float().softmax(-1).tolist()


def read_after(cm: models.ChatModel, prompts: list[list[int]], tails: list[list[int]], of: list[int],
               ids: tuple[int, ...], batch_size: int) -> list[list[float]]:
    """read_tails for completions written elsewhere (vLLM): tails[i] follows prompts[of[i]]; batch_size tails at a
    time, each distinct prompt of a batch pre-filled once (a prompt's R judgments share it)."""
    import torch

    out: list[list[float]] = []
    plain = plain_layers(new_cache(cm.model))
    for start in range(0, len(tails), batch_size):
        chunk = range(start, min(start + batch_size, len(tails)))
        if not plain:
            with torch.inference_mode():
                out.extend(read_whole(cm, [prompts[of[i]] + tails[i] for i in chunk], ids))
            continue
        uniq = sorted({of[i] for i in chunk})
        where = {p: n for n, p in enumerate(uniq)}
        with torch.inference_mode():
            _, _, state = prefill(cm, [prompts[p] for p in uniq])
            out.extend(read_tails(cm, state, [where[of[i]] for i in chunk], [tails[i] for i in chunk], ids))
    return out


class _Batch:
    """Live decoding state. Row i of every tensor belongs to sequence `rows[i]` of the batch; rows are sorted by
    prompt. A row's context (what `mask` describes): the left-padded prompts (`width` columns), then one column per
    decode step, the same step for every row (a finished row keeps being fed until it is dropped; its columns after
    the finish are never read). With `levels` (lab.shared_attention) the prompts' part is held once per prompt
    there and `cache` holds the decode steps' columns only; without, `cache` holds every row's whole context."""

    def __init__(self, cm: models.ChatModel, prompts: list[list[int]], counts: list[int], reserve: int = 0):
        import torch

        self.cm = cm
        self.cache_arg = cache_kwarg(cm.model)
        self.plain = plain_layers(new_cache(cm.model))  # reads run on the decode's cache; else on prompt + tail
        shared = self.plain and (max(counts) > 1 or shared_prefix(prompts) >= SHARED_PREFIX_MIN) \
            and shared_attention.applies(cm.model, cm.device)  # something to share, and a model it applies to
        logits, cache, state = prefill(cm, prompts, 0 if shared else reserve)
        self.expand = torch.arange(len(prompts), device=cm.device).repeat_interleave(
            torch.tensor(counts, device=cm.device))  # row -> its prompt
        self.levels = None  # shared_attention.Levels: the prompts' keys held once, the cache the rows' own tokens
        if shared:
            self.levels = shared_attention.Levels(state.layers, state.mask, state.common, self.expand)
            self.cache = new_cache(cm.model, reserve)
        else:  # each prompt's cache copied once per sample
            cache.batch_select_indices(self.expand)
            self.cache = cache
        self.logits = logits[self.expand]
        self.prompts = prompts
        self.width = state.mask.shape[1]
        self.mask, self.pos = state.mask[self.expand], state.last[self.expand]
        self.prompt_last = self.pos  # each row's last prompt position
        self.rows = torch.arange(len(self.expand), device=cm.device)
        self.tokens: list[list[int]] = [[] for _ in range(len(self.expand))]
        self.finish: list[str | None] = [None] * len(self.expand)

    def step(self, next_ids) -> None:
        import torch

        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.pos = self.pos + 1
        kw = {self.cache_arg: self.cache}
        if self.levels is not None:  # the shared attention knows each row's context; no mask to build
            kw[shared_attention.LEVELS_KWARG] = self.levels
        out = self.cm.model(input_ids=next_ids[:, None], attention_mask=None if self.levels else self.mask,
                            position_ids=self.pos[:, None], use_cache=True, **kw)
        self.logits = out.logits[:, -1]

    def keep(self, alive) -> None:
        """Drop finished rows from every tensor and the KV cache."""
        idx = alive.nonzero().squeeze(1)
        self.cache.batch_select_indices(idx)
        if self.levels is not None:
            self.levels.keep(idx)
        self.mask, self.pos, self.rows, self.logits = self.mask[idx], self.pos[idx], self.rows[idx], self.logits[idx]
        self.prompt_last = self.prompt_last[idx]

    def read(self, local: list[int], tails: list[list[int]], fed: list[int], ids: tuple[int, ...],
             last: bool = False) -> list[list[float]]:
        """P(ids) after prompt + tails[n] for the batch rows `local` (renormalised over ids), on the decode's own
        cache: where a tail starts with the tokens the row generated (the first fed[n] of them are in the cache), only
        the rest of it is run. Rests of similar length share a forward pass (one tail that differs from its tokens
        early, e.g. a judgment whose leading space was stripped, must not widen everyone's pass). last: the decode
        is over, so a pass over every row may extend the batch's own cache instead of a copy.
        -> [len(local)][len(ids)]."""
        reuse = [len(os.path.commonprefix([self.tokens[row][:f], tail[:-1]]))  # the tail keeps a token to run
                 for row, tail, f in zip(self.rows[local].tolist(), tails, fed)]
        groups: dict[int, list[int]] = {}
        for n, (tail, r) in enumerate(zip(tails, reuse)):
            groups.setdefault((len(tail) - r - 1).bit_length(), []).append(n)  # rests of 1, 2, 3-4, 5-8 ... tokens
        out: list[list[float]] = [[] for _ in local]
        for group in groups.values():
            probs = self._read_rest([local[n] for n in group], [tails[n] for n in group], [reuse[n] for n in group],
                                    ids, last and len(group) == len(self.rows))
            for n, p in zip(group, probs):
                out[n] = p
        return out

    def _read_rest(self, local: list[int], tails: list[list[int]], reuse: list[int], ids: tuple[int, ...],
                   in_place: bool) -> list[list[float]]:
        import torch

        sel = torch.tensor(local, device=self.cm.device)
        if self.levels is not None:  # the rows' whole contexts, in the columns of a plain cache
            cache = new_cache(self.cm.model)
            room = max(len(t) - r for t, r in zip(tails, reuse))
            cache.layers = [reserved_layer(room) for _ in self.cache.layers]
            for layer, parts in zip(cache.layers, self.levels.contexts(sel, self.cache.layers)):
                layer.fill(parts)
        elif in_place:
            assert local == list(range(len(self.rows)))  # every row, in order: the batch's cache is the reads' cache
            cache = self.cache
        else:
            cache = new_cache(self.cm.model)
            cache.layers = [copy.copy(layer) for layer in self.cache.layers]
            for layer in cache.layers:  # a copy of the rows read (filled positions only); the batch keeps its own
                layer.batch_select_indices(sel)
        mask = self.mask[sel].clone()
        for n, same in enumerate(reuse):
            mask[n, self.width + same:] = 0  # generated columns past the shared start (and junk after a finish)
        rest_ids, rest_mask = left_pad([t[r:] for t, r in zip(tails, reuse)], self.cm.tokenizer.pad_token_id,
                                       self.cm.device)
        start = self.prompt_last[sel] + torch.tensor(reuse, device=self.cm.device)
        logits = self.cm.model(input_ids=rest_ids, attention_mask=torch.cat([mask, rest_mask], dim=1),
                               position_ids=start[:, None] + rest_mask.cumsum(-1), use_cache=True, logits_to_keep=1,
                               **{self.cache_arg: cache}).logits[:, -1]
        return logits[:, list(ids)].float().softmax(-1).tolist()


def generate_batch(cm: models.ChatModel, prompts: list[list[int]], counts: list[int], dec: Decoding,
                   gen, read: ReadAfter | None = None, on_step: OnStep | None = None) -> list[Completion]:
    """Sample counts[i] completions of prompt i (token ids, already chat-rendered). Returns them prompt by prompt,
    each with its ReadAfter probabilities where `read` asks for them (read on the decode's cache as rows finish,
    before they leave the batch). on_step: told the batch's progress after each decode step (see OnStep)."""
    import torch

    b = _Batch(cm, prompts, counts, reserve=dec.max_new_tokens + (READ_ROOM if read is not None else 0))
    on_cache = read is not None and b.plain
    eos = torch.tensor(cm.eos_ids, device=cm.device)
    alive = torch.ones(len(b.tokens), dtype=torch.bool, device=cm.device)
    probs: dict[int, list[float]] = {}
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
            if on_cache:
                _read_rows(b, (~alive).nonzero().squeeze(1).tolist(), read, probs)
            b.keep(alive)
            nxt, alive = nxt[alive], alive[alive]
        b.step(nxt)
    if on_cache:
        _read_rows(b, list(range(len(b.rows))), read, probs, last=True)
    elif read is not None:
        _read_on_prompts(b, read, probs)
    prompt_lens = [len(p) for p, c in zip(prompts, counts) for _ in range(c)]
    efficiency.add(tokens_in=sum(len(p) for p in prompts), tokens_out=sum(map(len, b.tokens)))
    texts = [_text(cm, toks) for toks in b.tokens]
    return [Completion(t, n, len(toks), f or "length", probs.get(row))
            for row, (t, n, toks, f) in enumerate(zip(texts, prompt_lens, b.tokens, b.finish))]


def _text(cm: models.ChatModel, tokens: list[int]) -> str:
    return cm.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _read_on_prompts(b: _Batch, read: ReadAfter, probs: dict[int, list[float]]) -> None:
    """The ReadAfter of every row by a plain forward over prompt + tail (read_whole): for models whose layers are
    not plain (sliding windows keep fewer columns than they were fed)."""
    del b.cache  # the decode's cache is done with
    tails = read.tails([_text(b.cm, t) for t in b.tokens])
    rows = [i for i, t in enumerate(tails) if t is not None]
    if rows:
        of = b.expand[rows].tolist()
        probs.update(zip(rows, read_whole(b.cm, [b.prompts[p] + tails[i] for p, i in zip(of, rows)], read.ids)))


def _read_rows(b: _Batch, local: list[int], read: ReadAfter, probs: dict[int, list[float]], last: bool = False
               ) -> None:
    """The ReadAfter of the batch rows `local` (rows that finished, or every row at the end: last), into probs[row]."""
    rows = [b.rows[i].item() for i in local]
    tails = read.tails([_text(b.cm, b.tokens[r]) for r in rows])
    todo = [(i, r, t) for i, r, t in zip(local, rows, tails) if t is not None and r not in probs]
    if not todo:
        return
    # a row that stopped was fed every token it made; one cut by max_new_tokens not its last
    fed = [len(b.tokens[r]) - (b.finish[r] is None) for _, r, _ in todo]
    got = b.read([i for i, _, _ in todo], [t for _, _, t in todo], fed, read.ids, last and len(todo) == len(local))
    for (_, r, _), p in zip(todo, got):
        probs[r] = p



def make_generator(cm: models.ChatModel, seed: int, salt: str):
    """A torch RNG seeded from the run seed and what the batch holds, so a resumed run draws the same numbers."""
    import torch

    g = torch.Generator(device=cm.device)
    g.manual_seed(int(hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest()[:15], 16))
    return g



def generate(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding, batch_size: int = 64,
             progress: Progress | None = None, read: ReadAfter | None = None) -> list[list[Completion]]:
    """k completions for each prompt (plain text; rendered with the model's chat template) on cm's own weights (an
    adapter switched on with lab.adapters.adapters_on), batched and length-sorted, batch_size sequences at a time;
    one list per prompt, in the order given.
    read: probabilities read after each completion, on its batch's cache.
    progress: told the completions done after each batch, and the work inside a batch as it decodes."""
    encoded = [cm.encode_prompt(p) for p in prompts]
    units = [Unit(i, list(range(k)), salt=lambda idx, p=p: _unit_salt(p, idx, k)) for i, p in enumerate(prompts)]
    out: list[list[Completion]] = [[] for _ in prompts]
    for batch in plan_batches(units, encoded, batch_size):
        have, rows = sum(len(o) for o in out), sum(len(u.indices) for u in batch)
        step = None if progress is None else (
            lambda share, _tokens: progress.update(have, len(prompts) * k, partial=share * rows))
        done = run_units(cm, batch, encoded, dec, salt="|".join(u.salt_of(u.indices) for u in batch),
                         read=read, on_step=step)
        for u, comps in zip(batch, done):
            out[u.prompt].extend(comps)
        if progress:
            progress.update(sum(len(o) for o in out), len(prompts) * k)
            progress.check_stop()
    return out



def _unit_salt(prompt: str, indices: list[int], k: int) -> str:
    """What seeds a unit's share of a batch's RNG in `generate`: the prompt, plus which samples when the prompt's K
    were split over several batches (else every part of it would draw the same numbers, and repeat its samples)."""
    return prompt[:64] if len(indices) == k else f"{prompt[:64]}#{indices[0]}-{indices[-1]}"


def _split_units(units: list[Unit], batch_size: int) -> list[Unit]:
    """A unit wanting more samples than fit in a batch becomes several units of at most batch_size samples."""
    return [replace(u, indices=u.indices[start:start + batch_size]) for u in units
            for start in range(0, len(u.indices), batch_size)]


def plan_batches(units: list[Unit], encoded, batch_size: int):
    """Group (prompt index, sample indices) units, shortest prompts first, at most batch_size sequences a batch.

    A prompt's K samples may span several batches when K > batch_size (its parts keep their order), so no batch ever
    holds more than batch_size rows: memory follows --batch-size, not K. Units of up to batch_size samples are packed
    exactly as before the split existed, so seeded runs with K <= batch_size draw the same samples as they did."""
    batch, size = [], 0
    for unit in sorted(_split_units(units, batch_size), key=lambda u: len(encoded[u.prompt])):
        if batch and size + len(unit.indices) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(unit)
        size += len(unit.indices)
    if batch:
        yield batch


def run_units(cm, batch: list[Unit], encoded, dec: Decoding, salt: str, read: ReadAfter | None = None,
              on_step: OnStep | None = None) -> list[list[Completion]]:
    """Generate one batch; returns the completions grouped per unit. on_step: see OnStep."""
    import torch

    counts = [len(u.indices) for u in batch]
    with torch.inference_mode():
        flat = generate_batch(cm, [encoded[u.prompt] for u in batch], counts, dec, make_generator(cm, dec.seed, salt),
                              read=read, on_step=on_step)
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
        b = _Batch(cm, [prompt], [1], reserve=dec.max_new_tokens)
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


# ---- the engine entry ----------------------------------------------------------------------------------------------
class LabSession:
    """The loaded model with its adapters on (adapters_on's `select`; default: none, the model as it is):
    lab.generation.Session."""

    reads, one_call, per_sample = True, False, False

    def __init__(self, cm: models.ChatModel, select: Callable | None = None):
        self.cm, self.select = cm, select or (lambda _name: nullcontext(cm))

    def generate(self, prompts: list[str], k: int, dec: Decoding, batch_size: int = 64,
                 progress: Progress | None = None, adapter: str | None = None,
                 read: ReadAfter | None = None) -> list[list[Completion]]:
        with self.select(adapter) as cm:
            return generate(cm, prompts, k, dec, batch_size, progress, read)

    def units(self, units: list[Unit], encoded, dec: Decoding, batch_size: int, shown: ShiftedProgress,
              on_done: OnDone) -> float:
        """Units of one (adapter, group) at a time, in the order they first appear, batched by plan_batches."""
        runs: dict[tuple, list[Unit]] = {}
        for u in units:
            runs.setdefault((u.adapter, u.group), []).append(u)
        pace = _Pace(shown)
        for (adapter, _), part in runs.items():
            with self.select(adapter) as cm:
                for batch in plan_batches(part, encoded, batch_size):
                    shown.check_stop()
                    comps = run_units(cm, batch, encoded, dec, "|".join(u.salt_of(u.indices) for u in batch),
                                      on_step=pace.step(sum(len(u.indices) for u in batch)))
                    for u, c in zip(batch, comps):
                        on_done(u, c)
                    pace.done(batch, comps)
        return pace.rate()


class _Pace:
    """A units call's progress: completions done, the batch in flight as `partial`, new tokens and their rate."""

    def __init__(self, shown: ShiftedProgress):
        self.shown, self.made, self.tokens, self.t0 = shown, 0, 0, time.time()
        shown.update(0)

    def rate(self) -> float:
        return round(self.tokens / max(time.time() - self.t0, 1e-6), 1)

    def step(self, rows: int) -> OnStep:
        """The batch's decoding (OnStep); lab.progress throttles the writes to one every half second."""
        def on_step(share: float, tokens: int) -> None:
            made = self.tokens + tokens
            self.shown.update(self.made, partial=share * rows, tokens=made,
                              tokens_per_s=made / max(time.time() - self.t0, 1e-6))
        return on_step

    def done(self, batch: list[Unit], comps: list[list[Completion]]) -> None:
        self.made += sum(len(u.indices) for u in batch)
        self.tokens += sum(c.completion_tokens for cs in comps for c in cs)
        self.shown.update(self.made, tokens=self.tokens, tokens_per_s=self.rate())


@contextmanager
def session(cm: models.ChatModel, adapters: dict[str, Path]) -> Iterator[LabSession]:
    with adapters_on(cm, adapters) as select:
        yield LabSession(cm, select)


ENGINE = Engine("the lab's batched sampler, on the model loaded in this process (fastest on CPU)",
                lambda: (True, "the lab's batched sampler: always there"), models.load, session, keyed=False)
