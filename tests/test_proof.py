"""The README's proof recipe runs as written and proves its claim: DPO makes the bundled model better, graded by
IFEval's checks on held-out tasks (a grader that knows the answer and did not make the training pairs).

The commands are read from README.md by bench/learn.py (the block after its PROOF_MARKER), so this test, the bench
and the README cannot drift apart. The recipe test is the suite's longest (minutes): it sits in its own file so a
parallel run (scripts/test.sh runs pytest-xdist, one file per worker at a time) starts it first, beside the rest.
"""
import os
import re
from pathlib import Path

import pytest

from tests.test_readme import stage_of

ROOT = Path(__file__).resolve().parent.parent


def _learn():
    """bench/learn.py as a module: it reads the README's proof block, runs it and reads the figures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_learn", ROOT / "bench" / "learn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_proof_block_is_offline_and_graded_by_checks_on_held_out_tasks():
    commands = _learn().proof_commands()
    stages = [stage_of(c) for c in commands]
    assert stages == ["sample", "pairs", "train", "compare"]
    flat = " ".join(" ".join(c) for c in commands)
    assert "--model bundled" in flat and "--instructions checks " in flat and "--source checks" in flat
    assert "--instructions checks-heldout" in flat and "--pairs checks" in flat
    assert not re.search(r"--judge|--pairrm|--reward|--score|groq|openai|meta-llama|hub:", flat)  # no model grades


@pytest.mark.slow
def test_the_readme_proof_recipe_makes_the_bundled_model_better(tmp_path):
    """The claim the README makes, run as written: the adapter's held-out prompt-level accuracy (IFEval's strict
    checks) is above the base's, and the 95% bootstrap interval of the paired difference is above 0."""
    learn = _learn()
    env = {k: v for k, v in os.environ.items() if k not in ("GROQ_API_KEY", "OPENAI_API_KEY", "HF_TOKEN")}
    recipe = learn.run_recipe(tmp_path / "runs", env)
    got = learn.figures(tmp_path / "runs" / "proof", recipe)
    assert got["heldout_n"] == 80 and got["pairs"] >= 40
    assert got["adapter_accuracy"] > got["base_accuracy"] and got["diff_ci"][0] > 0, got
    assert got["diff"] == pytest.approx(got["adapter_accuracy"] - got["base_accuracy"], abs=1e-3)
    assert recipe["summaries"]["compare"]["noise"] == []  # nothing in this claim comes from a random or weak model
