"""Decode-step attention that reads a batch's shared prompt keys and values once per step, not once per row.

A self-scoring batch holds R judgments of each of several answers. Every row's context is

    the rubric (the same for every row) | instruction + answer (the same for an answer's R rows) | its own judgment

and a plain cache holds a copy of all of it per row, so each decode step reads every row's ~640 prompt positions:
on a CPU that read, not the arithmetic, is what grows with the context (a step of 33 rows took 0.103 s at 50
positions and 0.158 s at 640, bundled SmolLM2-135M, 2 cores). Here the three parts stay apart:

  head   [1, kv_heads, C, dim]   the shared start (lab.engine_lab.prefill's shared prefix; C may be 0)
  rests  [P, kv_heads, W, dim]   each prompt's remainder, left-padded (bias: 0 where a token is, -inf on the pad)
  own    [B, kv_heads, t, dim]   each row's generated tokens: the decode's own cache (lab.engine_lab.s
                                 reserved layers), the only part a step writes

and a step computes softmax(q . [head | rest of its prompt | own]) @ V as three matrix products whose partial
scores share one maximum and one denominator: exactly the attention over the concatenation, with every shared key
read once for all the rows that use it. Rows are kept sorted by prompt (lab.engine_lab.s batches are), so a
prompt's rows are a run of the batch; the rests' product runs on a [P, most rows of a prompt] grid of queries.

Where it applies (`applies`): on CPU in fp32 (on a GPU the rows' reads are cheap and SDPA's fused kernels win; not
measured there), for decoder models whose attention is plain softmax attention through transformers' attention interface
(MODEL_TYPES) loaded with SDPA, in decode steps of one new token per row. The model's attention implementation is
switched once to NAME, a function that runs the three-part attention when a step passes LEVELS_KWARG and is
transformers' own SDPA otherwise (with SDPA's masks), so every other forward pass is what it was. Reads on the
decode's cache (the self-scorer's digit probabilities) run on a plain cache built for the rows read
(`Levels.contexts`). Batches where nothing is shared (one row per prompt and no common start: a chat reply) decode
the plain way. tests/test_generation_cache.py checks the logits against transformers' own cache.
Set LAB_SHARED_ATTENTION=0 to decode the plain way.
"""
from __future__ import annotations

import os

NAME = "lab_shared_prompt"  # the attention implementation registered with transformers
LEVELS_KWARG = "lab_levels"  # the forward keyword that carries a batch's Levels down to every attention layer
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # plain softmax attention, no softcap or sinks
ENABLED = os.environ.get("LAB_SHARED_ATTENTION", "1") != "0"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        levels = kwargs.pop(LEVELS_KWARG, None)
        if levels is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        return levels.attend(module.layer_idx, query, key, value, scaling), None

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same masks as SDPA for every other pass


def supports(config, device_kind: str, dtype: str) -> bool:
    """Whether decode steps of a model with this transformers config, on a device of this kind ("cpu", "cuda",
    "mps") in this dtype ("float32", ...), would use the three-part attention: plain full attention in every layer
    (no sliding window), on CPU, in float32 (its softmax runs in the model's dtype)."""
    if not ENABLED or device_kind != "cpu" or dtype != "float32":
        return False
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return not sliding and all(t == "full_attention" for t in getattr(config, "layer_types", None) or [])


def applies(model, device) -> bool:
    """Whether decode steps of this loaded model can use the three-part attention (switching it on if so)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if not supports(config, str(device).split(":")[0], str(base.dtype).removeprefix("torch.")):
        return False
    if config._attn_implementation == "sdpa":
        _register()
        config._attn_implementation = NAME
    return config._attn_implementation == NAME


class Levels:
    """The shared parts of a batch's context, per layer, and which prompt each row of the batch answers."""

    def __init__(self, layers, mask, common: int, prompt_of_row):
        """layers: the pre-filled prompts' cache layers (keys / values [P, kv_heads, width, dim], the first `common`
        columns equal in every prompt); mask [P, width] (1 = a token); prompt_of_row [B], sorted."""
        import torch

        self.head = [(layer.keys[:1, :, :common].contiguous(), layer.values[:1, :, :common].contiguous())
                     for layer in layers] if common else None
        self.rests = [(layer.keys[:, :, common:].contiguous(), layer.values[:, :, common:].contiguous())
                      for layer in layers]
        rest_mask = mask[:, common:].bool()
        self.bias = torch.zeros(rest_mask.shape, dtype=self.rests[0][0].dtype, device=rest_mask.device)
        self.bias.masked_fill_(~rest_mask, float("-inf"))
        self.bias = self.bias[:, None, None, :]  # [P, 1, 1, W]
        self._rows(prompt_of_row)

    def _rows(self, prompt_of_row) -> None:
        import torch

        if bool((prompt_of_row[1:] < prompt_of_row[:-1]).any()):
            raise ValueError("the batch's rows must be sorted by prompt")
        self.prompt_of_row = prompt_of_row
        counts = torch.bincount(prompt_of_row, minlength=self.bias.shape[0])
        self.width = int(counts.max())  # most rows of one prompt: the grid's second side
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(prompt_of_row), device=prompt_of_row.device) - starts[prompt_of_row]
        self.slot = prompt_of_row * self.width + rank  # row -> its place in the [P, width] grid

    def keep(self, idx) -> None:
        """The batch kept its rows `idx` (ascending): follow, and drop the prompts no row answers any more."""
        import torch

        rows = self.prompt_of_row[idx]
        live = torch.unique(rows)
        if len(live) < self.bias.shape[0]:
            self.rests = [(k.index_select(0, live), v.index_select(0, live)) for k, v in self.rests]
            self.bias = self.bias.index_select(0, live)
            rows = torch.searchsorted(live, rows)
        self._rows(rows)

    def attend(self, layer: int, query, own_keys, own_values, scaling: float):
        """Attention of one new token per row over head | its prompt's rest | its own tokens.
        query [B, heads, 1, dim]; own_* [B, kv_heads, t, dim] -> [B, 1, heads, dim] (what transformers' attention
        functions return)."""
        import torch

        rows, heads, q_len, dim = query.shape
        if q_len != 1:
            raise ValueError("the shared-prompt attention runs decode steps of one token per row")
        kv = own_keys.shape[1]
        group = heads // kv
        q = query.reshape(rows, kv, group, dim) * scaling  # query head h reads key head h // group
        rest_k, rest_v = self.rests[layer]
        prompts, cells = rest_k.shape[0], rest_k.shape[0] * self.width
        grid = lambda x: x.view(prompts, self.width, kv, group, -1).transpose(1, 2).reshape(  # noqa: E731
            prompts, kv, self.width * group, x.shape[-1])  # [P*width, kv, group, n] -> [P, kv, width*group, n]
        ungrid = lambda x: x.view(prompts, kv, self.width, group, -1).transpose(1, 2).reshape(  # noqa: E731
            cells, kv, group, x.shape[-1])[self.slot]  # the inverse, then back to the batch's rows

        own = q @ own_keys.transpose(-1, -2)  # [B, kv, group, t]
        placed = q.new_zeros((cells, kv, group, dim)).index_copy_(0, self.slot, q)
        rest = ungrid(grid(placed) @ rest_k.transpose(-1, -2) + self.bias)  # [B, kv, group, W]
        top = torch.maximum(own.amax(-1, keepdim=True), rest.amax(-1, keepdim=True))
        if self.head is not None:
            head_k, head_v = self.head[layer]
            by_head = q.transpose(0, 1).reshape(kv, rows * group, dim)
            head = (by_head @ head_k[0].transpose(-1, -2)).view(kv, rows, group, -1).transpose(0, 1)  # [B, kv, g, C]
            top = torch.maximum(top, head.amax(-1, keepdim=True))
        own, rest = (own - top).exp_(), (rest - top).exp_()
        total = own.sum(-1, keepdim=True) + rest.sum(-1, keepdim=True)
        out = own @ own_values
        spread = q.new_zeros((cells, kv, group, rest.shape[-1])).index_copy_(0, self.slot, rest)
        out += ungrid(grid(spread) @ rest_v)
        if self.head is not None:
            head = (head - top).exp_()
            total += head.sum(-1, keepdim=True)
            out += (head.transpose(0, 1).reshape(kv, rows * group, -1) @ head_v[0]).view(kv, rows, group, dim
                                                                                       ).transpose(0, 1)
        out /= total
        return out.reshape(rows, heads, 1, dim).transpose(1, 2).to(query.dtype)

    def contexts(self, sel, own_layers) -> list:
        """The whole context of the batch rows `sel`, per layer, in the columns a plain cache has it (head | its
        prompt's rest | own tokens): [[key pieces], [value pieces]] per layer, each piece [len(sel), kv_heads, n,
        dim] (lab.engine_lab.s reserved layers `fill` from them)."""
        of = self.prompt_of_row[sel]
        out = []
        for n, own in enumerate(own_layers):
            parts = []
            for which, mine in enumerate((own.keys, own.values)):
                pieces = [self.rests[n][which].index_select(0, of)]
                if self.head is not None:
                    pieces.insert(0, self.head[n][which].expand(len(sel), -1, -1, -1))
                if own.get_seq_length():  # nothing before the first decode step
                    pieces.append(mine.index_select(0, sel))
                parts.append(pieces)
            out.append(parts)
        return out
