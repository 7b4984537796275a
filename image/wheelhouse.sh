#!/usr/bin/env bash
# `make wheelhouse`: walstream's wheel and one wheel per dependency in .image/wheelhouse, at the versions the
# project's virtualenv resolved from pyproject.toml's pins, so that an image build needs no network.
#   image/wheelhouse.sh <python of the project's virtualenv>
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${1:?usage: image/wheelhouse.sh <python>}"
OUT="$REPO/.image/wheelhouse"

echo "[image] preparing the wheelhouse in .image/wheelhouse" >&2
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m pip freeze --exclude-editable > "$REPO/.image/constraints.txt"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" \
  --constraint "$REPO/.image/constraints.txt" "$REPO"
echo "[image] $(find "$OUT" -name '*.whl' | wc -l) wheels" >&2
