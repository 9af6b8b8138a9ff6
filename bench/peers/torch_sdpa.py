#!/usr/bin/env python3
"""PyTorch's side of bench/src/bin/flash_workbench.rs: causal attention, same shapes, same device.

    python3 bench/peers/torch_sdpa.py [--reps 20] [--out torch_sdpa.json]

torch.nn.functional.scaled_dot_product_attention with is_causal=True, bf16 [B, H, T, hd] inputs,
and its FlashAttention backend forced (torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)):
an error rather than a silent fall back to another backend. B = 8, H = 12, hd = 64, T = 1024 and
2048. The backward is torch.autograd.grad of the forward's output (fresh dq, dk, dv; no
accumulation into .grad), timed alone. FLOPs as the Rust workbench counts them (causal: forward
2 x 2 B H T^2 hd / 2, backward 2.5 times that); times by CUDA events around each call, 3 warm-ups,
the median of --reps.
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, HD = 8, 12, 64
LENGTHS = [1024, 2048]


def median_ms(reps, f):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def fwd_flops(t):
    return 2 * 2 * B * H * t * t * HD / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (median of {args.reps})")
    print("| op | T | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for t in LENGTHS:
            shape = (B, H, t, HD)

            def draw():
                x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
                return x.requires_grad_()

            q, k, v = draw(), draw(), draw()
            dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)

            def forward():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            with torch.no_grad():
                fwd = median_ms(args.reps, forward)
            out = forward()
            bwd = median_ms(
                args.reps, lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
            )
            tf, tb = fwd_flops(t) / fwd / 1e9, 2.5 * fwd_flops(t) / bwd / 1e9
            print(f"| sdpa flash | {t} | {fwd:.3f} | {tf:.1f} | {bwd:.3f} | {tb:.1f} |")
            rows.append({"op": "torch sdpa flash", "b_h": B * H, "t": t, "hd": HD, "fwd_ms": fwd,
                         "fwd_tflops": tf, "bwd_ms": bwd, "bwd_tflops": tb})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
