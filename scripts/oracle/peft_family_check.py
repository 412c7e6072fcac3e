#!/usr/bin/env python3
"""Checks a LoRA adapter written by `dpo train --use-peft` on one of the tiny family models
(scripts/oracle/family_goldens.py --save-models) in PEFT 0.21, for scripts/oracle/families_checkpoints.sh.

The base directory is loaded with AutoModelForCausalLM (float32, eager attention) and must load without
missing, unexpected or mismatched keys; the adapter with `peft.PeftModel.from_pretrained(base, ADAPTER)`,
which must raise no warning (Python warnings other than BENIGN below, or transformers/peft log records
at WARNING or above), and every tensor of adapter_model.safetensors must land, bit-exactly, in a lora_A/lora_B parameter of the
model, with no LoRA parameter left without one. The 8 pairs8 records of the golden file (its token ids,
one unpadded sequence per forward, float32 log-softmax, float64 sum: family_goldens.all_logps) are
scored with the adapter on, and compared with FILE (jsonl of {"index","chosen_logps","rejected_logps"}:
`dpo logps --model BASE --adapter ADAPTER`). Prints the worst |difference| and `PEFT_WORST <value>`;
exits 1 over 1e-4. It also prints how far the adapter moves the logps from the base's (adapter off), so
that a near-zero adapter, which would make the comparison vacuous, is visible.

--full-checkpoint DIR additionally loads DIR (a full fine-tuning `final/` written by dpo-rs) with
output_loading_info and fails on an error or on missing, unexpected or mismatched keys; it lists (does
not fail on) the warnings transformers logs while loading it. The last lines are `FULL_LOAD ok|FAIL`
(with --full-checkpoint), `PEFT_WORST <value>` and `LORA ok|FAIL`; the exit status is 1 if either failed.

Usage (the oracle's python):
  python scripts/oracle/peft_family_check.py --golden ../shared/tools/oracle/golden/golden_smollm2_135m.json \
      --base MODEL_DIR --adapter RUN/final --logps FILE [--full-checkpoint FULL_RUN/final]
"""
import argparse
import json
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import family_goldens as fg  # noqa: E402  (sets torch threads to 2, imports transformers)

import torch  # noqa: E402

TOL = 1e-4
# Warnings that PEFT 0.21 + transformers 5.23 raise for every adapter (a deprecated transformers API that
# PeftModel calls), whatever the adapter holds: listed, not failures.
BENIGN = ("`is_gradient_checkpointing` is deprecated",)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def capture():
    h = Collect()
    for name in ("transformers", "peft"):
        logging.getLogger(name).addHandler(h)
    return h


def release(h):
    for name in ("transformers", "peft"):
        logging.getLogger(name).removeHandler(h)


def load_hf(path, what):
    """AutoModelForCausalLM.from_pretrained with the loading info; returns (model, problems, warnings)."""
    h = capture()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = fg.AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    finally:
        release(h)
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        v = info.get(key) or []
        if v:
            problems.append(f"{what} {key}: {sorted(map(str, v))}")
    warns = h.records + [f"{w.category.__name__}: {w.message}" for w in caught]
    return model.eval(), problems, warns


def saved_name(peft_param_name):
    return peft_param_name.replace(".default.", ".")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--logps", required=True, help="`dpo logps --adapter` output (jsonl)")
    ap.add_argument("--full-checkpoint", help="also strict-load this dpo-rs full fine-tuning checkpoint")
    ap.add_argument("--case", default="?")
    args = ap.parse_args()
    _, recs = fg.load_records(args.golden)
    failures = []

    if args.full_checkpoint:
        try:
            _, problems, warns = load_hf(args.full_checkpoint, "full checkpoint")
        except Exception as e:  # noqa: BLE001  (report it, then go on with the adapter)
            problems, warns = [f"full checkpoint does not load: {type(e).__name__}: {e}"], []
        print(f"full checkpoint {args.full_checkpoint}: "
              f"{'loads with no missing/unexpected/mismatched key' if not problems else 'LOAD PROBLEMS'}")
        for p in problems:
            print(f"  {p}")
        for w in warns:
            print(f"  warning while loading it (not a failure): {w}")
        print(f"FULL_LOAD {'FAIL' if problems else 'ok'}")
        full_failed = bool(problems)
    else:
        full_failed = False

    base, problems, warns = load_hf(args.base, "base")
    failures += problems
    for w in warns:
        print(f"  warning while loading the base: {w}")
    base_lps = fg.all_logps(base, recs)

    from peft import PeftModel
    from safetensors.torch import load_file

    h = capture()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, args.adapter)
    finally:
        release(h)
    model.eval()
    peft_warns = h.records + [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                              if not any(b in str(w.message) for b in BENIGN)]
    for w in caught:
        if any(b in str(w.message) for b in BENIGN):
            print(f"  ignored library deprecation while loading the adapter: {w.message}")
    for w in peft_warns:
        failures.append(f"warning while loading the adapter: {w}")

    saved = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    params = {saved_name(n): p for n, p in model.named_parameters() if "lora_" in n}
    not_in_model = sorted(set(saved) - set(params))
    not_in_file = sorted(set(params) - set(saved))
    if not_in_model:
        failures.append(f"adapter tensors with no LoRA parameter in the model (unexpected): {not_in_model}")
    if not_in_file:
        failures.append(f"LoRA parameters of the model not in the adapter file (missing): {not_in_file}")
    for n in sorted(set(saved) & set(params)):
        if params[n].shape != saved[n].shape:
            failures.append(f"{n}: shape {tuple(saved[n].shape)} in the file, {tuple(params[n].shape)} in the model")
        elif not torch.equal(params[n].detach(), saved[n].to(params[n].dtype)):
            failures.append(f"{n}: loaded values differ from the file")
    print(f"adapter {args.adapter}: {len(saved)} tensors, {len(params)} LoRA parameters in the model, "
          f"target_modules {sorted(model.peft_config['default'].target_modules)}")

    lps = fg.all_logps(model, recs)
    effect = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(lps, base_lps))
    print(f"adapter effect: max |logp(adapter) - logp(base)| = {effect:.4g}")

    by_index = {r["index"]: v for r, v in zip(recs, lps)}
    worst, where, seen = 0.0, None, 0
    for line in open(args.logps):
        line = line.strip()
        if not line:
            continue
        o = json.loads(line)
        if o["index"] not in by_index:
            failures.append(f"index {o['index']} of {args.logps} not among the golden records")
            continue
        pc, pr = by_index[o["index"]]
        for kind, ours, theirs in (("chosen", pc, o["chosen_logps"]), ("rejected", pr, o["rejected_logps"])):
            d = abs(ours - float(theirs))
            if where is None or d > worst:
                worst, where = d, (o["index"], kind, ours, theirs)
        seen += 1
    if seen != len(recs):
        failures.append(f"{seen} records in {args.logps}, {len(recs)} golden records")
    if where is not None:
        print(f"case {args.case} LoRA: worst |logp diff| {worst:.3g} at index {where[0]} {where[1]} "
              f"(peft {where[2]:.8f}, dpo {where[3]})")
        if worst > TOL:
            failures.append(f"worst |logp diff| {worst:.3g} over {TOL}")
    print(f"PEFT_WORST {worst:.3g}" if where is not None else "PEFT_WORST nan")
    if failures:
        print("LoRA check FAIL:")
        for f in failures:
            print(f"  {f}")
    print(f"LORA {'FAIL' if failures else 'ok'}")
    return 1 if failures or full_failed else 0


if __name__ == "__main__":
    sys.exit(main())
