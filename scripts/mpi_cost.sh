#!/usr/bin/env bash
# Cost of data-parallel DPO over MPI on this machine (loopback): SmolLM2-135M full fine-tuning,
# 3 steps of 8 HH-RLHF pairs, at 1, 2 and 4 ranks, with and without --zero-stage 1. Prints per
# configuration: payload bytes per step, seconds per step in collectives and waiting, AdamW state
# and peak RSS per rank. Needs `cargo build --release -p dpo-cli --features mpi` and ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dpo}
WORK=${WORK:-$(mktemp -d)}
python3 -c "import gzip,sys; sys.stdout.writelines(gzip.open(sys.argv[1], 'rt').readlines()[:24])" ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz > "$WORK/hh24.jsonl"
export OMPI_MCA_btl_vader_single_copy_mechanism=none
for np in 1 2 4; do
  for zero in 0 1; do
    [ "$np" = 1 ] && [ "$zero" = 1 ] && continue
    out="$WORK/np$np-zero$zero"
    args=(train --data "$WORK/hh24.jsonl" --output-dir "$out" --overwrite-output-dir --max-steps 3 --per-device-train-batch-size 8 --max-length 256 --zero-stage "$zero")
    if [ "$np" = 1 ]; then "$BIN" "${args[@]}" >/dev/null 2>"$out.log"; else mpirun --allow-run-as-root --oversubscribe -np "$np" "$BIN" "${args[@]}" >/dev/null 2>"$out.log"; fi
    python3 - "$out/summary.json" "$np" "$zero" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); steps = len(s["step_seconds"])
rss = ", ".join(f"{b/1e9:.2f}" for b in s["peak_rss_bytes_per_rank"])
print(f"np {sys.argv[2]} zero {sys.argv[3]}: step {sum(s['step_seconds'])/steps:6.2f} s, collectives {sum(s['step_comm_seconds'])/steps:5.2f} s + waiting {sum(s['step_wait_seconds'])/steps:5.2f} s per step, "
      f"{s['comm_bytes_per_step']/1e6:7.1f} MB/step, AdamW state {s['optimizer_state_bytes']/1e9:.2f} GB/rank, peak RSS per rank [{rss}] GB")
PY
  done
done
