#!/usr/bin/env bash
# Short runs of the loss family on real data from ../shared/data with SmolLM2-135M-Instruct:
#   ipo, simpo, orpo          on Anthropic HH helpful-base pairs (the first 64);
#   kto                       on LLaMA-Factory's kto_en_demo.json (conversational, chat template);
#   odpo, plackett_luce       on samples of SmolLM2 continuing IMDb review openings (test split),
#                             judged by the sentiment judge: `dpo label --mode rank-pairs` gives
#                             pairs with scores (ODPO's offset), `--mode ranking` rankings of 4.
# Prints a table of the first and last training metrics of each run.
# Usage: scripts/loss_family_runs.sh [OUT_DIR]   (STEPS=16 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/loss-family}"
SHARED="${DPO_SHARED:-../shared}"
STEPS="${STEPS:-16}"
mkdir -p "$OUT"
cargo build --release -q
DPO=./target/release/dpo
python3 - "$SHARED" "$OUT" <<'PY'
import gzip, json, sys
shared, out = sys.argv[1], sys.argv[2]
lines = [l for l in gzip.open(f"{shared}/data/hh-rlhf/helpful-base/test.jsonl.gz", "rt", encoding="utf-8") if l.strip()]
open(f"{out}/hh64.jsonl", "w").writelines(lines[:64])
prompts = []
for l in gzip.open(f"{shared}/data/imdb/imdb_test.jsonl.gz", "rt", encoding="utf-8"):
    words = json.loads(l)["text"].replace("<br />", " ").split()
    if len(words) >= 30:
        prompts.append({"prompt": " ".join(words[:12])})
    if len(prompts) == 48:
        break
open(f"{out}/imdb_prompts.jsonl", "w").writelines(json.dumps(p) + "\n" for p in prompts)
PY
$DPO sample --prompts "$OUT/imdb_prompts.jsonl" --out "$OUT/imdb_samples.jsonl" --n 4 --max-new-tokens 32 --seed 1
$DPO label --samples "$OUT/imdb_samples.jsonl" --out "$OUT/imdb_rankings.jsonl" --judge sentiment --mode ranking
$DPO label --samples "$OUT/imdb_samples.jsonl" --out "$OUT/imdb_scored_pairs.jsonl" --judge sentiment --mode rank-pairs
common=(--max-steps "$STEPS" --per-device-train-batch-size 4 --learning-rate 5e-6 --max-length 512 --lr-scheduler-type constant --seed 42 --overwrite-output-dir)
$DPO train --loss ipo --data "$OUT/hh64.jsonl" --output-dir "$OUT/ipo" "${common[@]}"
$DPO train --loss simpo --beta 2.0 --simpo-gamma 0.5 --data "$OUT/hh64.jsonl" --output-dir "$OUT/simpo" "${common[@]}"
$DPO train --loss orpo --beta 0.1 --data "$OUT/hh64.jsonl" --output-dir "$OUT/orpo" "${common[@]}"
$DPO train --loss kto --data "$SHARED/data/llama-factory/kto_en_demo.json" --output-dir "$OUT/kto" "${common[@]}" --per-device-train-batch-size 8
$DPO train --loss odpo --data "$OUT/imdb_scored_pairs.jsonl" --output-dir "$OUT/odpo" "${common[@]}"
$DPO train --loss plackett_luce --data "$OUT/imdb_rankings.jsonl" --output-dir "$OUT/plackett_luce" "${common[@]}"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
keys = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl"]
print("| loss | data | step | " + " | ".join(keys) + " |")
print("|---|---|---|" + "---|" * len(keys))
data = {"ipo": "HH helpful-base 64", "simpo": "HH helpful-base 64", "orpo": "HH helpful-base 64", "kto": "kto_en_demo.json",
        "odpo": "IMDb samples, scored pairs", "plackett_luce": "IMDb samples, rankings of 4"}
for name in data:
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"loss"' in l]
    for r in (rows[0], rows[-1]):
        vals = [f"{r[k]:.4f}" if k in r else "-" for k in keys]
        print(f"| {name} | {data[name]} | {r['step']} | " + " | ".join(vals) + " |")
PY
