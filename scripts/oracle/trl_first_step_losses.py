#!/usr/bin/env python3
"""TRL 1.16's DPO loss, for several loss types, on the golden records against the perturbed
reference (the policy with model.norm.weight * 0.9, as ../shared/tools/oracle/golden.py builds it).

Run with the oracle's python (bash ../shared/tools/oracle/setup.sh prints it):
  python scripts/oracle/trl_first_step_losses.py --model DIR --golden-dir ../shared/tools/oracle/golden \
      --out crates/dpo-cli/tests/fixtures/trl_first_step_losses.json
Writes, per dataset and loss type, the mean over the dataset of TRL's per-batch losses (batches of
4, equal sizes, so the mean equals the loss of the whole dataset as one batch): the first step's
loss of `dpo train --ref-logps <perturbed> --loss TYPE` with all records in one batch.
"""
import argparse, copy, json, sys, tempfile
import torch

LOSSES = [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--golden-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    import trl

    out = {"trl": trl.__version__, "beta": a.beta, "reference": "policy with model.norm.weight * 0.9", "losses": {}}
    for name in ["pairs8", "hh_harmless32"]:
        recs = [json.loads(l) for l in open(f"{a.golden_dir}/{name}.jsonl") if l.strip()]
        for loss_type, eps in LOSSES:
            tok = AutoTokenizer.from_pretrained(a.model)
            pol = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
            ref = copy.deepcopy(pol)
            with torch.no_grad():
                ref.model.norm.weight.mul_(0.9)
            ref.eval()
            args = DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, fp16=False, report_to="none", use_cpu=True,
                             beta=a.beta, loss_type=loss_type, label_smoothing=eps, max_length=None,
                             per_device_train_batch_size=4, gradient_checkpointing=False, seed=0)
            tr = DPOTrainer(model=pol, ref_model=ref, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok)
            tr.model.eval()
            tds = tr.train_dataset
            losses = []
            for s in range(0, len(tds), 4):
                batch = tr.data_collator([tds[j] for j in range(s, min(s + 4, len(tds)))])
                with torch.no_grad():
                    losses.append(tr.compute_loss(tr.model, batch).item())
            val = sum(losses) / len(losses)
            out["losses"].setdefault(name, {})[f"{loss_type}" + (f"@eps={eps}" if eps else "")] = val
            print(name, loss_type, eps, val, flush=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
