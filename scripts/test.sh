#!/usr/bin/env bash
# Install, then run the test suite (tiny models, CPU, offline).
#   bash scripts/test.sh                  the unit tests (in-process; about 75 s on 2 cores, 85 s while
#                                         the trained tiny model is not yet cached)
#   bash scripts/test.sh --integration    the tests that start other processes (example scripts, the
#                                         installed CLI, accelerate launch, Ray) and run the quick recipes (CI runs both)
set -euo pipefail
cd "$(dirname "$0")/.."
tier="not integration"
if [ "${1:-}" = "--integration" ]; then
  tier="integration"
  shift
fi
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# Keep compiled bytecode (and pytest's rewritten test modules) between runs even where the shell sets
# PYTHONDONTWRITEBYTECODE: without it, each worker compiles the library and rewrites every test
# module again (about 4 s of a worker's start-up on 2 cores).
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -m compileall -q -j 0 facedefense plugins > /dev/null
# One worker per core (-n auto), each on one thread: on 2 cores this runs the suite in ~60% of the
# serial time. The unit tier hands out whole test files (--dist loadfile, the files with the most tests
# first), so a file's module-scoped models are loaded by one worker only: about 8% faster than test by
# test. The integration tier's few long tests go one by one (tests/conftest.py). Arguments come after,
# so `-n 0` runs serially.
dist="loadfile"
if [ "$tier" = "integration" ]; then
  dist="load"
fi
.venv/bin/python -m pytest -n auto --dist "$dist" -m "$tier" "$@"
