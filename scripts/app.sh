#!/usr/bin/env bash
# Sets up (first time only) and serves the app at http://127.0.0.1:7860 on the offline default (bundled model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh app
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/python app.py "$@"
