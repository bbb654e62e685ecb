"""The generation engines (lab.generation.Engine entries), and which one a stage's `--engine` runs.

One module per engine, each with its `ENGINE` entry: lab.engine_lab (the lab's own sampler) and lab.engine_vllm
(vLLM in its own environment). `--engine`'s choices, its help, `lab doctor` and the docs tables come from ENGINES.
"""
from __future__ import annotations

from lab import engine_lab, engine_vllm
from lab.errors import LabError
from lab.generation import Engine

ENGINES: dict[str, Engine] = {"lab": engine_lab.ENGINE, "vllm": engine_vllm.ENGINE}
AUTO_ON_CUDA = "vllm"  # what --engine auto runs on a CUDA device where it is installed (else "lab")
ENGINE_CHOICES = ("auto", *ENGINES)
ENGINE_HELP = "generation engine: auto (vLLM on CUDA where it is set up, else lab), " + \
    "; ".join(f"{k}: {e.label}" for k, e in ENGINES.items())


def pick_engine(choice: str, device_kind: str) -> str:
    """--engine -> the name of the engine that runs: auto = vLLM on a CUDA device where it is installed, the lab's
    sampler otherwise (it was the faster of the two on CPU); an engine asked for by name must be installed
    (LabError saying how to set it up)."""
    if choice == "auto":
        return AUTO_ON_CUDA if device_kind == "cuda" and ENGINES[AUTO_ON_CUDA].available()[0] else "lab"
    if choice not in ENGINES:
        raise LabError(f"Unknown --engine {choice!r}: use {', '.join(ENGINE_CHOICES)}.")
    ok, why = ENGINES[choice].available()
    if not ok:
        raise LabError(f"--engine {choice}: {why}; or use --engine lab.")
    return choice
