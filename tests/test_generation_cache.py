"""The decode loop's KV cache: layers with room reserved for the answer, written in place (transformers' own layer
copies the whole cache on every decode step). Same numbers as the plain DynamicCache, on the real tiny model."""
import pytest
import torch

from lab import engine_lab, kvcache


def decode(tiny, reserve: int, steps: int = 6):
    """Greedy decode of two prompts (3 and 2 rows) through lab.generation's batch; -> (logits per step, batch)."""
    prompts = [tiny.encode_prompt("Say hi."), tiny.encode_prompt("Name three fruits, please.")]
    out = []
    with torch.inference_mode():
        b = engine_lab._Batch(tiny, prompts, [3, 2], reserve=reserve)
        for n in range(steps):
            out.append(b.logits.clone())
            nxt = b.logits.argmax(-1)
            if n == 2:  # a finished row leaves the batch mid-way, as in generate_batch
                alive = torch.tensor([True, False, True, True, True])
                b.keep(alive)
                nxt = nxt[alive]
            b.step(nxt)
    return out, b


@pytest.mark.parametrize("shared", [True, False])  # the rows' own tokens only (CPU), or every row's whole context
def test_reserved_cache_gives_the_dynamic_cache_logits(tiny, monkeypatch, shared):
    from lab import shared_attention

    monkeypatch.setattr(shared_attention, "ENABLED", shared)
    plain, _ = decode(tiny, reserve=0, steps=14)
    reserved, b = decode(tiny, reserve=8, steps=14)  # past the reserve: the layer grows once
    assert (b.levels is not None) == shared
    assert type(b.cache.layers[0]).__name__ == "ReservedLayer"
    for a, r in zip(plain, reserved):
        assert a.shape == r.shape and torch.allclose(a, r, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_decode_steps_write_in_place(tiny, monkeypatch, shared):
    from lab import shared_attention

    monkeypatch.setattr(shared_attention, "ENABLED", shared)
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
        _, cache, state = engine_lab.prefill(tiny, prompts, reserve=4)
        kept = [(layer.keys.clone(), layer.values.clone()) for layer in state.layers]
        for _ in range(3):  # inside the reserve, then past it (the layer grows into new buffers)
            for n, layer in enumerate(cache.layers):
                cache.update(torch.randn_like(layer.keys[..., :3, :]), torch.randn_like(layer.values[..., :3, :]), n)
    for layer, (k0, v0) in zip(state.layers, kept):
        k, v = layer.keys, layer.values
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_a_shared_prompt_start_is_prefilled_once_with_the_same_logits(tiny, monkeypatch):
    from lab import score as scoring

    prompts = [tiny.encode_prompt(scoring.score_prompt(q, a)) for q, a in
               [("Say hi.", "Hi!"), ("Name three fruits.", "Apple, pear and plum, which are fruits.")]]
    assert engine_lab.shared_prefix(prompts) >= engine_lab.SHARED_PREFIX_MIN  # the rubric
    widths = []
    real = tiny.model.forward
    monkeypatch.setattr(tiny.model, "forward", lambda *a, **kw: widths.append(kw["input_ids"].shape) or real(*a, **kw))
    with torch.inference_mode():
        shared, _, state = engine_lab.prefill(tiny, prompts)
        monkeypatch.setattr(engine_lab, "SHARED_PREFIX_MIN", 10 ** 6)
        padded, _, _ = engine_lab.prefill(tiny, prompts)
        alone = [real(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts]
    common = engine_lab.shared_prefix(prompts)
    assert widths[0] == (1, common) and widths[1] == (2, max(map(len, prompts)) - common)  # once, then the rests
    assert torch.allclose(shared, padded, atol=1e-4) and torch.allclose(shared, torch.stack(alone), atol=1e-4)
    assert state.last.tolist() == [len(p) - 1 for p in prompts]
    assert engine_lab.shared_prefix([prompts[0]]) == 0 and engine_lab.shared_prefix([[1, 2], [1, 2]]) == 1


def test_a_reserved_layer_crops_back_like_a_dynamic_one(tiny):
    """The local judge cuts the cache back to the prompt after its reasoning, then feeds the verdict's tail: the
    same logits as transformers' own layer doing the same."""
    ids = torch.tensor([tiny.encode_prompt("Say hi, then list three fruits.")])
    tail = torch.tensor([[5, 6, 7]])
    out = []
    with torch.inference_mode():
        for reserve in (0, 8):
            cache = kvcache.new_cache(tiny.model, reserve)
            tiny.model(input_ids=ids, cache=cache, use_cache=True)
            n = cache.get_seq_length()
            tiny.model(input_ids=tail, cache=cache, use_cache=True)
            cache.crop(-3)  # back to the prompt
            assert cache.get_seq_length() == n == cache.layers[0].keys.shape[-2]
            out.append(tiny.model(input_ids=tail.flip(1), cache=cache, use_cache=True).logits[0, -1])
    assert type(cache.layers[0]).__name__ == "ReservedLayer" and torch.allclose(out[0], out[1], atol=1e-5)
    with pytest.raises(ValueError):
        cache.layers[0].crop(3)


def _random_model(config):
    """A random causal LM with sharp logits (weights x3) and a stand-in tokenizer that writes ids as text."""
    import types

    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():
        p.data.mul_(3)
    tok = types.SimpleNamespace(pad_token_id=0, decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
    return types.SimpleNamespace(model=model, tokenizer=tok, device=torch.device("cpu"), eos_ids=[1, 2])


def _tails(texts):
    """The tokens each completion wrote (some changed midway, as a re-tokenization can), then two more."""
    out = []
    for t in texts:
        ids = [int(x) for x in t.split()]
        if ids and len(ids) % 3 == 0:
            ids[len(ids) // 2] = 63
        out.append(ids + [3, 4])
    return out


def _check_reads(cm, prompts, counts):
    """generate_batch with a ReadAfter: every row's read equals one plain forward over prompt + tail; -> finishes."""
    dec = engine_lab.Decoding(temperature=1.0, top_p=1.0, max_new_tokens=20, seed=0)
    with torch.inference_mode():
        comps = engine_lab.generate_batch(cm, prompts, counts, dec, torch.Generator().manual_seed(1),
                                          read=engine_lab.ReadAfter(_tails, (5, 6, 7)))
        of = [i for i, c in enumerate(counts) for _ in range(c)]
        for c, i in zip(comps, of):
            x = torch.tensor([prompts[i] + _tails([c.text])[0]])
            want = cm.model(input_ids=x).logits[0, -1][[5, 6, 7]].float().softmax(-1)
            assert torch.allclose(torch.tensor(c.read), want, atol=1e-4), (c.finish_reason, c.completion_tokens)
    return {c.finish_reason for c in comps}


SHARED = [(n * 7) % 60 + 3 for n in range(70)]  # a start every prompt shares (>= SHARED_PREFIX_MIN)


@pytest.mark.parametrize("shared", [True, False])
def test_reads_on_the_decode_cache_equal_a_plain_forward_for_stopped_and_cut_rows(monkeypatch, shared):
    """Rows that stop early (pruned mid-batch, read before they leave), rows cut by max_new_tokens (their last
    token never fed), tails that leave the generated tokens midway; with and without a shared prompt start; with
    the shared-prompt attention (the reads run on the rows' contexts rebuilt as a plain cache) and without."""
    from transformers import LlamaConfig

    from lab import shared_attention

    monkeypatch.setattr(shared_attention, "ENABLED", shared)
    cm = _random_model(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))  # 2 queries a key
    assert shared_attention.applies(cm.model, cm.device) == shared
    for prompts in ([list(range(5, 17)), list(range(20, 27)), list(range(30, 50))],
                    [SHARED + [3, 4], SHARED + list(range(5, 13)), SHARED + [33]]):
        assert _check_reads(cm, prompts, [6, 5, 5]) == {"stop", "length"}


def test_sliding_window_models_read_on_the_prompts_and_prefill_whole():
    """A sliding window keeps fewer columns than it was fed: no shared-start pre-fill, no reads on the decode's
    cache; the reads run on the kept prompts and still equal a plain forward."""
    from transformers import Gemma3TextConfig

    cm = _random_model(Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                                        layer_types=["sliding_attention", "full_attention"], pad_token_id=0))
    assert not kvcache.plain_layers(kvcache.new_cache(cm.model, 4))
    with torch.inference_mode():
        _, _, state = engine_lab.prefill(cm, [SHARED + [3, 4], SHARED + [5]])
    assert state.mask.shape[1] == len(SHARED) + 2 and state.mask[1, 0] == 0  # left-padded whole, not shared
    assert _check_reads(cm, [SHARED + [3, 4], SHARED + list(range(5, 13))], [3, 3])


# ---- the shared-prompt attention (lab.shared_attention) ----------------------------------------------------------
def _decode_with(cm, prompts, counts, shared: bool, monkeypatch, steps: int = 10):
    """Greedy decode through _Batch with the shared-prompt attention on or off; rows leave twice, the second time
    every row of a prompt. -> (logits per step, the batch)."""
    from lab import shared_attention

    monkeypatch.setattr(shared_attention, "ENABLED", shared)
    out = []
    with torch.inference_mode():
        b = engine_lab._Batch(cm, prompts, counts, reserve=4)  # the reserve runs out: the rows' cache grows
        assert (b.levels is not None) == shared
        for n in range(steps):
            out.append(b.logits.clone())
            nxt = b.logits.argmax(-1)
            if n in (2, 5):
                alive = torch.ones(len(nxt), dtype=torch.bool)
                alive[[1] if n == 2 else [0, 1]] = False  # then prompt 0's last rows: the prompt leaves too
                b.keep(alive)
                nxt = nxt[alive]
            b.step(nxt)
    return out, b


@pytest.mark.parametrize("rubric", [True, False])
def test_shared_prompt_attention_gives_the_plain_cache_logits(tiny, monkeypatch, rubric):
    """Each prompt's keys held once for its rows (and a shared start once for all: the scoring rubric) give the
    logits of a plain per-row cache, through rows leaving and a prompt losing all its rows."""
    from lab import score as scoring
    from lab import shared_attention

    pairs = [("Say hi.", "Hi!"), ("Name three fruits.", "Apple, pear and plum."), ("What is 2+2?", "Four.")]
    prompts = [tiny.encode_prompt(scoring.score_prompt(q, a) if rubric else q) for q, a in pairs]
    assert (engine_lab.shared_prefix(prompts) >= engine_lab.SHARED_PREFIX_MIN) == rubric
    plain, _ = _decode_with(tiny, prompts, [2, 3, 2], False, monkeypatch)
    shared, b = _decode_with(tiny, prompts, [2, 3, 2], True, monkeypatch)
    assert tiny.model.config._attn_implementation == shared_attention.NAME
    assert (b.levels.head is not None) == rubric and b.levels.bias.shape[0] == 2  # prompt 0 was dropped
    assert b.cache.get_seq_length() == 10  # 10 steps: the decode's cache holds the rows' own tokens only
    for a, s in zip(plain, shared):
        assert a.shape == s.shape and torch.allclose(a, s, atol=1e-4)


def test_other_passes_through_the_switched_attention_are_sdpa(tiny, monkeypatch):
    """Once switched, a forward pass without the batch's levels (pre-fill, reads, a padded batch) is transformers'
    SDPA with SDPA's masks: the same logits as before the switch."""
    from lab import shared_attention

    ids, mask = engine_lab.left_pad([tiny.encode_prompt("Say hi."), tiny.encode_prompt("Name three fruits.")], 0,
                                    tiny.device)
    with torch.inference_mode():
        monkeypatch.setattr(tiny.model.config, "_attn_implementation", "sdpa")
        before = tiny.model(input_ids=ids, attention_mask=mask).logits
        assert shared_attention.applies(tiny.model, tiny.device)
        assert tiny.model.config._attn_implementation == shared_attention.NAME
        after = tiny.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before[mask.bool()], after[mask.bool()], atol=1e-5)


def test_shared_prompt_attention_applies_on_cpu_to_plain_attention_models(tiny, monkeypatch):
    from transformers import Gemma3TextConfig

    from lab import shared_attention

    assert shared_attention.applies(tiny.model, torch.device("cpu"))
    assert not shared_attention.applies(tiny.model, torch.device("cuda", 0))  # SDPA's fused kernels there
    gemma = _random_model(Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    assert not shared_attention.applies(gemma.model, torch.device("cpu"))  # softcapping / sliding: not plain
    monkeypatch.setattr(shared_attention, "ENABLED", False)  # LAB_SHARED_ATTENTION=0
    assert not shared_attention.applies(tiny.model, torch.device("cpu"))


def _tiny_config(kind: str):
    import transformers

    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[kind]
    extra = {"sliding_window": None} if kind == "mistral" else {"head_dim": 8} if kind == "qwen3" else {}
    return cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, pad_token_id=0, **extra)


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3"])
def test_shared_prompt_attention_on_each_model_family_it_claims(kind, monkeypatch):
    """Every model type of shared_attention.MODEL_TYPES (llama above): the shared decode gives the per-row cache's
    logits (grouped queries, a shared start, rows leaving, a prompt dropped)."""
    from lab import shared_attention

    cm = _random_model(_tiny_config(kind))
    assert shared_attention.applies(cm.model, cm.device)
    prompts = [SHARED + [3, 4], SHARED + list(range(5, 13)), SHARED + [33]]
    plain, _ = _decode_with(cm, prompts, [2, 3, 2], False, monkeypatch)
    shared, b = _decode_with(cm, prompts, [2, 3, 2], True, monkeypatch)
    assert b.levels.head is not None
    for a, s in zip(plain, shared):
        assert torch.allclose(a, s, atol=1e-4)


def test_shared_prompt_attention_with_a_lora_adapter_on(tiny, monkeypatch):
    """Sampling with an adapter (iterate's rounds): the levels reach the attention through PEFT's wrapper and the
    logits are the per-row cache's, which differ from the base's (the adapter does something)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    import types

    cm = types.SimpleNamespace(**{k: getattr(tiny, k) for k in ("tokenizer", "device", "eos_ids")}, model=model)
    prompts = [tiny.encode_prompt("Say hi."), tiny.encode_prompt("Name three fruits, please.")]
    try:
        plain, _ = _decode_with(cm, prompts, [3, 2], False, monkeypatch, steps=6)
        shared, _ = _decode_with(cm, prompts, [3, 2], True, monkeypatch, steps=6)
        with model.disable_adapter():
            base, _ = _decode_with(cm, prompts, [3, 2], True, monkeypatch, steps=1)
    finally:
        model.unload()  # the session's tiny model without the adapter again
    assert not torch.allclose(base[0], shared[0], atol=1e-3)
    for a, s in zip(plain, shared):
        assert torch.allclose(a, s, atol=1e-4)
