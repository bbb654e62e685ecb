"""bench/: every script has a --quick smoke mode and ends with one JSON object line holding its figures.

The cheap quick modes (seconds) run here as a user runs them, in a child process; the costly ones (several child
processes with TRL, minutes of vLLM start-up) are checked by their argument parser here and run under -m slow.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# bench -> (quick arguments, keys its JSON line must hold)
QUICK = {
    "sample": (["--quick"], ["loop_tok_s", "hf_batched_tok_s", "lab_tok_s", "ratio_vs_loop", "ratio_vs_hf_batched"]),
    "iterate": (["--quick", "--model", "tiny-random"],
                ["score_tok_s_lab", "score_tok_s_loop", "ratio_vs_loop", "s_per_answer_lab", "ratio_shared_vs_copied",
                 "iterate_wall_s"]),
    "rank": (["--quick"], ["ratio_wall_tiny", "ratio_wall_wide", "ratio_wall_int8_wide", "spearman_int8",
                           "spearman_int8_within", "best_worst_same_int8", "attention_top_prob_wide",
                           "ratio_wall_pairrm_vs_reward", "s_per_instr_reward", "s_per_instr_pairrm_full"]),
    "judge": (["--quick"], ["calls_per_s_plain", "calls_per_s_lab", "ratio_vs_plain", "rl_429_limiter_on"]),
    "hub": (["--quick"], ["plain_s", "lab_s", "ratio_lab_vs_plain"]),
}
SLOW = {
    "train": (["--quick"], ["ratio_s_per_step", "ratio_peak_memory", "lab", "plain_trl"]),
    "compare": (["--quick"], ["ratio_memory_lab", "ratio_batched", "completions_per_s_batched"]),
    "learn": (["--quick"], ["base_accuracy", "adapter_accuracy", "diff", "diff_ci", "heldout_n", "wall_s",
                            "sample_s", "train_s", "compare_s"]),
    "load": (["--quick"], ["jobs_accepted", "jobs_refused", "jobs_done", "files_intact", "only_own_runs",
                           "instant_p95_s", "idle_cpu_pct"]),
}
# bench/gpu.sh --dry-run runs these quick modes as its own steps (dpo, rank) and its test checks their figures as
# the tests below would: each is run once, there
IN_GPU_DRY_RUN = {"train": "dpo", "rank": "rank"}
RATIOS = ("ratio_vs_loop", "ratio_vs_hf_batched", "ratio_wall_tiny", "ratio_wall_wide", "ratio_wall_int8_wide",
          "ratio_wall_pairrm_vs_reward",
          "ratio_vs_plain", "ratio_lab_vs_plain", "ratio_s_per_step", "ratio_memory_lab", "ratio_batched")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(name: str, args: list[str], tmp_path: Path) -> dict:
    env = {**os.environ, "LAB_RUNS_DIR": str(tmp_path / "runs"), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(out: dict, keys: list[str]) -> None:
    assert out["quick"] is True
    missing = [k for k in keys if k not in out]
    assert not missing, missing
    for k in RATIOS:
        if k in out:
            assert isinstance(out[k], float) and out[k] > 0, (k, out[k])


def test_every_bench_has_a_quick_mode_and_is_covered():
    names = {p.stem for p in BENCH.glob("*.py")}
    assert names == {*QUICK, *SLOW, "engines", "gpu_steps"}  # a new bench joins a table (or gets its own test)
    for name in names:
        parsed = vars(load(name).parser().parse_args(["--quick"]))
        assert parsed.get("quick", parsed.get("dry_run")) is True, name  # gpu_steps: --quick is --dry-run


# quick modes that take ten seconds or more here (a rate limit's pacing, child processes that load models)
SLOW_QUICK = {"judge", "sample"}
# bench/iterate.py --quick runs once, with --iterate (its figures are the plain quick mode's and the command's time):
# test_iterate_quick_mode_times_the_readme_command checks both
WITH_ITERATE = {"iterate"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_QUICK else n
                                  for n in sorted(set(QUICK) - set(IN_GPU_DRY_RUN) - WITH_ITERATE)])
def test_quick_mode_ends_with_its_figures(name, tmp_path):
    args, keys = QUICK[name]
    out = last_json(name, args, tmp_path)
    check(out, keys)


@pytest.mark.slow
def test_engines_quick_mode_says_why_vllm_did_not_run(tmp_path):
    from lab import engine_vllm

    if engine_vllm.available()[0]:
        pytest.skip("vLLM is set up here: its quick mode loads the engine (minutes); run it with -m vllm")
    out = last_json("engines", ["--quick", "--model", "tiny-random"], tmp_path)
    assert out["lab_tokens_per_s"] > 0 and out["vllm_tokens_per_s"] is None and "setup-vllm" in out["vllm_error"]


def check_rank(out: dict) -> None:
    check(out, QUICK["rank"][1])
    assert -1 <= out["spearman_int8"] <= 1 and 0 <= out["best_worst_same_int8"] <= 1
    assert 0 < out["attention_top_prob_tiny"] <= 1 and 0 < out["attention_top_prob_wide"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(SLOW) - set(IN_GPU_DRY_RUN)))
def test_slow_quick_mode_ends_with_its_figures(name, tmp_path):
    args, keys = SLOW[name]
    check(last_json(name, args, tmp_path), keys)


@pytest.mark.slow
def test_gpu_sh_dry_run_runs_every_cpu_able_step(tmp_path):
    """bash bench/gpu.sh --dry-run: the GPU script's steps at tiny sizes on this machine's .venv; every step gives
    its figures (vLLM, not set up here, is skipped with the reason), the last line is the one JSON object."""
    env = {**os.environ, "GPU_BENCH_OUT": str(tmp_path / "gpu")}
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dry_run"] is True and out["errors"] == {}, out["errors"]
    assert set(out["steps"]) == {"models", "sample", "dpo", "rank", "recipe", "vllm"}
    for key in ("sample_ratio_vs_hf_batched", "dpo_ratio_s_per_step", "dpo_ratio_peak_memory", "rank_ratio_wall",
                "recipe_wall_s"):
        assert out[key] > 0, key
    assert out["steps"]["recipe"]["adapters"] and "8_iterate" in out["steps"]["recipe"]["command_s"]
    check(out["steps"]["dpo"], SLOW["train"][1])  # bench/train.py --quick and bench/rank.py --quick, as steps
    check_rank(out["steps"]["rank"])
    from lab import engine_vllm

    if not engine_vllm.available()[0]:
        assert "setup-vllm" in out["steps"]["vllm"]["skipped"]


@pytest.mark.slow
def test_iterate_quick_mode_times_the_readme_command(tmp_path):
    args, keys = QUICK["iterate"]
    out = last_json("iterate", [*args, "--iterate"], tmp_path)
    check(out, keys)
    assert out["answers"] == 4 and out["evaluations"] == 2  # the scoring bench's quick sizes: 2 x 2 answers, R 2
    assert out["iterate_error"] is None and out["iterate_wall_s"] > 0
    assert out["iterate_cmd"].startswith("python -m lab iterate --run demo --rounds 1")
