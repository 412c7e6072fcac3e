#!/usr/bin/env python3
"""TRL 1.16's DPO loss, for several loss types and options, on the golden records against the perturbed
reference (the policy with model.norm.weight * 0.9, as ../shared/tools/oracle/golden.py builds it).

Run with the oracle's python (bash ../shared/tools/oracle/setup.sh prints it):
  python scripts/oracle/trl_first_step_losses.py --model DIR --golden-dir ../shared/tools/oracle/golden \
      --out crates/dpo-cli/tests/fixtures/trl_first_step_losses.json [--threads 1] [--details-out D.json]
Writes, per dataset and loss variant, the first step's loss of `dpo train --ref-logps <perturbed> --loss ...`
with all records in one batch. `batching` in the output says how each value was computed:
- "mean_of_batches_of_4": the mean over the dataset of TRL's per-batch losses (batches of 4, equal sizes,
  so the mean equals the loss of the whole dataset as one batch, up to float32 padding noise); valid
  for every loss that is a mean of independent per-pair terms.
- "one_batch": TRL run once with the whole dataset as one batch (per_device_train_batch_size =
  len(dataset)); needed for the batch-coupled losses (`aot`, `aot_unpaired` sort the log-ratios
  across the batch, so the mean over batches of 4 is a different number).
`checks` holds `sigmoid` computed with one batch (against the batches-of-4 value: float32 padding
noise) and the new losses recomputed in float64 from the golden per-record summed log-probs.
`--details-out` writes per-record intermediates (summed, shared/tail log-probs of policy and
reference, WPO weights) taken from TRL's own fused LM head, and the losses recomputed from them.
"""
import argparse, copy, json, math, sys, tempfile
import torch

# (key, DPOConfig overrides, batching). The first four are the original keys, unchanged.
VARIANTS = [
    ("sigmoid", dict(loss_type="sigmoid"), "mean_of_batches_of_4"),
    ("ipo", dict(loss_type="ipo"), "mean_of_batches_of_4"),
    ("hinge", dict(loss_type="hinge"), "mean_of_batches_of_4"),
    ("robust@eps=0.1", dict(loss_type="robust", label_smoothing=0.1), "mean_of_batches_of_4"),
    ("aot", dict(loss_type="aot"), "one_batch"),
    ("aot_unpaired", dict(loss_type="aot_unpaired"), "one_batch"),
    ("discopop@tau=0.05", dict(loss_type="discopop", discopop_tau=0.05), "mean_of_batches_of_4"),
    ("sigmoid_norm", dict(loss_type="sigmoid_norm"), "mean_of_batches_of_4"),
    ("sigmoid@f=forward_kl", dict(loss_type="sigmoid", f_divergence_type="forward_kl"), "mean_of_batches_of_4"),
    ("sigmoid@f=js_divergence", dict(loss_type="sigmoid", f_divergence_type="js_divergence"), "mean_of_batches_of_4"),
    ("sigmoid@f=alpha_divergence,alpha=0.5",
     dict(loss_type="sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5), "mean_of_batches_of_4"),
    ("sigmoid@use_weighting", dict(loss_type="sigmoid", use_weighting=True), "mean_of_batches_of_4"),
    ("sigmoid@ld_alpha=0.5", dict(loss_type="sigmoid", ld_alpha=0.5), "mean_of_batches_of_4"),
    # TRL's `sft` term is the token mean of the chosen NLL over the batch (here the whole dataset)
    ("sigmoid+0.5*sft", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]), "one_batch"),
]
ORIGINAL_KEYS = ["sigmoid", "ipo", "hinge", "robust@eps=0.1"]


# ---------------------------------------------------------------------------------------------
# float64 re-implementation of the TRL 1.16 formulas on per-record values (cross-check only)
def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _score(lr, f, alpha):
    if f == "reverse_kl":
        return lr
    if f == "forward_kl":
        return 1 - math.exp(-lr)
    if f == "js_divergence":
        return math.log(2) + _logsig(lr)
    if f == "alpha_divergence":
        return (math.exp(min((alpha - 1) * lr, 80.0)) - 1) / (alpha - 1)
    raise ValueError(f)


def recompute(key, recs, beta):
    """recs: dicts with pc, pr, rc, rr (summed logps; ld-weighted when needed), nc, nr (completion
    lengths), wc, wr (WPO weights, optional)."""
    cl = [r["pc"] - r["rc"] for r in recs]
    rl = [r["pr"] - r["rr"] for r in recs]
    if key == "sigmoid+0.5*sft":  # the NLL term: token mean over the batch (the whole dataset)
        nll = -sum(r["pc"] for r in recs) / sum(r["nc"] for r in recs)
        return recompute("sigmoid", recs, beta) + 0.5 * nll
    if key in ("aot", "aot_unpaired"):
        if key == "aot":
            a = sorted(r["pc"] - r["pr"] for r in recs)
            b = sorted(r["rc"] - r["rr"] for r in recs)
        else:
            a, b = sorted(cl), sorted(rl)
        return sum(-_logsig(beta * (x - y)) for x, y in zip(a, b)) / len(recs)
    f, alpha = "reverse_kl", None
    if "@f=" in key:
        f = key.split("@f=")[1].split(",")[0]
        if f == "alpha_divergence":
            alpha = float(key.split("alpha=")[1])
    cs = [_score(x, f, alpha) for x in cl]
    rs = [_score(x, f, alpha) for x in rl]
    out = []
    for i, r in enumerate(recs):
        d = cs[i] - rs[i]
        if key.startswith("discopop"):
            tau = float(key.split("tau=")[1])
            z = beta * d
            m = 1 / (1 + math.exp(-z / tau))
            out.append(-_logsig(z) * (1 - m) + math.exp(-z) * m)
        elif key == "sigmoid_norm":
            out.append(-_logsig(beta * (cs[i] / max(r["nc"], 1) - rs[i] / max(r["nr"], 1))))
        elif key == "sigmoid@use_weighting":
            out.append(-_logsig(beta * d) * r["wc"] * r["wr"])
        else:  # sigmoid with an f-divergence, or with ld-weighted log-probs
            out.append(-_logsig(beta * d))
    return sum(out) / len(out)


# ---------------------------------------------------------------------------------------------
def build_trainer(a, recs, overrides, batch_size):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    pol = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ref = copy.deepcopy(pol)
    with torch.no_grad():
        ref.model.norm.weight.mul_(0.9)
    ref.eval()
    kw = dict(label_smoothing=0.0)
    kw.update(overrides)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, fp16=False, report_to="none", use_cpu=True,
                     beta=a.beta, max_length=None, per_device_train_batch_size=batch_size,
                     gradient_checkpointing=False, seed=0, **kw)
    tr = DPOTrainer(model=pol, ref_model=ref, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok)
    tr.model.eval()
    return tr


def trl_loss(tr, bs):
    tds = tr.train_dataset
    losses = []
    for s in range(0, len(tds), bs):
        batch = tr.data_collator([tds[j] for j in range(s, min(s + bs, len(tds)))])
        with torch.no_grad():
            losses.append(tr.compute_loss(tr.model, batch).item())
    return sum(losses) / len(losses)


def per_record_details(tr, bs, ld_alpha):
    """Per-record intermediates from TRL's fused LM head (policy built with use_weighting=True)."""
    tds = tr.train_dataset
    rows = []
    for s in range(0, len(tds), bs):
        batch = tr.data_collator([tds[j] for j in range(s, min(s + bs, len(tds)))])
        cm = batch["completion_mask"]
        scm = cm[..., 1:]
        kwargs = {k: v for k, v in batch.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
        kwargs["use_cache"] = False
        labels = batch["input_ids"].masked_fill(cm == 0, -100)
        with torch.no_grad():
            po = tr.model(**kwargs, labels=labels, fused_lm_head=True)
            ro = tr.ref_model(**kwargs, labels=labels, fused_lm_head=True)
        L = scm.size(1)
        plp, rlp, lssp = po.log_probs[:, -L:].double(), ro.log_probs[:, -L:].double(), po.log_sum_sq_probs[:, -L:].double()
        pos = scm.cumsum(1)
        lens = scm.sum(1).long()
        c_len, r_len = lens.chunk(2)
        sh = torch.minimum(c_len, r_len).repeat(2)
        shared = (pos > 0) & (pos <= sh.unsqueeze(1))
        tail = pos > sh.unsqueeze(1)
        wmean = ((plp - lssp) * scm).sum(1) / lens.clamp_min(1)
        n = len(c_len)
        for i in range(n):
            row = {}
            for side, j in (("chosen", i), ("rejected", i + n)):
                row[f"{side}_len"] = int(lens[j])
                row[f"{side}_policy_logp"] = float((plp[j] * scm[j]).sum())
                row[f"{side}_ref_logp"] = float((rlp[j] * scm[j]).sum())
                row[f"{side}_policy_shared_logp"] = float((plp[j] * shared[j]).sum())
                row[f"{side}_policy_tail_logp"] = float((plp[j] * tail[j]).sum())
                row[f"{side}_ref_shared_logp"] = float((rlp[j] * shared[j]).sum())
                row[f"{side}_ref_tail_logp"] = float((rlp[j] * tail[j]).sum())
                row[f"{side}_wpo_mean_aligned_logp"] = float(wmean[j])
                row[f"{side}_wpo_weight"] = math.exp(float(wmean[j]))
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--golden-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--details-out", default=None)
    ap.add_argument("--only", default=None, help="variant keys separated by ';' (keys may hold commas)")
    ap.add_argument("--datasets", default="pairs8,hh_harmless32")
    ap.add_argument("--update", action="store_true",
                    help="read --out first and replace only the values computed in this run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import trl

    golden = json.load(open(f"{a.golden_dir}/golden_smollm2_135m.json"))
    golden = {d["name"]: d for d in golden["datasets"]}
    variants = [v for v in VARIANTS if a.only is None or v[0] in a.only.split(";")]
    out = {"trl": trl.__version__, "beta": a.beta, "reference": "policy with model.norm.weight * 0.9", "losses": {},
           "batching": {k: b for k, _, b in variants},
           "options": {k: o for k, o, _ in variants},
           "checks": {}}
    details = {}
    for name in a.datasets.split(","):
        recs = [json.loads(l) for l in open(f"{a.golden_dir}/{name}.jsonl") if l.strip()]
        for key, overrides, batching in variants:
            bs = 4 if batching == "mean_of_batches_of_4" else len(recs)
            tr = build_trainer(a, recs, overrides, bs)
            val = trl_loss(tr, bs)
            out["losses"].setdefault(name, {})[key] = val
            print(name, key, batching, val, flush=True)
            if key == "sigmoid@use_weighting" and a.details_out:
                details[name] = per_record_details(tr, 4, 0.5)
            del tr
        # float32 padding noise: sigmoid with the whole dataset as one batch
        chk = out["checks"].setdefault(name, {})
        tr = build_trainer(a, recs, dict(loss_type="sigmoid"), len(recs))
        chk["sigmoid@one_batch"] = trl_loss(tr, len(recs))
        del tr
        # float64 recomputation from the golden per-record summed log-probs (policy and perturbed reference,
        # each one unpadded sequence); WPO and LD need per-token values the golden file lacks
        g = [dict(pc=r["chosen_logp"], pr=r["rejected_logp"], rc=r["ref_perturbed_chosen_logp"],
                  rr=r["ref_perturbed_rejected_logp"], nc=r["n_chosen_tokens"], nr=r["n_rejected_tokens"])
             for r in golden[name]["records"]]
        for key, _, _ in variants:
            if key in ORIGINAL_KEYS or key in ("sigmoid@use_weighting", "sigmoid@ld_alpha=0.5"):
                continue
            chk[f"{key}@from_golden_f64"] = recompute(key, g, a.beta)
        print(name, "checks", json.dumps(chk), flush=True)
    if a.details_out:
        dout = {}
        for name, rows in details.items():
            base = [dict(pc=r["chosen_policy_logp"], pr=r["rejected_policy_logp"], rc=r["chosen_ref_logp"],
                         rr=r["rejected_ref_logp"], nc=r["chosen_len"], nr=r["rejected_len"],
                         wc=r["chosen_wpo_weight"], wr=r["rejected_wpo_weight"]) for r in rows]
            ld = [dict(pc=r["chosen_policy_shared_logp"] + 0.5 * r["chosen_policy_tail_logp"],
                       pr=r["rejected_policy_shared_logp"] + 0.5 * r["rejected_policy_tail_logp"],
                       rc=r["chosen_ref_shared_logp"] + 0.5 * r["chosen_ref_tail_logp"],
                       rr=r["rejected_ref_shared_logp"] + 0.5 * r["rejected_ref_tail_logp"], nc=0, nr=0) for r in rows]
            rec = {k: recompute(k, base, a.beta) for k, _, _ in VARIANTS
                   if k not in ORIGINAL_KEYS and k != "sigmoid@ld_alpha=0.5"}
            rec["sigmoid"] = recompute("sigmoid", base, a.beta)
            rec["sigmoid@ld_alpha=0.5"] = recompute("sigmoid", ld, a.beta)
            dout[name] = {"records": rows, "recomputed_f64_from_batches_of_4_forwards": rec}
        with open(a.details_out, "w") as f:
            json.dump(dout, f, indent=1)
        print("wrote", a.details_out)
    if a.update:
        old = json.load(open(a.out))
        for sec in ("losses", "checks"):
            for name, vals in out[sec].items():
                old.setdefault(sec, {}).setdefault(name, {}).update(vals)
        for sec in ("batching", "options"):
            old.setdefault(sec, {}).update(out[sec])
        old["trl"], old["beta"] = out["trl"], out["beta"]
        # keep the variant order of VARIANTS
        order = [k for k, _, _ in VARIANTS]
        rank = lambda k: order.index(k) if k in order else len(order)
        for name in old["losses"]:
            old["losses"][name] = dict(sorted(old["losses"][name].items(), key=lambda kv: rank(kv[0])))
        for sec in ("batching", "options"):
            old[sec] = dict(sorted(old[sec].items(), key=lambda kv: rank(kv[0])))
        out = old
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
