#!/usr/bin/env bash
# Sets up (first time only) and runs the whole test suite: fast unit tests, slow end-to-end tests on the bundled
# model, and browser tests in headless Chromium. Extra arguments go to pytest (e.g. -m "not slow and not browser").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v chromium >/dev/null; then  # Debian's Chromium drives the browser tests (playwright can't download one here)
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "Browser tests need Chromium: sudo apt-get install chromium" >&2
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
# Each checkout keeps its own temp folder: pytest's shared default (/tmp/pytest-of-$USER) keeps only the 3 newest
# sessions, so two suites running at once on one machine would delete each other's files mid-test.
case " $* " in *" --basetemp"*) ;; *) set -- --basetemp=.pytest-tmp "$@" ;; esac
# Two workers (pytest-xdist), a whole file each at a time, long files first (tests/conftest.py): the suite waits on
# child processes, a browser and model loads as well as computing. On a quiet 2-core machine two workers kept it
# 92% busy (all but the proof recipe: ~11.5 min); a third raised that to 96% but saved only 17 s, and a browser wait
# timed out under the extra load.
# LAB_TEST_WORKERS=0 runs in one process (as does -n 0 or -p no:xdist given here).
# Each worker (and the lab processes its tests start) then computes on one core: torch's default of a thread per
# core would put four busy threads on two cores (a trial on a busy machine had the proof's sampling far slower).
case " $* " in *" -p no:xdist "*|*" -n "*|*" -n="*) ;; *)
  workers=${LAB_TEST_WORKERS:-2}
  if [ "$workers" -gt 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ($(nproc) + workers - 1) / workers ))}; fi
  set -- -n "$workers" --dist loadfile --no-loadscope-reorder "$@" ;; esac
exec .venv/bin/python -m pytest "$@"
