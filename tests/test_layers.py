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


def _lab_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "lab").rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from lab.x import name` and every `x.name` on an `import`ed lab module, anywhere in
    the file (imports inside functions count too)."""
    import ast

    tree = ast.parse(path.read_text())
    alias = {}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("lab"):
            for a in n.names:
                out.append((n.module, a.name))
                alias[a.asname or a.name] = f"{n.module}.{a.name}"
        elif isinstance(n, ast.Import):
            for a in n.names:
                alias[a.asname or a.name] = a.name
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in alias:
            out.append((alias[n.value.id], n.attr))
    return out


def test_records_come_from_the_records_layer_never_from_a_stage():
    """A stage or a view reads another stage's records through lab.records, and a record module imports no stage:
    the records sit below every stage (docs/extending.md, Records)."""
    import importlib

    from lab.stages import STAGES
    stages = {s.run.__module__ for s in STAGES} | {"lab.compare_scorers"}
    modules = _lab_modules()
    record_names = {name for m in modules if m.startswith("lab.records.")
                    for name, v in vars(importlib.import_module(m)).items()
                    if getattr(v, "__module__", None) == m and not name.startswith("_")}
    assert {"groups", "sample_record", "latest_rankings", "preference", "mean_scores", "score_record", "pair_record",
            "load_pairs", "compare_record", "current", "grid", "score_summary"} <= record_names
    wrong = [(m, f"{src}.{name}") for m, p in modules.items() for src, name in _imports(p)
             if src in stages and name in record_names]
    assert wrong == []
    below = [(m, src if src != "lab" else f"lab.{name}") for m, p in modules.items() if m.startswith("lab.records")
             for src, name in _imports(p) if (src if src != "lab" else f"lab.{name}") in stages]
    assert below == []
