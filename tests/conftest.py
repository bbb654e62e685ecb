"""Shared test set-up: no network, runs and every temp file in the session's pytest folder, models built once per
machine in the lab cache."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for key in ("GROQ_API_KEY", "OPENAI_API_KEY", "HF_TOKEN"):
    os.environ.pop(key, None)  # tests set the keys they need; a developer's real key never leaks into a test

import pytest  # noqa: E402


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Every temp file a test, an app or a bench it starts makes (tempfile, Gradio's uploads, torch.distributed's
    rendezvous, datasets' caches) goes under this session's pytest folder (scripts/test.sh: .pytest-tmp/), which the
    next session clears: nothing is left in the machine's /tmp."""
    import tempfile
    from pathlib import Path

    factory = getattr(config, "_tmp_path_factory", None)  # what pytest-xdist uses to place its workers' folders
    if factory is None:
        return
    folder = Path(factory.getbasetemp()) / "tmp"
    folder.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs root for this test."""
    root = tmp_path / "runs"
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    return root


@pytest.fixture
def run(runs_dir):
    from lab.store import Run

    return Run.open("t")


@pytest.fixture
def lab_cli(capsys, monkeypatch):
    """`python -m lab ARGS` through the CLI's entry point (lab.cli.main) in this process, with `env` set for the call:
    -> its exit code, stdout and stderr. For checks of a command's output (a child process would spend seconds on
    imports); tests of signals, kills and exit codes of the real process start `python -m lab` instead."""
    from types import SimpleNamespace

    from lab import cli

    def call(*args: str, env: dict | None = None) -> SimpleNamespace:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = cli.main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


@pytest.fixture(scope="session")
def tiny():
    """The tiny random Llama (fast; writes noise)."""
    from lab import models

    return models.load("tiny-random")


# The longest files first (minutes each): scripts/test.sh runs the suite on pytest-xdist, one file per worker at a
# time in this order (--dist loadfile --no-loadscope-reorder), so the long ones start at once, side by side, and the
# many short files fill in around them instead of leaving one worker alone on a long tail.
LONG_FIRST = ["test_proof.py", "test_readme.py", "test_bench.py", "test_browser.py"]


def pytest_collection_modifyitems(config, items):
    """Tests marked vllm (the real engine in its own venv, set up on first use: GBs and minutes) run only when the
    -m expression names them (`-m vllm`); any other selection, the default one included, leaves them out. The rest
    run long files first (LONG_FIRST), each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items[:] = sorted(items, key=lambda i: rank.get(i.path.name, len(rank)))  # stable: files keep their order
    if "vllm" in (config.getoption("markexpr") or ""):
        return
    left_out = [i for i in items if i.get_closest_marker("vllm")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [i for i in items if not i.get_closest_marker("vllm")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item (browser tests take a screenshot when a test failed)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    """A browser test that failed leaves test-artifacts/FAILED-<test>.png of its page (tests/browser_helpers.shot)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "page" in request.fixturenames:
        from tests.browser_helpers import shot

        shot(request.getfixturevalue("page"), f"FAILED-{request.node.name}")
