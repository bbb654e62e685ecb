"""The decode loop's KV cache: layers with room reserved for the answer, written in place (transformers' own layer
copies the whole cache on every decode step). Same numbers as the plain DynamicCache, on the real tiny model."""
import pytest
import torch

from lab import generation


def decode(tiny, reserve: int, steps: int = 6):
    """Greedy decode of two prompts (3 and 2 rows) through lab.generation's batch; -> (logits per step, batch)."""
    prompts = [tiny.encode_prompt("Say hi."), tiny.encode_prompt("Name three fruits, please.")]
    out = []
    with torch.inference_mode():
        b = generation._Batch(tiny, prompts, [3, 2], reserve=reserve)
        for n in range(steps):
            out.append(b.logits.clone())
            nxt = b.logits.argmax(-1)
            if n == 2:  # a finished row leaves the batch mid-way, as in generate_batch
                alive = torch.tensor([True, False, True, True, True])
                b.keep(alive)
                nxt = nxt[alive]
            b.step(nxt)
    return out, b


def test_reserved_cache_gives_the_dynamic_cache_logits(tiny):
    plain, _ = decode(tiny, reserve=0)
    reserved, b = decode(tiny, reserve=8)
    assert type(b.cache.layers[0]).__name__ == "ReservedLayer"
    for a, r in zip(plain, reserved):
        assert a.shape == r.shape and torch.allclose(a, r, atol=1e-5)


def test_decode_steps_write_in_place(tiny):
    _, b = decode(tiny, reserve=8, steps=3)
    layer = b.cache.layers[0]
    buffer, length = layer.buffers[0].data_ptr(), layer.get_seq_length()
    with torch.inference_mode():
        for _ in range(4):
            b.step(b.logits.argmax(-1))
    assert layer.buffers[0].data_ptr() == buffer  # no copy per step: the room was reserved
    assert layer.get_seq_length() == length + 4 == layer.keys.shape[-2]
    with torch.inference_mode():
        for _ in range(6):  # past the reserve: the layer grows into a new buffer, keeping what it held
            before = layer.keys.clone()
            b.step(b.logits.argmax(-1))
            assert torch.equal(layer.keys[..., :before.shape[-2], :], before)
    assert layer.buffers[0].data_ptr() != buffer


def test_prefill_state_stays_valid_while_its_cache_grows(tiny):
    """read_after reads on a PromptState: views of the cache's prefill part, which later writes go past."""
    prompts = [tiny.encode_prompt("Say hi."), tiny.encode_prompt("Name three fruits, please.")]
    with torch.inference_mode():
        _, cache, state = generation.prefill(tiny, prompts, reserve=4)
        kept = [(k.clone(), v.clone()) for k, v in state.kv]
        for n, layer in enumerate(cache.layers):
            cache.update(torch.randn_like(layer.keys[..., :3, :]), torch.randn_like(layer.values[..., :3, :]), n)
    for (k, v), (k0, v0) in zip(state.kv, kept):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_a_shared_prompt_start_is_prefilled_once_with_the_same_logits(tiny, monkeypatch):
    from lab import score as scoring

    prompts = [tiny.encode_prompt(scoring.score_prompt(q, a)) for q, a in
               [("Say hi.", "Hi!"), ("Name three fruits.", "Apple, pear and plum, which are fruits.")]]
    assert generation.shared_prefix(prompts) >= generation.SHARED_PREFIX_MIN  # the rubric
    widths = []
    real = tiny.model.forward
    monkeypatch.setattr(tiny.model, "forward", lambda *a, **kw: widths.append(kw["input_ids"].shape) or real(*a, **kw))
    with torch.inference_mode():
        shared, _, state = generation.prefill(tiny, prompts)
        monkeypatch.setattr(generation, "SHARED_PREFIX_MIN", 10 ** 6)
        padded, _, _ = generation.prefill(tiny, prompts)
        alone = [real(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts]
    common = generation.shared_prefix(prompts)
    assert widths[0] == (1, common) and widths[1] == (2, max(map(len, prompts)) - common)  # once, then the rests
    assert torch.allclose(shared, padded, atol=1e-4) and torch.allclose(shared, torch.stack(alone), atol=1e-4)
    assert state.last.tolist() == [len(p) - 1 for p in prompts]
    assert generation.shared_prefix([prompts[0]]) == 0 and generation.shared_prefix([[1, 2], [1, 2]]) == 1


def test_a_reserved_layer_crops_back_like_a_dynamic_one(tiny):
    """The local judge cuts the cache back to the prompt after its reasoning, then feeds the verdict's tail."""
    _, b = decode(tiny, reserve=8, steps=3)
    layer = b.cache.layers[0]
    n = layer.get_seq_length()
    before = layer.keys[..., :n - 2, :].clone()
    b.cache.crop(-2)
    assert layer.get_seq_length() == n - 2 == layer.keys.shape[-2] and torch.equal(layer.keys, before)
    with pytest.raises(ValueError):
        layer.crop(3)
