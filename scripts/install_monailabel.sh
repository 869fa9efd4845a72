#!/usr/bin/env bash
# Add MONAI Label 0.8.5 (server and client) to the project's .venv without touching torch or numpy.
#
# A plain `pip install monailabel` replaces the CPU torch with a CUDA build, installs torchvision (broken
# here), downgrades numpy to 1.x and pulls pydicom 3 (the server then fails at start). So: monailabel
# itself with --no-deps, then the server's real dependencies by name, the DICOM packages at versions that
# work with it (--no-deps), torch and numpy pinned to the installed versions by a constraints file, and a
# check that they are unchanged afterwards and that the server imports without torchvision.
# Idempotent: a stamp in the environment records the versions of a checked install; when they are all
# unchanged the script does nothing (a fraction of a second).
#
# Usage: bash scripts/install_monailabel.sh        (VENV_PYTHON=path/to/python for another environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV_PYTHON:-.venv/bin/python}
MONAILABEL_VERSION=0.8.5
# retrying, pillow: imported by dicomweb-client; jsonschema: by pydicom-seg (monailabel.interfaces.app
# imports both)
SERVER_DEPS=(fastapi uvicorn python-multipart pydantic-settings pyjwt requests cachetools passlib schedule
  timeloop watchdog expiring-dict girder-client psutil pynrrd google-auth retrying pillow jsonschema)
NO_DEPS=("monailabel==${MONAILABEL_VERSION}" pydicom==2.4.4 dicomweb-client==0.59.1 pydicom-seg==0.4.1)

# name==version of torch, numpy, every package above and torchvision ("missing" when not installed)
versions() {
  "$PY" - torch numpy torchvision "${SERVER_DEPS[@]}" "${NO_DEPS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name = spec.partition("==")[0]
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"{name}==missing")
EOF
}

stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.lggseg-monailabel-stamp"
current=$(versions)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$current" ]; then
  exit 0  # checked before, nothing changed since
fi

torch_numpy() { grep -E '^(torch|numpy)==' <<<"$1"; }
before=$(torch_numpy "$current")
if grep -q "==missing" <<<"$before"; then
  echo "install_monailabel: torch or numpy is not installed in $PY; run scripts/setup_env.sh first" >&2
  exit 1
fi
constraints=$(mktemp)
log=$(mktemp)
trap 'rm -f "$constraints" "$log"' EXIT
printf '%s\n' "$before" >"$constraints"

# pip's output goes to a log, shown only when pip fails (it warns about monailabel's optional
# requirements that --no-deps leaves out on purpose; the server does not need them)
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -c "$constraints" "$@" >"$log" 2>&1 || {
    cat "$log" >&2
    echo "install_monailabel: ERROR: pip install $* failed" >&2
    exit 1
  }
}
pip_install --no-deps "${NO_DEPS[@]}"
pip_install "${SERVER_DEPS[@]}"
# torchvision has no working CPU build here and MONAI trips over a broken one: make sure it is absent.
"$PY" -m pip uninstall -y -q torchvision >/dev/null 2>&1 || true

after_all=$(versions)
after=$(torch_numpy "$after_all")
if [ "$before" != "$after" ]; then
  echo "install_monailabel: ERROR: the install changed torch/numpy:" >&2
  echo "  before: $(echo $before)" >&2
  echo "  after:  $(echo $after)" >&2
  exit 1
fi
"$PY" -c "import monailabel.interfaces.app, monailabel.client, sys; assert 'torchvision' not in sys.modules" || {
  echo "install_monailabel: ERROR: monailabel does not import cleanly in $PY" >&2
  exit 1
}
printf '%s\n' "$after_all" >"$stamp"
echo "install_monailabel: MONAI Label ${MONAILABEL_VERSION} installed ($(echo $after) unchanged)"
