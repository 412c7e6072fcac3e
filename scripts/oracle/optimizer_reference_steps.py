#!/usr/bin/env python3
"""20 updates of each optimizer `--optim` offers beside AdamW, by the reference implementations, on fixed
gradients, in float64: torch.optim.SGD, transformers' Adafactor with the Trainer's `optim="adafactor"` settings
(scale_parameter=False, relative_step=False), and Lion as bitsandbytes' 32-bit Lion (and lucidrains'
lion-pytorch, the paper's Algorithm 1) computes it, written out in torch because bitsandbytes is CUDA-only.
Weight decay as transformers' Trainer groups it (2-D tensors only).

  python scripts/oracle/optimizer_reference_steps.py > crates/dpo-train/tests/fixtures/optimizer_reference_steps.json

Parameters: `w` [4, 3] with w_i = 0.5 cos(0.3 i), `b` [3] with b_i = 0.1 i; the gradient of element i of
parameter k (0: w, 1: b) at step t (1-based) is sin(0.37 i + 0.91 t + k) (1 + 0.05 i), times the clipping
coefficient 0.5 (dpo-rs's `grad_scale`). Learning rate 0.01, weight decay 0.1.
"""
import json, math
import torch
from transformers.optimization import Adafactor

LR, WD, SCALE, STEPS = 0.01, 0.1, 0.5, 20


def params():
    w = torch.tensor([0.5 * math.cos(0.3 * i) for i in range(12)], dtype=torch.float64).reshape(4, 3)
    b = torch.tensor([0.1 * i for i in range(3)], dtype=torch.float64)
    return [torch.nn.Parameter(w), torch.nn.Parameter(b)]


def grad(k, shape, t):
    n = math.prod(shape)
    return torch.tensor([math.sin(0.37 * i + 0.91 * t + k) * (1 + 0.05 * i) for i in range(n)],
                        dtype=torch.float64).reshape(shape) * SCALE


def groups(ps):
    return [{"params": [ps[0]], "weight_decay": WD}, {"params": [ps[1]], "weight_decay": 0.0}]


def lion_step(ps, state, betas):
    b1, b2 = betas
    for p, wd in zip(ps, (WD, 0.0)):
        m = state.setdefault(id(p), torch.zeros_like(p))
        with torch.no_grad():
            p.mul_(1 - LR * wd)
            p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-LR)
            m.mul_(b2).add_(p.grad, alpha=1 - b2)


def run(name):
    ps = params()
    if name == "sgd":
        opt = torch.optim.SGD(groups(ps), lr=LR)
    elif name == "adafactor":
        opt = Adafactor(groups(ps), lr=LR, scale_parameter=False, relative_step=False)
    out = {}
    lion_state = {}
    for t in range(1, STEPS + 1):
        for k, p in enumerate(ps):
            p.grad = grad(k, p.shape, t)
        if name == "lion_32bit":  # TrainingArguments' adam_beta1/adam_beta2 defaults, as transformers passes them
            lion_step(ps, lion_state, (0.9, 0.999))
        else:
            opt.step()
        if t in (1, STEPS):
            out[f"step{t}"] = {"w": ps[0].detach().flatten().tolist(), "b": ps[1].detach().tolist()}
    return out


print(json.dumps({"lr": LR, "weight_decay": WD, "grad_scale": SCALE, "steps": STEPS, "torch": torch.__version__,
                  "optimizers": {n: run(n) for n in ("sgd", "adafactor", "lion_32bit")}}, indent=1))
