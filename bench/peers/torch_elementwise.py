#!/usr/bin/env python3
"""PyTorch's side of bench/src/bin/gpu_elementwise.rs: the same ops on the same n, same device.

    python3 bench/peers/torch_elementwise.py [--reps 50] [--json out.json]

Each op: one warm-up, then --reps calls between two torch.cuda.synchronize(); bytes moved over
the mean time, as the Rust bench counts them.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

N = 1 << 24


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
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    x32 = torch.linspace(-2, 2, N, device="cuda", dtype=torch.float32)
    y32 = x32.clone()
    x16 = x32.to(torch.bfloat16)
    rows = []

    def add(label, nbytes, t):
        rows.append({"op": label, "seconds": t, "rate": nbytes / t / 1e9, "unit": "GB/s"})

    add("copy f32 (device to device)", 2 * N * 4, timed(args.reps, lambda: x32.clone()))
    add("gelu_fwd_f32", 2 * N * 4, timed(args.reps, lambda: F.gelu(x32, approximate="tanh")))
    add("gelu_fwd_bf16", 2 * N * 2, timed(args.reps, lambda: F.gelu(x16, approximate="tanh")))
    gelu_bwd = torch.ops.aten.gelu_backward
    add("gelu_bwd_f32", 3 * N * 4, timed(args.reps, lambda: gelu_bwd(y32, x32, approximate="tanh")))
    add("add_fwd_f32", 3 * N * 4, timed(args.reps, lambda: x32 + y32))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for r in rows:
        print(f"| {r['op']} | {r['seconds'] * 1e6:.1f} | {r['rate']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
