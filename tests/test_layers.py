"""The core never imports gradio: the CLI, a GPU box or `accelerate launch` must not need the web stack."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parent.parent


def test_core_modules_do_not_import_gradio():
    core = [m.name for m in pkgutil.iter_modules(lab.__path__, "lab.") if not m.name.startswith(("lab.ui", "lab.__main__"))]
    assert {"lab.store", "lab.sample", "lab.models", "lab.cli"} <= set(core)
    code = ("import importlib, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
