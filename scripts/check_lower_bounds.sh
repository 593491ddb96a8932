#!/usr/bin/env bash
# Install every dependency at the lower bound pyproject.toml declares (torch at the Makefile's
# pin) in a fresh virtual environment and run the test suite there, so each declared bound is a
# version the code is tested on. Usage: bash scripts/check_lower_bounds.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-lowest}
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION ?= *//p' Makefile)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/python" scripts/lower_bounds.py > "$VENV/constraints.txt"
echo "lower bounds under test:" $(tr '\n' ' ' < "$VENV/constraints.txt") >&2
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" -e '.[dev]'
"$VENV/bin/python" -m pytest "$@"
