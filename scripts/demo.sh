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

step "2. encode the rendered pages (tiny RANDOM DeepEncoder: the compression metrics are real, the features are not)"
"$OPTICAL" encode --config configs/tiny/encode.yaml --set deepencoder.mode=base --input "$OUT/render" --output-dir "$OUT/encode"

printf '\nDone: artifacts are in %s/\n' "$OUT" >&2
