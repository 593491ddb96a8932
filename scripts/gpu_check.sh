#!/usr/bin/env bash
# Every GPU measurement of the project in one run, about 17 minutes on one H100/H200 (--steps runs a subset,
# e.g. two calls under a 10-minute limit: --steps parity,encoder,feed,cost,train then --steps ruler,vllm,serve):
#   parity   DeepEncoder bfloat16 vs float32, centred relative error, every attention path
#   encoder  encode pages/s in base mode at batch 1, 16, 64 for each attention path (target >= 300 pages/s bf16)
#   feed     `optical encode --text` (page workers, bytes through shared memory) against the encoder module
#            alone at batch 64, bfloat16, same run (target: encode >= 80% of the module's pages/s)
#   cost     native vs optical cost at 32K/64K/128K tokens on the full-size random-weight models
#   train    full-size train-adapter step time at batch 1, 2, 4
#   ruler    bench ruler at 4K and 8K tokens on the full-size random chain over fonts 12, 8 and 6 px: every
#            condition's rows and needle_legible (the OCR judge on the needles: real with random weights)
#   vllm     native and optical on both engines (hf, vLLM) at 32K tokens, and items/s for 16 documents
#            of 8K tokens in flight; needs vLLM for $VLLM_PYTHON (default $PYTHON; skipped without it)
#   serve    through `optical serve` (vLLM's OpenAI server, pages encoded inside the engine): items/s for
#            8 concurrent 4-page questions, a second question about the same pages against the first
#            (encoder and prefix caches), and `optical ask` at 32K tokens against the native read;
#            needs vLLM like the vllm step
# Each step runs under its own time budget (printed first; a step over budget is stopped and
# reported, the others still run), writes results/bench/gpu/<step>.csv, and a summary follows.
#
#   bash scripts/gpu_check.sh              # on the GPU host (install the package there first, keeping its CUDA torch)
#   bash scripts/gpu_check.sh --dry-run    # the same steps at tiny sizes on the CPU, into results/bench/gpu-dry/
#   bash scripts/gpu_check.sh --steps feed,ruler   # only these steps (the others are recorded as not asked)
#   PYTHON=/path/to/python bash scripts/gpu_check.sh --output-dir DIR
#   VLLM_PYTHON=.venv-vllm/bin/python bash scripts/gpu_check.sh --dry-run   # the vllm step in another environment
#   OPTICAL_OFFICIAL_DIR=DIR bash scripts/gpu_check.sh   # the encoder step also times the official
#       DeepSeek-OCR encoder code in DIR (its deepencoder/ package) and gives ratios against it
#
# Exit 0 when every step passed, 1 otherwise. A step whose script (or the interface this script
# calls) is not in the checkout fails the real run; a dry run skips it with a line saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
out=""
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --output-dir) out="$2"; shift ;;
        --steps) only=",$2,"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (use --dry-run, --output-dir DIR, --steps A,B)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ "$dry" = 1 ]; then
    out=${out:-results/bench/gpu-dry}
    device=cpu size=tiny mode=tiny pages=1
    encode_batches=1,2 lengths=1024,2048 train_batches=1,2 steps=1 vllm_lengths=1024 vllm_batch=2 vllm_batch_length=512
    ruler_lengths=1024
    serve_concurrency=2 serve_pages=1 serve_length=512
    # budgets here are generous caps for a busy 2-core CPU, not a plan
    feed_pages=12 feed_batch=2
    budget_parity=120 budget_encoder=240 budget_feed=240 budget_cost=240 budget_train=240 budget_vllm=600 budget_serve=900
    budget_ruler=600
else
    out=${out:-results/bench/gpu}
    device=cuda size=fullsize mode=base pages=8
    encode_batches=1,16,64 lengths=32768,65536,131072 train_batches=1,2,4 steps=5
    vllm_lengths=32768 vllm_batch=16 vllm_batch_length=8192
    ruler_lengths=4096,8192
    serve_concurrency=8 serve_pages=4 serve_length=32768
    # 10 minutes for the first five: model set-up, FlexAttention compilation, vLLM's start and the 128K
    # prefills dominate; the serve step (the server's start, its three measurements) adds 3 minutes
    feed_pages=2048 feed_batch=64
    # the feed step: two model builds, 2,048 base pages drawn by one worker per core and encoded (~10 s at 220/s)
    # the ruler step adds 3 minutes (192 rows of 32 tokens, the OCR judge on the needles)
    budget_parity=40 budget_encoder=140 budget_feed=90 budget_cost=160 budget_train=100 budget_vllm=150 budget_serve=180
    budget_ruler=180
fi
mkdir -p "$out"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} MPLBACKEND=Agg

if [ -z "${VLLM_PYTHON:-}" ]; then
    if [ "$dry" = 1 ] && [ -x .venv-vllm/bin/python ]; then VLLM_PYTHON=.venv-vllm/bin/python; else VLLM_PYTHON=$PYTHON; fi
fi
total=$((budget_parity + budget_encoder + budget_feed + budget_cost + budget_train + budget_ruler + budget_vllm + budget_serve))
echo "gpu_check: device=$device size=$size output=$out python=$PYTHON$([ "$dry" = 1 ] && echo ' (dry run)')"
echo "planned budget: parity ${budget_parity} s, encoder ${budget_encoder} s, feed ${budget_feed} s, cost ${budget_cost} s, train ${budget_train} s, ruler ${budget_ruler} s, vllm ${budget_vllm} s, serve ${budget_serve} s; total ${total} s"
echo "step,status,seconds,budget_s,csv" > "$out/steps.csv"
failed=0

# step NAME BUDGET SCRIPT FLAG... -- ARG...: run scripts/SCRIPT ARG... within BUDGET seconds when the
# script exists and takes every FLAG (the interface called here), else say why it is skipped.
step() {
    local name=$1 budget=$2 script=scripts/$3
    shift 3
    local flags=()
    while [ "$1" != "--" ]; do flags+=("$1"); shift; done
    shift
    local why=""
    if [ -n "$only" ] && [[ "$only" != *",$name,"* ]]; then
        echo "not asked: $name (--steps)"
        echo "$name,not asked,0,$budget," >> "$out/steps.csv"
        return
    fi
    if [ ! -f "$script" ]; then
        why="$script not present"
    else
        local missing=()
        for flag in "${flags[@]}"; do grep -q -- "\"$flag\"" "$script" || missing+=("$flag"); done
        [ ${#missing[@]} -gt 0 ] && why="$script does not take ${missing[*]} yet"
    fi
    if [ -n "$why" ]; then
        if [ "$dry" = 1 ]; then
            echo "skipped: $why"
            echo "$name,skipped,0,$budget," >> "$out/steps.csv"
        else
            echo "FAILED: $why"
            echo "$name,missing,0,$budget," >> "$out/steps.csv"
            failed=1
        fi
        return
    fi
    local python=$PYTHON
    { [ "$name" = vllm ] || [ "$name" = serve ]; } && python=$VLLM_PYTHON
    echo "== $name: $python $script $* (budget ${budget} s)"
    local start=$SECONDS status=ok
    timeout -k 10 "$budget" "$python" "$script" "$@"
    local rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then status="over budget"; failed=1
    elif [ $rc != 0 ]; then status="failed (exit $rc)"; failed=1; fi
    echo "$name: $status in $((SECONDS - start)) s"
    echo "$name,$status,$((SECONDS - start)),$budget,$out/$name.csv" >> "$out/steps.csv"
}

step parity "$budget_parity" check_bf16_parity.py --size --device --mode --pages --output -- \
    --size "$size" --device "$device" --mode "$mode" --pages "$pages" --output "$out/parity.csv"
official=()  # the official code builds the full-size encoder only: not in a dry run
if [ -n "${OPTICAL_OFFICIAL_DIR:-}" ] && [ "$dry" = 0 ]; then official=(--official "$OPTICAL_OFFICIAL_DIR"); fi
step encoder "$budget_encoder" bench_encoder.py --mode --batch-sizes --dtype --device --paths --size --output -- \
    --mode base --batch-sizes "$encode_batches" --dtype bfloat16 --device "$device" --paths all --size "$size" \
    --output "$out/encoder.csv" ${official[@]+"${official[@]}"}
feed_dtype=bfloat16
[ "$dry" = 1 ] && feed_dtype=float32  # this CPU's bfloat16 is emulated: the dry run checks the plumbing
step feed "$budget_feed" bench_encode_feed.py --size --mode --device --dtype --batch --pages --output -- \
    --size "$size" --mode "$mode" --device "$device" --dtype "$feed_dtype" --batch "$feed_batch" --pages "$feed_pages" \
    --output "$out/feed.csv"
step cost "$budget_cost" bench_cost.py --size --lengths --device --output -- \
    --size "$size" --lengths "$lengths" --device "$device" --output "$out/cost.csv"
step train "$budget_train" bench_train.py --size --batch-sizes --steps --device --output -- \
    --size "$size" --batch-sizes "$train_batches" --steps "$steps" --device "$device" --output "$out/train.csv"
step ruler "$budget_ruler" bench_ruler.py --size --lengths --device --output -- \
    --size "$size" --lengths "$ruler_lengths" --device "$device" --output "$out/ruler.csv"
# vLLM is an optional extra: without it the step says so and counts as skipped, not failed
if "$VLLM_PYTHON" -c 'import vllm' >/dev/null 2>&1; then
    step vllm "$budget_vllm" bench_cost.py --size --lengths --device --engine --dtype --batch --batch-length --output -- \
        --size "$size" --lengths "$vllm_lengths" --device "$device" --engine hf,vllm --dtype bfloat16 \
        --batch "$vllm_batch" --batch-length "$vllm_batch_length" --output "$out/vllm.csv"
    step serve "$budget_serve" bench_serve.py --size --device --dtype --concurrency --pages --length --server-only --output -- \
        --size "$size" --device "$device" --dtype bfloat16 --concurrency "$serve_concurrency" --pages "$serve_pages" \
        --length "$serve_length" --server-only --output "$out/serve.csv"
else
    echo "skipped: vLLM is not installed for $VLLM_PYTHON (pip install -e '.[vllm]' there, or set VLLM_PYTHON)"
    echo "vllm,skipped,0,$budget_vllm," >> "$out/steps.csv"
    echo "serve,skipped,0,$budget_serve," >> "$out/steps.csv"
fi

echo
echo "== summary ($out)"
"$PYTHON" - "$out" <<'EOF'
import csv, sys
from pathlib import Path

folder = Path(sys.argv[1])
for name in ("steps", "parity", "encoder", "feed", "cost", "train", "ruler", "vllm", "vllm-throughput", "serve"):
    path = folder / f"{name}.csv"
    if not path.is_file():
        continue
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        continue
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))]
    print(f"-- {path}")
    for row in rows:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
feed = folder / "feed.csv"
if feed.is_file():
    for r in csv.DictReader(open(feed, newline="")):
        print(f"feed: encode --text {r['encode_steady_pages_per_s']} pages/s against the module's {r['module_pages_per_s']} "
              f"at batch {r['batch']}: {r['ratio']} (target >= {r['target']}: {'met' if r['met'] == 'True' else 'NOT met'})")
parity = folder / "parity.csv"
if parity.is_file():
    rows = list(csv.DictReader(open(parity, newline="")))
    worst = max((r for r in rows if r["dtype"] == "bfloat16"), key=lambda r: float(r["centred_rel_error"]), default=None)
    if worst:
        print(f"parity: worst bfloat16 centred relative error {float(worst['centred_rel_error']):.2e} ({worst['attention']} path), "
              f"{'within' if all(r['passed'] == 'True' for r in rows) else 'OVER'} the thresholds")
EOF
exit $failed
