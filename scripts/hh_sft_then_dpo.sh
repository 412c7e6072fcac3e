#!/usr/bin/env bash
# The seeds' recipe when no SFT model exists, on Anthropic HH helpful-base (test split): fit the
# reference on the preferred completions (`dpo sft`), then DPO from it; compared with DPO from the
# instruct model directly, same DPO settings. Needs the splits of scripts/hh_helpful_experiments.sh
# (OUT/train_rest.jsonl, OUT/eval500.jsonl), or TRAIN=... (SFT), DPO_TRAIN=... and EVAL=... files.
# Usage: [SFT_STEPS=150] [DPO_STEPS=100] [DPO_LR=1e-6] [DPO_WARMUP=steps/10] [THREADS=N] scripts/hh_sft_then_dpo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/hh-helpful}"
SFT_STEPS="${SFT_STEPS:-150}"
DPO_STEPS="${DPO_STEPS:-100}"
TRAIN="${TRAIN:-$OUT/train_rest.jsonl}"
EVAL="${EVAL:-$OUT/eval500.jsonl}"
DPO_TRAIN="${DPO_TRAIN:-$TRAIN}"
DPO_LR="${DPO_LR:-1e-6}"
DPO_WARMUP="${DPO_WARMUP:-$(( DPO_STEPS / 10 ))}"
THREADS_ARG=(${THREADS:+--threads "$THREADS"})
cargo build --release -q
DPO=./target/release/dpo
test -s "$TRAIN" || { echo "run scripts/hh_helpful_experiments.sh first (for the splits)" >&2; exit 1; }
$DPO sft "${THREADS_ARG[@]}" --data "$TRAIN" --eval-data "$EVAL" --output-dir "$OUT/sft" --overwrite-output-dir \
  --max-steps "$SFT_STEPS" --eval-steps $(( (SFT_STEPS + 2) / 3 )) --per-device-train-batch-size 8 --learning-rate 2e-5 --warmup-steps 10 --max-length 512 --seed 42
dpo_run() {
  $DPO train "${THREADS_ARG[@]}" "$@" --data "$DPO_TRAIN" --eval-data "$EVAL" --overwrite-output-dir \
    --max-steps "$DPO_STEPS" --per-device-train-batch-size 8 --learning-rate "$DPO_LR" --warmup-steps "$DPO_WARMUP" --beta 0.1 --max-length 512 --seed 42
}
dpo_run --model "$OUT/sft/final" --output-dir "$OUT/dpo_after_sft"
dpo_run --output-dir "$OUT/dpo_without_sft"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def rows(run): return [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
sft = rows("sft")
tr = [r for r in sft if "loss" in r]; ev = [r for r in sft if "eval_loss" in r]
print(f"SFT: train loss {tr[0]['loss']:.4f} -> {tr[-1]['loss']:.4f}; eval loss " + " -> ".join(f"{r['eval_loss']:.4f} (step {r['step']})" for r in ev))
keys = ["eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected", "eval_logps/chosen"]
print("| run | " + " | ".join(keys) + " |"); print("|---|" + "---|" * len(keys))
for run in ["dpo_without_sft", "dpo_after_sft"]:
    e = [r for r in rows(run) if "eval_loss" in r][-1]
    print(f"| {run} | " + " | ".join(f"{e[k]:.4f}" for k in keys) + " |")
PY
