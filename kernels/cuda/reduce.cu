// reduce.cu: the sum over the last dim of [rows, D], and the sum of squares of a flat buffer.
//
// Computes:
//   sum_fwd:    y[r] = sum over c of x[r, c]        x [rows, D] f32 or bf16, y [rows] f32
//   sumsq_fwd:  partials[b] = sum of x[i]^2 over the elements block b visits   x [n] f32
// The sum serves the loss mean (one row of the per-token losses, then scaled by 1/N) and, after
//   a transpose (layout.cu), a bias gradient (a sum over the rows of [rows, D] is a sum over the
//   last dim of its transpose). The sum of squares is the first pass of the global gradient norm
//   for clipping; its second pass is sum_fwd_f32 on the partials as one row, so the norm is one
//   block's sum of per-block partials: two passes, no atomics, the same bits on every run.
// Accumulation: f32 throughout (bf16 inputs are widened on load). Outputs are overwritten.
// Work split, sum_fwd: one block per row, 256 threads (8 warps; reduce.rs REDUCE_BLOCK) over its
//   D columns, so each thread's loads are consecutive across the warp; then the block sum below.
//   Grid: min(rows, 1024) blocks; past that each block strides over rows. One block per row
//   suits the uses here (few, long rows); many short rows would want one warp per row instead
//   (not written: nothing needs it yet).
// Work split, sumsq_fwd: a grid-stride loop over n, one element per thread per pass; grid
//   max(1, min(ceil(n / 256), 1024)) blocks of 256, so the partials (one per block) fit one
//   block's threads in the second pass, with 4 per thread. n = 0 gives one partial of 0.
// The block sum: each warp adds its 32 values with a butterfly of shuffles (__shfl_xor_sync), the
//   8 warp sums go through shared memory, and the first warp adds them. The order of additions
//   depends only on the block size, never on timing: every run gives the same bits.
// Shared memory: 32 floats (128 bytes, static): one slot per warp of the largest block.
// Preconditions: rows, D, n < 2^63; blockDim.x a multiple of 32, at most 1024 (the launcher
//   always uses 256).
// Reference: runtime/src/ops/reduce.rs `reduce_fwd` (ReduceOp::Sum) and runtime/src/ops/optim.rs
//   `sum_squares` (in f64); test: tests/tests/gpu_reduce.rs.

#include <cuda_bf16.h>

#define WARP 32
#define FULL_MASK 0xffffffffu

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return __bfloat162float(p[i]); }

// the sum of v over the 32 lanes of a warp, in every lane
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// the sum of v over the block, valid in thread 0; every thread of the block must call it
__device__ float block_sum(float v) {
    __shared__ float warp_sums[1024 / WARP];
    unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / WARP ? warp_sums[lane] : 0.0f;
        v = warp_sum(v);
    }
    __syncthreads();  // warp_sums is free again: the caller may call block_sum once more
    return v;
}

// ---- sum over the last dim ----

template <typename T>
__device__ void sum_fwd(float* y, const T* x, u64 rows, u64 d) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < d; c += blockDim.x) acc += load(x, r * d + c);
        float total = block_sum(acc);
        if (threadIdx.x == 0) y[r] = total;
    }
}

extern "C" __global__ void sum_fwd_f32(float* y, const float* x, u64 rows, u64 d) { sum_fwd(y, x, rows, d); }
extern "C" __global__ void sum_fwd_bf16(float* y, const bf16* x, u64 rows, u64 d) { sum_fwd(y, x, rows, d); }

// ---- sum of squares, first pass: one partial per block ----

extern "C" __global__ void sumsq_fwd_f32(float* partials, const float* x, u64 n) {
    float acc = 0.0f;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        acc += x[i] * x[i];
    }
    float total = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}
