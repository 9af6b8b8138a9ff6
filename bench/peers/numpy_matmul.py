"""Times numpy's float32 matmul (OpenBLAS underneath) for `matmul_vs_openblas`.

Usage: python3 numpy_matmul.py --shapes 1024x1024x1024,768x4096x2304t --threads 1,2 --reps 10

A shape is MxKxN for C[M, N] = A[M, K] B[K, N]; a trailing "t" stores A transposed (A is the
transpose of a row-major [K, M] array, so BLAS gets a transposed operand, not a copy). Each timing
is the best of --reps calls into a preallocated C. Output, one record per line:
    blas <internal_api> <version> <architecture>
    gflops <M> <K> <N> <t|n> <threads> <GFLOP/s>
Exit status 3 means numpy or threadpoolctl is missing.
"""

import argparse
import sys
import time

try:
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError as err:
    print(f"missing python module: {err.name}", file=sys.stderr)
    sys.exit(3)


def parse_shape(text):
    transposed = text.endswith("t")
    m, k, n = (int(x) for x in text.rstrip("t").split("x"))
    return m, k, n, transposed


def best_seconds(a, b, c, reps):
    np.matmul(a, b, out=c)  # warm-up: page in C, start the BLAS threads
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--threads", required=True)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            print("blas", info.get("internal_api"), info.get("version"), info.get("architecture"))
    for threads in (int(t) for t in args.threads.split(",")):
        with threadpool_limits(limits=threads, user_api="blas"):
            for m, k, n, transposed in map(parse_shape, args.shapes.split(",")):
                a_shape = (k, m) if transposed else (m, k)
                a = rng.standard_normal(a_shape, dtype=np.float32)
                a = a.T if transposed else a
                b = rng.standard_normal((k, n), dtype=np.float32)
                c = np.empty((m, n), dtype=np.float32)
                seconds = best_seconds(a, b, c, args.reps)
                gflops = 2.0 * m * n * k / seconds / 1e9
                flag = "t" if transposed else "n"
                print("gflops", m, k, n, flag, threads, f"{gflops:.2f}", flush=True)


if __name__ == "__main__":
    main()
