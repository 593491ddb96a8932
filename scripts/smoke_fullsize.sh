#!/usr/bin/env bash
# The optical chain at real size, offline, on a CPU: DeepSeek-OCR's DeepEncoder, the published
# adapter and Qwen3-VL-2B's language model built at their published sizes with RANDOM weights
# (configs/fullsize/): real time and memory, meaningless answers. Too slow for CI (about 40
# minutes on 2 cores, about 12 GB peak); run it after changing anything on the optical path.
#
#   bash scripts/smoke_fullsize.sh [OUTPUT_DIR]          # default results/smoke_fullsize
#   OPTICAL_OFFICIAL_DIR=DIR bash scripts/smoke_fullsize.sh   # also time the official encoder code
#       (DIR holds its deepencoder/ package; it imports easydict: pip install easydict)
#
# Each step runs under flock on $OPTICAL_LOCK (default: optical-heavy.lock in $TMPDIR; one heavy job at a time on a shared machine)
# and checks what the real-size issue asks of it; the first failed check stops the script (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/smoke_fullsize}
PY=.venv/bin/python
OPTICAL=.venv/bin/optical
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
mkdir -p "$OUT"

LOCK=${OPTICAL_LOCK:-${TMPDIR:-/tmp}/optical-heavy.lock}
heavy() { if command -v flock >/dev/null; then flock "$LOCK" "$@"; else "$@"; fi; }
step() { echo; echo "== $* ($(date +%H:%M:%S))"; }
check() { "$PY" -c "$1" || { echo "check failed: $2" >&2; exit 1; }; }

step "1/5 train-adapter, full size: 2 steps of batch 2"
heavy "$OPTICAL" train-adapter -c configs/fullsize/train-adapter.yaml -o "$OUT/train" --overwrite --set train.max_steps=2 \
    --set train.batch_size=2 --set data.max_documents=4 --set train.read_pages=1 --set train.read_max_new_tokens=8 \
    --set data.cache_dir="$OUT/cache" --json > "$OUT/train.json"
check "import json; r = json.load(open('$OUT/train.json')); p = r['parameters']
print('parameters', p, 'step_s', r['step_s'], 'peak', r['peak_memory_gib'], 'pages', r['training_pages'])
assert p['deepencoder'] == 401_369_600 and p['adapter'] == 10_642_432 and p['language_model'] == 1_720_574_976" \
    "train-adapter's parameters are not the published sizes"

step "2/5 bench longbench, full size: native vs optical on a 16,000-character item"
"$PY" scripts/make_longbench_items.py --chars 16000 --output "$OUT/cve_16k.json"
heavy "$OPTICAL" bench longbench -c configs/fullsize/longbench.yaml --set bench.data="$OUT/cve_16k.json" \
    --ids cve-16000-0 --conditions native,optical -o "$OUT/longbench" --overwrite --json > "$OUT/longbench.json"
check "import json; s = json.load(open('$OUT/longbench.json')); c = s['conditions']
native, optical = (c[k]['mean_latency_s']['latency'] for k in ('native', 'optical'))
print(f'native {native:.1f} s, optical {optical:.1f} s = {optical / native:.2f}x; peak', s['peak_memory_gib'])
assert optical < native" "optical latency is not below native"

step "3/5 bench_cost: native vs optical at 1K, 2K, 4K, 8K document tokens"
heavy "$PY" scripts/bench_cost.py --size fullsize --lengths 1024,2048,4096,8192 --device cpu --output "$OUT/cost.csv"
check "import csv; rows = [r for r in csv.DictReader(open('$OUT/cost.csv')) if r['condition'] == 'optical']
ratio = {int(r['length']): float(r['optical_over_native_latency']) for r in rows}
print('optical/native latency by length', ratio)
assert ratio[8192] <= 0.5" "optical is above 0.5x native at 8K document tokens"

step "4/5 bench_encoder: DeepEncoder base page, float32, every CPU path${OPTICAL_OFFICIAL_DIR:+ and the official code}"
heavy "$PY" scripts/bench_encoder.py --size fullsize --mode base --batch-sizes 1 --dtype float32 --device cpu \
    --paths mask,chunked,auto --rounds 3 ${OPTICAL_OFFICIAL_DIR:+--official "$OPTICAL_OFFICIAL_DIR"} \
    --output "$OUT/encoder.csv"

step "5/5 bench_train: step time and memory at batch 1, 2, 4 (target cut to 256 tokens on a CPU)"
heavy "$PY" scripts/bench_train.py --size fullsize --batch-sizes 1,2,4 --steps 1 --device cpu --max-text-tokens 256 \
    --variants label-positions,checkpointing --output "$OUT/train.csv"

echo; echo "all steps passed; artifacts in $OUT"
