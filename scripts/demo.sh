#!/usr/bin/env bash
# The main job on the bundled defaults (what `make demo` runs): every step that works offline
# on a CPU, each writing its artifacts under results/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
OPTICAL=${OPTICAL:-.venv/bin/optical}
OUT=results/demo

step() { printf '\n== %s\n' "$*" >&2; }

step "1. render the bundled sample document to page images"
"$OPTICAL" render --output-dir "$OUT/render"

printf '\nDone: artifacts are in %s/\n' "$OUT" >&2
