#!/usr/bin/env bash
# The learning experiments on Anthropic HH helpful-base (test split, ../shared/data):
#  1. overfit: 3 epochs on the first 64 pairs -> train rewards/accuracies toward 1, loss << log 2;
#  1b. overfit-lora: the same with a LoRA adapter (r 16, all-linear) on a bf16 base (LORA_LR);
#  2. long run: split off the first 500 pairs for evaluation, train on the rest for STEPS steps
#     (about an hour here), evaluating on the 500 every EVAL_STEPS steps.
# Usage: scripts/hh_helpful_experiments.sh [overfit|overfit-lora|long|all] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-all}"
OUT="${2:-runs/hh-helpful}"
SHARED="${DPO_SHARED:-../shared}"
SRC="$SHARED/data/hh-rlhf/helpful-base/test.jsonl.gz"
STEPS="${STEPS:-300}"
EVAL_STEPS="${EVAL_STEPS:-100}"
mkdir -p "$OUT"
cargo build --release -q
DPO=./target/release/dpo
python3 - "$SRC" "$OUT" <<'PY'
import gzip, sys
src, out = sys.argv[1], sys.argv[2]
lines = [l for l in gzip.open(src, "rt", encoding="utf-8") if l.strip()]
open(f"{out}/first64.jsonl", "w").writelines(lines[:64])
open(f"{out}/eval500.jsonl", "w").writelines(lines[:500])
open(f"{out}/train_rest.jsonl", "w").writelines(lines[500:])
print(f"{len(lines)} records: first64, eval500 = first 500, train_rest = {len(lines) - 500}")
PY
if [ "$WHAT" = overfit ] || [ "$WHAT" = all ]; then
  $DPO train --data "$OUT/first64.jsonl" --output-dir "$OUT/overfit64" --overwrite-output-dir \
    --num-train-epochs 3 --per-device-train-batch-size 8 --learning-rate 5e-6 --beta 0.1 --max-length 512 --seed 42
fi
if [ "$WHAT" = overfit-lora ] || [ "$WHAT" = all ]; then
  $DPO train --data "$OUT/first64.jsonl" --output-dir "$OUT/overfit64-lora" --overwrite-output-dir \
    --num-train-epochs 3 --per-device-train-batch-size 8 --learning-rate "${LORA_LR:-2e-4}" --beta 0.1 --max-length 512 --seed 42 \
    --use-peft --base-dtype bf16
fi
if [ "$WHAT" = long ] || [ "$WHAT" = all ]; then
  $DPO train --data "$OUT/train_rest.jsonl" --eval-data "$OUT/eval500.jsonl" --output-dir "$OUT/long" --overwrite-output-dir \
    --max-steps "$STEPS" --eval-steps "$EVAL_STEPS" --per-device-train-batch-size 8 --learning-rate 1e-6 --warmup-steps 20 \
    --beta 0.1 --max-length 512 --seed 42
fi
