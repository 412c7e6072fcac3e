#!/usr/bin/env python3
"""Tiny GGUF fixtures (< 150 KB each) of the architecture families dpo-rs reads from GGUF, with golden
log-probs from transformers, for the Rust GGUF family test
(crates/dpo-cli/tests/fixtures/families/gguf/<case>.gguf + goldens.json).

What it does
  1. Trains a tiny byte-level BPE tokenizer (`tokenizers` BpeTrainer, GPT-2 style pre-tokenizer
     ByteLevel(add_prefix_space=False) with its default regex, ByteLevel decoder, no post-processor) on
     the text of pairs8.jsonl: 3 special tokens `<|endoftext|>` (0) `<|im_start|>` (1) `<|im_end|>` (2),
     the 256 byte symbols, then merges, VOCAB_SIZE ids in all. eos = pad = `<|im_end|>`, no bos,
     add_bos_token / add_eos_token false (tokenizer_config.json, tokenizer_class PreTrainedTokenizerFast).
  2. For each case builds the model as scripts/oracle/family_goldens.py does (AutoConfig.for_model with
     the case's overrides, float32, eager attention, its deterministic weight fill -- imported from it),
     but small: vocab = the tokenizer's, hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
     head_dim 8, tied embeddings everywhere (an untied head would not fit in 150 KB). It saves the
     model + tokenizer into WORK/<case> and converts it with llama.cpp's convert_hf_to_gguf.py (patched,
     see below) to OUT/<case>.gguf (f32).
  3. Golden values from transformers on the HF directory: per pairs8 record the ids TRL 1.16 builds for
     a non-conversational pair (golden.py's trl_tokenize with PreTrainedTokenizerFast.from_pretrained
     (WORK/<case>), i.e. tokenizer.json as written; not AutoTokenizer, which transformers 5 turns into
     Qwen2Tokenizer for the qwen2 directory, swapping in Qwen2's digit-splitting regex) and the
     chosen/rejected summed log-probs (one unpadded sequence per forward, f32 log-softmax, f64 sum;
     family_goldens.all_logps). Written to OUT/goldens.json.
  4. Checks: each GGUF read back with gguf-py has the expected architecture, hyper-parameter keys,
     feature keys/tensors, the HF tensors (after the converter's known transforms: llama q/k row
     permutation, Gemma norm +1) and the tokenizer (tokens, merges, control tokens, eos/pad ids); the
     tokenizer rebuilt from the GGUF metadata alone the way dpo-rs does (byte-level BPE over
     tokens+merges, ByteLevel(add_prefix_space=False) pre-tokenizer, token_type 3 = special) gives the
     golden ids; and each case's feature, switched off in transformers, moves some logp by > 1e-3.
  Exits 1 if any check fails.

Cases (family_goldens.py's, adapted to the tiny size):
  qwen3       q_norm / k_norm                       (blk.N.attn_q_norm / attn_k_norm)
  qwen2_yarn  q/k/v biases + yarn rope, factor 4, original ctx 16
  llama_bias  attention + MLP biases
  llama31     llama3 rope (factor 8, low 1, high 4, original ctx 16) -> rope_freqs.weight. config.json
              also gets a top-level "original_max_position_embeddings": 16: the converter reads only that
              key (default 8192) to compute rope_freqs.
  gemma       embed scale sqrt(hidden), gelu_pytorch_tanh, norm (1 + w)
  gemma2      attn softcap 1.0, final softcap 3.0, sliding window 8 on layer 0 (layer 1 full: llama.cpp's
              gemma2 alternation), query_pre_attn_scalar = head_dim (GGUF cannot store it)
  gemma3      2 layers, both sliding (window 8): llama.cpp's gemma3 default pattern (period 6, no pattern
              key written by the converter) makes layers 0-4 sliding, so any model with < 6 layers is all
              sliding; sliding layers use rope base 10000 (rope.freq_base_swa) and no rope scaling, the
              global base 1e6 + linear factor 8 are stored but unused by these layers; final softcap 3.0;
              query_pre_attn_scalar = head_dim
  phi3        longrope (short/long factors, 4 each = head_dim/2; attention factor sqrt(1+ln 4/ln 4096)
              from max_position_embeddings 16384 / original 4096); fused qkv and gate_up

The llama.cpp copy (/tmp/llamacpp by default, --llamacpp):
  convert_hf_to_gguf.py.orig and gguf-py/ are those of github.com/Mesh-LLM/llama.cpp at commit
  092b66d019b8ef8e833a38eca117f31738d31496 (a fork; its convert_hf_to_gguf.py and gguf-py are unchanged
  from ggml-org/llama.cpp 21a493304229be58de148fde3b633017db0a0524, 2026-04-12; gguf-py 0.18.0):
      git clone https://github.com/Mesh-LLM/llama.cpp src && cd src && git checkout 092b66d019b8
      mkdir -p /tmp/llamacpp && cp convert_hf_to_gguf.py /tmp/llamacpp/convert_hf_to_gguf.py.orig
      cp -r gguf-py /tmp/llamacpp/
  This script writes its own patched copy, /tmp/llamacpp/convert_hf_to_gguf_tiny.py, from the .orig by
  the exact-match text replacements in CONVERTER_PATCHES (each must match once; all marked LOCAL PATCH):
    a. get_vocab_base loads PreTrainedTokenizerFast instead of AutoTokenizer (see 3: AutoTokenizer would
       give Qwen2Tokenizer for qwen2, another pre-tokenizer);
    b. Phi3 (no tokenizer.model) falls back to the GPT-2 vocab path instead of raising;
    c. Gemma / Gemma2 use the GPT-2 vocab path when there is no tokenizer.model (Gemma then also skips the
       hard-coded CodeGemma prefix/suffix/middle/fsep/eot ids 67-70/107, which index the SentencePiece
       Gemma vocab and would point at ordinary tokens here);
    d. Phi3 reads the longrope parameters from rope_parameters (transformers 5) when there is no
       rope_scaling, so rope_factors_long/short + rope.scaling.attn_factor are written;
    e. get_vocab_base_pre maps this tokenizer's check hash (computed here) to "gpt-2", llama.cpp's name
       for the plain GPT-2 regex (LLAMA_VOCAB_PRE_TYPE_GPT2). ("smollm" would make llama.cpp split
       digits first, which differs here: the tokenizer has merges like "Ġ12"; "gpt2" is not a
       llama.cpp pre-tokenizer name and llama.cpp refuses it.)
  Converter run: cd /tmp/llamacpp && PYTHONPATH=/tmp/llamacpp/gguf-py PY convert_hf_to_gguf_tiny.py
                 WORK/<case> --outtype f32 --outfile OUT/<case>.gguf   (log in WORK/<case>.convert.log)

Usage (the oracle venv, /tmp/oracle/venv/bin/python; about 2 minutes on 2 CPU threads):
  python scripts/oracle/gguf_family_fixtures.py [--cases a,b] [--work /tmp/fam/tiny]
      [--out crates/dpo-cli/tests/fixtures/families/gguf] [--llamacpp /tmp/llamacpp]
      [--oracle-dir ../shared/tools/oracle]
"""
import argparse
import ast
import copy
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import family_goldens as fg  # noqa: E402  (sets torch threads; imports transformers)

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

VOCAB_SIZE = 352
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS = "<|im_end|>"
MAX_BYTES = 150_000
FEATURE_MIN = fg.FEATURE_MIN
PRE_NAME = "gpt-2"

HEAD_DIM = 8
# longrope factors, one per rotary frequency (head_dim/2 = 4)
PHI3_SHORT = [1.0 + i / 3 for i in range(4)]
PHI3_LONG = [2.0 + 6 * i / 3 for i in range(4)]
GEMMA3_ROPE = {
    "full_attention": dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
    "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
}


def tiny_base(vocab_size, eos_id):
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64,
                bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id)


# case -> (model_type, overrides, extra top-level config.json keys)
CASES = {
    "qwen3": ("qwen3", dict(head_dim=HEAD_DIM, tie_word_embeddings=True), {}),
    "qwen2_yarn": ("qwen2", dict(
        tie_word_embeddings=True, max_position_embeddings=64,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=16)), {}),
    "llama_bias": ("llama", dict(head_dim=HEAD_DIM, attention_bias=True, mlp_bias=True,
                                 tie_word_embeddings=True), {}),
    "llama31": ("llama", dict(
        head_dim=HEAD_DIM, tie_word_embeddings=True, max_position_embeddings=128,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16)),
        {"original_max_position_embeddings": 16}),
    "gemma": ("gemma", dict(head_dim=HEAD_DIM), {}),
    "gemma2": ("gemma2", dict(
        head_dim=HEAD_DIM, attn_logit_softcapping=1.0, final_logit_softcapping=3.0,
        query_pre_attn_scalar=HEAD_DIM, sliding_window=8), {}),
    "gemma3": ("gemma3_text", dict(
        head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "sliding_attention"], rope_parameters=GEMMA3_ROPE), {}),
    "phi3": ("phi3", dict(
        tie_word_embeddings=True, max_position_embeddings=16384, original_max_position_embeddings=4096,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=PHI3_SHORT,
                             long_factor=PHI3_LONG)), {}),
}

GGUF_ARCH = {"qwen3": "qwen3", "qwen2_yarn": "qwen2", "llama_bias": "llama", "llama31": "llama",
             "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3"}
PHI3_ATTN = math.sqrt(1 + math.log(16384 / 4096) / math.log(4096))

# Expected feature-carrying metadata: key (without the "<arch>." prefix) -> value (floats compared at 1e-6
# relative); "ABSENT" = must not be there.
FEATURE_KEYS = {
    "qwen3": {},
    "qwen2_yarn": {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                   "rope.scaling.original_context_length": 16, "rope.freq_base": 10000.0},
    "llama_bias": {},
    "llama31": {"rope.freq_base": 500000.0, "rope.scaling.type": "ABSENT"},
    "gemma": {},
    "gemma2": {"attn_logit_softcapping": 1.0, "final_logit_softcapping": 3.0, "attention.sliding_window": 8},
    "gemma3": {"final_logit_softcapping": 3.0, "attention.sliding_window": 8, "rope.freq_base": 1000000.0,
               "rope.freq_base_swa": 10000.0, "rope.scaling.type": "linear", "rope.scaling.factor": 8.0,
               "attention.sliding_window_pattern": "ABSENT", "attn_logit_softcapping": "ABSENT"},
    "phi3": {"rope.scaling.attn_factor": PHI3_ATTN, "rope.scaling.original_context_length": 4096,
             "context_length": 16384, "rope.dimension_count": HEAD_DIM, "rope.freq_base": 10000.0,
             "attention.sliding_window": 0},
}
# Tensors that carry the feature (block 0 listed; checked in every block)
FEATURE_TENSORS = {
    "qwen3": ["blk.{b}.attn_q_norm.weight", "blk.{b}.attn_k_norm.weight"],
    "qwen2_yarn": ["blk.{b}.attn_q.bias", "blk.{b}.attn_k.bias", "blk.{b}.attn_v.bias"],
    "llama_bias": ["blk.{b}.attn_q.bias", "blk.{b}.attn_k.bias", "blk.{b}.attn_v.bias",
                   "blk.{b}.attn_output.bias", "blk.{b}.ffn_gate.bias", "blk.{b}.ffn_up.bias",
                   "blk.{b}.ffn_down.bias"],
    "llama31": ["rope_freqs.weight"],
    "gemma": [],
    "gemma2": ["blk.{b}.post_attention_norm.weight", "blk.{b}.post_ffw_norm.weight"],
    "gemma3": ["blk.{b}.attn_q_norm.weight", "blk.{b}.attn_k_norm.weight",
               "blk.{b}.post_attention_norm.weight", "blk.{b}.post_ffw_norm.weight"],
    "phi3": ["rope_factors_long.weight", "rope_factors_short.weight", "blk.{b}.attn_qkv.weight"],
}


# ---------------------------------------------------------------- feature switches
def _rope(**kv):
    return fg._set(rope_parameters=kv)


FEATURE_OFF = {
    "qwen3": [("q_norm/k_norm removed (identity)", None, None, fg._qk_norm_identity)],
    "qwen2_yarn": [("rope_parameters default (no yarn)", _rope(rope_type="default", rope_theta=10000.0), None, None),
                   ("q/k/v biases zeroed", None, fg._zero_bias, None)],
    "llama_bias": [("all biases zeroed", None, fg._zero_bias, None)],
    "llama31": [("rope_parameters default (no llama3 scaling)",
                 _rope(rope_type="default", rope_theta=500000.0), None, None),
                ("llama3 rope with original_max_position_embeddings 8192 (what the converter assumes when "
                 "config.json has no top-level key; max_position_embeddings 65536 to keep it valid)",
                 fg._set(original_max_position_embeddings=8192, max_position_embeddings=65536,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                              low_freq_factor=1.0, high_freq_factor=4.0,
                                              original_max_position_embeddings=8192)), None, None)],
    "gemma": [("embed_scale 1 instead of sqrt(hidden)", None, None, fg._set_embed_scale_one),
              ("hidden_act silu instead of gelu_pytorch_tanh", fg._set(hidden_act="silu"), None, None)],
    "gemma2": [("attn_logit_softcapping None", fg._set(attn_logit_softcapping=None), None, None),
               ("final_logit_softcapping None", fg._set(final_logit_softcapping=None), None, None),
               ("all layers full_attention (no sliding window)",
                fg._set(layer_types=["full_attention"] * 2), None, None)],
    "gemma3": [("final_logit_softcapping None", fg._set(final_logit_softcapping=None), None, None),
               ("sliding_window 4096 (window never cuts)", fg._set(sliding_window=4096), None, None),
               ("sliding_attention rope_theta 1e6 (= global base)",
                fg._set(rope_parameters={"full_attention": GEMMA3_ROPE["full_attention"],
                                         "sliding_attention": dict(rope_type="default", rope_theta=1000000.0)}),
                None, None),
               ("sliding_attention rope linear factor 8 (the stored global scaling applied to sliding layers)",
                fg._set(rope_parameters={"full_attention": GEMMA3_ROPE["full_attention"],
                                         "sliding_attention": dict(rope_type="linear", factor=8.0,
                                                                   rope_theta=10000.0)}),
                None, None),
               ("all layers full_attention (global rope 1e6 + linear 8, no window)",
                fg._set(layer_types=["full_attention"] * 2), None, None),
               ("full_attention rope default (expected: NO change, no full layer)",
                fg._set(rope_parameters={"full_attention": dict(rope_type="default", rope_theta=1000000.0),
                                         "sliding_attention": GEMMA3_ROPE["sliding_attention"]}),
                None, None)],
    "phi3": [("rope_parameters default (no longrope: no short_factor, no attention factor)",
              _rope(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0), None, None),
             ("longrope attention_factor forced 1.0",
              _rope(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=1.0, short_factor=PHI3_SHORT,
                    long_factor=PHI3_LONG, original_max_position_embeddings=4096, attention_factor=1.0),
              None, None),
             ("short_factor all 1.0 (attention factor kept)",
              _rope(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=1.0, short_factor=[1.0] * 4,
                    long_factor=PHI3_LONG, original_max_position_embeddings=4096, attention_factor=PHI3_ATTN),
              None, None)],
}
EXPECT_NO_CHANGE = {("gemma3", 5)}


# ---------------------------------------------------------------- converter patches
def converter_patches(chkhsh):
    return [
        ("a",
         "        from transformers import AutoTokenizer\n"
         "        tokenizer = AutoTokenizer.from_pretrained(self.dir_model)\n"
         "        vocab_size = self.hparams.get(\"vocab_size\", len(tokenizer.vocab))",
         "        from transformers import PreTrainedTokenizerFast as AutoTokenizer  # LOCAL PATCH a\n"
         "        tokenizer = AutoTokenizer.from_pretrained(self.dir_model)\n"
         "        vocab_size = self.hparams.get(\"vocab_size\", len(tokenizer.vocab))"),
        ("b",
         "            raise ValueError(f'Error: Missing {tokenizer_path}')",
         "            return self._set_vocab_gpt2()  # LOCAL PATCH b (was: raise ValueError)"),
        ("c1",
         "    model_arch = gguf.MODEL_ARCH.GEMMA\n\n    def set_vocab(self):\n        self._set_vocab_sentencepiece()\n",
         "    model_arch = gguf.MODEL_ARCH.GEMMA\n\n    def set_vocab(self):\n"
         "        if not (self.dir_model / \"tokenizer.model\").is_file():  # LOCAL PATCH c: BPE tokenizer.json, no CodeGemma ids\n"
         "            self._set_vocab_gpt2()\n"
         "            self.gguf_writer.add_add_space_prefix(False)\n"
         "            return\n"
         "        self._set_vocab_sentencepiece()\n"),
        ("c2",
         "    model_arch = gguf.MODEL_ARCH.GEMMA2\n\n    def set_vocab(self):\n        self._set_vocab_sentencepiece()\n",
         "    model_arch = gguf.MODEL_ARCH.GEMMA2\n\n    def set_vocab(self):\n"
         "        if (self.dir_model / \"tokenizer.model\").is_file(): self._set_vocab_sentencepiece()  # LOCAL PATCH c\n"
         "        else: self._set_vocab_gpt2()  # LOCAL PATCH c\n"),
        ("d",
         "        rope_scaling = self.find_hparam(['rope_scaling'], True)\n        if rope_scaling is None:\n",
         "        rope_scaling = self.find_hparam(['rope_scaling'], True) or self.rope_parameters or None  # LOCAL PATCH d\n"
         "        if rope_scaling is None:\n"),
        ("e",
         '        if res is None:\n            logger.warning("\\n")\n',
         f'        if chkhsh == "{chkhsh}":  # LOCAL PATCH e: dpo-rs tiny fixture tokenizer (GPT-2 ByteLevel regex)\n'
         f'            res = "{PRE_NAME}"\n'
         '        if res is None:\n            logger.warning("\\n")\n'),
    ]


def chktxt_from_converter(src):
    m = re.search(r"^        chktxt = (.*)$", src, re.M)
    assert m, "chktxt not found in the converter"
    return ast.literal_eval(m.group(1))


def write_converter(llamacpp, tok):
    src = open(os.path.join(llamacpp, "convert_hf_to_gguf.py.orig"), encoding="utf-8").read()
    chktxt = chktxt_from_converter(src)
    chkhsh = hashlib.sha256(str(tok.encode(chktxt).ids).encode()).hexdigest()
    for tag, old, new in converter_patches(chkhsh):
        n = src.count(old)
        assert n == 1, f"converter patch {tag}: anchor found {n} times"
        src = src.replace(old, new)
    path = os.path.join(llamacpp, "convert_hf_to_gguf_tiny.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(src)
    return path, chkhsh


# ---------------------------------------------------------------- tokenizer
def pair_texts(pairs):
    out = []
    for r in pairs:
        out += [r["prompt"], r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]]
    return out


def train_tokenizer(pairs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(pair_texts(pairs), trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer(tok, d):
    tok.save(os.path.join(d, "tokenizer.json"))
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS,
          "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
          "model_max_length": 2048}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")


def tokenizer_from_gguf_metadata(md):
    """The tokenizer dpo-rs's Tokenizer::from_gguf builds (crates/dpo/src/tokenizer.rs), in Python."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    t = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(tokens)}, merges=merges))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, ty in zip(tokens, types) if ty == 3])
    return t


def ids_like_trl(encode, rec, eos):
    """golden.trl_tokenize's non-conversational branch with a plain `encode(text) -> ids`."""
    from golden import common_prefix_length
    c, r = rec["chosen"], rec["rejected"]
    c = c if c.endswith(eos) else c + eos
    r = r if r.endswith(eos) else r + eos
    p, pc, pr = encode(rec["prompt"]), encode(rec["prompt"] + c), encode(rec["prompt"] + r)
    n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
    return p[:n], pc[n:], pr[n:]


# ---------------------------------------------------------------- GGUF reading
def read_gguf(path):
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType
    r = GGUFReader(path)
    md = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        if f.types and f.types[0] == GGUFValueType.ARRAY and f.types[-1] != GGUFValueType.STRING:
            v = list(v)
        md[k] = v
    tensors = {}
    for t in r.tensors:
        ne = [int(x) for x in t.shape]
        assert t.tensor_type.name == "F32", (t.name, t.tensor_type.name)
        tensors[t.name] = np.array(t.data, dtype=np.float32).reshape(ne[::-1])
    return md, tensors


def permute(w, n_head):  # convert_hf_to_gguf.LlamaModel.permute, in numpy
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_tensors(cfg, sd):
    """HF state dict -> {gguf name: array} after the converter's transforms."""
    mt = cfg["model_type"]
    gemma = mt.startswith("gemma")
    llama = mt in ("llama", "mistral")
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    L = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "mlp.gate_up_proj": "ffn_up", "input_layernorm": "attn_norm",
         "post_attention_layernorm": "post_attention_norm" if mt in ("gemma2", "gemma3_text") else "ffn_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
    out = {}
    for k, v in sd.items():
        v = v.detach().numpy().astype(np.float32)
        if k == "lm_head.weight":
            if cfg.get("tie_word_embeddings"):
                continue
            n = "output.weight"
        elif k == "model.embed_tokens.weight":
            n = "token_embd.weight"
        elif k == "model.norm.weight":
            n = "output_norm.weight"
        else:
            p = k.split(".")  # model.layers.I.<mod...>.weight|bias
            bid, mod, suf = p[2], ".".join(p[3:-1]), p[-1]
            n = f"blk.{bid}.{L[mod]}.{suf}"
            if llama and mod == "self_attn.q_proj":
                v = permute(v, nh)
            if llama and mod == "self_attn.k_proj":
                v = permute(v, nkv)
        if gemma and k.endswith("norm.weight"):
            v = v + np.float32(1)
        out[n] = v
    return out


def close(a, b):
    if isinstance(b, str):
        return a == b
    if isinstance(b, float):
        return isinstance(a, (int, float)) and abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return a == b


def check_gguf(case, path, model, cfg, tok_hf, problems):
    md, tensors = read_gguf(path)
    arch = GGUF_ARCH[case]
    ok = True

    def bad(msg):
        nonlocal ok
        ok = False
        problems.append(f"[{case}] {msg}")
        print(f"  [{case}] GGUF FAIL: {msg}")

    if md.get("general.architecture") != arch:
        bad(f"architecture {md.get('general.architecture')!r}, expected {arch!r}")
    hp = {"block_count": cfg["num_hidden_layers"], "embedding_length": cfg["hidden_size"],
          "feed_forward_length": cfg["intermediate_size"], "attention.head_count": cfg["num_attention_heads"],
          "attention.head_count_kv": cfg["num_key_value_heads"]}
    for k, v in {**hp, **FEATURE_KEYS[case]}.items():
        full = f"{arch}.{k}"
        if v == "ABSENT":
            if full in md:
                bad(f"{full} present ({md[full]!r}), expected absent")
        elif full not in md:
            bad(f"{full} missing")
        elif not close(md[full], v):
            bad(f"{full} = {md[full]!r}, expected {v!r}")
    # head dim: key_length where written, else hidden / heads
    kl = md.get(f"{arch}.attention.key_length", cfg["hidden_size"] // cfg["num_attention_heads"])
    if kl != HEAD_DIM:
        bad(f"head dim {kl}")
    # tensors
    exp = expected_tensors(cfg, model.state_dict())
    if case == "llama31":
        rot = model.model.rotary_emb
        default_inv = 1.0 / (cfg["rope_parameters"]["rope_theta"] ** (torch.arange(0, HEAD_DIM, 2).double() / HEAD_DIM))
        factors = (default_inv / rot.inv_freq.double()).float().numpy()
        exp["rope_freqs.weight"] = factors
    if case == "phi3":
        exp["rope_factors_long.weight"] = np.array(PHI3_LONG, np.float32)
        exp["rope_factors_short.weight"] = np.array(PHI3_SHORT, np.float32)
        hf_attn = float(model.model.rotary_emb.attention_scaling)
        if abs(hf_attn - md.get("phi3.rope.scaling.attn_factor", 0)) > 1e-6:
            bad(f"attn_factor {md.get('phi3.rope.scaling.attn_factor')} vs transformers {hf_attn}")
    missing, unexpected = sorted(set(exp) - set(tensors)), sorted(set(tensors) - set(exp))
    if missing or unexpected:
        bad(f"tensors missing {missing} unexpected {unexpected}")
    worst = 0.0
    for n in set(exp) & set(tensors):
        if exp[n].shape != tensors[n].shape:
            bad(f"{n} shape {tensors[n].shape} vs {exp[n].shape}")
            continue
        worst = max(worst, float(np.max(np.abs(exp[n] - tensors[n]))))
    if worst > 1e-6:
        bad(f"tensor values differ by {worst}")
    feat_tensors = []
    for pat in FEATURE_TENSORS[case]:
        names = [pat.format(b=b) for b in range(cfg["num_hidden_layers"])] if "{b}" in pat else [pat]
        for n in names:
            if n not in tensors:
                bad(f"feature tensor {n} missing")
        t0 = tensors.get(names[0])
        feat_tensors.append({"name": names[0], "in_every_block": "{b}" in pat,
                             "ne": None if t0 is None else list(t0.shape[::-1]),
                             "values": t0.tolist() if t0 is not None and t0.size <= 8 else None})
    # tokenizer
    vocab = tok_hf.get_vocab()
    by_id = [None] * len(vocab)
    for s, i in vocab.items():
        by_id[i] = s
    tj = json.loads(tok_hf.backend_tokenizer.to_str())
    merges_hf = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    tk = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": PRE_NAME,
        "tokenizer.ggml.eos_token_id": vocab[EOS], "tokenizer.ggml.padding_token_id": vocab[EOS],
        "tokenizer.ggml.add_bos_token": False,
    }
    for k, v in tk.items():
        if md.get(k) != v:
            bad(f"{k} = {md.get(k)!r}, expected {v!r}")
    if md.get("tokenizer.ggml.tokens") != by_id:
        bad("tokenizer.ggml.tokens differ from the HF vocab")
    if md.get("tokenizer.ggml.merges") != merges_hf:
        bad("tokenizer.ggml.merges differ from tokenizer.json's")
    types = md.get("tokenizer.ggml.token_type")
    want_types = [3 if i < len(SPECIALS) else 1 for i in range(len(by_id))]
    if types != want_types:
        bad(f"token types: control at {[i for i, t in enumerate(types) if t != 1]}")
    for k in md:
        if k.startswith("tokenizer.ggml.") and k.endswith("_token_id") and k not in (
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"):
            bad(f"unexpected {k} = {md[k]}")
    tok_keys = {k: (v if not isinstance(v, list) else f"<{len(v)} entries>") for k, v in md.items()
                if k.startswith("tokenizer.")}
    arch_keys = {k: v for k, v in md.items() if not k.startswith("tokenizer.")}
    return ok, md, arch_keys, tok_keys, feat_tensors, worst


# ---------------------------------------------------------------- main
def versions(chkhsh):
    import tokenizers
    import transformers
    import trl
    import gguf
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "trl": trl.__version__, "numpy": np.__version__,
            "gguf_py": getattr(gguf, "__version__", "0.18.0 (pyproject)"),
            "llama_cpp_converter": "Mesh-LLM/llama.cpp 092b66d019b8ef8e833a38eca117f31738d31496 "
                                   "(= ggml-org 21a493304229be58de148fde3b633017db0a0524) + LOCAL PATCHes a-e",
            "pre_tokenizer_check_hash": chkhsh}


def build_case(case, args, tok_raw, pairs, conv_path, problems):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    from golden import trl_tokenize
    mt, ov, extra_cfg = CASES[case]
    eos_id = tok_raw.token_to_id(EOS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = AutoConfig.for_model(mt, **tiny_base(VOCAB_SIZE, eos_id), **copy.deepcopy(ov))
        model = fg.model_from_config(cfg)
    fg.fill_model(model, mt)
    d = os.path.join(args.work, case)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    model.save_pretrained(d)
    save_tokenizer(tok_raw, d)
    cfg_path = os.path.join(d, "config.json")
    cfg_dict = json.load(open(cfg_path))
    if extra_cfg:
        cfg_dict.update(extra_cfg)
        with open(cfg_path, "w") as f:
            json.dump(cfg_dict, f, indent=2)
            f.write("\n")
    # golden ids: TRL's tokenization with this tokenizer (tokenizer.json as written). Not AutoTokenizer:
    # transformers 5 maps a qwen2 config.json to Qwen2Tokenizer, which replaces the pre-tokenizer by
    # Qwen2's regex (digits split one by one) whatever tokenizer_config.json's tokenizer_class says.
    tok = PreTrainedTokenizerFast.from_pretrained(d)
    auto = AutoTokenizer.from_pretrained(d)
    auto_note = type(auto).__name__
    if any(auto(text=x)["input_ids"] != tok(text=x)["input_ids"] for x in pair_texts(pairs)):
        auto_note += " (ids DIFFER from tokenizer.json's on pairs8)"
    print(f"  [{case}] AutoTokenizer on the HF directory: {auto_note}")
    recs = []
    for i, p in enumerate(pairs):
        t = trl_tokenize(tok, p, False)
        recs.append({"index": i, "prompt_ids": t["prompt_ids"], "chosen_ids": t["chosen_ids"],
                     "rejected_ids": t["rejected_ids"]})
        raw = ids_like_trl(lambda s: tok_raw.encode(s).ids, p, EOS)
        if raw != (t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]):
            problems.append(f"[{case}] record {i}: AutoTokenizer ids differ from the raw tokenizers ids")
    # logps from the saved directory (what the converter reads)
    m_dir = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    lps = fg.all_logps(m_dir, recs)
    lps_mem = fg.all_logps(model, recs)
    if lps != lps_mem:
        problems.append(f"[{case}] logps of the saved directory differ from the in-memory model")
    # convert
    out = os.path.join(args.out, f"{case}.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.join(args.llamacpp, "gguf-py"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log = os.path.join(args.work, f"{case}.convert.log")
    with open(log, "w") as lf:
        rc = subprocess.run([sys.executable, conv_path, d, "--outtype", "f32", "--outfile", out],
                            cwd=args.llamacpp, env=env, stdout=lf, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        problems.append(f"[{case}] converter failed (rc {rc}), see {log}")
        print(open(log).read()[-3000:])
        return None
    size = os.path.getsize(out)
    if size >= MAX_BYTES:
        problems.append(f"[{case}] {out} is {size} bytes (limit {MAX_BYTES})")
    ok, md, arch_keys, tok_keys, feat_tensors, worst = check_gguf(case, out, m_dir, cfg_dict, tok, problems)
    # the tokenizer dpo-rs rebuilds from the GGUF metadata gives the golden ids
    t_g = tokenizer_from_gguf_metadata(md)
    for r, p in zip(recs, pairs):
        got = ids_like_trl(lambda s: t_g.encode(s).ids, p, md["tokenizer.ggml.tokens"][md["tokenizer.ggml.eos_token_id"]])
        if got != (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]):
            problems.append(f"[{case}] record {r['index']}: ids from the GGUF-metadata tokenizer differ")
    # feature switches
    saved = (fg.FEATURE_OFF, fg.EXPECT_NO_CHANGE)
    fg.FEATURE_OFF, fg.EXPECT_NO_CHANGE = FEATURE_OFF, EXPECT_NO_CHANGE
    try:
        feats, feats_ok = fg.feature_checks(case, cfg_dict, m_dir, recs, lps)
    finally:
        fg.FEATURE_OFF, fg.EXPECT_NO_CHANGE = saved
    if not feats_ok:
        problems.append(f"[{case}] a feature switch did not behave as expected")
    for r, (pc, pr) in zip(recs, lps):
        r["chosen_logp"], r["rejected_logp"] = pc, pr
    print(f"[{case}] {type(m_dir).__name__} -> {case}.gguf {size} B, gguf arch {md['general.architecture']}, "
          f"max |tensor diff| {worst:.2g}, logps {' '.join(f'{a:.4f}/{b:.4f}' for a, b in lps)}")
    sha = hashlib.sha256(open(out, "rb").read()).hexdigest()
    return {
        "gguf": f"{case}.gguf",
        "bytes": size,
        "sha256": sha,
        "model_type": mt,
        "hf_auto_tokenizer": auto_note,
        "architecture": md["general.architecture"],
        "hf_config": cfg_dict,
        "gguf_metadata": arch_keys,
        "feature_keys": {f"{GGUF_ARCH[case]}.{k}": v for k, v in FEATURE_KEYS[case].items()},
        "feature_tensors": feat_tensors,
        "feature_off": feats,
        "records": recs,
    }, tok_keys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated subset of: " + ",".join(CASES))
    ap.add_argument("--work", default="/tmp/fam/tiny")
    ap.add_argument("--out", default=os.path.join(ROOT, "crates/dpo-cli/tests/fixtures/families/gguf"))
    ap.add_argument("--llamacpp", default="/tmp/llamacpp")
    ap.add_argument("--oracle-dir", default=os.path.join(ROOT, "..", "shared", "tools", "oracle"))
    ap.add_argument("--pairs", help="default: ORACLE_DIR/golden/pairs8.jsonl")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.oracle_dir))
    pairs_path = args.pairs or os.path.join(args.oracle_dir, "golden", "pairs8.jsonl")
    pairs = [json.loads(l) for l in open(pairs_path, encoding="utf-8") if l.strip()]
    assert len(pairs) == 8, len(pairs)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    fg.self_check_hash()

    tok_raw = train_tokenizer(pairs)
    again = train_tokenizer(pairs)
    assert again.to_str() == tok_raw.to_str(), "tokenizer training is not deterministic"
    conv_path, chkhsh = write_converter(args.llamacpp, tok_raw)
    print(f"tokenizer: {tok_raw.get_vocab_size()} ids, check hash {chkhsh} -> pre {PRE_NAME!r}; converter {conv_path}")

    problems = []
    gpath = os.path.join(args.out, "goldens.json")
    cases = args.cases.split(",") if args.cases else list(CASES)
    doc = {"cases": {}}
    if args.cases and os.path.exists(gpath):
        doc = json.load(open(gpath))
    tok_keys_all = None
    for case in cases:
        res = build_case(case, args, tok_raw, pairs, conv_path, problems)
        if res is None:
            continue
        doc["cases"][case], tok_keys = res
        tok_keys_all = tok_keys_all or tok_keys
    doc["versions"] = versions(chkhsh)
    doc["tokenizer"] = {
        "eos": EOS, "eos_id": tok_raw.token_to_id(EOS), "pad": EOS, "pad_id": tok_raw.token_to_id(EOS),
        "bos": None, "add_bos_token": False, "vocab_size": tok_raw.get_vocab_size(),
        "specials": {s: i for i, s in enumerate(SPECIALS)}, "pre": PRE_NAME,
        "gguf_metadata": tok_keys_all or doc.get("tokenizer", {}).get("gguf_metadata"),
    }
    doc["notes"] = ("Made by scripts/oracle/gguf_family_fixtures.py. records: TRL 1.16 non-conversational ids "
                    "(eos appended to chosen/rejected unless present; prompt = common prefix), logps = sum of "
                    "f32 log-softmax of the completion tokens, one unpadded sequence per forward, f64 sum, "
                    "transformers float32 eager on the HF model the GGUF was converted from. Tokenizer: tokenizer.json "
                    "via PreTrainedTokenizerFast (hf_auto_tokenizer says what AutoTokenizer would load). feature_keys: "
                    "metadata checked in the GGUF (\"ABSENT\" = checked to be missing); feature_tensors: tensors "
                    "carrying the feature (ne = GGUF dims, values when <= 8); feature_off: max |logp change| in "
                    "transformers when the feature is switched off.")
    doc = {k: doc[k] for k in ("versions", "tokenizer", "notes", "cases")}
    doc["cases"] = {c: doc["cases"][c] for c in CASES if c in doc["cases"]}
    with open(gpath, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {gpath} ({os.path.getsize(gpath)} B)")
    if problems:
        print("FAIL:")
        for p in problems:
            print("  " + p)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
