"""The README's offline recipe runs as written, every command, start to end (on the bundled model, offline).

The commands are read from README.md (the bash block after the "offline recipe" marker), not copied here, so this
test follows the README: each runs unchanged, as a real `python -m lab` process, in a scratch runs root. The recipe's
own sizes are what keeps it short, so making them bigger in the README makes this test slower, not different.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lab.stages import STAGES
from tests.test_publish_safety import assert_no_local_place, local_places, staged_texts

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- offline recipe: tests/test_readme.py runs the next block -->"


def offline_commands() -> list[list[str]]:
    """The README's offline block as argv lists: comments dropped, `a && b` split, `python` this interpreter."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S).group(1)
    commands = []
    for line in block.splitlines():
        for part in line.split("#", 1)[0].split("&&"):
            argv = shlex.split(part)
            if argv:
                assert argv[:3] == ["python", "-m", "lab"], f"not a lab command: {part!r}"
                commands.append([sys.executable, *argv[1:]])
    return commands


def stage_of(argv: list[str]) -> str:
    return argv[3] if len(argv) > 3 else argv[-1]


def test_the_offline_block_covers_every_stage_and_needs_no_hub_or_key():
    commands = offline_commands()
    stages = [stage_of(c) for c in commands]
    assert stages[0] == "--help" and stages[-1] == "push" and "--dry-run" in commands[-1]
    # every stage of the CLI but `score` (iterate scores its own samples; an API scorer needs a key)
    assert set(stages[1:]) == {s.name for s in STAGES} - {"score"}
    flat = " ".join(" ".join(c) for c in commands)
    assert "--ranker tiny-random" in flat and "--backend local" in flat
    assert not re.search(r"llm-blender/PairRM|groq|openai|meta-llama|--instructions lima", flat)


@pytest.mark.slow
def test_the_readme_offline_recipe_runs_start_to_end(tmp_path):
    env = {**os.environ, "LAB_RUNS_DIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for key in ("GROQ_API_KEY", "OPENAI_API_KEY", "HF_TOKEN"):
        env.pop(key, None)
    out: dict[str, list[subprocess.CompletedProcess]] = {}
    for argv in offline_commands():
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr[-3000:]}"
        out.setdefault(stage_of(argv), []).append(done)
    summary = {stage: json.loads(runs[0].stdout) for stage, runs in out.items() if stage != "--help"}
    assert "usage:" in out["--help"][0].stdout
    run = tmp_path / "runs" / "demo"
    assert_the_bundled_judge_decided(run, summary["judge"], json.loads(out["pairs"][0].stdout))
    assert any(n.startswith("Weak judge") for n in summary["judge"]["noise"]) and "Weak judge" in out["judge"][0].stderr
    assert any("tiny-random" in n for n in summary["rank"]["noise"]) and "Noise:" in out["rank"][0].stderr
    scores = json.loads((run / "compare-scores.json").read_text())
    assert set(scores["per_model"]) == {"base", "dpo-judge", "dpo-pairrm"}
    assert "lc_win_rate" in scores["win_rates"]["dpo-judge"]["pairrm"]  # beside the raw one, labelled noise
    assert any("tiny-random" in n for n in summary["compare"]["noise"])
    assert [r["round"] for r in summary["iterate"]["rounds"]] == [1, 2]
    assert all(r["pairs_kept"] >= 1 for r in summary["iterate"]["rounds"])
    assert_each_rounds_adapter_loads_and_generates(run, eval_n=2)
    report = run / "report"
    assert {"README.md", "efficiency.csv", "judge-examples.md", "curves-dpo-judge.png", "rounds.csv"} <= \
        {p.name for p in report.iterdir()}
    assert summary["push"]["dry_run"] is True and (run / "hub").is_dir()
    # what the dry run staged names no folder of this machine (tests/test_publish_safety.py's check, on a run that
    # went through every stage: judge records, rankings, both adapters, the rounds' adapters, the merged model)
    staged = staged_texts(run / "hub")
    assert {"demo-judge/README.md", "demo-dpo-judge/adapter_config.json", "demo-dpo-judge/training.json",
            "demo-pairrm/judgments/train-00000-of-00001.parquet"} <= set(staged)
    assert_no_local_place(staged, local_places(tmp_path / "runs", tmp_path))


def assert_the_bundled_judge_decided(run: Path, judge: dict, pairs: dict) -> None:
    """The bundled 135M judge on 4 instructions x 3 answers (the recipe's sizes): the knockout plan's 4 calls per
    instruction, the raw position bias still reported, pairs decided offline from both orders read (never one order
    alone), and the model's own reasoning behind every verdict."""
    from lab.judge import JudgeConfig

    assert judge["calls_made"] == 4 * 4 and judge["first_position_win_rate"] is not None
    assert pairs["pairs"] >= 2, (judge, pairs)
    rows = [json.loads(line) for line in (run / "pairs-judge.jsonl").read_text().splitlines()]
    assert {p["meta"]["rule"] for p in rows} <= {"agree", "calibrated"}
    for line in (run / "judgments.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["usage"]["completion_tokens"] >= JudgeConfig().min_reasoning_tokens and len(r["reasoning"]) > 10


def assert_each_rounds_adapter_loads_and_generates(run: Path, eval_n: int) -> None:
    """SmolLM2-135M judged itself for two rounds: each round's adapter, as it is on disk now, was loaded on the base
    and wrote an answer to every held-out instruction its evaluation asked for. The evaluation's records say so:
    each answer carries the hash of the adapter files that wrote it (lab/adapters.py: fingerprint)."""
    from lab.adapters import fingerprint

    lineage = sorted((json.loads(line) for line in (run / "iterate.jsonl").read_text().splitlines()),
                     key=lambda line: line["round"])  # iterate.jsonl: format in lab/iterate.py
    assert [line["round"] for line in lineage] == [1, 2]
    for line in lineage:
        name, adapter = f"round-{line['round']}", Path(line["adapter"])
        assert (adapter / "adapter_model.safetensors").is_file(), adapter
        rows = [json.loads(r) for r in (run / "iterations" / str(line["round"]) / "compare.jsonl").read_text()
                .splitlines()]  # lab/records/comparisons.py
        answers = [r for r in rows if r["model"] == name]
        assert len(answers) == eval_n == line["eval"]["win_rate_vs_base"]["n"], (name, answers)
        assert all(r["text"].strip() and r["completion_tokens"] > 0 for r in answers), answers
        assert {r["adapter_hash"] for r in answers} == {fingerprint(adapter)} != {None}, name
