#!/usr/bin/env python3
"""Tiny deterministic models of each supported architecture family (transformers 5.23, float32, eager
attention) and their DPO log-probs, loss and gradient norms on the golden pairs8 records, for the Rust
model's family tests (crates/dpo-cli/tests/fixtures/families/<case>.json).

Every case is made with `AutoConfig.for_model(model_type, **overrides)` and
`AutoModelForCausalLM.from_config(config, dtype=torch.float32)`; its weights are then overwritten by a
hash of (tensor name, flat index), so the Rust side can rebuild the identical model from the fixture's
`config` and `tensors` alone (see fill_value / FILL below; reproduce it bit-exactly: the value is
computed in float64 as `center + scale * u` -- a multiply then an add, no fused multiply-add -- and
rounded once to float32).

  u(name, i) = (splitmix64(fnv1a64(name) ^ i) >> 11) * 2**-53 * 2 - 1      (i = row-major flat index)

center/scale: names ending in `norm.weight` -> (1.0, 0.1), or (0.0, 0.1) for the Gemma families (the
weight is used as 1 + w); `.bias` -> (0.0, 0.05); everything else -> (0.0, 0.08). Tensors are the ones
save_pretrained writes (a tied lm_head is skipped: it is embed_tokens), in state_dict order; each
fixture entry also carries `first`, the tensor's first 3 float32 values (flat order), to debug a port.

Per record (one unpadded sequence per forward, no attention mask): logp = sum over the completion
tokens t of log_softmax(logits[t-1])[id_t], float32 log-softmax, float64 sum. Loss: mean over the 8
records of -logsigmoid(beta * ((pc - ref_c) - (pr - ref_r))), ref_c = pc.detach() + d_c, ref_r =
pr.detach() + d_r with the golden file's offsets (d_c = 0.5*(((i*7)%9)-4), d_r = 0.75*(((i*5)%11)-5),
i = record position), beta 0.1. grad_norms: L2 norm of d loss / d param for every named parameter
(a tied head is counted once, under model.embed_tokens.weight).

For each case the script also switches the family's distinguishing feature off (a config change, or
a weight change where no config switch exists) and prints the largest |logp change|; it must exceed
1e-3, which shows the fixture exercises that feature.

Usage (the oracle's python, bash ../shared/tools/oracle/setup.sh):
  python scripts/oracle/family_goldens.py --golden /work/shared/tools/oracle/golden/golden_smollm2_135m.json \
      --out crates/dpo-cli/tests/fixtures/families [--save-models DIR] [--cases a,b]
  python scripts/oracle/family_goldens.py --golden ... --check-checkpoint DIR --case CASE --logps FILE
The second form loads DIR with AutoModelForCausalLM (float32, eager), computes the records' logps and
compares them with FILE (jsonl of {"index","chosen_logps","rejected_logps"}, `dpo logps` output);
it prints the worst difference and exits 1 if it is over 1e-4.
About 2 minutes for all cases on 2 CPU threads.
"""
import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(2)

BETA = 0.1
TOL_CHECK = 1e-4
FEATURE_MIN = 1e-3

BASE = dict(
    vocab_size=49152,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
)
GEMMA_TYPES = {"gemma", "gemma2", "gemma3_text"}
# longrope factors, one per rotary frequency (head_dim/2 = 8)
PHI3_SHORT = [1.0 + i / 7 for i in range(8)]
PHI3_LONG = [2.0 + 6 * i / 7 for i in range(8)]

# case -> (model_type, overrides). head_dim 16 = hidden/heads everywhere; it is passed only where
# the config class has a head_dim field (qwen2 and phi3 have none and derive it).
CASES = {
    "llama31": ("llama", dict(
        head_dim=16, tie_word_embeddings=False, max_position_embeddings=128,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_bias": ("llama", dict(head_dim=16, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(head_dim=16, sliding_window=8, tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_yarn": ("qwen2", dict(
        tie_word_embeddings=True, max_position_embeddings=64,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=16))),
    "qwen3": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "gemma": ("gemma", dict(head_dim=16)),
    "gemma2": ("gemma2", dict(
        head_dim=16, attn_logit_softcapping=1.0, final_logit_softcapping=3.0, query_pre_attn_scalar=24,
        sliding_window=8)),
    "gemma3": ("gemma3_text", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=8, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
            "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
        })),
    "phi3": ("phi3", dict(
        tie_word_embeddings=False, max_position_embeddings=16384, original_max_position_embeddings=4096,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=PHI3_SHORT,
                             long_factor=PHI3_LONG))),
}

# ---------------------------------------------------------------- deterministic weights
M64 = 2**64


def splitmix64_int(x):
    x = (x + 0x9E3779B97F4A7C15) % M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return z ^ (z >> 31)


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) % M64
    return h


def u_int(name, i):
    return (splitmix64_int(fnv1a64(name) ^ i) >> 11) * 2.0**-53 * 2.0 - 1.0


def u_array(name, n):
    """u(name, i) for i in 0..n, vectorised (numpy uint64 arithmetic wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) ^ np.uint64(fnv1a64(name))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0


def center_scale(name, model_type):
    if name.endswith("norm.weight"):
        return (0.0 if model_type in GEMMA_TYPES else 1.0), 0.1
    if name.endswith(".bias"):
        return 0.0, 0.05
    return 0.0, 0.08


def fill_value(name, shape, center, scale):
    n = int(np.prod(shape)) if len(shape) else 1
    v = center + scale * u_array(name, n)  # float64: multiply, then add
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def self_check_hash():
    for name in ["model.embed_tokens.weight", "model.norm.weight", "x"]:
        ua = u_array(name, 1000)
        for i in [0, 1, 2, 17, 999]:
            assert ua[i] == u_int(name, i), (name, i, ua[i], u_int(name, i))
    big = 49152 * 64 - 1
    assert u_array("model.embed_tokens.weight", big + 1)[big] == u_int("model.embed_tokens.weight", big)


def saved_tensor_names(model):
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        from safetensors import safe_open
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            return set(f.keys())


def fill_model(model, model_type):
    saved = saved_tensor_names(model)
    sd = model.state_dict()
    tensors = []
    with torch.no_grad():
        for name, t in sd.items():
            if name not in saved:
                continue
            c, s = center_scale(name, model_type)
            t.copy_(fill_value(name, tuple(t.shape), c, s))
            first = [float(x) for x in t.reshape(-1)[:3].tolist()]  # float32 values, to debug a port
            tensors.append({"name": name, "shape": list(t.shape), "center": c, "scale": s, "first": first})
    extra = sorted(set(sd) - {t["name"] for t in tensors})
    if getattr(model.config, "tie_word_embeddings", False):
        assert extra == ["lm_head.weight"], extra
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "head not tied"
    else:
        assert extra == [], extra
    assert len(tensors) == len(saved), (len(tensors), len(saved))
    return tensors


# ---------------------------------------------------------------- models
def make_model(model_type, overrides):
    cfg = AutoConfig.for_model(model_type, **BASE, **copy.deepcopy(overrides))
    return model_from_config(cfg)


def model_from_config(cfg):
    cfg._attn_implementation = "eager"
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def saved_configs(model):
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        cfg = json.load(open(os.path.join(d, "config.json")))
        gp = os.path.join(d, "generation_config.json")
        gen = json.load(open(gp)) if os.path.exists(gp) else None
    return cfg, gen


def model_from_saved_config(cfg_dict, state_dict, edit=None):
    """A model built from a (possibly edited) saved config.json, with the given weights."""
    cfg_dict = copy.deepcopy(cfg_dict)
    if edit is not None:
        edit(cfg_dict)
    with tempfile.TemporaryDirectory() as d:
        json.dump(cfg_dict, open(os.path.join(d, "config.json"), "w"))
        cfg = AutoConfig.from_pretrained(d)
    m = model_from_config(cfg)
    missing, unexpected = m.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        m.tie_weights()
    return m


# ---------------------------------------------------------------- log-probs, loss, grads
def load_records(golden):
    g = json.load(open(golden))
    ds = [d for d in g["datasets"] if d["name"] == "pairs8"][0]
    recs = ds["records"]
    assert len(recs) == 8
    return g, recs


def offsets(i):
    return 0.5 * (((i * 7) % 9) - 4), 0.75 * (((i * 5) % 11) - 5)


def seq_logp(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids], dtype=torch.long)
    logits = model(input_ids=ids, use_cache=False).logits
    assert logits.dtype == torch.float32
    P = len(prompt_ids)
    lp = F.log_softmax(logits[0, P - 1:-1], dim=-1)
    tok = lp.gather(-1, ids[0, P:][:, None])[:, 0]
    return tok.double().sum()


def all_logps(model, recs):
    out = []
    with torch.no_grad():
        for r in recs:
            out.append((seq_logp(model, r["prompt_ids"], r["chosen_ids"]).item(),
                        seq_logp(model, r["prompt_ids"], r["rejected_ids"]).item()))
    return out


def loss_and_grads(model, recs):
    model.zero_grad(set_to_none=True)
    total = 0.0
    n = len(recs)
    for i, r in enumerate(recs):
        d_c, d_r = offsets(i)
        pc = seq_logp(model, r["prompt_ids"], r["chosen_ids"])
        pr = seq_logp(model, r["prompt_ids"], r["rejected_ids"])
        ref_c = pc.detach() + d_c
        ref_r = pr.detach() + d_r
        li = -F.logsigmoid(BETA * ((pc - ref_c) - (pr - ref_r))) / n
        li.backward()
        total += li.item()
    norms = {}
    for name, p in model.named_parameters():  # remove_duplicate=True: a tied head appears once
        g = p.grad
        norms[name] = 0.0 if g is None else float(torch.linalg.vector_norm(g.double()).item())
    model.zero_grad(set_to_none=True)
    return total, norms


# ---------------------------------------------------------------- feature switches
def _zero_bias(sd):
    sd = dict(sd)
    for k in sd:
        if k.endswith(".bias"):
            sd[k] = torch.zeros_like(sd[k])
    return sd


def _qk_norm_identity(m):
    for layer in m.model.layers:
        layer.self_attn.q_norm = torch.nn.Identity()
        layer.self_attn.k_norm = torch.nn.Identity()


def _set(**kv):
    def edit(c):
        c.update(copy.deepcopy(kv))
    return edit


def _set_embed_scale_one(m):
    m.model.embed_tokens.embed_scale.fill_(1.0)


# Each switch: (label, config edit or None, state_dict edit or None, model edit or None)
FEATURE_OFF = {
    "llama31": [("rope_parameters default (no llama3 scaling)",
                 _set(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), None, None)],
    "llama_bias": [("all biases zeroed", None, _zero_bias, None)],
    "mistral": [("sliding_window None", _set(sliding_window=None), None, None)],
    "qwen2": [("q/k/v biases zeroed", None, _zero_bias, None)],
    "qwen2_yarn": [("rope_parameters default (no yarn)",
                    _set(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None, None)],
    "qwen3": [("q_norm/k_norm removed (identity)", None, None, _qk_norm_identity)],
    "gemma": [("embed_scale 1 instead of sqrt(hidden)", None, None, _set_embed_scale_one),
              ("hidden_act silu instead of gelu_pytorch_tanh", _set(hidden_act="silu"), None, None)],
    "gemma2": [("attn_logit_softcapping None", _set(attn_logit_softcapping=None), None, None),
               ("final_logit_softcapping None", _set(final_logit_softcapping=None), None, None),
               ("all layers full_attention (no sliding window)",
                _set(layer_types=["full_attention"] * 4), None, None),
               ("query_pre_attn_scalar = head_dim (16)", _set(query_pre_attn_scalar=16), None, None)],
    "gemma3": [("final_logit_softcapping None", _set(final_logit_softcapping=None), None, None),
               ("all layers full_attention (no sliding window, global rope everywhere)",
                _set(layer_types=["full_attention"] * 4), None, None),
               ("sliding_window 4096 (window never cuts)", _set(sliding_window=4096), None, None),
               ("full_attention rope default (no linear factor 8)",
                _set(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
                None, None),
               ("sliding_attention rope_theta 1e6 (= global base)",
                _set(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                         "rope_theta": 1000000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
                None, None),
               ("attn_logit_softcapping 1.0 (expected: NO change, gemma3 ignores it)",
                _set(attn_logit_softcapping=1.0), None, None)],
    "phi3": [("rope_parameters default (no longrope: no short_factor, no attention factor)",
              _set(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                    "partial_rotary_factor": 1.0}), None, None),
             ("longrope attention_factor forced 1.0",
              _set(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                                    "short_factor": PHI3_SHORT, "long_factor": PHI3_LONG,
                                    "original_max_position_embeddings": 4096, "attention_factor": 1.0}),
              None, None),
             ("original_max_position_embeddings 16, attention_factor pinned to the fixture's "
              "sqrt(1+ln(4)/ln(4096)): only sequences longer than 16 change (they use long_factor)",
              _set(original_max_position_embeddings=16,
                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                                    "short_factor": PHI3_SHORT, "long_factor": PHI3_LONG,
                                    "original_max_position_embeddings": 16,
                                    "attention_factor": math.sqrt(1 + math.log(4) / math.log(4096))}),
              None, None)],
}
# switches whose effect is expected to be nil (documented behaviour, not a feature of the fixture)
EXPECT_NO_CHANGE = {("gemma3", 5)}


def feature_checks(case, cfg_dict, model, recs, base_logps):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    results = []
    for j, (label, cfg_edit, sd_edit, m_edit) in enumerate(FEATURE_OFF[case]):
        m2 = model_from_saved_config(cfg_dict, sd_edit(sd) if sd_edit else sd, cfg_edit)
        if m_edit:
            with torch.no_grad():
                m_edit(m2)
        lps = all_logps(m2, recs)
        diff = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(lps, base_logps))
        # per-record: does it change short and long sequences?
        per = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(lps, base_logps)]
        expect_nil = (case, j) in EXPECT_NO_CHANGE
        passed = (diff < 1e-9) if expect_nil else (diff > FEATURE_MIN)
        print(f"  [{case}] off: {label}: max |dlogp| = {diff:.6g}  "
              f"(per record {' '.join(f'{x:.3g}' for x in per)}) {'ok' if passed else 'FAIL'}")
        results.append({"switch": label, "max_abs_logp_diff": diff, "expect_no_change": expect_nil,
                        "passed": passed})
    return results, all(r["passed"] for r in results)


# ---------------------------------------------------------------- main modes
def versions():
    import transformers
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "transformers": transformers.__version__, "numpy": np.__version__}
    return v


def build_case(case, recs, save_dir=None):
    model_type, ov = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(model_type, ov)
    tensors = fill_model(model, model_type)
    cfg_dict, gen = saved_configs(model)
    # the model rebuilt from its own config.json must be the same model
    m_re = model_from_saved_config(cfg_dict, model.state_dict())
    lps = all_logps(model, recs)
    lps_re = all_logps(m_re, recs)
    assert lps == lps_re, ("config.json round trip changes the logps", lps, lps_re)
    loss, gnorms = loss_and_grads(model, recs)
    # loss value is determined by the offsets alone (policy == reference up to the constants)
    exp_loss = sum(-math.log(1 / (1 + math.exp(-BETA * (offsets(i)[1] - offsets(i)[0])))) for i in range(8)) / 8
    assert abs(loss - exp_loss) < 1e-9, (loss, exp_loss)
    out_recs = []
    for r, (pc, pr) in zip(recs, lps):
        out_recs.append({"index": r["index"], "prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"],
                         "rejected_ids": r["rejected_ids"], "chosen_logp": pc, "rejected_logp": pr,
                         "n_chosen_tokens": len(r["chosen_ids"]), "n_rejected_tokens": len(r["rejected_ids"])})
    print(f"[{case}] {type(model).__name__}: {len(tensors)} tensors, loss {loss:.10f}, "
          f"logps {' '.join(f'{a:.4f}/{b:.4f}' for a, b in lps)}")
    feats, ok = feature_checks(case, cfg_dict, model, recs, lps)
    if save_dir:
        d = os.path.join(save_dir, case)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d)
        m_ld = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        assert all_logps(m_ld.eval(), recs) == lps, "save/load round trip changes the logps"
    doc = {
        "case": case,
        "model_type": model_type,
        "config": cfg_dict,
        "generation_config": gen,
        "tensors": tensors,
        "versions": versions(),
        "beta": BETA,
        "offsets_formula": "d_c=0.5*(((i*7)%9)-4), d_r=0.75*(((i*5)%11)-5), ref_c=pc+d_c, ref_r=pr+d_r",
        "fill_formula": "value = f32(center + scale * u), u = (splitmix64(fnv1a64(name) ^ i) >> 11) * 2^-53 * 2 - 1",
        "records": out_recs,
        "loss": loss,
        "grad_norms": gnorms,
        "feature_off": feats,
    }
    return doc, ok


def check_checkpoint(args, recs):
    model = AutoModelForCausalLM.from_pretrained(args.check_checkpoint, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    lps = {r["index"]: v for r, v in zip(recs, all_logps(model, recs))}
    worst, where, seen = 0.0, None, 0
    for line in open(args.logps):
        line = line.strip()
        if not line:
            continue
        o = json.loads(line)
        idx = o["index"]
        if idx not in lps:
            print(f"index {idx} not among the golden records", file=sys.stderr)
            return 1
        pc, pr = lps[idx]
        for kind, ours, theirs in (("chosen", pc, o["chosen_logps"]), ("rejected", pr, o["rejected_logps"])):
            d = abs(ours - float(theirs))
            if d > worst or where is None:
                worst, where = d, (idx, kind, ours, theirs)
        seen += 1
    if seen != len(recs):
        print(f"warning: {seen} lines in {args.logps}, {len(recs)} golden records", file=sys.stderr)
    print(f"case {args.case}: worst |logp diff| {worst:.3g} at index {where[0]} {where[1]} "
          f"(transformers {where[2]:.8f}, file {where[3]})")
    if worst > TOL_CHECK or seen == 0:
        print(f"FAIL: over {TOL_CHECK}")
        return 1
    print("ok")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--out")
    ap.add_argument("--save-models")
    ap.add_argument("--cases", help="comma-separated subset of: " + ",".join(CASES))
    ap.add_argument("--check-checkpoint")
    ap.add_argument("--case")
    ap.add_argument("--logps")
    args = ap.parse_args()
    _, recs = load_records(args.golden)
    if args.check_checkpoint:
        if not args.logps:
            ap.error("--check-checkpoint needs --logps")
        return check_checkpoint(args, recs)
    if not args.out:
        ap.error("--out is required")
    self_check_hash()
    os.makedirs(args.out, exist_ok=True)
    cases = args.cases.split(",") if args.cases else list(CASES)
    all_ok = True
    for case in cases:
        doc, ok = build_case(case, recs, args.save_models)
        all_ok &= ok
        with open(os.path.join(args.out, f"{case}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if not all_ok:
        print("FAIL: some feature switch did not change the logps as expected")
        return 1
    return 0


from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
