#!/usr/bin/env bash
# Create .venv and install the project with its test extras.
# torch==2.13.0 is installed first: on these machines it is a local CPU build, whereas a bare
# `torch` requirement in a fresh environment would pull the newest CUDA build (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
# torchvision has no working CPU build here and MONAI trips over a broken one: make sure it is absent.
.venv/bin/python -m pip uninstall -y -q torchvision 2>/dev/null || true
# MONAI Label 0.8.5 for the 3D Slicer app (apps/lggseg) and its tests, without touching torch or numpy.
bash scripts/install_monailabel.sh >/dev/null
