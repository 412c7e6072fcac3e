#!/usr/bin/env python3
"""Tiny TRL 1.16 DPOTrainer run with report_to=["tensorboard"], to see what TRL/transformers writes.

Usage (oracle venv):
  OMP_NUM_THREADS=1 python trl_tensorboard_run.py --tokenizer /tmp/oracle/smollm2-135m-instruct-f32 \
      --data /work/shared/tools/oracle/golden/pairs8.jsonl --out /tmp/trl_tb [--real-model]

By default the model is a tiny randomly initialised Llama (2 layers, hidden 64) with SmolLM2's
tokenizer/vocab, to keep CPU use low; --real-model loads the f32 SmolLM2 from --tokenizer instead.
Train: first 6 pairs, batch 2, max_steps 3, logging_steps 1, eval every 2 steps on the last 2 pairs.
"""
import argparse, copy, json, os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch

torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--real-model", action="store_true")
    a = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    recs = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
    recs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in recs]
    train, evals = Dataset.from_list(recs[:6]), Dataset.from_list(recs[6:8])
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    torch.manual_seed(0)
    if a.real_model:
        model = AutoModelForCausalLM.from_pretrained(a.tokenizer, dtype=torch.float32)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        model = LlamaForCausalLM(cfg)

    args = DPOConfig(
        output_dir=a.out, use_cpu=True, report_to=["tensorboard"], seed=42, data_seed=42,
        learning_rate=1e-4, lr_scheduler_type="linear", per_device_train_batch_size=2,
        per_device_eval_batch_size=2, max_steps=3, logging_steps=1, eval_strategy="steps", eval_steps=2,
        save_strategy="no", max_length=256, dataloader_num_workers=0, disable_tqdm=True,
    )
    logs = []

    class CB(TrainerCallback):
        def on_log(self, args_, st, control, logs=None, **kw):
            logs_list.append({"global_step": st.global_step, **(logs or {})})

    logs_list = logs
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=train, eval_dataset=evals, processing_class=tok)
    trainer.add_callback(CB())
    trainer.train()
    with open(os.path.join(a.out, "on_log.json"), "w") as f:
        json.dump(logs, f, indent=1)
    print(json.dumps(logs, indent=1))


if __name__ == "__main__":
    main()
