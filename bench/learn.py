"""Benchmark: does DPO make the bundled model better, by a grader that knows the answer? The README's proof recipe,
run as written, timed stage by stage.

    python bench/learn.py            # the README's proof block on the bundled SmolLM2-135M, in a scratch runs folder
    python bench/learn.py --keep D   # ... in runs folder D (kept afterwards, to look at the run in the app)
    python bench/learn.py --quick    # a smoke test of the plumbing: the same block on tiny-random, 8 prompts, 2 steps

The recipe samples the bundled verifiable training set (IFEval checks), builds checks pairs (the answer that passes
more of its checks against one that passes fewer), trains a LoRA adapter with DPO on them and compares it with the
base on the bundled verifiable held-out set, whose tasks never appear in training. The claim is the held-out
prompt-level (strict) accuracy: adapter above base, with the 95% bootstrap interval of the paired difference above 0.
The commands are read from README.md (the block after PROOF_MARKER), so this bench and tests/test_proof.py run
exactly what a reader runs. Prints one JSON line per stage, then one JSON object of the figures:
base_accuracy, adapter_accuracy, diff, diff_ci, heldout_n, the other three IFEval accuracies of both models,
pairs, wall_s and each stage's seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROOF_MARKER = "<!-- proof recipe: tests/test_proof.py and bench/learn.py run the next block -->"
ADAPTER = "dpo-checks"


QUICK = {"--model": "tiny-random", "--n": "8", "--k": "2"}  # --quick: the block's own flags, made small
QUICK_MORE = {"train": ["--max-steps", "2"], "compare": ["--n", "8"]}


def proof_commands(readme: Path = ROOT / "README.md", quick: bool = False) -> list[list[str]]:
    """The README's proof block as argv lists: comments dropped, `python` this interpreter; `quick`: the same
    commands on tiny-random at a smoke test's size (the numbers are then noise)."""
    text = readme.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text[text.index(PROOF_MARKER):], re.S).group(1)
    out = []
    for line in block.splitlines():
        argv = shlex.split(line.split("#", 1)[0])
        if argv:
            if argv[:3] != ["python", "-m", "lab"]:
                raise ValueError(f"not a lab command in the proof block: {line!r}")
            out.append([sys.executable, *argv[1:]])
    return [_small(argv) for argv in out] if quick else out


def _small(argv: list[str]) -> list[str]:
    small = [QUICK.get(argv[i - 1], a) if i and argv[i - 1] in QUICK else a for i, a in enumerate(argv)]
    return small + QUICK_MORE.get(argv[3], [])


def run_recipe(runs: Path, env: dict | None = None, quick: bool = False) -> dict:
    """Run every command of the block in `runs` as a child process; -> {"stages": {stage: seconds}, "summaries":
    {stage: the command's JSON summary}}. A failing command raises with its stderr's end."""
    env = {**(env or os.environ), "LAB_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    stages, summaries = {}, {}
    for argv in proof_commands(quick=quick):
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[1:])} failed:\n{done.stderr[-3000:]}")
        stages[argv[3]] = round(time.perf_counter() - t0, 1)
        summaries[argv[3]] = json.loads(done.stdout)
        print(json.dumps({"stage": argv[3], "s": stages[argv[3]]}), flush=True)
    return {"stages": stages, "summaries": summaries}


def figures(run: Path, recipe: dict) -> dict:
    """The claim's numbers from the run's compare-scores.json (lab.compare_scorers.checks_summary)."""
    found = json.loads((run / "compare-scores.json").read_text(encoding="utf-8"))["checks"]
    base, mine = found["per_model"]["base"], found["per_model"][ADAPTER]
    diff = found["vs_base"][ADAPTER]["prompt_strict"]
    return {"base_accuracy": round(base["prompt_strict"]["value"], 4),
            "adapter_accuracy": round(mine["prompt_strict"]["value"], 4),
            "diff": round(diff["diff"], 4), "diff_ci": [round(diff["ci_low"], 4), round(diff["ci_high"], 4)],
            "better": diff["better"], "worse": diff["worse"], "heldout_n": found["n"],
            **{f"{who}_{lv}": round(levels[lv]["value"], 4) for who, levels in (("base", base), ("adapter", mine))
               for lv in ("prompt_loose", "instruction_strict", "instruction_loose")},
            "pairs": recipe["summaries"]["pairs"]["pairs"], "wall_s": round(sum(recipe["stages"].values()), 1),
            **{f"{stage}_s": s for stage, s in recipe["stages"].items()}}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="runs folder to use and keep (default: a scratch folder)")
    ap.add_argument("--quick", action="store_true", help="the block on tiny-random at a smoke test's size")
    return ap


def main() -> None:
    args = parser().parse_args()
    scratch = os.environ.get("LAB_RUNS_DIR")  # a fresh folder inside it when set (as the tests set it)
    if scratch:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    runs = args.keep or Path(tempfile.mkdtemp(prefix="lab-learn-", dir=scratch))
    try:
        recipe = run_recipe(runs.resolve(), quick=args.quick)
        run = next(p for p in runs.iterdir() if (p / "compare-scores.json").exists())
        print(json.dumps({**figures(run, recipe), "quick": args.quick}))
    finally:
        if not args.keep:  # a scratch folder: its run is gone with it (--keep DIR keeps one to look at)
            shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
