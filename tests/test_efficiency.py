"""lab.efficiency: one record per run of a stage (time, memory, tokens, API calls, cost), nested stages in their own
runs, no record for a stage refused before any work; shown in cards and the app."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cards, efficiency
from lab.errors import LabError
from lab.judge import JudgeConfig, judge_run
from lab.pairs import PairsConfig, build_pairs
from lab.progress import Progress, Stopped
from lab.store import Run
from tests.fakeprovider import Fault, FakeProvider
from tests.test_judge import KEY, add_samples, prefer_higher

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"stage", "name", "status", "started", "wall_s", "cpu_s", "peak_rss_gib", "peak_gpu_gib", "device", "dtype",
          "tokens_in", "tokens_out", "tokens_per_s", "api_calls", "cost_usd", "time"}


@pytest.mark.slow
def test_a_sample_run_records_its_time_memory_device_and_tokens(runs_dir):
    env = {"LAB_RUNS_DIR": str(runs_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lab", "sample", "--run", "e", "--model", "tiny-random", "--n", "2", "--k", "2",
           "--max-new-tokens", "6"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = Run.open("e")
    (rec,) = efficiency.read(run)
    samples = run.read("samples")
    assert set(rec) == FIELDS and rec["stage"] == "sample" and rec["status"] == "done"
    assert rec["device"] == "cpu" and rec["dtype"] == "float32" and rec["peak_gpu_gib"] is None
    assert rec["tokens_out"] == sum(s["completion_tokens"] for s in samples) > 0
    prompts = {s["instruction_id"]: s["prompt_tokens"] for s in samples}
    assert rec["tokens_in"] == sum(prompts.values())  # a prompt sampled K times is pre-filled once
    assert rec["wall_s"] > 0 and rec["cpu_s"] > 0 and 0.1 < rec["peak_rss_gib"] < 8  # torch + a tiny model
    assert rec["tokens_per_s"] == pytest.approx(rec["tokens_out"] / rec["wall_s"], rel=0.01)


def test_peak_memory_is_sampled_while_the_stage_runs(run):
    with efficiency.measure(run, "probe"):
        base = efficiency.rss_gib()
        block = bytearray(300 * 2 ** 20)  # 300 MiB, touched so it is resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        import time
        time.sleep(0.4)  # a few samples while it is held
        del block
    (rec,) = efficiency.read(run)
    assert rec["peak_rss_gib"] >= base + 0.25  # the peak, though the memory was freed before the stage ended


def test_api_calls_count_retries_and_tokens_and_cost_come_from_usage(run, monkeypatch):
    add_samples(run, n=2, k=2)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=prefer_higher) as fp:
        monkeypatch.setenv("OPENAI_BASE_URL", fp.url + "/v1")
        fp.faults.extend([Fault.status(500)])
        out = judge_run(run, JudgeConfig(backend="openai", model="gpt-4o-mini", base_url=fp.url + "/v1", rpm=0,
                                         backoff_s=0.01), Progress(quiet=True))
        requests = fp.calls
    (rec,) = efficiency.read(run)
    assert out["calls_made"] == 4 and rec["api_calls"] == requests == 5  # one 500 answered, then retried
    assert rec["tokens_in"] == out["prompt_tokens"] and rec["tokens_out"] == out["completion_tokens"] > 0
    assert rec["cost_usd"] == pytest.approx(out["cost_usd"], rel=0.01) and rec["cost_usd"] > 0  # a priced model
    build_pairs(run, PairsConfig(source="judge"))
    pairs = [json.loads(x) for x in run.pairs_file("judge").read_text().splitlines()]
    raw = {k: run.read(k) for k in ("samples", "judgments", "rankings", "spotcheck")}
    card = cards.dataset_card("me/t-judge", "judge", run, pairs, raw, {"default": len(pairs)})
    table = card.split("### Efficiency")[1]
    assert "| judge |  | done |" in table and f"| {requests} |" in table  # the data set card shows the costs
    assert "| pairs | judge | done |" in table


def test_a_stage_refused_before_any_work_leaves_no_record_and_a_stopped_one_says_so(run, monkeypatch):
    add_samples(run, n=2, k=2)
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    with FakeProvider(key="another-key") as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        with pytest.raises(LabError, match="rejected the API key"):
            judge_run(run, JudgeConfig(backend="groq", model="m", base_url=fp.url, rpm=0), Progress(quiet=True))
    assert efficiency.read(run) == []
    with pytest.raises(Stopped):
        with efficiency.measure(run, "sample"):
            efficiency.add(tokens_in=3, tokens_out=5)
            raise Stopped("stop")
    with pytest.raises(Stopped):
        with efficiency.measure(run, "rank"):
            raise Stopped("stop before any work")
    assert [(r["stage"], r["status"], r["tokens_out"]) for r in efficiency.read(run)] == [("sample", "stopped", 5)]


def test_nested_stages_record_in_their_own_runs_and_count_in_the_outer_one(run):
    inner = Run(run.path / "iterations" / "1")
    with efficiency.measure(run, "iterate"):
        efficiency.add(tokens_out=2)
        with efficiency.measure(inner, "sample"):
            efficiency.note("cpu", "float32")
            efficiency.add(tokens_in=10, tokens_out=7, api_calls=1, cost_usd=0.5)
    (outer,), (nested,) = efficiency.read(run), efficiency.read(inner)
    assert (nested["tokens_in"], nested["tokens_out"], nested["api_calls"], nested["cost_usd"]) == (10, 7, 1, 0.5)
    assert (outer["tokens_in"], outer["tokens_out"], outer["api_calls"]) == (10, 9, 1) and outer["device"] == "cpu"
    rows = efficiency.read_all(run)
    assert [(r["run"], r["stage"]) for r in rows] == [(".", "iterate"), ("iterations/1", "sample")]
    table = efficiency.markdown(rows)
    assert table.splitlines()[0].startswith("| run | stage | name | status | wall_s |") and "iterations/1" in table


def test_training_records_the_tokens_trained_on_and_the_card_shows_the_costs(run):
    from lab.train import TrainConfig, train_adapter
    from tests.test_train import TINY, instructions, pair, write_pairs

    run.record_stage("sample", {"model": "tiny-random"})
    write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:4]])
    out = train_adapter(run, "judge", "dpo", TrainConfig(**TINY, max_steps=2, lora_r=4), progress=Progress(quiet=True))
    (rec,) = efficiency.read(run)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rec["stage"] == "train" and rec["name"] == "dpo" and rec["tokens_out"] == 0
    assert rec["tokens_in"] == [m for m in metrics if m["split"] == "train"][-1]["num_tokens"] > 0
    card = (out / "README.md").read_text()
    assert "### Efficiency" in card and "| train | dpo | running |" in card  # written while training ran
