"""The KV cache the lab's decode loops (lab.engine_lab, the local judge of lab.judge_backends) write into.

`new_cache(model, reserve)` is a transformers DynamicCache whose full-attention layers are ReservedLayers: each keeps
`reserve` free positions after what it holds, so a decode step writes its keys and values in place instead of
concatenating (copying) the whole cache. `plain_layers` says whether a cache's layers are all full attention, which
the shared-prefix pre-fill and the reads on the decode's cache need. transformers is imported inside the functions
so that importing the lab stays fast.
"""
from __future__ import annotations

import functools


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; older 5.x (e.g. a GPU image's 5.17) only knows the
    old name."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def plain_layers(cache) -> bool:
    """Whether every layer of a cache is full attention held as a tensor per layer (Llama, SmolLM2, Qwen, Mistral
    without a window): sliding windows, shared or recurrent layers keep fewer columns than they were fed, so the
    shared-prefix pre-fill and the reads on the decode's cache (which mask columns) do not apply to them."""
    from transformers.cache_utils import DynamicLayer

    return bool(cache.layers) and all(type(layer) in (DynamicLayer, _reserved_layer_class()) for layer in cache.layers)


def new_cache(model, reserve: int = 0):
    """A transformers DynamicCache whose full-attention layers keep `reserve` free positions after what they hold
    (see ReservedLayer): a decode step writes its keys and values in place instead of copying the whole cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if reserve > 0:
        cache.layers = [reserved_layer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def _reserved_layer_class():
    """A DynamicLayer that grows into a buffer with room for `reserve` more positions. transformers' own layer
    concatenates on every update, copying the whole cache once per decode step: that copy took more than half of a
    step's time on CPU (32 rows of 700-token judge prompts, bundled model). `keys` / `values` are views of the
    filled part, so everything that reads a DynamicLayer reads this one the same way; views handed out earlier stay
    valid while the layer grows (later writes go past them; growing and a batch selection make new buffers), not
    after a crop (the next update writes over what was cropped)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve, self.buffers, self.filled = reserve, None, 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                try:
                    self.lazy_initialization(key_states, value_states)
                except TypeError:  # transformers releases whose layers initialise from the keys alone
                    self.lazy_initialization(key_states)
            new = key_states.shape[-2]
            if self.buffers is None or not self.filled or self.filled + new > self.buffers[0].shape[-2]:
                self._move(None, self.filled + new + self.reserve, like=(key_states, value_states))
            for buf, states in zip(self.buffers, (key_states, value_states)):
                buf[..., self.filled:self.filled + new, :] = states
            self.filled += new
            self._views()
            return self.keys, self.values

        def _move(self, rows, size: int, like=None) -> None:
            """New buffers of `size` positions holding what is filled (of the batch rows `rows`: None = all)."""
            keep = self.buffers is not None and self.filled > 0
            grown = []
            for was in (self.buffers if keep else like):
                src = was if rows is None else was[rows, ..., :self.filled, :]
                buf = src.new_empty((*src.shape[:-2], size, src.shape[-1]))
                if keep:
                    buf[..., :self.filled, :] = src[..., :self.filled, :]
                grown.append(buf)
            self.buffers = tuple(grown)

        def _views(self) -> None:
            self.keys, self.values = (buf[..., :self.filled, :] for buf in self.buffers)

        def get_seq_length(self) -> int:
            return self.filled

        def crop(self, tokens_to_remove: int) -> None:
            """Forget the last -tokens_to_remove positions (transformers' convention: a negative count)."""
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative count of positions to remove (got {tokens_to_remove})")
            if tokens_to_remove and self.filled:
                self.filled = max(0, self.filled + tokens_to_remove)
                self._views()

        def batch_select_indices(self, indices) -> None:
            """Keep the batch rows `indices` (in that order): new buffers, copying only the filled positions."""
            if self.buffers is not None and self.filled:
                self._move(indices, self.buffers[0].shape[-2])
                self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.buffers is not None:
                import torch

                self.batch_select_indices(torch.arange(self.buffers[0].shape[0], device=self.buffers[0].device)
                                          .repeat_interleave(repeats))

        def reorder_cache(self, beam_idx) -> None:
            self.batch_select_indices(beam_idx)

        def reset(self) -> None:
            self.buffers, self.filled = None, 0
            super().reset()

        def fill(self, parts) -> None:
            """Hold the concatenation of parts = [key pieces, value pieces] (each [rows, heads, n_i, dim], the
            same n_i for keys and values) along the positions, with `reserve` positions free after it."""
            try:
                self.lazy_initialization(parts[0][0], parts[1][0])
            except TypeError:
                self.lazy_initialization(parts[0][0])
            self.filled = sum(p.shape[-2] for p in parts[0])
            grown = []
            for pieces in parts:
                buf = pieces[0].new_empty((*pieces[0].shape[:2], self.filled + self.reserve, pieces[0].shape[-1]))
                at = 0
                for p in pieces:
                    buf[..., at:at + p.shape[-2], :] = p
                    at += p.shape[-2]
                grown.append(buf)
            self.buffers = tuple(grown)
            self._views()

    return ReservedLayer


def reserved_layer(reserve: int):
    """An empty ReservedLayer keeping `reserve` free positions after what it will hold."""
    return _reserved_layer_class()(reserve)
