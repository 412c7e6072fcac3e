#!/usr/bin/env python3
"""The first step of a bf16 mixed-precision DPO run as transformers trains one (`bf16=True`):
f32 weights, the forward and backward under `torch.autocast("cpu", dtype=torch.bfloat16)`.

For each golden data set (the records and perturbed-reference log-probs of
../shared/tools/oracle/golden/golden_smollm2_135m.json) it writes the mean sigmoid DPO loss and the
per-tensor L2 norms of its gradient, as golden.py's `grad_norms` does in f32 (same tokenization, one
unpadded sequence per forward, tied lm_head counted once), so that dpo-rs's `--bf16` can be held
against it (crates/dpo-cli/tests/parity.rs).

Usage: python bf16_grad_norms.py --model DIR --golden GOLDEN.json --out OUT.json [--threads 2]
       [--datasets pairs8,hh_harmless32]

On a CPU without AVX512-BF16, PyTorch's bf16 products are slow: pairs8 takes minutes there,
hh_harmless32 most of an hour.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "tools", "oracle"))


def seq_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids], dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, use_cache=False).logits
    logits = logits.float()
    p = len(prompt_ids)
    lp = F.log_softmax(logits[0, p - 1:-1], dim=-1)
    return lp.gather(-1, ids[0, p:][:, None])[:, 0]


def grad_norms(model, beta, records):
    model.zero_grad(set_to_none=True)
    n, loss_sum = len(records), 0.0
    for r in records:
        pc = seq_logps(model, r["prompt_ids"], r["chosen_ids"]).sum()
        pr = seq_logps(model, r["prompt_ids"], r["rejected_ids"]).sum()
        rc = torch.tensor(r["ref_perturbed_chosen_logp"], dtype=torch.float32)
        rr = torch.tensor(r["ref_perturbed_rejected_logp"], dtype=torch.float32)
        li = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
        (li / n).backward()
        loss_sum += li.item()
    norms = {name: p.grad.double().norm().item() for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss_sum / n, "total_grad_norm": math.sqrt(sum(v * v for v in norms.values())), "per_tensor": norms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--datasets", default="", help="comma-separated names (default: every golden data set)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    golden = json.load(open(a.golden))
    beta = golden["meta"]["beta"]
    out = {"meta": {"beta": beta, "torch": torch.__version__, "autocast": "cpu bfloat16, f32 weights",
                    "reference": "golden ref_perturbed_*_logp (f32)"}, "datasets": {}}
    wanted = [n for n in a.datasets.split(",") if n]
    for d in golden["datasets"]:
        if wanted and d["name"] not in wanted:
            continue
        res = grad_norms(model, beta, d["records"])
        out["datasets"][d["name"]] = res
        print(f"{d['name']}: loss {res['loss']:.6f}, total gradient norm {res['total_grad_norm']:.6f}", flush=True)
        with open(a.out, "w") as f:  # after each data set: a long one may be cut short
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
