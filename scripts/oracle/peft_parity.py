#!/usr/bin/env python3
"""PEFT 0.21's LoRA (and TRL 1.16's DPO loss with a PEFT policy) on the golden records, for
crates/dpo-cli/tests/peft_parity.rs.

The policy is the f32 Hugging Face model with a PEFT LoRA adapter directory loaded by
`peft.PeftModel.from_pretrained`; the reference is the same model with the adapter disabled
(`with model.disable_adapter():`, TRL's reference in a `--use_peft` run, where TRL makes the
adapter from a peft_config; `dpo train --use-peft` does the same).
The records' token ids are the golden file's (`prompt_ids`, `chosen_ids`, `rejected_ids`), so
tokenisation is not in question. Per record: the summed log-prob of the chosen and rejected
completion with the adapter on and off (one unpadded sequence per forward, float64 sum of float32
token log-probs, as ../shared/tools/oracle/golden.py does). Per dataset: the mean sigmoid DPO loss
(beta 0.1) over the dataset as one batch, policy = adapter on, reference = adapter off (no grad),
and the L2 norm of the gradient of every lora_A / lora_B weight (named as in the adapter file,
PEFT's names without `.default`).

Run with the oracle's python (bash ../shared/tools/oracle/setup.sh prints it):
  python scripts/oracle/peft_parity.py --model /tmp/oracle/smollm2-135m-instruct-f32 \
      --adapter crates/dpo-cli/tests/fixtures/peft_adapter \
      --golden ../shared/tools/oracle/golden/golden_smollm2_135m.json \
      --out crates/dpo-cli/tests/fixtures/peft_parity.json [--check-trl]
--check-trl also runs TRL's DPOTrainer itself (see check_trl: padded batches of 4, its own
tokenisation of the records) and stores how far its log-probs and loss are from these values.
Loading the adapter fails on any missing or unexpected adapter key, or any warning from PEFT.
About 10 minutes on 2 CPU threads (most of it the backward passes of hh_harmless32), 10 more with
--check-trl. The fixture adapter was made with
  dpo train --data ../shared/tools/oracle/golden/pairs8.jsonl --use-peft --lora-r 2 --lora-alpha 4 \
      --lora-dropout 0 --max-steps 6 --per-device-train-batch-size 4 --learning-rate 5e-3 \
      --lr-scheduler-type constant --output-dir OUT
and OUT/final/adapter_model.safetensors converted to bf16 (safetensors.torch, `.to(torch.bfloat16)`).
"""
import argparse
import hashlib
import json
import math
import os
import platform
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

DATASETS = ["pairs8", "hh_harmless32"]


def seq_logps(model, prompt_ids, completion_ids):
    """Per-token log p(completion token | prefix), one unpadded sequence (golden.py's seq_logps)."""
    ids = torch.tensor([prompt_ids + completion_ids], dtype=torch.long)
    logits = model(input_ids=ids, use_cache=False).logits.float()
    P = len(prompt_ids)
    lp = F.log_softmax(logits[0, P - 1:-1], dim=-1)
    return lp.gather(-1, ids[0, P:][:, None])[:, 0]


def saved_name(peft_param_name):
    """PEFT's parameter name -> the name in adapter_model.safetensors (no adapter name)."""
    return peft_param_name.replace(".default.", ".")


def load_peft(model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    peft_warnings = [str(w.message) for w in caught if "peft" in (w.filename or "") or "adapter" in str(w.message).lower()]
    assert not peft_warnings, f"PEFT warned while loading {adapter_dir}: {peft_warnings}"
    model.eval()  # lora_dropout is 0 in the fixture; eval() anyway so that nothing is random
    # every saved tensor went into a LoRA parameter, exactly (bf16 -> f32 is exact)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = {saved_name(n): p for n, p in model.named_parameters() if "lora_" in n}
    assert set(params) == set(saved), (f"missing in the model: {sorted(set(saved) - set(params))[:5]}, "
                                       f"not in the file: {sorted(set(params) - set(saved))[:5]}")
    for n, t in saved.items():
        p = params[n]
        assert p.dtype == torch.float32 and p.requires_grad, (n, p.dtype, p.requires_grad)
        assert torch.equal(p.detach(), t.float()), f"{n}: loaded values differ from the file"
    n_b_zero = sum(1 for n, t in saved.items() if ".lora_B." in n and not bool(t.abs().max() > 0))
    assert n_b_zero == 0, f"{n_b_zero} lora_B tensors are zero: the adapter would not change the model"
    return model, params, saved


def run_dataset(model, params, records, beta):
    out = []
    with torch.no_grad():
        for r in records:
            p, c, rj = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
            row = {"index": r["index"], "n_chosen_tokens": len(c), "n_rejected_tokens": len(rj)}
            row["chosen_logp"] = seq_logps(model, p, c).double().sum().item()
            row["rejected_logp"] = seq_logps(model, p, rj).double().sum().item()
            with model.disable_adapter():
                row["ref_chosen_logp"] = seq_logps(model, p, c).double().sum().item()
                row["ref_rejected_logp"] = seq_logps(model, p, rj).double().sum().item()
            out.append(row)
    # the mean loss over the dataset as one batch; backward one pair at a time (gradients add up)
    model.zero_grad(set_to_none=True)
    n = len(records)
    loss_sum = 0.0
    for r, row in zip(records, out):
        pc = seq_logps(model, r["prompt_ids"], r["chosen_ids"]).sum()
        pr = seq_logps(model, r["prompt_ids"], r["rejected_ids"]).sum()
        with torch.no_grad(), model.disable_adapter():
            rc = seq_logps(model, r["prompt_ids"], r["chosen_ids"]).sum()
            rr = seq_logps(model, r["prompt_ids"], r["rejected_ids"]).sum()
        li = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
        (li / n).backward()
        loss_sum += li.item()
    norms = {}
    for name, p in sorted(params.items()):
        assert p.grad is not None, f"{name}: no gradient"
        norms[name] = p.grad.double().norm().item()
    model.zero_grad(set_to_none=True)
    return out, loss_sum / n, norms


def check_trl(model_dir, adapter_dir, golden_dir, name, golden_records, rows, beta):
    """TRL's DPOTrainer as it stands in a `--use_peft` run (TRL makes the LoRA model from a
    peft_config; its reference is then the base, adapters disabled), with the fixture's weights
    put into its adapter: its tokenised ids, log-probs (padded batches of 4) and loss against this
    script's values. (Given a PeftModel with a pretrained adapter instead, TRL 1.16 makes its
    reference a frozen copy of that adapter, not the base.)"""
    from datasets import Dataset
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    peft_config = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                             target_modules=cfg["target_modules"], task_type="CAUSAL_LM")
    recs = [json.loads(l) for l in open(os.path.join(golden_dir, f"{name}.jsonl")) if l.strip()]
    args = DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, fp16=False, report_to="none", use_cpu=True, beta=beta,
                     loss_type="sigmoid", max_length=None, per_device_train_batch_size=4, gradient_checkpointing=False, seed=0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tr = DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(recs), peft_config=peft_config,
                    processing_class=AutoTokenizer.from_pretrained(model_dir))
    res = set_peft_model_state_dict(tr.model, load_file(os.path.join(adapter_dir, "adapter_model.safetensors")))
    assert not res.unexpected_keys and not [k for k in res.missing_keys if "lora_" in k], res
    assert "ref" not in tr.model.peft_config
    tr.model.eval()
    tds = tr.train_dataset
    mismatches = sum(1 for j, g in enumerate(golden_records)
                     if any(tds[j][k] != g[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
    d_pol = d_ref = 0.0
    losses = []
    for s in range(0, len(tds), 4):
        batch = tr.data_collator([tds[j] for j in range(s, min(s + 4, len(tds)))])
        with torch.no_grad():
            rc, rr = tr.compute_ref_log_probs(tr.model, batch)  # TRL's reference: adapters disabled
            losses.append(tr.compute_loss(tr.model, batch).item())
            tr.ref_model = tr.model  # compute_ref_log_probs then runs the model as it is: the policy
            pc, pr = tr.compute_ref_log_probs(tr.model, batch)
            tr.ref_model = None
        for k in range(len(pc)):
            g = rows[s + k]
            d_ref = max(d_ref, abs(rc[k].item() - g["ref_chosen_logp"]), abs(rr[k].item() - g["ref_rejected_logp"]))
            d_pol = max(d_pol, abs(pc[k].item() - g["chosen_logp"]), abs(pr[k].item() - g["rejected_logp"]))
    return {"tokenization_mismatches": mismatches, "max_abs_diff_policy_logp": d_pol, "max_abs_diff_ref_logp": d_ref,
            "loss": sum(losses) / len(losses)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the f32 Hugging Face directory of SmolLM2-135M-Instruct")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--golden", required=True, help="golden_smollm2_135m.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-trl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import peft
    import transformers

    golden = json.load(open(a.golden))
    model, params, saved = load_peft(a.model, a.adapter)
    out = {"datasets": {}}
    for ds in golden["datasets"]:
        if ds["name"] not in DATASETS:
            continue
        t0 = time.time()
        rows, loss, norms = run_dataset(model, params, ds["records"], a.beta)
        base_d = max(max(abs(r["ref_chosen_logp"] - g["chosen_logp"]), abs(r["ref_rejected_logp"] - g["rejected_logp"]))
                      for r, g in zip(rows, ds["records"]))
        entry = {"n": len(rows), "records": rows, "loss": loss, "grad_norms": norms,
                 "max_abs_diff_adapter_off_vs_golden_logp": base_d}
        out["datasets"][ds["name"]] = entry
        print(f"{ds['name']}: n={len(rows)} loss={loss:.7f} adapter-off vs golden {base_d:.1e} nats "
              f"total grad norm {math.sqrt(sum(v * v for v in norms.values())):.4e} ({time.time() - t0:.0f}s)", flush=True)
    del model, params
    if a.check_trl:
        for name, entry in out["datasets"].items():
            records = next(ds["records"] for ds in golden["datasets"] if ds["name"] == name)
            entry["trl_check"] = check_trl(a.model, a.adapter, os.path.dirname(a.golden), name, records, entry["records"], a.beta)
            entry["trl_check"]["abs_diff_loss"] = abs(entry["trl_check"]["loss"] - entry["loss"])
            print(name, "TRL:", entry["trl_check"], "loss here", entry["loss"], flush=True)
    sha = hashlib.sha256(open(os.path.join(a.adapter, "adapter_model.safetensors"), "rb").read()).hexdigest()
    import trl
    out["meta"] = {
        "beta": a.beta,
        "loss": "mean over the dataset (one batch) of -logsigmoid(beta*((pc-rc)-(pr-rr))); policy = adapter on, reference = adapter off",
        "logp_definition": "sum over the golden chosen_ids/rejected_ids of log_softmax(logits[t-1])[id_t] in float32, summed in float64; one unpadded sequence per forward",
        "grad_definition": "L2 norm of d loss / d (lora_A | lora_B weight), names as in adapter_model.safetensors",
        "adapter_safetensors_sha256": sha,
        "n_adapter_tensors": len(saved),
        "model_dir": os.path.abspath(a.model),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
