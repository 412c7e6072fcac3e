#!/usr/bin/env bash
# GGUF files of each family, made by llama.cpp's convert_hf_to_gguf.py from the tiny models of
# scripts/oracle/family_goldens.py (--save-models), against the same models read from their
# Hugging Face directories: `dpo logps` on pairs8 from the GGUF (f32 and q8_0) and from the
# directory (scripts/oracle/families_checkpoints.sh writes WORK/<case>/base.logps.jsonl).
# Usage: families_gguf.sh DPO GGUF_DIR CHECKPOINTS_WORK [CASE...]
set -euo pipefail
DPO=$1; GGUF=$2; WORK=$3; shift 3
DATA=${DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/tools/oracle/golden/pairs8.jsonl}
CASES=${*:-qwen3 qwen2 qwen2_yarn llama_bias llama31 llama31_origctx mistral gemma gemma2 gemma3 phi3 phi3_ropefix}
OUT=$(mktemp -d)
export DPO_HOME=$OUT/home
for c in $CASES; do
  base=${c%_origctx}; base=${base%_ropefix}
  for q in f32 q8_0; do
    f=$GGUF/$c.$q.gguf
    if "$DPO" logps --model "$f" --data "$DATA" --out "$OUT/$c.$q.jsonl" > "$OUT/$c.$q.log" 2>&1; then
      python3 - "$OUT/$c.$q.jsonl" "$WORK/$base/base.logps.jsonl" "$c.$q" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = {r["index"]: r for r in map(json.loads, open(sys.argv[2]))}
d = max(abs(r[k] - b[r["index"]][k]) for r in a for k in ("chosen_logps", "rejected_logps"))
print(f"{sys.argv[3]:24s} max |logp(gguf) - logp(hf)| = {d:.2e} nats")
PY
    else
      echo "$c.$q: refused: $(grep -i error "$OUT/$c.$q.log" | head -1)"
    fi
  done
done
