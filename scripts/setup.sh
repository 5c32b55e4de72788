#!/usr/bin/env bash
# Create .venv and install facedefense with everything the tests and docs need, CPU-only.
# torch is pinned through constraints.txt (torch==2.13.0+cpu): without the pin, pip would pull a
# newer CUDA torch and gigabytes of nvidia packages when resolving torchvision or lpips.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Skip pip (about 25 s of resolving) when nothing that shapes the install changed since the last
# complete setup and the editable install is this checkout's; delete the stamp to force a reinstall.
stamp=.venv/facedefense-setup.sha256
inputs() { cat scripts/setup.sh pyproject.toml constraints.txt examples/facedefense-example-plugin/pyproject.toml; }
if [ -f "$stamp" ] && [ "$(inputs | sha256sum)" = "$(cat "$stamp")" ] \
  && .venv/bin/python -c 'import facedefense, pathlib, sys; sys.exit(pathlib.Path(facedefense.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())' 2>/dev/null; then
  echo "setup: .venv is up to date (delete $stamp to reinstall)" >&2
  exit 0
fi
rm -f "$stamp"
if [ -x .venv/bin/facedefense ]; then
  echo "setup: checking the install in .venv (a few seconds)" >&2
else
  echo "setup: installing facedefense and CPU torch into .venv (about 2 minutes, once)" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[metrics,purifiers,docs,test,onnx,iterative,ray,serve]"
pip install -q --no-deps -e examples/facedefense-example-plugin
pip install -q --no-deps "facenet-pytorch==2.6.0"   # MTCNN weights in the wheel; its pins (torch<2.3, numpy<2) are obsolete
if .venv/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|triton )'; then
  echo "error: CUDA packages were installed; check constraints.txt" >&2
  exit 1
fi
inputs | sha256sum > "$stamp"
