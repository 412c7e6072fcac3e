#!/usr/bin/env python3
"""Tiny deterministic sequence-classification reward models (transformers 5.23, float32, eager
attention) and their scores on the golden pairs8 texts, for the Rust reward-model parity test
(crates/dpo-cli/tests/fixtures/reward_models/<case>.json).

Cases (BASE dims as in family_goldens.py: vocab 49152, hidden 64, 4 layers, 4 heads, 2 kv heads,
intermediate 128; num_labels 1, pad_token_id 2):
  llama: AutoConfig.for_model("llama", **BASE, head_dim=16, tie_word_embeddings=False, ...)
         -> LlamaForSequenceClassification
  qwen2: AutoConfig.for_model("qwen2", **BASE, tie_word_embeddings=True, ...)   (qwen2 has no head_dim
         field; it derives hidden/heads = 16) -> Qwen2ForSequenceClassification
made with `AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)`. There is no
lm_head: the head is `score` = nn.Linear(hidden, num_labels, bias=False), saved as `score.weight`
[1, 64]; tie_word_embeddings therefore ties nothing. The fixture's `config` is the config.json that
save_pretrained writes (architectures ["LlamaForSequenceClassification"] etc., id2label/label2id,
pad_token_id).

Weights: every tensor save_pretrained writes is overwritten by the hash fill of family_goldens.py
(imported from it): value = f32(center + scale * u) computed in float64 (a multiply
then an add, no fused multiply-add, rounded once to float32),
  u(name, i) = (splitmix64(fnv1a64(name) ^ i) >> 11) * 2**-53 * 2 - 1      (i = row-major flat index)
center/scale: `norm.weight` -> (1.0, 0.1); `.bias` -> (0.0, 0.05); everything else, `score.weight`
included -> (0.0, 0.08). Fixture `tensors` lists them in state_dict order with their first 3 float32
values.

Texts: pairs8.jsonl records have plain-string prompt/chosen/rejected (no message lists), so each record
gives two texts, prompt + chosen and prompt + rejected (plain string concatenation, no chat template):
16 sequences, `which` "chosen"/"rejected", `record` = line index 0..7. Token ids are
`tokenizer(text).input_ids` with the SmolLM2-135M-Instruct tokenizer, which adds NO BOS (and no EOS).
Note: record 7's chosen text ends with the literal "<|im_end|>", which tokenizes to id 2 = the pad
token, so that sequence naturally ends in a pad id as well (its trailing_pads is 0: only appended ids
are counted). Two extra sequences (`which` "extra", `record` null) are
`tokenizer(text).input_ids + [2, 2]` (`trailing_pads` 2) to exercise the pooling rule.

Pooling (transformers/modeling_layers.py, GenericForSequenceClassification.forward, used by both
LlamaForSequenceClassification and Qwen2ForSequenceClassification):
    logits = self.score(hidden_states)
    ...
    # To handle both left- and right- padding, we take the rightmost token that is not equal to pad_token_id
    non_pad_mask = (input_ids != self.config.get_text_config().pad_token_id).to(logits.device, torch.int32)
    token_indices = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
    last_non_pad_token = (token_indices * non_pad_mask).argmax(-1)
    ...
    pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_non_pad_token]
i.e. the score is read at the rightmost position whose input id != pad_token_id, from input_ids alone
(the attention mask plays no part; a sequence with no non-pad id, or whose only non-pad id is at
position 0, pools at position 0). The model is causal, so ids after that position do not change it.

Per sequence: score_single = logits[0, 0] of the sequence alone (batch 1, no attention mask),
float64 of the float32 value; score_batched = the same from ONE batch of all 18 sequences,
right-padded with id 2, attention_mask 1 on every real id (the appended 2s included) and 0 on the
padding. The script asserts |single - batched| <= 1e-4, that the model rebuilt from its config.json
gives identical scores, and that "last token" pooling of the trailing-pad sequences differs from
transformers' score by more than 1e-3 (the fixture exercises the pooling rule).

Usage (the oracle's python):
  /tmp/oracle/venv/bin/python scripts/oracle/reward_model_goldens.py \
      --pairs /work/shared/tools/oracle/golden/pairs8.jsonl \
      --tokenizer /tmp/oracle/smollm2-135m-instruct-f32 \
      --out crates/dpo-cli/tests/fixtures/reward_models
A few seconds on 2 CPU threads.
"""
import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import warnings

import numpy as np
import torch

torch.set_num_threads(2)

TOL_BATCH = 1e-4
POOL_MIN = 1e-3
PAD_ID = 2
TRAILING_PADS = 2
EXTRA_TEXTS = [
    "A reward model reads the whole conversation and returns one number.",
    "Question: Name a prime number between 10 and 20.\nAnswer: 13",
]

CASES = {
    "llama": ("llama", dict(head_dim=16, tie_word_embeddings=False, num_labels=1, pad_token_id=PAD_ID)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, num_labels=1, pad_token_id=PAD_ID)),
}

# ---------------------------------------------------------------- deterministic weights
# The hash fill and the model dimensions are family_goldens.py's (imported: the Rust side rebuilds
# both kinds of fixture with the same code).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from family_goldens import BASE, fill_value, center_scale, saved_tensor_names, self_check_hash  # noqa: E402


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
    assert extra == [], ("state_dict tensors that save_pretrained does not write", extra)
    assert len(tensors) == len(saved), (len(tensors), len(saved))
    assert "score.weight" in saved and not any(n.startswith("lm_head") for n in saved), sorted(saved)
    return tensors


# ---------------------------------------------------------------- models
def model_from_config(cfg):
    cfg._attn_implementation = "eager"
    m = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def make_model(model_type, overrides):
    cfg = AutoConfig.for_model(model_type, **BASE, **copy.deepcopy(overrides))
    return model_from_config(cfg)


def saved_config(model):
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return json.load(open(os.path.join(d, "config.json")))


def model_from_saved_config(cfg_dict, state_dict):
    with tempfile.TemporaryDirectory() as d:
        json.dump(cfg_dict, open(os.path.join(d, "config.json"), "w"))
        cfg = AutoConfig.from_pretrained(d)
    m = model_from_config(cfg)
    missing, unexpected = m.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    return m


# ---------------------------------------------------------------- sequences and scores
def load_sequences(pairs_path, tok):
    recs = [json.loads(line) for line in open(pairs_path) if line.strip()]
    assert len(recs) == 8, len(recs)
    seqs = []
    for i, r in enumerate(recs):
        assert all(isinstance(r[k], str) for k in ("prompt", "chosen", "rejected")), \
            "pairs8 records are expected to be plain strings"
        for which in ("chosen", "rejected"):
            text = r["prompt"] + r[which]
            seqs.append({"record": i, "which": which, "text": text, "ids": tok(text).input_ids,
                         "trailing_pads": 0})
    for text in EXTRA_TEXTS:
        ids = tok(text).input_ids
        assert ids[-1] != PAD_ID
        seqs.append({"record": None, "which": "extra", "text": text, "ids": ids + [PAD_ID] * TRAILING_PADS,
                     "trailing_pads": TRAILING_PADS})
    return seqs


def scores_single(model, seqs):
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = model(input_ids=torch.tensor([s["ids"]], dtype=torch.long), use_cache=False).logits
            assert logits.dtype == torch.float32 and tuple(logits.shape) == (1, 1), logits.shape
            out.append(float(logits[0, 0].item()))
    return out


def scores_batched(model, seqs):
    L = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s["ids"])] = torch.tensor(s["ids"])
        mask[b, :len(s["ids"])] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert tuple(logits.shape) == (len(seqs), 1), logits.shape
    return [float(x) for x in logits[:, 0].tolist()]


def per_position_scores(model, ids):
    """score(hidden state) at every position of one unpadded sequence (float32 -> float)."""
    with torch.no_grad():
        hs = model.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False).last_hidden_state
        return [float(x) for x in model.score(hs)[0, :, 0].tolist()]


def rightmost_non_pad(ids):
    idx = [i for i, t in enumerate(ids) if t != PAD_ID]
    return idx[-1] if idx else 0


# ---------------------------------------------------------------- main
def versions():
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


def build_case(case, seqs, adds_bos):
    model_type, ov = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model(model_type, ov)
    tensors = fill_model(model, model_type)
    cfg_dict = saved_config(model)
    single = scores_single(model, seqs)
    batched = scores_batched(model, seqs)
    # the model rebuilt from its own config.json must be the same model
    m_re = model_from_saved_config(cfg_dict, model.state_dict())
    assert scores_single(m_re, seqs) == single, "config.json round trip changes the scores"

    worst, wi = max((abs(a - b), i) for i, (a, b) in enumerate(zip(single, batched)))
    print(f"[{case}] {type(model).__name__} ({cfg_dict.get('architectures')}): {len(tensors)} tensors: "
          f"{', '.join(t['name'] for t in tensors if not t['name'].startswith('model.layers.'))} + layers")
    print(f"[{case}] scores: {' '.join(f'{x:.5f}' for x in single)}")
    print(f"[{case}] worst |single - batched| = {worst:.3g} (sequence {wi})")
    ok = worst <= TOL_BATCH
    assert len({round(x, 6) for x in single}) == len(single), "scores are not all distinct"

    # pooling: transformers' score must equal score() at the rightmost non-pad position, and differ
    # from plain last-position pooling on the trailing-pad sequences
    for i, s in enumerate(seqs):
        per = per_position_scores(model, s["ids"])
        p = rightmost_non_pad(s["ids"])
        assert abs(per[p] - single[i]) <= 1e-6, (case, i, per[p], single[i])
        if s["ids"][-1] == PAD_ID:
            d = abs(per[-1] - single[i])
            passed = d > POOL_MIN
            ok &= passed
            print(f"[{case}] sequence {i} ({s['which']}, trailing_pads {s['trailing_pads']}, len {len(s['ids'])}, "
                  f"pooled at {p}): transformers {single[i]:.6f}, last-token {per[-1]:.6f}, |diff| {d:.4g} "
                  f"{'ok' if passed else 'FAIL'}")

    out_seqs = [{"record": s["record"], "which": s["which"], "text": s["text"], "ids": s["ids"],
                 "trailing_pads": s["trailing_pads"], "score_single": a, "score_batched": b}
                for s, a, b in zip(seqs, single, batched)]
    doc = {
        "case": case,
        "model_type": model_type,
        "architecture": type(model).__name__,
        "config": cfg_dict,
        "tensors": tensors,
        "fill_formula": "value = f32(center + scale * u), u = (splitmix64(fnv1a64(name) ^ i) >> 11) * 2^-53 * 2 - 1",
        "versions": versions(),
        "pad_token_id": PAD_ID,
        "tokenizer_adds_bos": adds_bos,
        "pooling": "score at the rightmost position whose input id != pad_token_id (input_ids only, "
                   "attention mask ignored); position 0 if there is none",
        "batching": "score_batched: all sequences in one batch, right-padded with pad_token_id, attention_mask 1 "
                    "on every real id (appended pads included), 0 on padding",
        "sequences": out_seqs,
    }
    return doc, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="/work/shared/tools/oracle/golden/pairs8.jsonl")
    ap.add_argument("--tokenizer", default="/tmp/oracle/smollm2-135m-instruct-f32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", help="comma-separated subset of: " + ",".join(CASES))
    args = ap.parse_args()
    self_check_hash()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    probe = tok("Hello").input_ids
    adds_bos = tok.bos_token_id is not None and probe[0] == tok.bos_token_id
    assert tok.pad_token_id == PAD_ID, tok.pad_token_id
    print(f"tokenizer: bos {tok.bos_token_id} adds_bos {adds_bos}, pad {tok.pad_token_id}")
    seqs = load_sequences(args.pairs, tok)
    os.makedirs(args.out, exist_ok=True)
    cases = args.cases.split(",") if args.cases else list(CASES)
    all_ok = True
    for case in cases:
        doc, ok = build_case(case, seqs, adds_bos)
        all_ok &= ok
        with open(os.path.join(args.out, f"{case}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if not all_ok:
        print("FAIL: single/batched mismatch or the pooling check did not pass")
        return 1
    return 0


from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
