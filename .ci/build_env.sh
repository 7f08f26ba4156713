#!/usr/bin/env bash
# Build the project's single environment: core + tests + a real Wildbook IA 4.0.4 (CPython 3.11, CPU or CUDA).
# Usage: .ci/build_env.sh VENV_DIR        (PY=python3.11 by default)
# Idempotent: a finished environment carries a stamp with the hash of the files it was built from.
set -euo pipefail
VENV=${1:?usage: build_env.sh VENV_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3.11}
HASH=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/.ci/build_env.sh" | sha256sum | cut -c1-16)
STAMP="$VENV/.wbia-lightglue-env-$HASH"
if [ -f "$STAMP" ]; then
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT"   # cheap: refresh entry points
    exit 0
fi
echo "building environment $VENV (hash $HASH); cold: several minutes, ~5.5 GB" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" wheel setuptools
# wbia-vtool / wbia-pyflann / wbia-pyhesaff publish only cp37..cp310 wheels, but they contain no CPython
# extension modules (pure Python + ctypes-loaded .so), so the cp310 wheels are retagged py3-none-any-arch.
WHL=$(mktemp -d)
trap 'rm -rf "$WHL"' EXIT
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 \
    --platform manylinux2014_x86_64 -d "$WHL" wbia-vtool==4.0.2 wbia-pyflann==4.0.4 wbia-pyhesaff==4.0.0
for w in "$WHL"/*cp310*.whl; do "$VENV/bin/wheel" tags --remove --python-tag py3 --abi-tag none "$w" >/dev/null; done
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"
"${PIP[@]}" install -q --no-deps -r "$ROOT/requirements-nodeps.txt" "$WHL"/*py3-none*.whl
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
touch "$STAMP"
echo "built $VENV" >&2
