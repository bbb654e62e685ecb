import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab import jobs, sample
from lab.sample import SampleConfig
from lab.errors import LabError
from lab.engine_lab import NUCLEUS_TOP_K, _sample_nucleus
from lab.generation import Decoding, generate
from lab.store import Run

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Hi", "Write a long story about a dragon who learns to cook soup in the mountains.", "2+2?"]


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("\n".join(f"Instruction number {i}: say something about the number {i}." for i in range(n)))
    return path


def cfg(src, **kw) -> SampleConfig:
    return SampleConfig(**{"model": "tiny-random", "instructions": str(src), "n": 3, "k": 2, "max_new_tokens": 8,
                           **kw})


def test_greedy_batched_matches_plain_generate(tiny):
    """Left padding, shared pre-fill and row pruning must not change what the model says."""
    dec = Decoding(temperature=0, top_p=1, max_new_tokens=12)
    ours = generate(tiny, PROMPTS, 2, dec, batch_size=6)
    for prompt, comps in zip(PROMPTS, ours):
        ids = torch.tensor([tiny.encode_prompt(prompt)])
        out = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                  eos_token_id=tiny.eos_ids, pad_token_id=tiny.tokenizer.pad_token_id)
        ref = tiny.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert comps[0].text == ref == comps[1].text
        assert comps[0].prompt_tokens == ids.shape[1]


def _hf_nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """The reference: the smallest most-likely set holding top_p of the mass (as transformers' TopP warper keeps)."""
    p, ids = probs.sort(descending=True)
    keep = (p.cumsum(-1) - p) < top_p
    return set(ids[keep].tolist())


@pytest.mark.parametrize("vocab,top_p", [(4, 0.8), (4, 0.81), (5000, 0.9), (50000, 0.95)])
def test_nucleus_sampling_keeps_exactly_the_top_p_set(vocab, top_p):
    g = torch.Generator().manual_seed(0)
    if vocab == 4:
        probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    else:  # flat distributions whose nucleus is wider than the first 256 (and 4096) candidates
        probs = torch.rand(1, vocab, generator=g).pow(0.2).softmax(-1)
    allowed = _hf_nucleus(probs[0], top_p)
    draws = _sample_nucleus(probs.repeat(4000 if vocab == 4 else 64, 1), top_p, g).tolist()
    assert set(draws) <= allowed
    if vocab == 4:
        assert set(draws) == allowed  # every member of a small nucleus shows up


@pytest.mark.parametrize("float64", [True, False], ids=["inverse-transform", "multinomial-no-float64"])
@pytest.mark.parametrize("top_p", [0.9, 0.3, 1.0])
def test_sampling_follows_the_renormalised_nucleus(top_p, float64, monkeypatch):
    """The draws' frequencies match the exact top-p distribution (each nucleus token's probability over the nucleus's
    mass; nothing outside it), by a chi-square test over ten bins of the nucleus ranked by probability: a flat
    2,000-token row whose nucleus is wider than the first 256 candidates (drawn and rejected), and (top_p 1) the
    whole distribution (lab.engine_lab.draw); on CPU, and with the draw a device without float64 makes."""
    from scipy.stats import chisquare

    from lab import engine_lab
    from lab.engine_lab import sample_next

    monkeypatch.setattr(engine_lab, "has_float64", lambda device: float64)
    g = torch.Generator().manual_seed(1)
    logits = torch.rand(1, 2000, generator=g)  # e-fold spread: flat
    probs = logits.softmax(-1)[0]
    p, ids = probs.sort(descending=True)
    keep = (p.cumsum(-1) - p) < top_p
    assert keep.sum() > NUCLEUS_TOP_K  # the rejection path, not the top-256 one
    rank = torch.full((2000,), -1, dtype=torch.long)
    rank[ids[keep]] = torch.arange(int(keep.sum()))
    bins = torch.arange(int(keep.sum())) * 10 // int(keep.sum())  # the nucleus in ten bins of ranked tokens
    draws = torch.cat([sample_next(logits.repeat(4000, 1), Decoding(temperature=1.0, top_p=top_p, seed=0), g)
                       for _ in range(5)])
    ranks = rank[draws]
    assert (ranks >= 0).all()  # no draw outside the nucleus
    observed = torch.bincount(bins[ranks], minlength=10).double()
    expected = torch.zeros(10, dtype=torch.float64).index_add_(0, bins, p[keep].double())
    expected *= len(draws) / expected.sum()
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3, (observed, expected)


def test_sample_run_writes_records_and_resumes(run, tmp_path, tiny):
    src = write_prompts(tmp_path / "p.txt", 3)
    first = sample.run(run, cfg(src, k=2))
    assert first["samples"] == 6 and first["written_now"] == 6
    rec = run.read("samples")[0]
    assert set(rec) >= {"instruction_id", "sample_index", "prompt", "text", "model", "decoding", "prompt_tokens",
                        "completion_tokens", "finish_reason", "duplicate_of"}
    assert rec["decoding"] == {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "seed": 0}
    assert rec["finish_reason"] in ("stop", "length") and rec["completion_tokens"] <= 8
    again = sample.run(run, cfg(src, k=2))
    assert again["written_now"] == 0 and again["tokens_per_s"] is None  # rerun: nothing repeated, no rate to show
    assert first["file"] == str(run.file("samples")) and first["warnings"] == []
    run.append("judgments", [{"instruction_id": "x", "a": 0, "b": 1}])  # a later stage already ran on K=2
    third = sample.run(run, cfg(src, k=3))  # asking for more samples adds only the missing index
    assert third["written_now"] == 3
    assert "3 new samples joined this run after its judgments were made" in third["warnings"][0]
    keys = [(s["instruction_id"], s["sample_index"]) for s in run.read("samples")]
    assert len(keys) == len(set(keys)) == 9
    assert len(run.read("instructions")) == 3
    assert run.stage_settings("sample")["k"] == 3
    run.append("scores", [{"set": "train", "instruction_id": "x", "sample_index": 0}])  # self-scored too
    assert "after its judgments, self-scores were made" in sample.run(run, cfg(src, k=4))["warnings"][0]


def test_identical_responses_are_flagged(run, tmp_path, tiny):
    src = write_prompts(tmp_path / "p.txt", 1)
    sample.run(run, cfg(src, n=1, k=3, temperature=0.0))
    dups = [s["duplicate_of"] for s in sorted(run.read("samples"), key=lambda s: s["sample_index"])]
    assert dups == [None, 0, 0]


def test_another_model_in_the_same_run_is_refused(run, tmp_path, tiny):
    src = write_prompts(tmp_path / "p.txt", 1)
    sample.run(run, cfg(src, n=1, k=1))
    with pytest.raises(LabError, match="new run"):
        sample.run(run, cfg(src, n=1, k=2, model="bundled"))


def test_more_samples_must_come_from_the_same_decoding(run, tmp_path, tiny):
    """K=1 at 8 tokens, then K=3 at 12: the first answer would be cut shorter than the two added to it."""
    src = write_prompts(tmp_path / "p.txt", 2)
    sample.run(run, cfg(src, n=2, k=1))
    before = run.file("samples").read_bytes()
    with pytest.raises(LabError, match=r"drawn with --max-new-tokens 8, not --max-new-tokens 12.*new run"):
        sample.run(run, cfg(src, n=2, k=3, max_new_tokens=12))
    with pytest.raises(LabError, match=r"--temperature 0.8; --top-p 0.95, not --temperature 0.5, --top-p 1.0"):
        sample.run(run, cfg(src, n=2, k=3, temperature=0.5, top_p=1.0))
    assert run.file("samples").read_bytes() == before  # refused before anything was written
    out = sample.run(run, cfg(src, n=2, k=3, seed=7))  # another seed draws from the same distribution: allowed
    assert out["written_now"] == 4 and len(run.read("samples")) == 6


@pytest.mark.slow
def test_resume_after_kill_loses_at_most_the_batch_in_flight(runs_dir, tmp_path, tiny):
    src = write_prompts(tmp_path / "p.txt", 12)
    run = Run.open("killed")
    argv = ["sample", "--run", "killed", "--model", "tiny-random", "--instructions", str(src), "--n", "12", "--k",
            "2", "--max-new-tokens", "120", "--batch-size", "2"]
    jobs.start(run, argv, "sample")
    deadline = time.time() + 120
    while time.time() < deadline and len(run.read("samples")) < 4:
        time.sleep(0.1)
    pid = jobs.status(run)["pid"]
    os.killpg(pid, signal.SIGKILL)  # no chance to clean up
    jobs.wait(run, timeout_s=10)
    before = run.read("samples")
    assert 4 <= len(before) < 24 and jobs.status(run)["state"] == "died"
    subprocess.run([sys.executable, "-m", "lab", *argv], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "LAB_RUNS_DIR": str(runs_dir)})
    after = run.read("samples")
    keys = [(s["instruction_id"], s["sample_index"]) for s in after]
    assert len(keys) == len(set(keys)) == 24
    assert after[: len(before)] == before  # nothing already written was touched


@pytest.mark.slow
def test_ctrl_c_stops_at_a_safe_point_and_says_how_to_resume(runs_dir, tmp_path, tiny):
    """The first Ctrl-C asks politely, like the app's Stop: the batch in flight ends, the command says how to go on,
    and running it again adds only what is missing."""
    src = write_prompts(tmp_path / "p.txt", 12)
    argv = [sys.executable, "-m", "lab", "sample", "--run", "ctrlc", "--model", "tiny-random", "--instructions",
            str(src), "--n", "12", "--k", "1", "--max-new-tokens", "120", "--batch-size", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LAB_RUNS_DIR": str(runs_dir)})
    run = Run.open("ctrlc")
    deadline = time.time() + 120
    while time.time() < deadline and len(run.read("samples")) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Stopping at the next safe point" in err and "stopped on request" in err
    assert "Run the same command again to resume." in err and "Traceback" not in err
    kept = run.read("samples")
    assert 2 <= len(kept) < 12
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "LAB_RUNS_DIR": str(runs_dir)})
    assert run.read("samples")[:len(kept)] == kept and len(run.read("samples")) == 12


@pytest.mark.slow
def test_stop_keeps_what_was_written(runs_dir, tmp_path, tiny):
    src = write_prompts(tmp_path / "p.txt", 40)
    run = Run.open("stopped")
    jobs.start(run, ["sample", "--run", "stopped", "--model", "tiny-random", "--instructions", str(src), "--n", "40",
                     "--k", "1", "--max-new-tokens", "200", "--batch-size", "1"], "sample")
    while len(run.read("samples")) < 2:
        time.sleep(0.1)
    st = jobs.stop(run, grace_s=30)
    assert st["state"] == "stopped" and "saved" in st["error"]
    assert 2 <= len(run.read("samples")) < 40
    assert jobs.active_job() is None


@pytest.mark.slow
def test_a_second_job_queues_while_one_runs(runs_dir, tmp_path, tiny):
    """One job at a time: another run's job waits its turn and then runs (it used to be refused with "Another job is
    running"); a second job on the same run is refused."""
    src = write_prompts(tmp_path / "p.txt", 40)
    a, b = Run.open("a"), Run.open("b")
    jobs.start(a, ["sample", "--run", "a", "--model", "tiny-random", "--instructions", str(src), "--n", "40", "--k",
                   "1", "--max-new-tokens", "200", "--batch-size", "1"], "sample")
    try:
        st = jobs.start(b, ["sample", "--run", "b", "--model", "tiny-random", "--instructions", str(src), "--n", "1",
                            "--k", "1", "--max-new-tokens", "4"], "sample")
        assert (st["state"], st["position"], st["ahead"]) == ("queued", 2, 1)
        with pytest.raises(LabError, match="already running on run 'a'"):
            jobs.start(a, ["sample", "--run", "a"], "sample")
    finally:
        jobs.stop(a, grace_s=30)
    assert jobs.wait(b, timeout_s=120)["state"] == "done" and len(b.read("samples")) == 1


def run_cli(*args: str, runs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LAB_RUNS_DIR": str(runs_dir)})


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "bad.jsonl").write_text('{"prompt": "ok"}\n{oops\n')
    (tmp / "noprompt.jsonl").write_text('{"text": "hi"}\n')
    (tmp / "nocol.csv").write_text("question\nwhat?\n")
    base = ["--model", "tiny-random", "--run", "r"]
    return [
        ([*base, "--instructions", str(tmp / "empty.txt")], "no instructions"),
        ([*base, "--instructions", str(tmp / "bad.jsonl")], "line 2 is not valid JSON"),
        ([*base, "--instructions", str(tmp / "noprompt.jsonl")], 'no "prompt"'),
        ([*base, "--instructions", str(tmp / "nocol.csv")], "no 'prompt' column"),
        ([*base, "--instructions", str(tmp / "missing.txt")], "does not exist"),
        ([*base, "--k", "0"], "--k must be at least 1"),
        ([*base, "--max-new-tokens", "100000"], "--max-new-tokens must be between"),
        (["--model", "tiny-random", "--run", "../escape"], "Invalid run name"),
        (["--model", "no such model", "--run", "r"], "Unknown model"),
        (["--model", "meta-llama/Llama-3.2-1B-Instruct", "--run", "r"], "Llama-3.2-1B-Instruct"),
    ]


def test_bad_input_gets_a_clear_message_exit_2_and_writes_nothing(runs_dir, tmp_path, tiny, capsys):
    from lab.cli import main

    for args, message in bad_inputs(tmp_path):
        assert main(["sample", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err[-2000:])
        assert not (runs_dir / "r").exists() or not list((runs_dir / "r").iterdir())


def test_the_real_command_exits_2_on_bad_input(runs_dir):
    res = run_cli("sample", "--run", "r", "--model", "tiny-random", "--k", "0", runs_dir=runs_dir)
    assert res.returncode == 2 and "--k must be at least 1" in res.stderr


def test_help_lists_the_stages():
    res = subprocess.run([sys.executable, "-m", "lab", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "sample" in res.stdout


@pytest.mark.slow
def test_bundled_model_end_to_end(runs_dir):
    run = Run.open("bundled")
    out = sample.run(run, SampleConfig(model="bundled", instructions="bundled", n=2, k=2, max_new_tokens=24))
    assert out["samples"] == 4
    texts = [s["text"] for s in run.read("samples")]
    assert all(t.strip() for t in texts)
    # a real chat model answers in words of its vocabulary, mostly ASCII letters and spaces
    assert sum(c.isalpha() or c.isspace() for c in "".join(texts)) / len("".join(texts)) > 0.7
