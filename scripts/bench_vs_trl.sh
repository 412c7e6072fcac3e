#!/usr/bin/env bash
# Runs `dpo bench` and the oracle's TRL benchmark (../shared/tools/oracle/trl_bench.py) with the
# same fixed configuration on this machine, one after the other, and prints both.
# Needs the oracle built first: `bash ../shared/tools/oracle/setup.sh` (prints its python and model).
# Usage: scripts/bench_vs_trl.sh [OUT_DIR]      (ORACLE_ROOT as for setup.sh; default /tmp/oracle)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out}"
ORACLE="${ORACLE_ROOT:-${TMPDIR:-/tmp}/oracle}"
SHARED="${DPO_SHARED:-../shared}"
PY="$ORACLE/venv/bin/python"
MODEL_DIR="$ORACLE/smollm2-135m-instruct-f32"
THREADS="${THREADS:-2}"
mkdir -p "$OUT"
[ -x "$PY" ] || { echo "oracle not built: run bash $SHARED/tools/oracle/setup.sh" >&2; exit 1; }
"$PY" "$SHARED/tools/oracle/hh_to_pairs.py" "$SHARED/data/hh-rlhf/harmless-base/test.jsonl.gz" "$OUT/harmless48.jsonl" 48
cargo build --release -q
echo "### dpo bench"
./target/release/dpo bench --threads "$THREADS" --data "$OUT/harmless48.jsonl" --json-out "$OUT/dpo_bench.json" 2>/dev/null
for mode in "--precompute-ref" ""; do
  echo "### trl_bench.py $mode"
  "$PY" "$SHARED/tools/oracle/trl_bench.py" --model "$MODEL_DIR" --data "$OUT/harmless48.jsonl" --threads "$THREADS" \
      $mode --json-out "$OUT/trl_bench${mode:+_precompute}.json" 2>/dev/null | grep -E "^(==|load|seconds/step|RSS)"
done
