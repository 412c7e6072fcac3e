#!/usr/bin/env python3
"""TRL 1.16's experimental CPOTrainer (CPO, its hinge/ipo/simpo types, AlphaPO) on the golden records: the
first step's loss, with the policy = SmolLM2-135M-Instruct (no reference: CPO has none).

Run with the oracle's python (bash ../shared/tools/oracle/setup.sh prints it):
  python scripts/oracle/trl_cpo_first_step_losses.py --model DIR --golden-dir ../shared/tools/oracle/golden \
      --out crates/dpo-train/tests/fixtures/trl_cpo_first_step_losses.json
Writes, per dataset and variant, TRL's loss as the mean of its per-batch losses for batches of 1 (`batch_1`:
CPO's NLL term is a token mean over the micro-batch, which for one record is that record's per-token NLL,
as dpo-rs computes it per sequence) and of 4 (`batch_4`, for the record of how far the two means differ),
and per record the summed log-probs and completion lengths CPOTrainer's own tokenisation gives (to check
that they are the DPOTrainer golden values dpo-rs reproduces).
"""
import argparse, json, math, tempfile
import torch

VARIANTS = [
    ("cpo", dict(loss_type="sigmoid")),
    ("cpo_hinge", dict(loss_type="hinge")),
    ("cpo_ipo", dict(loss_type="ipo")),
    ("cpo_simpo", dict(loss_type="simpo")),
    ("cpo@alpha=0.25", dict(loss_type="sigmoid", alpha=0.25)),
    ("alphapo@alpha=0.25", dict(loss_type="alphapo", alpha=0.25)),
    ("cpo@cpo_alpha=0.5,label_smoothing=0.1", dict(loss_type="sigmoid", cpo_alpha=0.5, label_smoothing=0.1)),
]


def trainer(a, recs, overrides, bs):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    pol = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    args = CPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, fp16=False, report_to="none", use_cpu=True,
                     beta=a.beta, max_length=4096, per_device_train_batch_size=bs, seed=0, **overrides)
    tr = CPOTrainer(model=pol, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok)
    tr.model.eval()
    return tr


def batches(tr, bs):
    tds = tr.train_dataset
    for s in range(0, len(tds), bs):
        yield tr.data_collator([tds[j] for j in range(s, min(s + bs, len(tds)))])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--golden-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import trl

    golden = {d["name"]: d for d in json.load(open(f"{a.golden_dir}/golden_smollm2_135m.json"))["datasets"]}
    out = {"trl": trl.__version__, "trainer": "trl.experimental.cpo.CPOTrainer", "beta": a.beta,
           "options": {k: o for k, o in VARIANTS}, "losses": {}, "records": {}}
    for name in ("pairs8", "hh_harmless32"):
        recs = [json.loads(l) for l in open(f"{a.golden_dir}/{name}.jsonl") if l.strip()]
        for key, o in VARIANTS:
            for bs in (1, 4):
                tr = trainer(a, recs, o, bs)
                with torch.no_grad():
                    ls = [tr.get_batch_loss_metrics(tr.model, b)[0].item() for b in batches(tr, bs)]
                mean = sum(ls) / len(ls)  # null where TRL's float32 overflows (AlphaPO on summed log-probs)
                out["losses"].setdefault(name, {}).setdefault(key, {})[f"batch_{bs}"] = mean if math.isfinite(mean) else None
                print(name, key, bs, sum(ls) / len(ls), flush=True)
        tr = trainer(a, recs, dict(loss_type="sigmoid"), 1)
        rows, worst = [], 0.0
        for b, g in zip(batches(tr, 1), golden[name]["records"]):
            with torch.no_grad():
                c = tr.concatenated_inputs(b, is_encoder_decoder=False, padding_value=tr.pad_token_id)
                logits = tr.model(c["concatenated_input_ids"], attention_mask=c["concatenated_attention_mask"]).logits
                lp = tr.get_batch_logps(logits, c["concatenated_labels"], average_log_prob=False)
            n = (c["concatenated_labels"][:, 1:] != -100).sum(1)
            row = {"chosen_logp": lp[0].item(), "rejected_logp": lp[1].item(),
                   "n_chosen_tokens": int(n[0]), "n_rejected_tokens": int(n[1])}
            worst = max(worst, abs(row["chosen_logp"] - g["chosen_logp"]), abs(row["rejected_logp"] - g["rejected_logp"]))
            row["same_lengths_as_golden"] = (row["n_chosen_tokens"], row["n_rejected_tokens"]) == (g["n_chosen_tokens"], g["n_rejected_tokens"])
            rows.append(row)
        out["records"][name] = rows
        out.setdefault("max_abs_logp_diff_to_golden", {})[name] = worst
        print(name, "max |logp - golden|", worst, "lengths equal", all(r["same_lengths_as_golden"] for r in rows), flush=True)
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
