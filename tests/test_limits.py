"""Caps on what a job may ask for (lab.limits), checked before anything is written; K split across batches."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from lab import engine_lab, limits, sample
from lab.cli import main
from lab.errors import LabError
from lab.engine_lab import plan_batches as _plan_batches
from lab.generation import Decoding, Unit, generate
from lab.sample import SampleConfig
from lab.store import Run

BIG_LLAMA = dict(vocab_size=128256, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                 num_attention_heads=128, num_key_value_heads=8, tie_word_embeddings=False)  # Llama-3.1-405B's shape


def big_config(folder: Path) -> Path:
    """A config.json with a 405B Llama's shape and no weights at all."""
    from transformers import LlamaConfig

    LlamaConfig(**BIG_LLAMA).save_pretrained(folder)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty local Hub cache for this test (huggingface_hub reads HF_HUB_CACHE once, at import)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def hub_config(cache: Path, repo_id: str) -> None:
    """A hub id whose config.json sits in the local Hub cache (what an earlier download leaves), so the size check
    of a hub id runs offline: only config.json is there, no weights."""
    rev = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    big_config(repo / "snapshots" / rev)


@pytest.fixture
def hosted(monkeypatch):
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "owner/preference-lab")
    for c in limits.CAPS.values():
        monkeypatch.delenv(c.env, raising=False)


# ---- the caps -------------------------------------------------------------------------------------------------------
def test_caps_have_defaults_on_a_space_and_none_elsewhere(monkeypatch):
    for var in ("SYSTEM", "SPACE_ID", "LAB_HOSTED", "LAB_MAX_K"):
        monkeypatch.delenv(var, raising=False)
    assert limits.cap("k") is None
    limits.check("k", "--k", 10**6)  # your own machine: nothing restricts you
    monkeypatch.setenv("LAB_MAX_K", "3")  # ...unless you set a cap yourself
    with pytest.raises(LabError, match="--k 4 is above this app's cap of 3 responses per instruction .*LAB_MAX_K"):
        limits.check("k", "--k", 4)
    monkeypatch.delenv("LAB_MAX_K")
    monkeypatch.setenv("LAB_HOSTED", "1")
    assert limits.cap("k") == 8 and limits.cap("model_params") == 1.5
    monkeypatch.setenv("LAB_MAX_K", "0")  # the owner turns a cap off
    assert limits.cap("k") is None
    monkeypatch.setenv("LAB_MAX_K", "lots")
    with pytest.raises(LabError, match="LAB_MAX_K='lots' is not a number"):
        limits.cap("k")


def test_model_size_is_read_from_the_config_alone(tmp_path, tiny, monkeypatch):
    """A 405B config counts to its 405.85 B parameters in well under a second (no weights anywhere); the count of
    tiny-random's config equals the loaded model's."""
    assert limits.count_parameters(str(big_config(tmp_path / "big"))) == 405_853_388_800
    assert limits.count_parameters(tiny.path) == sum(p.numel() for p in tiny.model.parameters())
    monkeypatch.setenv("LAB_MAX_MODEL_PARAMS", "1.5")
    with pytest.raises(LabError, match=r"has 405\.85 billion parameters, above this app's cap of 1\.5 .*"
                                       r"LAB_MAX_MODEL_PARAMS"):
        limits.check_model(str(tmp_path / "big"))
    limits.check_model("tiny-random")
    with pytest.raises(LabError, match=r"Could not reach the Hugging Face Hub to read nobody/missing's config.*"
                                       r"local folder, 'bundled'"):
        limits.check_model("nobody/missing")  # offline and not cached: unknown size is refused, not waved through


def test_a_hub_id_is_sized_from_its_config_json_only(hub_cache, monkeypatch):
    hub_config(hub_cache, "big-org/huge-llama")
    monkeypatch.setenv("LAB_MAX_MODEL_PARAMS", "70")
    with pytest.raises(LabError, match="big-org/huge-llama has 405.85 billion"):
        limits.check_model("big-org/huge-llama")
    assert sorted(p.name for p in hub_cache.rglob("*") if p.is_file()) == ["config.json", "main"]


def test_caps_refuse_a_job_before_anything_is_written(runs_dir, hosted, hub_cache, capsys):
    """On a Space the job's own process (here the CLI, as the job runs it) refuses K, N, tokens and a model above
    the caps with the variable to set, and the run is never created."""
    hub_config(hub_cache, "big-org/huge-llama")
    base = ["sample", "--run", "capped", "--model", "tiny-random", "--instructions", "bundled", "--n", "8"]
    for extra, message in [(["--k", "9"], "--k 9 is above this app's cap of 8 responses per instruction (the owner "
                                          "sets LAB_MAX_K)"),
                           (["--n", "33"], "cap of 32 instructions per job (the owner sets LAB_MAX_N)"),
                           (["--max-new-tokens", "300"], "cap of 256 new tokens per answer (the owner sets "
                                                         "LAB_MAX_NEW_TOKENS)"),
                           (["--model", "big-org/huge-llama"], "405.85 billion parameters, above this app's cap of "
                                                               "1.5 (the owner sets LAB_MAX_MODEL_PARAMS)")]:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (runs_dir / "capped").exists()


def test_training_steps_and_rounds_are_capped(run, hosted):
    from lab.iterate import IterateConfig

    from lab.train import TrainConfig

    with pytest.raises(LabError, match=r"--epochs 3 over 400 pairs \(300 steps\) is above this app's cap of 200 "
                                       r"training steps .*LAB_MAX_TRAIN_STEPS"):
        limits.check_train(TrainConfig(epochs=3, batch_size=4), 400, "tiny-random")
    limits.check_train(TrainConfig(max_steps=200), 10**6, "tiny-random")
    with pytest.raises(LabError, match="--rounds 4 is above .*LAB_MAX_ROUNDS"):
        limits.check_iterate(IterateConfig(rounds=4), 10, 10, "tiny-random")


# ---- K across batches -----------------------------------------------------------------------------------------------
def test_k_larger_than_the_batch_is_split_across_batches():
    """K=200 at batch size 4 used to be one batch of 200 rows; now no batch holds more than 4, every sample index of
    every prompt is planned exactly once, and units that fit are packed as before."""
    encoded = [[1] * 5, [1] * 3]
    batches = list(_plan_batches([Unit(0, list(range(200))), Unit(1, list(range(200)))], encoded, 4))
    assert max(sum(len(u.indices) for u in b) for b in batches) == 4
    for prompt in (0, 1):
        planned = [j for b in batches for u in b if u.prompt == prompt for j in u.indices]
        assert planned == list(range(200))
    assert list(_plan_batches([Unit(0, [0, 1]), Unit(1, [0, 1])], encoded, 4)) == [[Unit(1, [0, 1]), Unit(0, [0, 1])]]


def test_sampling_k_above_the_batch_size_keeps_batches_small_and_seeded(runs_dir, tmp_path, tiny, monkeypatch):
    rows = []
    real = engine_lab.generate_batch

    def counting(cm, prompts, counts, dec, gen, **kw):  # the real generator, the rows of each batch written down
        rows.append(sum(counts))
        return real(cm, prompts, counts, dec, gen, **kw)

    monkeypatch.setattr(engine_lab, "generate_batch", counting)
    src = tmp_path / "p.txt"
    src.write_text("Name a colour.\nName a fruit.\n")
    cfg = SampleConfig(model="tiny-random", instructions=str(src), n=2, k=10, max_new_tokens=6, batch_size=4,
                       temperature=1.0, top_p=1.0)
    first = sample.run(Run.open("one"), cfg)
    assert first["samples"] == 20 and max(rows) <= 4
    sample.run(Run.open("two"), cfg)
    texts = [[s["text"] for s in Run.open(name).read("samples")] for name in ("one", "two")]
    assert texts[0] == texts[1]  # same seed, batch size and instructions: the same samples


def test_generate_draws_each_part_of_a_split_prompt_afresh(tiny):
    """The parts of one prompt's K in different batches must not share the RNG stream (they would repeat samples)."""
    out = generate(tiny, ["Tell me something."], 8, Decoding(temperature=1.0, top_p=1.0, max_new_tokens=6),
                   batch_size=4)[0]
    assert len(out) == 8 and [c.text for c in out[:4]] != [c.text for c in out[4:]]


def test_an_absurd_k_is_refused_before_anything_is_written(runs_dir, capsys):
    """--k 100000000 used to write k into run.json, then allocate 563 GB and die with a traceback."""
    assert main(["sample", "--run", "huge", "--model", "tiny-random", "--n", "1", "--k", "5000",
                 "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "--k 5000 is more than 1000 responses per instruction" in err and "Traceback" not in err
    assert not (runs_dir / "huge").exists()


# ---- uploads --------------------------------------------------------------------------------------------------------
def test_uploads_are_capped_in_the_launch_and_in_the_handler(run, hosted, tmp_path, monkeypatch):
    from lab.ui import launch_kwargs
    from lab.ui.sample import start_sampling

    monkeypatch.setenv("LAB_MAX_UPLOAD_MB", "0.01")
    assert launch_kwargs()["max_file_size"] == 10485  # Gradio itself refuses bigger uploads
    big = tmp_path / "big.txt"
    big.write_text("Say hello.\n" * 2000)  # 22 KB
    with pytest.raises(gr.Error, match=r"is 0\.021 MB, above this app's cap of 0\.01 MB .*LAB_MAX_UPLOAD_MB"):
        start_sampling("t", "tiny-random", "file", str(big), 2, 2, 0.8, 0.95, 8, 0, 4)
    assert not run.path.exists()


def test_a_refused_job_puts_the_previous_upload_back(run, hosted, tmp_path):
    """The upload replaces the run's file only if the job it is for is accepted."""
    from lab.ui.sample import start_sampling

    first = tmp_path / "first.txt"
    first.write_text("Say hello.\n")
    run.save_upload(first)
    second = tmp_path / "second.txt"
    second.write_text("Say goodbye.\n")
    with pytest.raises(gr.Error, match="LAB_MAX_K"):
        start_sampling("t", "tiny-random", "file", str(second), 1, 9, 0.8, 0.95, 8, 0, 4)
    assert run.upload_path(".txt").read_text() == "Say hello.\n" and not (run.path / "jobs").exists()
    assert sorted(p.name for p in run.path.iterdir()) == ["uploads"]


def test_why_a_config_could_not_be_read_is_told_by_its_cause(monkeypatch):
    from lab.memory import config_error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline = str(config_error("meta-llama/Llama-3.2-1B-Instruct", OSError("We couldn't connect to 'https://hf.co'")))
    assert "Could not reach the Hugging Face Hub" in offline and "HF_HUB_OFFLINE=1 skips the retries" in offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "skips the retries" not in str(config_error("a/b", OSError("offline mode is enabled")))
    assert "is gated" in str(config_error("a/b", OSError("401 Client Error: Unauthorized for url")))
    local = str(config_error("/data/run-1403/model", ValueError("/data/run-1403/model/config.json is not valid JSON")))
    assert "is gated" not in local and "Could not read the config of /data/run-1403/model" in local
