#!/usr/bin/env python3
"""PyTorch's side of bench/src/bin/gpu_kernels.rs: the same ops on the same shapes and device.

    python3 bench/peers/torch_kernels.py [--reps 20] [--json out.json]

GEMM with torch.matmul (bf16; and f32 with TF32 off, so both sides do full f32 products);
F.layer_norm, torch.softmax, F.cross_entropy (reduction='none', the per-row terms our kernel
writes) and torch's fused AdamW step. Bytes and FLOPs counted as the Rust bench counts them.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F


def timed(reps, f):
    f()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev, rows = "cuda", []

    def add(op, t, rate, unit):
        rows.append({"op": op, "seconds": t, "rate": rate, "unit": unit})

    big = torch.empty(1 << 26, device=dev)
    t = timed(args.reps, lambda: big.clone())
    add("copy (device to device)", t, 2 * (4 << 26) / t / 1e9, "GB/s")
    n = 1 << 26
    y, big16 = big.clone(), big.to(torch.bfloat16)
    t = timed(args.reps, lambda: F.gelu(big, approximate="tanh"))
    add("gelu fwd f32", t, 2 * n * 4 / t / 1e9, "GB/s")
    t = timed(args.reps, lambda: F.gelu(big16, approximate="tanh"))
    add("gelu fwd bf16", t, 2 * n * 2 / t / 1e9, "GB/s")
    gelu_bwd = torch.ops.aten.gelu_backward
    t = timed(args.reps, lambda: gelu_bwd(y, big, approximate="tanh"))
    add("gelu bwd f32", t, 3 * n * 4 / t / 1e9, "GB/s")
    t = timed(args.reps, lambda: big + y)
    add("add f32", t, 3 * n * 4 / t / 1e9, "GB/s")
    del big, y, big16
    s = 4096
    for dtype, label in [(torch.bfloat16, "gemm bf16 4096^3"), (torch.float32, "gemm f32 4096^3")]:
        a = torch.randn(s, s, device=dev, dtype=dtype)
        b = torch.randn(s, s, device=dev, dtype=dtype)
        t = timed(args.reps, lambda: a @ b)
        add(label, t, 2 * s**3 / t / 1e12, "TFLOP/s")
    r, d = 16384, 768
    x = torch.randn(r, d, device=dev, dtype=torch.bfloat16)
    w = torch.ones(d, device=dev, dtype=torch.bfloat16)
    bias = torch.zeros(d, device=dev, dtype=torch.bfloat16)
    t = timed(args.reps, lambda: F.layer_norm(x, (d,), w, bias, 1e-5))
    add("layernorm fwd bf16 [16384, 768]", t, (2 * r * d * 2 + 8 * r) / t / 1e9, "GB/s")
    r, n = 16384, 1024
    x = torch.randn(r, n, device=dev)
    t = timed(args.reps, lambda: torch.softmax(x, dim=-1))
    add("softmax fwd f32 [16384, 1024]", t, 2 * r * n * 4 / t / 1e9, "GB/s")
    r, v = 8192, 50257
    logits = torch.randn(r, v, device=dev, dtype=torch.bfloat16)
    targets = torch.randint(0, v, (r,), device=dev)
    t = timed(args.reps, lambda: F.cross_entropy(logits, targets, reduction="none"))
    add("cross-entropy fwd bf16 [8192, 50257]", t, (r * v * 2 + 12 * r) / t / 1e9, "GB/s")
    n = 124_000_000
    p = torch.nn.Parameter(torch.randn(n, device=dev))
    p.grad = torch.randn(n, device=dev)
    opt = torch.optim.AdamW([p], lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    t = timed(args.reps, opt.step)
    add("adamw f32 124M", t, 7 * n * 4 / t / 1e9, "GB/s")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for row in rows:
        print(f"| {row['op']} | {row['seconds'] * 1e6:.1f} | {row['rate']:.1f} {row['unit']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
