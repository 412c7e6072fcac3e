#!/usr/bin/env bash
# Mixed precision (--bf16) against f32, side by side on this machine (README "Mixed precision"):
#   bench  `dpo bench` (full fine-tuning and LoRA on a bf16 base), f32 and --bf16 interleaved, REPS times
#   curve  50 DPO steps on HH helpful-base pairs, f32 and --bf16: loss and accuracy per step
#   det    the same 5-step --bf16 run three times, the third beside a CPU-bound job: sha256 of
#          metrics.jsonl and model.safetensors
# Usage: scripts/bf16_runs.sh bench|curve|det [OUT_DIR]     (needs the release build and ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:?bench, curve or det}"
OUT="${2:-bf16-out}"
SHARED="${DPO_SHARED:-../shared}"
DPO=./target/release/dpo
REPS="${REPS:-2}"
mkdir -p "$OUT"
pairs() { python3 "$SHARED/tools/oracle/hh_to_pairs.py" "$SHARED/data/hh-rlhf/$1/test.jsonl.gz" "$OUT/$2" "$3" >/dev/null; }
case "$WHAT" in
bench)
  pairs harmless-base harmless48.jsonl 48
  for rep in $(seq 1 "$REPS"); do
    for run in "full f32:" "full bf16:--bf16" "lora bf16-base:--use-peft --base-dtype bf16" "lora bf16:--use-peft --bf16"; do
      name="${run%%:*}"; flags="${run#*:}"
      $DPO bench --threads 2 --data "$OUT/harmless48.jsonl" --steps "${STEPS:-4}" --warmup 1 $flags \
        --json-out "$OUT/bench_${name// /_}_$rep.json" >/dev/null 2>&1
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:16s} rep $rep: {d['tokens_per_second']:6.1f} tokens/s, {d['seconds_per_step']:5.2f} s/step, peak RSS {d['peak_rss_bytes']/1e9:.2f} GB\")" "$OUT/bench_${name// /_}_$rep.json" "$name"
    done
  done ;;
curve)
  pairs helpful-base helpful.jsonl 400
  for p in f32 bf16; do
    extra=""; [ "$p" = bf16 ] && extra="--bf16"
    $DPO train --threads 2 --data "$OUT/helpful.jsonl" --output-dir "$OUT/curve_$p" --overwrite-output-dir \
      --max-steps 50 --per-device-train-batch-size 4 --learning-rate 5e-6 --max-length 512 $extra >/dev/null 2>&1
  done
  python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
runs = {p: [json.loads(l) for l in open(f"{out}/curve_{p}/metrics.jsonl") if '"loss"' in l] for p in ("f32", "bf16")}
a, b = runs["f32"], runs["bf16"]
rel = [abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b)]
acc = lambda r, k: sum(x["rewards/accuracies"] for x in r[-k:]) / k
print(f"steps {len(a)}; mean |loss_bf16 - loss_f32| / loss_f32 = {100 * sum(rel) / len(rel):.3f} % (max {100 * max(rel):.3f} %)")
print(f"mean loss, steps 41-50: f32 {sum(x['loss'] for x in a[-10:]) / 10:.4f}, bf16 {sum(x['loss'] for x in b[-10:]) / 10:.4f}")
print(f"rewards/accuracies, steps 41-50: f32 {acc(a, 10):.3f}, bf16 {acc(b, 10):.3f}")
for p in ("f32", "bf16"):
    s = json.load(open(f"{out}/curve_{p}/summary.json"))
    print(p, {k: s[k] for k in ("total_seconds", "train_tokens_per_second", "peak_rss_bytes") if k in s})
PY
  ;;
det)
  pairs harmless-base harmless48.jsonl 48
  for i in 1 2 3; do
    [ "$i" = 3 ] && { python3 -c "while True: pass" & BUSY=$!; }
    $DPO train --threads 2 --bf16 --data "$OUT/harmless48.jsonl" --output-dir "$OUT/det_$i" --overwrite-output-dir \
      --max-steps 5 --per-device-train-batch-size 2 --max-length 256 >/dev/null 2>&1
    [ "$i" = 3 ] && kill "$BUSY"
    echo "run $i$([ "$i" = 3 ] && echo ' (beside a busy process)'): $(sha256sum "$OUT/det_$i/metrics.jsonl" | cut -c1-16) $(sha256sum "$OUT/det_$i/final/model.safetensors" | cut -c1-16)"
  done ;;
*) echo "bench, curve or det" >&2; exit 2 ;;
esac
