#!/usr/bin/env python3
"""20 updates of bitsandbytes' 8-bit AdamW in float32: its pure-PyTorch reference update
(`bitsandbytes.backends.triton.kernels_optim.optimizer_update_8bit_blockwise_pytorch`: block-wise 8-bit
moments, blocks of 256, the dynamic maps, each value quantized to the nearest code as the CUDA kernel
does) driven as `AdamW8bit` drives it (tensors under 4096 elements keep 32-bit moments: torch's AdamW
arithmetic), and, for the record, `bnb.optim.AdamW8bit` itself on its CPU backend (whose quantizer looks
values up in a 65536-entry table, so that normalized values under 1.5e-5 get a nonzero code), on fixed
gradients, with transformers' defaults (betas 0.9, 0.999, eps 1e-8; weight decay on 2-D tensors only).
Needs `pip install bitsandbytes` (0.50.2 here, CPU backend) in the oracle's venv.

  python scripts/oracle/adamw_8bit_reference.py > crates/dpo-train/tests/fixtures/adamw_8bit_reference.json

Parameters: `w` [64, 64] (4096 elements: 16 blocks, 8-bit) with w_i = 0.5 cos(0.3 i), `b` [3] (32-bit) with
b_i = 0.1 i; gradient of element i of parameter k at step t: sin(0.37 i + 0.91 t + k) (1 + 0.05 (i mod 97)),
times the clipping coefficient 0.5. Learning rate 1e-3, weight decay 0.1.
"""
import json, math
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch._dynamo
from bitsandbytes.backends.triton import kernels_optim

LR, WD, SCALE, STEPS = 1e-3, 0.1, 0.5, 20


def params():
    w = torch.tensor([0.5 * math.cos(0.3 * i) for i in range(64 * 64)], dtype=torch.float32).reshape(64, 64)
    b = torch.tensor([0.1 * i for i in range(3)], dtype=torch.float32)
    return [torch.nn.Parameter(w), torch.nn.Parameter(b)]


def grad(k, shape, t):
    n = math.prod(shape)
    g = [math.sin(0.37 * i + 0.91 * t + k) * (1 + 0.05 * (i % 97)) for i in range(n)]
    return torch.tensor(g, dtype=torch.float64).reshape(shape).mul(SCALE).to(torch.float32)


def run(cls):
    ps = params()
    opt = cls([{"params": [ps[0]], "weight_decay": WD}, {"params": [ps[1]], "weight_decay": 0.0}], lr=LR,
              betas=(0.9, 0.999), eps=1e-8)
    for t in range(1, STEPS + 1):
        for k, p in enumerate(ps):
            p.grad = grad(k, p.shape, t)
        opt.step()
    f32 = lambda t: [float(f"{x:.9g}") for x in t.detach().flatten().tolist()]  # float32 round-trips in 9 digits
    return {"w": f32(ps[0]), "b": f32(ps[1])}


def run_reference():
    """The 8-bit tensor through bnb's pure-PyTorch update; the 32-bit one through torch's AdamW."""
    ps = params()
    small = torch.optim.AdamW([ps[1]], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    w = ps[0].data
    q1, q2 = F.create_dynamic_map(signed=True), F.create_dynamic_map(signed=False)
    s1, s2 = torch.zeros_like(w, dtype=torch.uint8), torch.zeros_like(w, dtype=torch.uint8)
    a1, a2 = torch.zeros(w.numel() // 256), torch.zeros(w.numel() // 256)
    update = torch._dynamo.disable(kernels_optim.optimizer_update_8bit_blockwise_pytorch)
    kernels_optim._quantize_blockwise_pytorch = torch._dynamo.disable(kernels_optim._quantize_blockwise_pytorch)
    for t in range(1, STEPS + 1):
        ps[1].grad = grad(1, ps[1].shape, t)
        small.step()
        update(w, grad(0, w.shape, t), s1, s2, 0.9, 0.999, 0.0, 0.0, 1e-8, t, LR, q1, q2, a1, a2, WD, 1.0, False,
               optimizer_name="adam")
    f32 = lambda t: [float(f"{x:.9g}") for x in t.detach().flatten().tolist()]
    return {"w": f32(ps[0]), "b": f32(ps[1])}


ref, cpu = run_reference(), run(bnb.optim.AdamW8bit)
print(json.dumps({"lr": LR, "weight_decay": WD, "grad_scale": SCALE, "steps": STEPS, "bitsandbytes": bnb.__version__,
                  "adamw_8bit": ref,
                  "cpu_backend_max_abs_diff_w": max(abs(x - y) for x, y in zip(ref["w"], cpu["w"]))}))
