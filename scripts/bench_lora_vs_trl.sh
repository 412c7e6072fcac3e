#!/usr/bin/env bash
# LoRA speed and memory, side by side on this machine (issue 9): `dpo bench` full fine-tuning in
# f32, then LoRA (r 16, alpha 32, all-linear, dropout 0 as trl_bench.py's PEFT run) on an f32,
# bf16, q8_0 and q4_0 base (bf16 and q8_0 also with 768 rows per forward pass instead of 2048,
# the same gradients in less memory; bf16 also with recomputation), then the oracle's
# trl_bench.py with `--lora-r 16` (TRL + PEFT; with and without precomputed reference log-probs).
# Same fixed config for all: 48 HH harmless-base pairs, 4 pairs per step, max_length 512.
# Needs the oracle built first: `bash ../shared/tools/oracle/setup.sh`.
# Usage: scripts/bench_lora_vs_trl.sh [OUT_DIR]   (STEPS, WARMUP, THREADS, SKIP_TRL=1 to leave TRL out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-lora}"
ORACLE="${ORACLE_ROOT:-${TMPDIR:-/tmp}/oracle}"
SHARED="${DPO_SHARED:-../shared}"
PY="$ORACLE/venv/bin/python"
MODEL_DIR="$ORACLE/smollm2-135m-instruct-f32"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-2}"
mkdir -p "$OUT"
[ -x "$PY" ] || { echo "oracle not built: run bash $SHARED/tools/oracle/setup.sh" >&2; exit 1; }
"$PY" "$SHARED/tools/oracle/hh_to_pairs.py" "$SHARED/data/hh-rlhf/harmless-base/test.jsonl.gz" "$OUT/harmless48.jsonl" 48
cargo build --release -q -p dpo-cli
LORA="--use-peft --lora-r 16 --lora-alpha 32 --lora-dropout 0"
run() {
  local name="$1"; shift
  echo "### dpo bench $name: $*"
  ./target/release/dpo bench --threads "$THREADS" --data "$OUT/harmless48.jsonl" --steps "$STEPS" --warmup "$WARMUP" \
      --json-out "$OUT/dpo_$name.json" "$@" 2>/dev/null | grep -E "tokens/s|time:|RSS"
}
run full
run lora_f32 $LORA --base-dtype f32
run lora_bf16 $LORA --base-dtype bf16
run lora_bf16_mt768 $LORA --base-dtype bf16 --max-tokens-per-forward 768
run lora_bf16_ckpt $LORA --base-dtype bf16 --gradient-checkpointing
run lora_q8_0 $LORA --base-dtype q8_0
run lora_q8_0_mt768 $LORA --base-dtype q8_0 --max-tokens-per-forward 768
run lora_q4_0 $LORA --base-dtype q4_0
[ "${SKIP_TRL:-0}" = 1 ] && exit 0
for mode in "--precompute-ref" ""; do
  echo "### trl_bench.py --lora-r 16 $mode"
  "$PY" "$SHARED/tools/oracle/trl_bench.py" --model "$MODEL_DIR" --data "$OUT/harmless48.jsonl" --threads "$THREADS" \
      --steps "$STEPS" --warmup "$WARMUP" --lora-r 16 $mode --json-out "$OUT/trl_lora${mode:+_precompute}.json" 2>/dev/null | grep -E "^(==|load|seconds/step|RSS)"
done
