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
"$OPTICAL" render --output-dir "$OUT/render" --overwrite

step "2. encode the rendered pages (tiny RANDOM DeepEncoder: the compression metrics are real, the features are not)"
"$OPTICAL" encode --config configs/tiny/encode.yaml --set deepencoder.mode=base --input "$OUT/render" --output-dir "$OUT/encode" --overwrite

step "3. build the energy index on the bundled CVE corpus (seeded 1,681-record subset, MiniLM embeddings)"
"$OPTICAL" index build-energy --output-dir "$OUT/index" --overwrite

step "4. search it: energy distance, then cosine for comparison"
"$OPTICAL" index search --index "$OUT/index" --query "SQL injection in the login form lets attackers read the database" -k 5
"$OPTICAL" index search --index "$OUT/index" --query "SQL injection in the login form lets attackers read the database" -k 5 --mode cosine

step "5. sweep diffusion parameters against real CWE relevance labels (heatmaps.png, sweep.csv, summary.json)"
"$OPTICAL" sweep diffusion --eta 0.05,0.1,0.15,0.2 --steps 2,4,6,8 --output-dir "$OUT/sweep" --overwrite

printf '\nDone: artifacts are in %s/\n' "$OUT" >&2
