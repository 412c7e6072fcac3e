#!/usr/bin/env bash
# Soak test (issue 10): a long run on a tiny random model, looping over 64 HH helpful-base pairs,
# with checkpoints, evaluation and --save-total-limit on; the process's RSS is sampled as it goes
# and each 100-step window's step time read from summary.json. Prints a table: does memory or
# step time creep?
# Usage: scripts/soak.sh [OUT_DIR] [STEPS]   (default /tmp/dpo-soak, 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/dpo-soak}"; STEPS="${2:-2000}"
SHARED="${DPO_SHARED:-../shared}"
mkdir -p "$OUT"
cargo build --release -q -p dpo-cli
cargo build --release -q -p dpo --example random_model
cat > "$OUT/tiny.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-05, "rope_theta": 100000, "max_position_embeddings": 8192, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}
JSON
[ -d "$OUT/model" ] || ./target/release/examples/random_model "$OUT/tiny.json" "$OUT/model" f32
python3 - "$SHARED/data/hh-rlhf/helpful-base/test.jsonl.gz" "$OUT" <<'PY'
import gzip, sys
lines = [l for l in gzip.open(sys.argv[1], "rt", encoding="utf-8") if l.strip()]
open(f"{sys.argv[2]}/first64.jsonl", "w").writelines(lines[:64])
PY
DPO_HOME="$OUT/home" ./target/release/dpo train --model "$OUT/model" --data "$OUT/first64.jsonl" --eval-data "$OUT/first64.jsonl" \
  --output-dir "$OUT/run" --overwrite-output-dir --max-steps "$STEPS" --per-device-train-batch-size 2 --max-length 128 \
  --learning-rate 1e-4 --save-steps 250 --save-total-limit 2 --eval-steps 500 --seed 1 > "$OUT/train.log" 2>&1 &
PID=$!
python3 - "$PID" "$OUT" "$STEPS" <<'PY'
import json, os, sys, time
pid, out, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rss = {}  # window end step -> the largest VmRSS sampled (every 0.2 s) while its steps ran, bytes
def status():
    try:
        return {k: v.split() for k, _, v in (l.partition(":") for l in open(f"/proc/{pid}/status"))}
    except FileNotFoundError:
        return None
while True:
    s = status()
    if s is None or s.get("State", ["Z"])[0] == "Z":
        break
    try:
        n = sum(1 for l in open(f"{out}/run/metrics.jsonl") if '"loss"' in l and '"eval_loss"' not in l)
    except FileNotFoundError:
        n = 0
    w = min(n // 100 * 100 + 100, steps)  # the window of steps w-99..w, running now
    rss[w] = max(rss.get(w, 0), int(s["VmRSS"][0]) * 1024)
    time.sleep(0.2)
summary = json.load(open(f"{out}/run/summary.json"))
sec = summary["step_seconds"]
print("| steps | largest RSS sampled (MB) | mean step time (ms) |")
print("|---|---|---|")
for k in range(100, steps + 1, 100):
    r = rss.get(k)
    print(f"| {k - 99}-{k} | {r / 1e6:.1f} |" if r else f"| {k - 99}-{k} | - |", f"{1000 * sum(sec[k - 100:k]) / 100:.1f} |")
print(f"peak RSS {summary['peak_rss_bytes'] / 1e6:.1f} MB; metrics.jsonl {os.path.getsize(out + '/run/metrics.jsonl')} bytes;",
      f"reference cache {sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out + '/home/ref-logps') for f in fs)} bytes")
PY
wait "$PID"
