#!/usr/bin/env bash
# Install, then run the test suite (tiny models, CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# One worker per core (-n auto), each on one thread: on 2 cores this runs the suite in ~60% of the
# serial time. Arguments come after, so `-n 0` runs serially.
.venv/bin/python -m pytest -n auto "$@"
