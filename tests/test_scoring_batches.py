"""Self-scoring at the sampler's speed: judgments come from the generation engine in full batches, and the digit
probabilities of judgments without a score are read on the judge prompt's own pre-filled cache (no prompt runs
twice, no answer is scored alone)."""

import pytest

from lab import engine_lab, generation
from lab.engine_lab import LabSession
from lab import score as scoring
from lab.progress import Progress

PROMPTS = [scoring.score_prompt("Say hi.", "Hi!"), scoring.score_prompt("Name a fruit.", "Apple, a fruit."),
           scoring.score_prompt("Count to three.", "One, two, three.")]


def reference_probs(cm, prompt: str, judgment: str) -> list[float]:
    """P(digit 0-5) after judge prompt + judgment + "Score: " from one plain forward pass over the whole text."""
    import torch

    ctx, ids = scoring.digit_contexts(cm.tokenizer, [scoring.judgment_context(judgment)])
    x = torch.tensor([cm.encode_prompt(prompt) + ctx[0]])
    with torch.inference_mode():
        logits = cm.model(input_ids=x).logits[0, -1]
    return logits[list(ids)].float().softmax(-1).tolist()


def cfg(**kw) -> scoring.ScoreConfig:
    return scoring.ScoreConfig(**{"evaluations": 2, "judge_tokens": 12, "batch_size": 8, **kw})


def count_forwards(cm, monkeypatch) -> list[int]:
    """The width of every forward pass of cm's model (the real forward runs)."""
    widths: list[int] = []
    real = cm.model.forward

    def counting(*args, **kw):
        widths.append(kw["input_ids"].shape[1])
        return real(*args, **kw)

    monkeypatch.setattr(cm.model, "forward", counting)
    return widths


@pytest.fixture
def forwards(tiny, monkeypatch):
    return count_forwards(tiny, monkeypatch)


def test_forced_score_probs_equal_a_plain_forward_pass(tiny, forwards):
    prompts, texts = [PROMPTS[0], PROMPTS[0], PROMPTS[1]], ["Relevant.", "It says hi, and more", "An apple"]
    got = scoring.forced_score_probs(tiny, prompts, texts, batch_size=8)
    passes = len(forwards)
    want = [reference_probs(tiny, p, t) for p, t in zip(prompts, texts)]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    assert passes == 3  # the rubric both prompts start with once, their rests together, then the three judgments


def test_engine_reads_digit_probabilities_in_the_sampling_batch(tiny, forwards):
    """Every judgment of the tiny model is noise (no "Score: N"): all are scored from the digit probabilities,
    read in the same batch that wrote them: one prompt pre-fill, the decode steps, then passes over what follows
    the generated tokens, never over the prompt again."""
    out = scoring.local_scores(LabSession(tiny), PROMPTS, 2, cfg(), seed=0)
    assert all(e["method"] == "probabilities" for row in out for e in row)
    wide = [w for w in forwards if w > 1]  # the decode steps are one token wide
    encoded = [tiny.encode_prompt(p) for p in PROMPTS]
    common = engine_lab.shared_prefix(encoded)
    assert wide[:2] == [common, max(map(len, encoded)) - common]  # the pre-fill: the rubric once, then the rests
    longest = max(len(c) for c in scoring.digit_contexts(
        tiny.tokenizer, [scoring.judgment_context(e["raw"]) for row in out for e in row])[0])
    assert wide[2:] and all(w <= longest for w in wide[2:])  # the judgments at most, not prompt + judgment
    for prompt, row in zip(PROMPTS, out):
        for e in row:
            assert e["probs"] == pytest.approx(reference_probs(tiny, prompt, e["raw"]), abs=1e-4)
            assert e["score"] == pytest.approx(sum(d * p for d, p in enumerate(e["probs"])))


@pytest.mark.slow
def test_digit_reads_run_only_what_follows_the_generated_tokens(monkeypatch):
    """On the bundled chat model a judgment re-tokenizes to the tokens it was generated as, so the read after it
    runs just its last tokens and "Score: " on the decode's cache, not the judgment again: the probabilities still
    equal one plain forward pass over prompt + judgment + "Score: "."""
    from lab import models

    cm = models.load("bundled")
    widths = count_forwards(cm, monkeypatch)
    out = scoring.local_scores(LabSession(cm), PROMPTS, 2, cfg(judge_tokens=24), seed=0)
    read = [e for row in out for e in row if e["method"] == "probabilities"]
    contexts = scoring.digit_contexts(cm.tokenizer, [scoring.judgment_context(e["raw"]) for e in read])[0]
    passes = [w for w in widths if w > 1][2:]  # after the pre-fill (the shared rubric, then the rests)
    assert read and passes and max(passes) * 2 < min(len(c) for c in contexts)  # each pass: a few tokens
    for prompt, row in zip(PROMPTS, out):
        for e in row:
            if e["method"] == "probabilities":
                assert e["probs"] == pytest.approx(reference_probs(cm, prompt, e["raw"]), abs=1e-4)


def test_score_rows_fills_each_generation_batch(run, tiny, monkeypatch):
    """batch_size counts sequences: 10 answers scored twice with batch_size 5 are 5 full batches of 2 answers
    (4 sequences), not chunks of 5 answers that each end in a half-empty batch (4 + 4 + 2, twice)."""
    rows = []
    real = engine_lab.generate_batch

    def counting(cm, prompts, counts, dec, gen, **kw):
        rows.append(sum(counts))
        return real(cm, prompts, counts, dec, gen, **kw)

    monkeypatch.setattr(engine_lab, "generate_batch", counting)
    answers = [{"set": "train", "instruction_id": f"i{n}", "sample_index": 0, "prompt": f"Question {n}?",
                "text": "An answer." * (n + 1)} for n in range(10)]
    scorer = scoring.Scorer(cfg(batch_size=5), None, LabSession(tiny))
    assert scoring.score_rows(run, answers, scorer, Progress(quiet=True)) == 10
    assert rows == [4] * 5
    assert len(run.read("scores")) == 20 and {s["method"] for s in run.read("scores")} == {"probabilities"}


def test_batch_size_zero_is_96_where_the_prompts_are_shared_and_32_elsewhere(tiny, tmp_path, monkeypatch):
    """auto_batch: 96 sequences on CPU in float32 for a model whose decode shares the prompts' keys (a row holds
    only its own tokens), 32 where rows hold their whole context (a GPU, bf16, a sliding-window model, the shared
    attention off), never above the hosted cap; an explicit size is kept."""
    import types

    from transformers import Gemma3TextConfig

    from lab import limits, precision, shared_attention

    assert scoring.ScoreConfig().batch_size == 0
    assert generation.auto_batch(0, "cpu", "auto", tiny.path) == 96 and generation.auto_batch(8, "cpu", "auto", "") == 8
    assert generation.auto_batch(0, "cpu", "bfloat16", tiny.path) == 32
    Gemma3TextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=16).save_pretrained(tmp_path)
    assert generation.auto_batch(0, "cpu", "auto", str(tmp_path)) == 32
    monkeypatch.setenv("LAB_HOSTED", "1")
    assert limits.cap("batch") == 64 and generation.auto_batch(0, "cpu", "auto", tiny.path) == 64
    monkeypatch.delenv("LAB_HOSTED")
    monkeypatch.setattr(shared_attention, "ENABLED", False)
    assert generation.auto_batch(0, "cpu", "auto", tiny.path) == 32
    monkeypatch.setattr(shared_attention, "ENABLED", True)
    cuda = types.SimpleNamespace(kind="cuda", name="cuda:0", capability=(9, 0))
    monkeypatch.setattr(precision, "probe", lambda device=None: cuda)
    monkeypatch.setattr(precision, "resolve_dtype", lambda dev, dtype=None: "bfloat16")
    assert generation.auto_batch(0, "auto", "auto", tiny.path) == 32
    with pytest.raises(Exception, match="batch-size 0"):
        cfg(batch_size=-1).validate()


def test_score_run_resolves_batch_size_zero_for_its_judge(run, monkeypatch):
    """The score stage's default: 96 sequences per batch for the bundled-style CPU judge (48 answers x 2), and
    run.json records the size it used."""
    from lab.instructions import load_instructions
    from lab.sample import SampleConfig, sample_responses

    sample_responses(run, SampleConfig(model="tiny-random", k=2, max_new_tokens=4), Progress(quiet=True),
                     items=load_instructions("bundled", 25))
    rows = []
    real = engine_lab.generate_batch
    monkeypatch.setattr(engine_lab, "generate_batch",
                        lambda cm, prompts, counts, *a, **kw: rows.append(sum(counts)) or real(cm, prompts, counts,
                                                                                              *a, **kw))
    scoring.run(run, scoring.ScoreConfig(evaluations=2, judge_tokens=8), Progress(quiet=True))
    assert rows == [96, 4] and run.stage_settings("score")["batch_size"] == 96
