#!/usr/bin/env bash
# Learning runs of the methods of issue 25 beside DPO at the same settings, SmolLM2-135M-Instruct on
# Anthropic HH helpful-base pairs from ../shared/data (the first 32 of the test split to train, the next
# 8 to evaluate at the end of each epoch): DPO (sigmoid), DPOP, SimPER, CPO, AlphaPO, β-DPO; and DPO with the
# Lion, Adafactor and 8-bit AdamW optimizers. Prints per run and epoch: train loss (mean over the epoch's
# steps), train accuracy and margin, eval loss, accuracy and margin.
# Usage: [KEEP=1] scripts/new_methods_runs.sh [OUT_DIR]   (EPOCHS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/new-methods}"
SHARED="${DPO_SHARED:-../shared}"
EPOCHS="${EPOCHS:-2}"
mkdir -p "$OUT"
cargo build --release -q -p dpo-cli
DPO=./target/release/dpo
python3 - "$SHARED" "$OUT" <<'PY'
import gzip, sys
shared, out = sys.argv[1], sys.argv[2]
lines = [l for l in gzip.open(f"{shared}/data/hh-rlhf/helpful-base/test.jsonl.gz", "rt", encoding="utf-8") if l.strip()]
open(f"{out}/train.jsonl", "w").writelines(lines[:32])
open(f"{out}/eval.jsonl", "w").writelines(lines[32:40])
PY
common=(--data "$OUT/train.jsonl" --eval-data "$OUT/eval.jsonl" --num-train-epochs "$EPOCHS" --eval-steps 8
        --per-device-train-batch-size 4 --learning-rate 5e-6 --max-length 384 --lr-scheduler-type constant
        --seed 42 --overwrite-output-dir)
# KEEP=1 keeps the runs that finished before (their summary.json) instead of running them again
run() {
    local name=$1; shift
    if [ "${KEEP:-0}" = 1 ] && [ -f "$OUT/$name/summary.json" ]; then echo "== $name: kept"; return; fi
    echo "== $name: $*"; $DPO train "${common[@]}" --output-dir "$OUT/$name" "$@" 2>&1 | tail -n 2
}
run dpo --loss sigmoid
run dpop --loss dpop --dpop-lambda 50
run simper --loss simper
run cpo --loss cpo
run alphapo --loss alphapo --beta 2.0 --simpo-gamma 0.5 --alphapo-alpha 0.25
run beta_dpo --loss beta_dpo
run dpo_lion --loss sigmoid --optim lion_32bit --learning-rate 5e-7
run dpo_adafactor --loss sigmoid --optim adafactor
run dpo_adamw8bit --loss sigmoid --optim adamw_8bit
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
runs = ["dpo", "dpop", "simper", "cpo", "alphapo", "beta_dpo", "dpo_lion", "dpo_adafactor", "dpo_adamw8bit"]
print("| run | epoch | train loss | train acc | train margin | eval loss | eval acc | eval margin |")
print("|---|---|---|---|---|---|---|---|")
for name in runs:
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    train = [r for r in rows if "loss" in r]
    evals = list({r["step"]: r for r in rows if "eval_loss" in r}.values())
    per_epoch = 8
    for e, ev in enumerate(evals):
        t = train[e * per_epoch:(e + 1) * per_epoch]
        m = lambda k: sum(r[k] for r in t) / len(t)
        print(f"| {name} | {e + 1} | {m('loss'):.4f} | {m('rewards/accuracies'):.3f} | {m('rewards/margins'):.4f} | "
              f"{ev['eval_loss']:.4f} | {ev['eval_rewards/accuracies']:.3f} | {ev['eval_rewards/margins']:.4f} |")
PY
