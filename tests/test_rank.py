"""PairRM ranking on the tiny random PairRM (built offline), checked against llm-blender's own code paths."""
import json
from pathlib import Path

import numpy as np
import pytest

from lab import progress as lab_progress
from lab.cli import main
from lab.rank import RankConfig
from lab.errors import LabError
from lab import rank
from lab.rank import compare_all, load_ranker, resolve_ranker, scores_and_ranks
from lab.records.rankings import latest_rankings, preference
from prefdata import write_samples

SKY = "Why is the sky blue?"
SKY_ANSWERS = ["Rayleigh scattering: air scatters short (blue) wavelengths more than long ones.",
               "I don't know.", "Because the ocean reflects onto it.", "Blue light scatters most in air.", "sky"]
DATA = {"i1": (SKY, SKY_ANSWERS),
        "i2": ("Name a prime number.", ["7", "Seven is prime.", "9"]),
        "i3": ("Say hello.", ["Hello!", "Hi there, nice to meet you."])}


@pytest.fixture(scope="module")
def ranker():
    return load_ranker("tiny-random", device="cpu")


def test_tiny_ranker_is_a_real_llm_blender_checkpoint(ranker):
    folder = Path(resolve_ranker("tiny-random"))
    config = json.loads((folder / "config.json").read_text())
    assert config["ranker_type"] == "pairranker" and (folder / "model.safetensors").exists()
    assert (folder / "backbone" / "tokenizer.json").exists()
    assert type(ranker.model).__name__ == "CrossCompareReranker"
    assert ranker.limits == (1224, 412)  # PairRM's own limits
    ids = ranker.tokenizer("Rayleigh scattering makes the sky blue.")["input_ids"]
    assert ranker.tokenizer.unk_token_id not in ids  # the trained tokenizer covers plain English


def test_batched_pairs_equal_llm_blender_rank_and_compare(ranker):
    """All K*(K-1) ordered pairs in one batch give what llm-blender's sequential rank() and compare() give."""
    from lab.rank import blender_module

    folder = resolve_ranker("tiny-random")
    blender = blender_module().Blender()
    blender.loadranker(str(folder), device="cpu", model_name=str(folder / "backbone"))
    ours = compare_all(ranker, [(SKY, SKY_ANSWERS), ("Say hello.", ["Hello!", "Hi there."])], batch_size=7)
    upstream = blender.rank([SKY], [SKY_ANSWERS], return_scores=True, disable_tqdm=True)[0]
    scores, ranks = scores_and_ranks(ours[0]["logits"])
    assert scores == pytest.approx(upstream.tolist(), abs=1e-5)
    assert max(abs(s) for s in scores) > 1e-3  # the random model does tell responses apart
    assert ranks[scores.index(max(scores))] == 1 and sorted(ranks) == [1, 2, 3, 4, 5]
    logits = ours[1]["logits"]
    both_orders = blender.compare(["Say hello."], ["Hello!"], ["Hi there."], return_logits=True, disable_tqdm=True)
    assert logits[0][1] - logits[1][0] == pytest.approx(float(both_orders[0]), abs=1e-5)
    assert logits[0][0] == logits[1][1] == 0


def test_score_is_the_sum_over_the_others_divided_by_k():
    """What the docstring says a PairRM score is, written out by hand: sum over j != i of both-orders logits / K."""
    logits = [[0.0, 1.5, -0.5], [0.25, 0.0, 2.0], [1.0, -1.0, 0.0]]
    k = len(logits)
    by_hand = [sum(logits[i][j] - logits[j][i] for j in range(k) if j != i) / k for i in range(k)]
    scores, _ = scores_and_ranks(logits)
    assert scores == pytest.approx(by_hand, abs=1e-6)
    assert scores != pytest.approx([s * k / (k - 1) for s in by_hand], abs=1e-3)  # not the mean over the K-1 others


def test_rank_run_writes_documented_records(run, ranker):
    write_samples(run, DATA)
    summary = rank.run(run, RankConfig(ranker="tiny-random", device="cpu", batch_size=8))
    assert summary["ranked"] == 3 and summary["single_response"] == []
    recs = latest_rankings(run)
    r1 = recs["i1"]
    assert r1["sample_indices"] == [0, 1, 2, 3, 4] and len(r1["logits"]) == 5 and len(r1["logits"][0]) == 5
    assert r1["ranker"] == "tiny-random" and r1["source_max_length"] == 1224 and r1["truncated"] == [False] * 5
    assert r1["ranks"][r1["scores"].index(max(r1["scores"]))] == 1
    assert preference(r1, 0, 3) == pytest.approx(-preference(r1, 3, 0))
    alone = compare_all(ranker, [DATA["i2"]])[0]["logits"]  # batching across instructions changes nothing
    np.testing.assert_allclose(recs["i2"]["logits"], alone, atol=1e-5)
    assert run.stage_settings("rank")["ranker"] == "tiny-random"


def test_rank_resumes_and_reranks_what_changed(run, ranker):
    write_samples(run, DATA)
    cfg = RankConfig(ranker="tiny-random", device="cpu")
    rank.run(run, cfg)
    before = run.file("rankings").read_bytes()
    again = rank.run(run, cfg)
    assert again["ranked"] == 0 and again["already_ranked"] == 3
    assert run.file("rankings").read_bytes() == before  # nothing rewritten
    from prefdata import sample_line

    run.append("samples", [sample_line("i3", "Say hello.", 2, "Greetings.")])  # a new response for i3
    third = rank.run(run, cfg)
    assert third["ranked"] == 1 and latest_rankings(run)["i3"]["sample_indices"] == [0, 1, 2]
    assert len(run.read("rankings")) == 4  # appended: the old i3 ranking is still on disk


def test_long_response_is_flagged_truncated(run, ranker):
    long = " ".join(["word"] * 2000)
    write_samples(run, {"i1": (SKY, ["short answer", long])})
    rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))
    assert latest_rankings(run)["i1"]["truncated"] == [False, True]


def test_stop_keeps_finished_batches(run, ranker):
    write_samples(run, DATA)

    class StopAfterFirstBatch(lab_progress.Progress):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            lab_progress.request_stop()

    try:
        with pytest.raises(lab_progress.Stopped):
            rank.run(run, RankConfig(ranker="tiny-random", device="cpu", batch_size=20),
                     StopAfterFirstBatch(quiet=True))
    finally:
        lab_progress._STOP["requested"] = False
    assert [r["instruction_id"] for r in run.read("rankings")] == ["i1"]  # i1 filled the first batch (20 pairs)
    assert rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))["ranked"] == 2  # resumes with the rest


def test_bad_input_gives_clear_errors(run, ranker):
    with pytest.raises(LabError, match="no samples yet"):
        rank.run(run, RankConfig(ranker="tiny-random"))
    write_samples(run, {"i1": ("Q?", ["only one"])})
    with pytest.raises(LabError, match="single response"):
        rank.run(run, RankConfig(ranker="tiny-random"))
    with pytest.raises(LabError, match="batch-size"):
        RankConfig(batch_size=0).validate()
    with pytest.raises(LabError, match="Unknown ranker"):
        resolve_ranker("not a spec")
    with pytest.raises(LabError, match="neither an llm-blender ranker checkpoint"):
        resolve_ranker(str(run.path))


def test_one_response_instructions_are_reported_not_ranked(run, ranker):
    write_samples(run, {**DATA, "solo": ("Q?", ["only one"])})
    summary = rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))
    assert summary["single_response"] == ["solo"] and "solo" not in latest_rankings(run)


def test_real_pairrm_offline_says_so(run):
    write_samples(run, DATA)
    with pytest.raises(LabError, match="offline.*hf download llm-blender/PairRM.*tiny-random"):
        rank.run(run, RankConfig(ranker="llm-blender/PairRM"))
    assert not run.file("rankings").exists()


def test_cli_rank(run, ranker, capsys):
    write_samples(run, DATA)
    assert main(["rank", "--run", run.name, "--ranker", "tiny-random", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["ranked"] == 3
    assert main(["rank", "--run", run.name, "--ranker", "llm-blender/PairRM"]) == 2
    assert "offline" in capsys.readouterr().err


def test_cpu_passes_stay_within_the_attention_budget():
    from lab.rank import _chunks

    length = [100, 100, 100, 400, 400, 1000]
    assert _chunks(length, list(range(6)), 3, None) == [[0, 1, 2], [3, 4, 5]]  # the GPU: batch_size alone
    assert _chunks(length, list(range(6)), 8, 2 * 400 ** 2) == [[0, 1, 2], [3, 4], [5]]  # 2 rows of 400 fit
    assert _chunks(length, list(range(6)), 8, 1) == [[i] for i in range(6)]  # always at least one row a pass


def test_int8_mode_ranks_like_fp32_and_records_its_mode(run, ranker):
    import torch

    from lab.stats import spearman

    from lab.rank import native_bf16

    q = load_ranker("tiny-random", device="cpu", quantize="int8")
    layer = q.model.pretrained_model.encoder.layer[0]
    assert q.quantize == "int8" and "quantized" in type(layer.intermediate.dense).__module__
    assert layer.intermediate.dense.weight().qscheme() == torch.per_channel_affine  # a scale per output channel
    query = layer.attention.self.query_proj
    assert type(query) is torch.nn.Linear  # not int8: see lab.rank.QUANTIZE_SKIP
    assert query.weight.dtype == (torch.bfloat16 if native_bf16() else torch.float32)
    fp32 = load_ranker("tiny-random", device="cpu")
    groups = [DATA[k] for k in ("i1", "i2", "i3")]
    a = [s for m in compare_all(fp32, groups, 8) for s in scores_and_ranks(m["logits"])[0]]
    b = [s for m in compare_all(q, groups, 8) for s in scores_and_ranks(m["logits"])[0]]
    assert a != b and spearman(a, b) >= 0.95
    write_samples(run, DATA)
    rank.run(run, RankConfig(ranker="tiny-random", device="cpu", quantize="int8"))
    assert {r["quantize"] for r in run.read("rankings")} == {"int8"}
    again = rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))  # fp32 is another ranking: redone
    assert again["ranked"] == 3


def _fresh_tiny_ranker():
    from lab import rank

    folder = Path(rank.tiny_random_path())
    return rank._blender_parts(folder, json.loads((folder / "config.json").read_text()))[0].eval()


@pytest.mark.parametrize("bf16", [False, True])
def test_int8_runs_query_and_key_in_bf16_only_where_the_cpu_has_bf16(monkeypatch, bf16):
    import torch

    from lab import rank

    monkeypatch.setattr(rank, "native_bf16", lambda: bf16)  # emulated bf16 is slower than fp32: stays fp32
    reference = _fresh_tiny_ranker().pretrained_model.encoder.layer[0].attention.self.query_proj
    query = rank.quantize_int8(_fresh_tiny_ranker()).pretrained_model.encoder.layer[0].attention.self.query_proj
    x = torch.randn(3, 7, reference.in_features)
    with torch.inference_mode():
        out, want = query(x), reference(x)
    assert query.weight.dtype == (torch.bfloat16 if bf16 else torch.float32) and out.dtype == torch.float32
    assert torch.allclose(out, want, rtol=0.02, atol=0.02) and torch.equal(out, want) is not bf16


def test_int8_is_refused_off_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA L4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 9))
    with pytest.raises(LabError, match="--quantize int8 runs on CPU only"):
        load_ranker("tiny-random", device="cuda", quantize="int8")


def test_spearman_with_ties_and_undefined_cases():
    from lab.stats import ranks_of, spearman

    assert ranks_of([10, 30, 20, 20]) == [1, 4, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
