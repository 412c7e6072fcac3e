#!/usr/bin/env bash
# Checkpoints written by dpo-rs for every architecture family, read back by transformers and PEFT.
#
# For each tiny family model (scripts/oracle/family_goldens.py --save-models DIR, no tokenizer: SmolLM2's
# is added, same vocabulary):
#   full fine-tuning: `dpo train` 2 steps (batch 4, lr 1e-3) on pairs8, `dpo logps` of OUT/final, and
#     family_goldens.py --check-checkpoint: transformers loads dpo-rs's config.json + model.safetensors
#     and gives the same log-probs of the 8 golden records within 1e-4;
#   LoRA: `dpo train --use-peft` (r 4, alpha 8, dropout 0, all-linear: Phi-3's fused qkv_proj and
#     gate_up_proj included; LORA_TARGETS overrides), `dpo logps --adapter`, and peft_family_check.py: PEFT loads the
#     adapter on the transformers base with no missing/unexpected key and no warning, same log-probs
#     within 1e-4 (it also strict-loads the full fine-tuning checkpoint: no missing/unexpected keys).
# Prints one line per case: the worst |delta logp| of each check and how far training moved the
# log-probs (dpo's own numbers, so that a vacuous comparison would show). Exits 1 if any case fails;
# the logs of a case are in WORK_DIR/<case>/*.log.
#
# Usage: scripts/oracle/families_checkpoints.sh DPO_BIN ORACLE_PYTHON MODELS_DIR WORK_DIR [CASE...]
#   e.g. scripts/oracle/families_checkpoints.sh target/debug/dpo /tmp/oracle/venv/bin/python \
#          /tmp/fam/models /tmp/fam/ckpt
# Env: GOLDEN_DIR (default ../shared/tools/oracle/golden: pairs8.jsonl, golden_smollm2_135m.json),
#      TOKENIZER_DIR (default /tmp/oracle/smollm2-135m-instruct-f32).
# About 2.5 minutes for the 10 cases on 2 CPUs (mostly Python start-up and import).
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,22p' "$0" >&2
    exit 2
fi
abspath() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
DPO=$(abspath "$1")
PY=$2
MODELS=$(abspath "$3")
WORK=$4
shift 4
HERE=$(cd "$(dirname "$0")" && pwd)
GOLDEN_DIR=${GOLDEN_DIR:-$HERE/../../../shared/tools/oracle/golden}
TOKENIZER_DIR=${TOKENIZER_DIR:-/tmp/oracle/smollm2-135m-instruct-f32}
DATA=$GOLDEN_DIR/pairs8.jsonl
GOLDEN=$GOLDEN_DIR/golden_smollm2_135m.json
if [ $# -gt 0 ]; then CASES=("$@"); else
    CASES=(gemma gemma2 gemma3 llama31 llama_bias mistral phi3 qwen2 qwen2_yarn qwen3)
fi
for f in "$DPO" "$DATA" "$GOLDEN" "$TOKENIZER_DIR/tokenizer.json" "$TOKENIZER_DIR/tokenizer_config.json"; do
    [ -e "$f" ] || { echo "missing: $f" >&2; exit 2; }
done
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# max |a - b| over the chosen/rejected logps of two `dpo logps` files (same records)
maxdiff() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
b = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert [x["index"] for x in a] == [x["index"] for x in b]
print(f"{max(max(abs(x['chosen_logps'] - y['chosen_logps']), abs(x['rejected_logps'] - y['rejected_logps'])) for x, y in zip(a, b)):.3g}")
PY
}

# step NAME LOG CMD...: runs CMD with its output in LOG; on failure prints the LOG's tail
step() {
    local name=$1 log=$2
    shift 2
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    [ $rc = 0 ] && return 0
    echo "  [$case] $name FAILED (rc $rc), $log:" >&2
    grep -v '^Loading weights' "$log" | tail -12 | sed 's/^/    /' >&2
    return 1
}

export PYTHONDONTWRITEBYTECODE=1  # peft_family_check.py imports family_goldens.py: no __pycache__ in the tree
START=$SECONDS
SUMMARY=()
NFAIL=0
for case in "${CASES[@]}"; do
    T0=$SECONDS
    D=$WORK/$case
    rm -rf "$D"
    mkdir -p "$D"
    export DPO_HOME=$D/dpo_home  # per case: nothing (reference cache) shared between models
    cp -r "$MODELS/$case" "$D/model"
    for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
        [ -e "$TOKENIZER_DIR/$f" ] && cp "$TOKENIZER_DIR/$f" "$D/model/"
    done
    lora_targets=()
    [ -n "${LORA_TARGETS:-}" ] && lora_targets=(--lora-target-modules "$LORA_TARGETS")
    ft="FAIL" lora="FAIL" ft_eff="-" lora_eff="-" ok=1

    step "dpo logps (base)" "$D/base_logps.log" \
        "$DPO" logps --model "$D/model" --data "$DATA" --out "$D/base.logps.jsonl" || ok=0

    # ---- full fine-tuning
    if step "dpo train (full)" "$D/train_full.log" \
        "$DPO" train --model "$D/model" --data "$DATA" --max-steps 2 --per-device-train-batch-size 4 \
            --learning-rate 1e-3 --output-dir "$D/full" &&
       step "dpo logps (full final)" "$D/logps_full.log" \
        "$DPO" logps --model "$D/full/final" --data "$DATA" --out "$D/full.logps.jsonl"; then
        [ -e "$D/base.logps.jsonl" ] && ft_eff=$(maxdiff "$D/base.logps.jsonl" "$D/full.logps.jsonl")
        if step "transformers check (full)" "$D/check_full.log" \
            "$PY" "$HERE/family_goldens.py" --golden "$GOLDEN" --check-checkpoint "$D/full/final" \
                --case "$case" --logps "$D/full.logps.jsonl"; then
            ft=$(sed -n 's/.*worst |logp diff| \([^ ]*\) .*/\1/p' "$D/check_full.log")
        else
            ok=0
            w=$(sed -n 's/.*worst |logp diff| \([^ ]*\) .*/\1/p' "$D/check_full.log")
            [ -n "$w" ] && ft="FAIL($w)"
        fi
    else
        ok=0
    fi

    # ---- LoRA
    if step "dpo train (LoRA)" "$D/train_lora.log" \
        "$DPO" train --model "$D/model" --data "$DATA" --max-steps 2 --per-device-train-batch-size 4 \
            --learning-rate 1e-3 --output-dir "$D/lora" \
            --use-peft --lora-r 4 --lora-alpha 8 --lora-dropout 0 "${lora_targets[@]}" &&
       step "dpo logps --adapter" "$D/logps_lora.log" \
        "$DPO" logps --model "$D/model" --adapter "$D/lora/final" --data "$DATA" --out "$D/lora.logps.jsonl"; then
        [ -e "$D/base.logps.jsonl" ] && lora_eff=$(maxdiff "$D/base.logps.jsonl" "$D/lora.logps.jsonl")
        full_arg=()
        [ -e "$D/full/final/config.json" ] && full_arg=(--full-checkpoint "$D/full/final")
        step "PEFT check (+ strict load of the full checkpoint)" "$D/check_lora.log" \
            "$PY" "$HERE/peft_family_check.py" --golden "$GOLDEN" --base "$D/model" --adapter "$D/lora/final" \
                --logps "$D/lora.logps.jsonl" --case "$case" "${full_arg[@]}" || ok=0
        w=$(sed -n 's/^PEFT_WORST //p' "$D/check_lora.log")
        if grep -qx 'LORA ok' "$D/check_lora.log"; then
            lora=$w
        else
            ok=0
            [ -n "$w" ] && [ "$w" != nan ] && lora="FAIL($w)"
        fi
        # the strict load of the full checkpoint (keys) belongs to the full-FT column
        if grep -qx 'FULL_LOAD FAIL' "$D/check_lora.log"; then
            ok=0
            case $ft in FAIL*) ;; *) ft="FAIL(keys;$ft)" ;; esac
        fi
    else
        ok=0
    fi

    [ $ok = 1 ] || NFAIL=$((NFAIL + 1))
    line=$(printf '%-11s full-FT %-14s LoRA %-14s (training moved logps: full %s, LoRA %s) %3ds %s' \
        "$case" "$ft" "$lora" "$ft_eff" "$lora_eff" $((SECONDS - T0)) "$([ $ok = 1 ] && echo ok || echo FAIL)")
    echo "$line"
    SUMMARY+=("$line")
done

echo
echo "case        worst |dlogp| vs transformers (full-FT) and PEFT (LoRA), tolerance 1e-4"
printf '%s\n' "${SUMMARY[@]}"
echo "total $((SECONDS - START))s, ${#CASES[@]} cases, $NFAIL failed"
[ "$NFAIL" = 0 ]
