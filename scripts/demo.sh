#!/usr/bin/env bash
# The main job on the bundled defaults (what `make demo` runs): every step that works offline
# on a CPU, each writing its artifacts under results/demo/ and its --json report beside them
# (results/demo/<step>.json: what scripts/compare_demo.py compares between two demo runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
OPTICAL=${OPTICAL:-.venv/bin/optical}
OUT=${DEMO_OUT:-results/demo}
QUERY="SQL injection in the login form lets attackers read the database"
mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*" >&2; }

step "1. render the bundled sample document to page images"
"$OPTICAL" render --output-dir "$OUT/render" --overwrite --json > "$OUT/render.json"

step "2. encode the rendered pages (tiny RANDOM DeepEncoder: the compression metrics are real, the features are not)"
"$OPTICAL" encode --config configs/tiny/encode.yaml --set deepencoder.mode=base --input "$OUT/render" \
    --output-dir "$OUT/encode" --overwrite --json > "$OUT/encode.json"

step "3. build the energy index on the bundled CVE corpus (seeded 1,681-record subset, MiniLM embeddings)"
"$OPTICAL" index build-energy --output-dir "$OUT/index" --overwrite --json > "$OUT/index.json"

step "4. search it: energy distance, then cosine for comparison"
for mode in energy cosine; do
    "$OPTICAL" index search --index "$OUT/index" --query "$QUERY" -k 5 --mode "$mode"
    "$OPTICAL" index search --index "$OUT/index" --query "$QUERY" -k 5 --mode "$mode" --json > "$OUT/search_$mode.json" 2>/dev/null
done

step "5. sweep diffusion parameters against real CWE relevance labels (heatmaps.png, sweep.csv, summary.json)"
"$OPTICAL" sweep diffusion --eta 0.05,0.1,0.15,0.2 --steps 2,4,6,8 --output-dir "$OUT/sweep" --overwrite \
    --json > "$OUT/sweep.json"

printf '\nDone: artifacts are in %s/ (each step'"'"'s JSON report as %s/<step>.json)\n' "$OUT" "$OUT" >&2
