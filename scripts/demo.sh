#!/usr/bin/env bash
# Install, then protect sample portraits with a tiny random-weight model built on the spot.
# A DEMO of the pipeline (load, protect, 8-bit budget check, manifest, evaluate): the tiny model
# gives no real protection. Output: demo-output/protected/ and its facedefense.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
faces=../shared/data/faces/n000050/set_B
if [ -d "$faces" ]; then
  .venv/bin/facedefense demo "$faces" --output demo-output
else
  .venv/bin/facedefense demo --output demo-output   # no sample data: uses a public-domain portrait
fi
