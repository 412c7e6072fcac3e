#!/usr/bin/env bash
# Time and memory of each --optim on SmolLM2-135M-Instruct (full fine-tuning, 134.5M trained
# parameters): 5 steps of 2 HH helpful-base pairs each, one run per optimizer, side by side.
# Prints the median seconds of the optimizer update per step (clipping included), the optimizer's
# state and the peak RSS, from each run's summary.json.
# Usage: scripts/optimizer_costs.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/optimizer-costs}"
SHARED="${DPO_SHARED:-../shared}"
mkdir -p "$OUT"
cargo build --release -q -p dpo-cli
python3 - "$SHARED" "$OUT" <<'PY'
import gzip, sys
shared, out = sys.argv[1], sys.argv[2]
lines = [l for l in gzip.open(f"{shared}/data/hh-rlhf/helpful-base/test.jsonl.gz", "rt", encoding="utf-8") if l.strip()]
open(f"{out}/pairs.jsonl", "w").writelines(lines[:10])
PY
for optim in adamw_torch adamw_8bit lion_32bit adafactor sgd; do
    ./target/release/dpo train --data "$OUT/pairs.jsonl" --output-dir "$OUT/$optim" --optim "$optim" --max-steps 5 \
        --per-device-train-batch-size 2 --max-length 256 --learning-rate 1e-6 --overwrite-output-dir > /dev/null 2>&1
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
print("| optimizer | seconds per update (median) | state | peak RSS |")
print("|---|---|---|---|")
for optim in ["adamw_torch", "adamw_8bit", "lion_32bit", "adafactor", "sgd"]:
    s = json.load(open(f"{out}/{optim}/summary.json"))
    print(f"| {optim} | {statistics.median(s['step_optimizer_seconds']):.3f} | {s['optimizer_state_bytes'] / 1e6:.1f} MB | {s['peak_rss_bytes'] / 1e9:.2f} GB |")
PY
