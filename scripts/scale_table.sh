#!/usr/bin/env bash
# The scale table of the README (issue 9): peak RSS and tokens/s of full fine-tuning and LoRA
# (bf16 and q4_0 bases, with and without recomputation) for random-initialised models of the
# published configs in scripts/scale/ (SmolLM2-135M/360M/1.7B, Llama-3.1-8B), on 4 HH harmless
# pairs per step at max_length 512. Each model is written once as a bf16 Hugging Face directory
# (crates/dpo/examples/random_model.rs) under MODELS (default /tmp/dpo-scale-models).
# Usage: scripts/scale_table.sh [OUT_DIR] [CONFIG NAMES...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-scale-out}"; shift || true
NAMES=("${@:-smollm2-135m smollm2-360m smollm2-1.7b llama-3.1-8b}")
MODELS="${MODELS:-/tmp/dpo-scale-models}"
THREADS="${THREADS:-2}"
SHARED="${DPO_SHARED:-../shared}"
mkdir -p "$OUT" "$MODELS"
cargo build --release -q -p dpo-cli
cargo build --release -q -p dpo --example random_model
LORA="--use-peft --lora-r 16 --lora-alpha 32 --lora-dropout 0"
for name in ${NAMES[@]}; do
  dir="$MODELS/$name"
  [ -f "$dir/model.safetensors.index.json" ] || ./target/release/examples/random_model "scripts/scale/$name.json" "$dir" bf16
  case "$name" in
    llama-3.1-8b) runs=("lora_q4_0_ckpt:--base-dtype q4_0 --gradient-checkpointing") ;;
    smollm2-1.7b) runs=("lora_bf16:--base-dtype bf16" "lora_bf16_ckpt:--base-dtype bf16 --gradient-checkpointing"
                        "lora_q4_0:--base-dtype q4_0" "lora_q4_0_ckpt:--base-dtype q4_0 --gradient-checkpointing") ;;
    *) runs=("full:" "full_ckpt:--gradient-checkpointing" "lora_bf16:--base-dtype bf16" "lora_bf16_ckpt:--base-dtype bf16 --gradient-checkpointing"
             "lora_q4_0:--base-dtype q4_0" "lora_q4_0_ckpt:--base-dtype q4_0 --gradient-checkpointing") ;;
  esac
  for r in "${runs[@]}"; do
    tag="${r%%:*}"; flags="${r#*:}"
    lora=""; [[ "$tag" == lora* ]] && lora="$LORA"
    steps=2; warmup=1; case "$name" in smollm2-1.7b|llama-3.1-8b) steps=1; warmup=0 ;; esac
    echo "### $name $tag"
    /usr/bin/time -v ./target/release/dpo bench --threads "$THREADS" --model "$dir" --data "$SHARED/data/hh-rlhf/harmless-base/test.jsonl.gz" \
        --pairs 4 --batch 4 --max-length 512 --steps "$steps" --warmup "$warmup" $lora $flags --json-out "$OUT/${name}_$tag.json" \
        2> "$OUT/${name}_$tag.time" | grep -E "seconds/step|RSS" || echo "failed: see $OUT/${name}_$tag.time"
  done
done
