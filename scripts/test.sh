#!/usr/bin/env bash
# Sets up the environment and runs lint + the whole test suite (all tiers available on this machine).
# Usage: bash scripts/test.sh [pytest args]     e.g. bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONHASHSEED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# two workers, one test file each at a time (a file's fixtures stay in one process): most tests are single-threaded
# CLI runs, so this uses both cores; PYTEST_WORKERS=0 runs everything in this process
# --durations: the 25 slowest tests at the end (where the suite's time goes)
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
