#!/usr/bin/env python3
"""Golden renders of real model families' chat templates, as transformers 5.23's
`apply_chat_template(tokenize=False)` produces them, for the Rust chat-template tests
(crates/dpo-cli/tests/fixtures/families/chat_templates.json).

Templates: the verbatim `.jinja` files TRL ships in `trl/chat_templates/` (TRL keeps them byte-identical to
what the reference Hub repos ship; `scripts/check_chat_templates.py` in the TRL repo lists those repos). The
`_training` variants are left out. TRL ships no text-only Mistral template: the only Mistral-format one,
`llava_next.jinja` (llava-hf/llava-v1.6-mistral-7b-hf), reads `message['content'][0]['text']`, i.e. it
needs multimodal content-block lists, which dpo-rs' string-content messages can't express, so it is left out.

How a render is made -- exactly what `PreTrainedTokenizerBase.apply_chat_template` does in 5.23:
  template_kwargs = {**tokenizer.special_tokens_map}    # only the named special tokens that are not None
  render_jinja_template(conversations=[messages], tools=None, documents=None, chat_template=template,
                        return_assistant_tokens_mask=False, continue_final_message=False,
                        add_generation_prompt=flag, **template_kwargs)
so the template sees `messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the special
tokens the model has. A token the model lacks (e.g. Qwen's bos, Llama 3's pad) is NOT passed: it is
undefined in the template (renders as ""), not `None`. `special_tokens_map` also holds unk/sep/cls/mask
tokens; the script asserts none of the chosen templates mentions them, so passing bos/eos/pad only (what
the fixture records) renders the same. Every render is cross-checked against a real `TokenizersBackend`
tokenizer (a one-word vocabulary carrying the case's special tokens and template) and its
`apply_chat_template(tokenize=False)`; the script fails if they differ.

A template that raises (`raise_exception`, or any Jinja error) is recorded as {"error": str(exception),
"error_type": class name} instead of "text".

`strftime_now` (llama3_2's date): transformers' global calls `datetime.now().strftime(fmt)`; the script
pins `datetime.now()` to FIXED_NOW, and records, per case, "date" (what strftime_now returns for the
template's format) and "strftime_format" (both null when the template doesn't call strftime_now), so a
Rust test can pin its clock the same way.

Conversations (each rendered with add_generation_prompt true and false): (a) user; (b) user + assistant;
(c) system + user + assistant; (d) user, assistant, user, assistant. Contents: prompts/chosen answers of
the first 3 records of the golden pairs8.jsonl (record 0's prompt has a newline inside, its answer a leading
space, record 1's prompt a trailing newline) and a fixed system prompt with leading/trailing whitespace.

Usage (the oracle's python):
  /tmp/oracle/venv/bin/python scripts/oracle/chat_template_goldens.py \
      --pairs /work/shared/tools/oracle/golden/pairs8.jsonl \
      --out crates/dpo-cli/tests/fixtures/families/chat_templates.json
"""
import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys

import jinja2
import tokenizers
import transformers
import trl
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils
from transformers.utils.chat_template_utils import render_jinja_template

FIXED_NOW = _dt.datetime(2025, 3, 7, 12, 0, 0)
SYSTEM_PROMPT = "  You are a concise assistant.\nAnswer in one sentence.  "

# Special tokens of each reference checkpoint (the repos TRL's scripts/check_chat_templates.py checks each
# template against), as its tokenizer_config.json / special_tokens_map.json set them. `other` = the named
# special tokens besides bos/eos/pad the real tokenizer has (passed in the cross-check, not read by these
# templates).
LLAMA3 = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None, other={})
QWEN = dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", other={})
GEMMA = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", other={"unk_token": "<unk>"})
PHI3 = dict(bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", other={"unk_token": "<unk>"})

CASES = [
    # name, template file (trl/chat_templates/<file>.jinja), tokens, tokens_source
    ("llama3_1", "llama3_1", LLAMA3,
     "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json: bos <|begin_of_text|>, eos <|eot_id|> (the "
     "Instruct checkpoints' eos), no pad_token (none set). Reference repo from TRL scripts/check_chat_templates.py."),
    ("llama3_2", "llama3_2", LLAMA3,
     "meta-llama/Llama-3.2-1B-Instruct tokenizer_config.json: bos <|begin_of_text|>, eos <|eot_id|>, no "
     "pad_token. Reference repo from TRL scripts/check_chat_templates.py."),
    ("qwen2_5", "qwen2_5", QWEN,
     "Qwen/Qwen2.5-32B-Instruct (all Qwen2.5 Instruct) tokenizer_config.json: bos_token null, eos <|im_end|>, "
     "pad <|endoftext|>, unk null. Reference repo from TRL scripts/check_chat_templates.py."),
    ("qwen3", "qwen3", QWEN,
     "Qwen/Qwen3-8B tokenizer_config.json: bos_token null, eos <|im_end|>, pad <|endoftext|>, unk null "
     "(the Qwen3-4B tokenizer_config is quoted the same in public model-card copies). Reference repo from TRL "
     "scripts/check_chat_templates.py."),
    ("gemma", "gemma", GEMMA,
     "google/gemma-7b-it and google/gemma-2-2b-it (identical templates, per TRL README) special_tokens_map: "
     "bos <bos>, eos <eos>, pad <pad>, unk <unk> (<end_of_turn> is only a generation_config stop id)."),
    ("gemma3", "gemma3", GEMMA,
     "google/gemma-3-4b-it special_tokens_map: bos <bos>, eos <eos>, pad <pad>, unk <unk> (eos is <eos>, not "
     "<end_of_turn>: users override it to <end_of_turn> by hand). Reference repo from TRL scripts/check_chat_templates.py."),
    ("phi3", "phi3", PHI3,
     "microsoft/Phi-3-mini-4k-instruct tokenizer_config.json: bos <s>, eos <|endoftext|>, pad <|endoftext|>, "
     "unk <unk> (from memory of the repo and the task brief; not verifiable offline -- early Phi-3 revisions "
     "had eos <|end|>). Matters: the template appends eos_token when add_generation_prompt is false."),
    ("phi3_5", "phi3_5", PHI3,
     "microsoft/Phi-3.5-mini-instruct tokenizer_config.json: bos <s>, eos <|endoftext|>, pad <|endoftext|>, "
     "unk <unk> (from memory; not verifiable offline). The template appends eos_token when add_generation_prompt is false."),
]

OTHER_TOKEN_NAMES = ("unk_token", "sep_token", "cls_token", "mask_token")


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW if tz is None else FIXED_NOW.replace(tzinfo=tz)


def conversations(pairs):
    r0, r1, r2 = pairs[:3]
    u = lambda c: {"role": "user", "content": c}  # noqa: E731
    a = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    return [
        ("a_user", [u(r0["prompt"])]),
        ("b_user_assistant", [u(r0["prompt"]), a(r0["chosen"])]),
        ("c_system_user_assistant", [{"role": "system", "content": SYSTEM_PROMPT}, u(r1["prompt"]), a(r1["chosen"])]),
        ("d_multi_turn", [u(r1["prompt"]), a(r1["chosen"]), u(r2["prompt"]), a(r2["chosen"])]),
    ]


def special_kwargs(tokens):
    # apply_chat_template: {**self.special_tokens_map}, which drops the None-valued tokens
    kw = {k: tokens[k] for k in ("bos_token", "eos_token", "pad_token") if tokens[k] is not None}
    kw.update(tokens["other"])
    return kw


def make_tokenizer(tokens, template):
    vocab = {"<unk>": 0}
    for v in special_kwargs(tokens).values():
        vocab.setdefault(v, len(vocab))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        bos_token=tokens["bos_token"], eos_token=tokens["eos_token"], pad_token=tokens["pad_token"],
        unk_token=tokens["other"].get("unk_token"),
    )
    assert tok.special_tokens_map == special_kwargs(tokens), (tok.special_tokens_map, special_kwargs(tokens))
    tok.chat_template = template
    return tok


def render(template, messages, agp, tokens):
    """-> ("text", str) or ("error", (type, message)); rendered the way apply_chat_template renders."""
    try:
        out, _ = render_jinja_template(
            conversations=[messages], tools=None, documents=None, chat_template=template,
            return_assistant_tokens_mask=False, continue_final_message=False, add_generation_prompt=agp,
            **special_kwargs(tokens),
        )
        return "text", out[0]
    except Exception as e:  # noqa: BLE001 -- any template failure is a golden
        return "error", (type(e).__name__, str(e))


def render_via_tokenizer(tok, messages, agp):
    try:
        return "text", tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
    except Exception as e:  # noqa: BLE001
        return "error", (type(e).__name__, str(e))


def features(template):
    checks = {
        "namespace": r"\bnamespace\(", "tojson": r"\|\s*tojson", "raise_exception": r"raise_exception\(",
        "strftime_now": r"strftime_now", "is defined": r"is\s+(not\s+)?defined|not\s+\w+\s+is\s+defined",
        "loop controls (break/continue)": r"{%-?\s*(break|continue)\b",
        "python str methods": r"\.(strip|lstrip|rstrip|startswith|endswith|split|upper|lower|title)\(",
        "trim filter": r"\|\s*trim", "slicing": r"\[\s*-?\d*\s*:\s*-?\d*\s*(:\s*-?\d+\s*)?\]",
        "reject/select/selectattr/items/join filters": r"\|\s*(reject|select|selectattr|items|join)\b",
        "is string/mapping/iterable tests": r"is\s+(string|mapping|iterable)",
        "set on namespace attr": r"set\s+\w+\.\w+\s*=", "inline if-expression": r"\bif\b[^%]*\belse\b[^%]*\}\}",
    }
    return sorted(k for k, pat in checks.items() if re.search(pat, template))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="/work/shared/tools/oracle/golden/pairs8.jsonl")
    ap.add_argument("--out", default="crates/dpo-cli/tests/fixtures/families/chat_templates.json")
    args = ap.parse_args()

    with open(args.pairs, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    convs = conversations(pairs)
    tdir = os.path.join(os.path.dirname(trl.__file__), "chat_templates")

    chat_template_utils.datetime = _FixedDatetime  # what transformers' strftime_now calls .now() on

    cases, failures = [], []
    for name, fname, tokens, source in CASES:
        path = os.path.join(tdir, fname + ".jinja")
        with open(path, encoding="utf-8", newline="") as f:  # verbatim: no newline translation
            template = f.read()
        for other in OTHER_TOKEN_NAMES:
            assert other not in template, f"{name}: template reads {other}, which the fixture does not carry"
        fmts = sorted(set(re.findall(r"""strftime_now\(\s*["']([^"']*)["']\s*\)""", template)))
        assert len(fmts) <= 1, fmts
        fmt = fmts[0] if fmts else None
        tok = make_tokenizer(tokens, template)
        renders, n_err = [], 0
        for cname, messages in convs:
            for agp in (True, False):
                kind, val = render(template, messages, agp, tokens)
                kind2, val2 = render_via_tokenizer(tok, messages, agp)
                if (kind, val) != (kind2, val2):
                    failures.append(f"{name}/{cname}/agp={agp}: render_jinja_template {kind}:{val!r} != "
                                    f"apply_chat_template {kind2}:{val2!r}")
                r = {"conversation": cname, "messages": messages, "add_generation_prompt": agp}
                if kind == "text":
                    r["text"] = val
                else:
                    r["error"], r["error_type"] = val[1], val[0]
                    n_err += 1
                renders.append(r)
        cases.append({
            "name": name,
            "template_file": f"trl/chat_templates/{fname}.jinja",
            "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
            "template": template,
            "bos_token": tokens["bos_token"], "eos_token": tokens["eos_token"], "pad_token": tokens["pad_token"],
            "tokens_source": source,
            "date": FIXED_NOW.strftime(fmt) if fmt else None,
            "strftime_format": fmt,
            "template_features": features(template),
            "renders": renders,
        })
        print(f"{name:10s} renders={len(renders) - n_err} errors={n_err} features={features(template)}")

    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit("render_jinja_template and apply_chat_template disagree")

    out = {
        "versions": {
            "transformers": transformers.__version__, "trl": trl.__version__, "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version(),
        },
        "render": ("transformers.utils.chat_template_utils.render_jinja_template(conversations=[messages], "
                   "tools=None, documents=None, chat_template=template, add_generation_prompt=flag, "
                   "**special tokens that are not null) == tokenizer.apply_chat_template(messages, tokenize=False, "
                   "add_generation_prompt=flag); a null token is not passed (undefined in the template)"),
        "fixed_now": FIXED_NOW.isoformat(),
        "system_prompt": SYSTEM_PROMPT,
        "pairs_source": os.path.basename(args.pairs) + " records 0-2 (prompt, chosen)",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
