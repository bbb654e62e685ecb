"""DPO training (lab.train): adapter output, live metrics, stop, resume, accelerate, bad input, warnings.

Pairs used here carry an obvious preference: the chosen answer opens with "Certainly!", the rejected one is the same
text without it, so a model that learned anything puts more probability on the "Certainly!" version.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import jobs, models, progress
from lab.train import TrainConfig
from lab.errors import LabError
from lab.store import Run, read_jsonl
from lab.train import oom_error, train_adapter, _is_oom
from lab.train_monitor import diagnose
from lab.methods import METHODS as METHODS_
from lab.adapters import last_checkpoint, read_state

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="tiny-random", batch_size=2, lr=1e-3, gradient_checkpointing=False, eval_fraction=0.0)


def instructions(split: str) -> list[dict]:
    return [json.loads(line) for line in open(ROOT / "assets" / f"instructions-{split}.jsonl", encoding="utf-8")]


def pair(inst: dict) -> dict:
    body = f"Here is a short answer about {inst['prompt'][:60].rstrip()}."
    return {"prompt": [{"role": "user", "content": inst["prompt"]}],
            "chosen": [{"role": "assistant", "content": "Certainly! " + body}],
            "rejected": [{"role": "assistant", "content": body}],
            "meta": {"instruction_id": inst["id"], "chosen_index": 0, "rejected_index": 1, "source": "test"}}


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs(run):
    return write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:16]])


def preference_margin(model, tok, rows: list[dict]) -> list[float]:
    """Per pair: log p(chosen | prompt) - log p(rejected | prompt), summed over answer tokens (one batched pass
    per side)."""
    return margins(answer_logps(model, tok, rows, "chosen"), answer_logps(model, tok, rows, "rejected"))


def margins(chosen: list[list[float]], rejected: list[list[float]]) -> list[float]:
    return [sum(c) - sum(r) for c, r in zip(chosen, rejected)]


def answer_logps(model, tok, rows: list[dict], side: str) -> list[list[float]]:
    """Per row: log p(answer token | all before it) for each token of the `side` answer, in order (one batched
    pass). The first is log p(the answer's first token | prompt): what the model would open its answer with."""
    import torch

    seqs, starts = [], []
    for r in rows:
        starts.append(len(tok(models.render_chat(tok, r["prompt"]), add_special_tokens=False)["input_ids"]))
        seqs.append(tok(models.render_chat(tok, r["prompt"] + r[side], add_generation_prompt=False),
                        add_special_tokens=False)["input_ids"])
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logps = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
    token = logps.gather(-1, ids[:, 1:, None])[..., 0]  # [B, T-1]: log p(token t+1 | tokens <= t)
    return [token[i, start - 1:len(s) - 1].tolist() for i, (s, start) in enumerate(zip(seqs, starts))]


def load_with_adapter(spec: str, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = models.load_tokenizer(spec)
    base = AutoModelForCausalLM.from_pretrained(models.resolve(spec), dtype="float32").eval()
    return PeftModel.from_pretrained(base, str(adapter)).eval(), tok


# ---- output --------------------------------------------------------------------------------------------------------
def test_adapter_is_written_loads_and_moves_toward_chosen(run, pairs):
    out = train_adapter(run, "judge", "a1", TrainConfig(**TINY, max_steps=8))
    assert run.adapters() == ["a1"]
    state = read_state(out)
    assert state["status"] == "done" and state["global_step"] == 8
    assert not (out / "checkpoints").exists() and not list(out.glob(".*"))  # no lock, temp or checkpoint left
    card = (out / "README.md").read_text()
    assert "tiny-random" in card and "| beta | 0.1 |" in card and "train/loss" in card  # lab.cards' tables

    model, tok = load_with_adapter("tiny-random", out)
    rows = read_jsonl(pairs)[:6]
    trained = preference_margin(model, tok, rows)
    with model.disable_adapter():
        base = preference_margin(model, tok, rows)
    assert all(t > b for t, b in zip(trained, base)), (trained, base)

    train_lines = [m for m in read_jsonl(out / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in train_lines] == list(range(1, 9))
    assert all(m["tokens_per_s"] > 0 and "rewards/margins" in m and "logps/chosen" in m for m in train_lines)
    # step 1 learned: no one-step warm-up at learning rate 0 (its loss, ln 2, would then come back at step 2)
    assert train_lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) != train_lines[1]["loss"]
    assert run.stage_settings("train")["adapter"] == "a1"

    with pytest.raises(LabError, match="already exists"):
        train_adapter(run, "judge", "a1", TrainConfig(**TINY, max_steps=8))


def test_continuing_from_an_adapter_uses_it_as_reference(run, pairs):
    first = train_adapter(run, "judge", "r1", TrainConfig(**TINY, max_steps=4))
    second = train_adapter(run, "judge", "r2", TrainConfig(**TINY, max_steps=2), init_adapter="r1")
    first_line = read_jsonl(second / "metrics.jsonl")[0]
    # at step 1 the policy equals its reference (the r1 adapter), so the implicit rewards start at exactly 0
    assert first_line["rewards/chosen"] == 0.0 and first_line["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert read_state(second)["init_adapter"] == str(first)
    assert run.adapters() == ["r1", "r2"]


def test_reference_log_probs_are_precomputed_only_where_training_passes_over_the_pairs_again():
    from lab.train import precomputes_ref

    dpo = TrainConfig(**TINY, epochs=2.0)  # precompute_ref is on by default
    assert precomputes_ref(dpo, 16, 1)
    assert not precomputes_ref(TrainConfig(**TINY, epochs=1.0), 16, 1)  # one pass: the reference runs once anyway
    assert not precomputes_ref(TrainConfig(**TINY, max_steps=8), 16, 1)  # 8 steps x 2 = 16 rows: one pass
    assert precomputes_ref(TrainConfig(**TINY, max_steps=9), 16, 1)
    assert not precomputes_ref(TrainConfig(**TINY, max_steps=4, grad_accum=2), 16, 1)
    assert not precomputes_ref(TrainConfig(**TINY, max_steps=5), 16, 1)  # 10 of the 16 rows
    assert not precomputes_ref(TrainConfig(**TINY, epochs=1.0), 17, 1)  # 9 steps, the last one a partial batch
    assert not precomputes_ref(TrainConfig(**TINY, max_steps=9), 17, 1) and precomputes_ref(
        TrainConfig(**TINY, max_steps=10), 17, 1)
    assert not precomputes_ref(TrainConfig(**TINY, epochs=2.0), 16, 2)  # several processes: per-step reference
    assert not precomputes_ref(TrainConfig(**TINY, epochs=2.0, precompute_ref=False), 16, 1)
    assert not precomputes_ref(TrainConfig(**TINY, epochs=2.0, method="simpo").validate(), 16, 1)  # no reference


class Recorder(progress.Progress):
    """A quiet Progress that keeps every (done, total, desc) it is given."""

    def __init__(self):
        super().__init__(quiet=True)
        self.seen: list[tuple] = []

    def update(self, done, total, desc=None, partial=0.0, **extra):
        self.seen.append((done, total, desc or ""))
        super().update(done, total, desc, partial, **extra)


def test_a_precomputed_reference_is_the_adapter_a_training_continues_from(run, pairs):
    first = train_adapter(run, "judge", "r1", TrainConfig(**TINY, max_steps=4))
    assert read_state(first)["reference_precomputed"] is False  # 4 steps x 2 of 16 pairs: one pass
    shown = Recorder()
    second = train_adapter(run, "judge", "r2", TrainConfig(**TINY, max_steps=12), init_adapter="r1", progress=shown)
    assert read_state(second)["reference_precomputed"] is True  # 24 rows of 16 pairs: two passes
    # that pass (minutes on a CPU) counts its pairs a batch (2) at a time, not seconds alone; then the steps count
    from lab.train import REF_PASS

    ref = [(done, total) for done, total, desc in shown.seen if desc.startswith(REF_PASS)]
    assert ref == [(done, 16) for done in range(0, 17, 2)], ref
    descs = [desc for _, _, desc in shown.seen]
    assert max(i for i, d in enumerate(descs) if d.startswith(REF_PASS)) < descs.index("training")
    first_line = read_jsonl(second / "metrics.jsonl")[0]
    # the reference is r1 (not the plain base, whose log-probs r1's 4 steps moved): rewards start at 0
    assert first_line["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first_line["loss"] == pytest.approx(0.6931, abs=1e-3)
    later = [m for m in read_jsonl(second / "metrics.jsonl") if m["split"] == "train"][-1]
    assert later["rewards/margins"] > 0  # and it trains on


def test_cpu_training_projects_only_the_answer_tokens_to_the_same_log_probs(monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from lab.train import score_answer_tokens_only

    # TRL's own switch for this test (a training earlier in the session extended it), restored after it
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "trl_original", trl_utils._use_triton))
    model = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-random"), dtype="float32").eval()
    trl_utils.add_fused_lm_head(model)
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, -3:] = -100  # padding
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: rows.append(hidden.shape[0]) or apply(hidden, *a))
    with torch.no_grad():
        full = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        original = trl_utils._use_triton
        assert score_answer_tokens_only() and score_answer_tokens_only()  # the installed TRL has the switch
        assert trl_utils._use_triton.trl_original is original  # extended once, not wrapped twice
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert rows == [2 * 11, int((labels[:, 1:] != -100).sum())]  # every shifted position, then the labelled ones
    torch.testing.assert_close(compact, full)
    assert compact[0, :4].abs().sum() == 0 and compact[0, 4:].abs().min() > 0


def test_eval_slice_holds_out_whole_instructions(run):
    rows = [pair(i) for i in instructions("train")[:20]]
    rows += [{**r, "chosen": [{"role": "assistant", "content": "Certainly! Sure."}]} for r in rows]  # 2 per prompt
    write_pairs(run.pairs_file("judge"), rows)
    out = train_adapter(run, "judge", "ev", TrainConfig(**{**TINY, "eval_fraction": 0.1}, max_steps=2))
    p = read_state(out)["pairs"]
    assert (p["n_train"], p["n_eval"]) == (36, 4)
    assert any(m["split"] == "eval" and "rewards/accuracies" in m for m in read_jsonl(out / "metrics.jsonl"))


# ---- live, stop, resume --------------------------------------------------------------------------------------------
def start_job(run: Run, pairs: Path, name: str, steps: int) -> dict:
    argv = ["train", "--run", run.name, "--pairs", str(pairs), "--adapter", name, "--model", "tiny-random",
            "--max-steps", str(steps), "--batch-size", "2", "--lr", "1e-3", "--no-gradient-checkpointing",
            "--eval-fraction", "0", "--save-steps", "2"]
    return jobs.start(run, argv, "train")


def wait_for(predicate, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def train_lines(out: Path) -> list[dict]:
    return [m for m in read_jsonl(out / "metrics.jsonl") if m.get("split") == "train"]


@pytest.mark.slow
def test_metrics_stream_while_running_then_stop_keeps_adapter_and_resume_continues(run, pairs):
    out = run.adapter_dir("live")
    start_job(run, pairs, "live", 400)
    wait_for(lambda: len(train_lines(out)) >= 3)
    assert jobs.status(run)["state"] == "running"  # the lines arrived while it still trains
    assert (jobs.status(run)["progress"] or {}).get("total") == 400

    end = jobs.stop(run, grace_s=60)
    assert end["state"] == "stopped", end
    state = read_state(out)
    assert state["status"] == "stopped" and 3 <= state["global_step"] < 400
    assert (out / "adapter_config.json").exists() and "stopped early" in (out / "README.md").read_text()
    ckpt = last_checkpoint(out)
    assert ckpt is not None and ckpt.name == f"checkpoint-{state['global_step']}"

    stopped_at = state["global_step"]
    config = TrainConfig(**{**TINY, "save_steps": 2}, max_steps=stopped_at + 3)
    train_adapter(run, str(pairs), "live", config)
    steps = [m["step"] for m in train_lines(out)]
    assert steps == list(range(1, stopped_at + 4))  # continued from the checkpoint: no step twice, none missing
    assert read_state(out)["status"] == "done" and not (out / "checkpoints").exists()


@pytest.mark.slow
def test_a_killed_training_never_looks_complete_and_resumes(run, pairs):
    out = run.adapter_dir("crash")
    job = start_job(run, pairs, "crash", 400)
    wait_for(lambda: (last_checkpoint(out) or Path("checkpoint-0")).name != "checkpoint-0" and
             len(train_lines(out)) >= 3)
    os.killpg(job["pid"], signal.SIGKILL)
    wait_for(lambda: jobs.status(run)["state"] != "running", 30)
    assert run.adapters() == [] and not (out / "adapter_config.json").exists()
    assert read_state(out)["status"] == "training"

    ckpt_step = int(last_checkpoint(out).name.split("-")[1])
    with pytest.raises(LabError, match="other settings"):
        train_adapter(run, str(pairs), "crash", TrainConfig(**{**TINY, "lr": 5e-4}, max_steps=ckpt_step + 2))
    train_adapter(run, str(pairs), "crash", TrainConfig(**TINY, max_steps=ckpt_step + 2))
    assert [m["step"] for m in train_lines(out)] == list(range(1, ckpt_step + 3))
    assert run.adapters() == ["crash"]


def test_training_writes_nothing_to_stdout_where_the_cli_prints_its_json_summary(run, pairs, capfd):
    train_adapter(run, str(pairs), "quiet", TrainConfig(**TINY, max_steps=2, logging_steps=1))
    assert capfd.readouterr().out == ""  # the Trainer's log dicts go to metrics.jsonl, not print()
    assert [m["step"] for m in train_lines(run.adapter_dir("quiet"))] == [1, 2]


def test_second_training_of_the_same_adapter_is_refused(run, pairs):
    from lab.adapters import adapter_lock

    with adapter_lock(run.adapter_dir("busy")):
        with pytest.raises(LabError, match="being trained by another process"):
            train_adapter(run, "judge", "busy", TrainConfig(**TINY, max_steps=1))


# ---- bad input -----------------------------------------------------------------------------------------------------
def bad(run: Run, rows_or_text, match: str, **kw):
    path = run.path / "bad.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rows_or_text if isinstance(rows_or_text, str) else "".join(json.dumps(r) + "\n"
                                                                               for r in rows_or_text))
    with pytest.raises(LabError, match=match):
        train_adapter(run, str(path), "x", TrainConfig(**{**TINY, **kw}, max_steps=1))
    assert not run.adapter_dir("x").exists()  # nothing half-written


def test_bad_pairs_files_are_refused_with_what_to_fix(run):
    good = [pair(i) for i in instructions("train")[:4]]
    bad(run, "", "holds no pairs")
    bad(run, json.dumps(good[0]) + "\n{not json\n", "line 2 is not valid JSON")
    bad(run, [{"prompt": "hi", "chosen": "a"}], "needs 'prompt', 'chosen' and 'rejected'")
    bad(run, [good[0], {**good[1], "rejected": good[1]["chosen"]}], "1 of 2 pairs have the same chosen and rejected")
    bad(run, [{**good[0], "chosen": [{"role": "assistant", "content": "  "}]}], "text is empty")
    llama = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    bad(run, [{**good[0], "prompt": llama}], r"another model's template \(Llama 3\)")
    chatml = "<|im_start|>user\nHi<|im_end|>\n"
    bad(run, [{**good[0], "prompt": chatml}], "already rendered")
    bad(run, good, "Every prompt is longer", max_length=16)
    with pytest.raises(LabError, match="No pairs for source 'pairrm'"):
        train_adapter(run, "pairrm", "x", TrainConfig(**TINY, max_steps=1))
    with pytest.raises(LabError, match="--loss-type"):
        train_adapter(run, "judge", "x", TrainConfig(**TINY, loss_type="sigmoid,nonsense"))


def test_plain_string_pairs_are_wrapped_as_messages(run):
    rows = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
             "rejected": r["rejected"][0]["content"]} for r in (pair(i) for i in instructions("train")[:4])]
    path = write_pairs(run.path / "plain.jsonl", rows)
    assert read_state(train_adapter(run, str(path), "plain", TrainConfig(**TINY, max_steps=1)))["status"] == "done"


def test_out_of_memory_is_recognised_and_explained():
    import torch

    assert _is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not _is_oom(RuntimeError("shape mismatch"))
    msg = str(oom_error(TrainConfig(batch_size=8, gradient_checkpointing=False), "cuda"))
    assert "GPU memory" in msg and "--batch-size (now 8)" in msg and "--gradient-checkpointing" in msg


# ---- warnings ------------------------------------------------------------------------------------------------------
def metric_lines(acc, chosen_reward):
    return [{"split": "train", "step": s, "max_steps": 40, "rewards/accuracies": a, "rewards/chosen": c}
            for s, (a, c) in enumerate(zip(acc, chosen_reward), 1)]


def test_likelihood_displacement_warning():
    n = 40
    displaced = metric_lines([1.0] * n, [-0.01 * s for s in range(n)])  # chosen falls to -3.9 nats at beta 0.1
    healthy = metric_lines([0.5 + 0.01 * s for s in range(n)], [0.01 * s for s in range(n)])
    late = metric_lines([0.5] * 30 + [1.0] * 10, [-0.01 * s for s in range(n)])  # accuracy only saturates late
    assert "likelihood displacement" in diagnose(displaced, None, beta=0.1)[0]
    assert diagnose(healthy, None, beta=0.1) == [] and diagnose(late, None, beta=0.1) == []
    assert diagnose(displaced[:5], None, beta=0.1) == []  # too few lines to judge


def test_length_gap_warning():
    balanced = {"chosen_longer_fraction": 0.5, "chosen_chars_mean": 300, "rejected_chars_mean": 290}
    biased = {"chosen_longer_fraction": 0.8, "chosen_chars_mean": 600, "rejected_chars_mean": 300}
    growing = {"chosen_longer_fraction": 0.6, "chosen_chars_mean": 360, "rejected_chars_mean": 300}
    assert diagnose([], balanced, 0.1) == []
    assert "80% of pairs" in diagnose([], biased, 0.1)[0]
    assert "up from 1.03x" in diagnose([], growing, 0.1, history=[balanced])[0]


def test_few_pairs_warning():
    even = {"chosen_longer_fraction": 0.5, "chosen_chars_mean": 300, "rejected_chars_mean": 300}
    assert "Only 1 training pair and no held-out ones" in diagnose([], {**even, "n_train": 1, "n_eval": 0}, 0.1)[0]
    assert "Only 7 training pairs:" in diagnose([], {**even, "n_train": 7, "n_eval": 2}, 0.1)[0]
    assert diagnose([], {**even, "n_train": 8, "n_eval": 0}, 0.1) == []


# ---- scale and real effect (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_accelerate_launch(run, pairs):
    """The same CLI under `accelerate launch` with 2 CPU processes (torchrun + gloo): data is split across ranks."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(29500 + os.getpid() % 1000), "--mixed_precision", "no", "--dynamo_backend",
           "no", "-m", "lab", "train", "--run", run.name, "--pairs", "judge", "--adapter", "ddp", "--model",
           "tiny-random", "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--no-gradient-checkpointing",
           "--eval-fraction", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"status": "done"') == 1  # only rank 0 reports
    lines = train_lines(run.adapter_dir("ddp"))
    assert [m["step"] for m in lines] == [1, 2, 3]  # one line per step, not one per rank
    assert lines[0]["epoch"] == pytest.approx(2 * 2 / 16)  # 2 ranks x batch 2 of 16 pairs per step
    assert run.adapters() == ["ddp"]


@pytest.mark.slow
def test_dpo_on_bundled_moves_held_out_prompts_toward_the_preference(run):
    """DPO on 12 prompts (6 steps x 2), measured on the 17 held-out instructions the training never saw: the
    "Certainly!" answer must gain on every one of them, by a margin far beyond chance."""
    write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:12]])
    config = TrainConfig(model="bundled", max_steps=6, batch_size=2, lr=5e-4, beta=0.1, eval_fraction=0.0,
                         warmup_ratio=0.0, gradient_checkpointing=False, max_length=256)
    out = train_adapter(run, "judge", "certainly", config)
    model, tok = load_with_adapter("bundled", out)
    held = [pair(i) for i in instructions("heldout")]
    trained = answers_after_one_prompt_pass(model, tok, held)
    with model.disable_adapter():
        base = answers_after_one_prompt_pass(model, tok, held)
    shifts = [t - b for t, b in zip(margins(*trained), margins(*base))]
    print(f"held-out margin shifts (nats): {[round(x, 2) for x in shifts]}")
    # a sign test (17 of 17 positive by chance: p < 1e-5), and a large shift (measured: 30-60 nats, mean ~42)
    assert all(s > 0 for s in shifts) and sum(shifts) / len(shifts) > 10.0, shifts
    # and in what the model would write: the chance that an answer opens with "Certainly" rises on every unseen
    # prompt (measured: by 2-5 nats, from ~1e-4 to ~1e-2; a few steps on 12 pairs do not yet make it the argmax).
    # That is the first token of each chosen answer, read from the same passes
    assert all(opens_with(tok, r, "Certainly") for r in held)
    rises = [t[0] - b[0] for t, b in zip(trained[0], base[0])]
    assert all(r > 0 for r in rises) and sum(rises) / len(rises) > 1.5, rises


def answers_after_one_prompt_pass(model, tok, rows: list[dict]) -> tuple[list[list[float]], list[list[float]]]:
    """answer_logps of the chosen and the rejected answers, with each prompt run once: the prompts (left-padded) fill
    a KV cache, each side's answers (right-padded) run on it, and the cache is cut back to the prompts in between.
    tests/test_train.py checks it equals answer_logps (the whole sequence per side)."""
    import torch

    from lab.kvcache import cache_kwarg

    prompts = [tok(models.render_chat(tok, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True)
        cache, first = out.past_key_values, out.logits[:, -1].float().log_softmax(-1)  # [B, V]: the answers' opening
        sides = []
        for side in ("chosen", "rejected"):
            answers = []
            for r, p in zip(rows, prompts):
                full = tok(models.render_chat(tok, r["prompt"] + r[side], add_generation_prompt=False),
                           add_special_tokens=False)["input_ids"]
                assert full[:len(p)] == p, "the chat template renders the prompt differently before an answer"
                answers.append(full[len(p):])
            span = max(map(len, answers))
            x = torch.tensor([a + [tok.pad_token_id] * (span - len(a)) for a in answers])
            x_mask = torch.tensor([[1] * len(a) + [0] * (span - len(a)) for a in answers])
            positions = torch.tensor([len(p) for p in prompts])[:, None] + torch.arange(span)[None]
            logps = model(input_ids=x, attention_mask=torch.cat([mask, x_mask], dim=1), position_ids=positions,
                          use_cache=True, **{cache_kwarg(model): cache}).logits.float().log_softmax(-1)
            cache.crop(-span)  # back to the prompts for the other side
            sides.append([[first[i, a[0]].item()] + [logps[i, j - 1, a[j]].item() for j in range(1, len(a))]
                          for i, a in enumerate(answers)])
    return sides[0], sides[1]


def test_one_prompt_pass_gives_the_whole_sequence_log_probs(tiny):
    """The Certainly test's shortcut (the prompt run once for both answers) against one plain pass per side."""
    rows = [pair(i) for i in instructions("heldout")[:5]]
    chosen, rejected = answers_after_one_prompt_pass(tiny.model, tiny.tokenizer, rows)
    for got, want in ((chosen, answer_logps(tiny.model, tiny.tokenizer, rows, "chosen")),
                      (rejected, answer_logps(tiny.model, tiny.tokenizer, rows, "rejected"))):
        assert [len(g) for g in got] == [len(w) for w in want]
        assert [x for g in got for x in g] == pytest.approx([x for w in want for x in w], abs=1e-4)


def opens_with(tok, row: dict, word: str) -> bool:
    """Whether the chosen answer's first token, as the chat template tokenizes it, is `word`'s first token."""
    start = len(tok(models.render_chat(tok, row["prompt"]), add_special_tokens=False)["input_ids"])
    ids = tok(models.render_chat(tok, row["prompt"] + row["chosen"], add_generation_prompt=False),
              add_special_tokens=False)["input_ids"]
    return ids[start] == tok(word, add_special_tokens=False)["input_ids"][0]


# ---- the Train tab -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_tab_starts_a_job_and_reattaches_to_it_after_a_reload(run, pairs):
    """The tab's handlers against a real job: start it, then a fresh page (no adapter picked) finds it and plots it."""
    pytest.importorskip("gradio")
    from lab.ui import train as tab

    form = dict(zip(tab.FORM, [1.0, 400.0, 1e-3, 0.1, 2.0, ["sigmoid"], "tiny-random", "all-linear", 8.0,
                                      16.0, 0.0, 1.0, 256.0, 0.1, 0.0, 50.0, 0.0, False, False, True]))
    assert tab.config_from(form).losses() == ["sigmoid"]
    tab.start_training(run.name, "judge", "ui", "", *form.values())
    try:
        wait_for(lambda: len(train_lines(run.adapter_dir("ui"))) >= 2)
        shown, summary, warnings, *plots = tab.live_view(run.name, None)  # a reloaded page
        loss, margins, logps = (p["value"] for p in plots)  # the method's plots (DPO's three)
        assert shown["value"] == "ui" and "· training · step" in summary
        assert set(loss["series"]) == {"loss"} and {"logps/chosen", "logps/rejected"} <= set(logps["series"])
        assert {"rewards/margins", "rewards/accuracies"} <= set(margins["series"])
        with pytest.raises(Exception, match="already running|Another job"):
            tab.start_training(run.name, "judge", "ui2", "", *form.values())  # one training at a time
    finally:
        jobs.stop(run, grace_s=60)
    assert read_state(run.adapter_dir("ui"))["status"] == "stopped"


def test_a_stop_asked_before_training_starts_loads_nothing_and_writes_nothing(run, pairs, monkeypatch):
    """An iteration stopped as its scoring ended reaches training with the stop already asked for."""
    monkeypatch.setitem(progress._STOP, "requested", True)
    with pytest.raises(progress.Stopped):
        train_adapter(run, "judge", "early", TrainConfig(**TINY, max_steps=2))
    assert not run.adapter_dir("early").exists() and run.adapters() == []


@pytest.fixture(scope="module")
def llama32_like(tmp_path_factory) -> str:
    """A folder: tiny-random with a Llama-3.2-style tokenizer, whose template prints today's date unless the
    caller gives date_string (the template lab.models pins)."""
    from test_models import llama32_like_folder

    return llama32_like_folder(tmp_path_factory.mktemp("llama32-like"))


@pytest.mark.parametrize("method", sorted(METHODS_))
def test_trl_trains_on_the_prompt_tokens_sampling_rendered(llama32_like, method, tmp_path):
    """With a template that prints today's date, the prompt tokens each method's TRL trainer tokenized are the ones
    sampling rendered (the pinned date), not today's."""
    import torch

    from lab.progress import Progress
    from lab.train import build_trainer

    records = [pair(i) for i in instructions("train")[:2]]
    model, tok = models.load_weights(llama32_like, torch.float32)
    trainer = build_trainer(model, tok, TrainConfig(**{**TINY, "model": llama32_like, "method": method}), tmp_path,
                            "cpu", records, [], Progress(quiet=True))
    row = trainer.train_dataset[0]
    trained = row["prompt_ids"] if "prompt_ids" in row else row["prompt_input_ids"]
    sampled = models.load(llama32_like).encode_prompt(records[0]["prompt"][0]["content"])
    assert "Today Date: " + models.PINNED_DATE in tok.decode(sampled)
    assert trained == sampled
