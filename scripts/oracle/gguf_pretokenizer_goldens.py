#!/usr/bin/env python3
"""Token ids of SmolLM2's vocabulary and merges under the split regexes transformers 5.23 gives a
GGUF file's `tokenizer.ggml.pre` (`integrations/gguf/gguf_tokenizer_mapping.py`,
`set_split_regex`: Llama 3's `llama-bpe` and Qwen2's `qwen2`), for crates/dpo/tests/gguf_tokenizer.rs.

  python scripts/oracle/gguf_pretokenizer_goldens.py /tmp/oracle/smollm2-135m-instruct-f32/tokenizer.json \
      ../shared/tools/oracle/golden/pairs8.jsonl crates/dpo/tests/fixtures/gguf_pretokenizers.json
"""
import json, sys
import transformers
from tokenizers import Tokenizer, Regex, pre_tokenizers
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

tok_path, pairs, out = sys.argv[1:4]
texts = []
for line in open(pairs):
    r = json.loads(line)
    texts += [r["prompt"], r["prompt"] + r["chosen"]]
texts += ["I'LL pay 1234567 for 3.14159 items, don't we'd?", "\n\n  x\t\ty   \n z", "café 北京 naïve 👍🏽 ", "a\r\nb  \r\n\r\n  c", "<|im_start|>user\nhi<|im_end|>"]
cases = {}
for pre in ["llama-bpe", "qwen2"]:
    t = Tokenizer.from_file(tok_path)
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    cases[pre] = [t.encode(x, add_special_tokens=False).ids for x in texts]
json.dump({"transformers": transformers.__version__, "texts": texts, "ids": cases}, open(out, "w"), ensure_ascii=False, indent=0)
print(out, {k: sum(map(len, v)) for k, v in cases.items()})
