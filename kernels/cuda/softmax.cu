// softmax.cu: softmax over the last dim, forward and backward, and the fused softmax
// cross-entropy, forward and backward, f32 and bf16.
//
// Computes, for each row x of n entries (logits z of V entries for the cross-entropy):
//   softmax_fwd:      y_j = exp(x_j - m) / sum_k exp(x_k - m),   m = max_k x_k
//   softmax_bwd:      dx_j = y_j (dy_j - sum_k dy_k y_k)
//   crossentropy_fwd: lse = log sum_k exp(z_k),  loss = lse - z_target  (one term per row)
//   crossentropy_bwd: dz_j = scale (exp(z_j - lse) - [j == target])
// Layout: x, y, dy, dx, logits, dlogits are contiguous [rows, n] in the kernel's dtype;
//   targets [rows] u32; loss, lse [rows] f32. Outputs never alias inputs; every output is
//   overwritten, never accumulated.
// Conventions (those of runtime/src/ops/softmax.rs and loss.rs):
//   - a row that is all -inf has no distribution: softmax writes zeros there, and lse = -inf;
//   - a row whose target equals `ignore` (0xFFFFFFFF when nothing is ignored) writes loss 0
//     and a zero gradient row; a target >= V that is not `ignore` writes a NaN loss and a NaN
//     gradient row (a kernel cannot return an error; the NaN reaches the loss the trainer
//     prints, where the CPU path would have returned IndexOutOfRange);
//   - the mean over the non-ignored rows is the host's: it sums the per-row terms and divides
//     by the count, and passes scale = dloss / count to the backward (a first version: a
//     device-side reduction would save downloading N floats per step).
//
// Work split: one block per row (grid = rows blocks), SOFTMAX_MAX_THREADS = 256 threads at most
//   (8 warps: enough loads in flight to stream a row of V = 50257 at full bandwidth, and the
//   per-thread loop stays short: 197 entries), fewer for short rows: the launcher
//   (kernels/src/softmax.rs, `softmax_config`) picks blockDim.x = min(256, n rounded up to a
//   multiple of 32). Each thread strides over the row (j = tid, tid + blockDim.x, ...).
// Online softmax: the forward passes keep a running (max m, sum s of exp(x - m)) per thread,
//   rescaling s when the max grows (Milakov and Gimelshein, "Online normalizer calculation
//   for softmax", 2018), then merge the threads' pairs: a warp-shuffle butterfly, then across
//   warps through shared memory. So softmax_fwd reads a row twice (statistics, output) instead
//   of three times, and crossentropy_fwd reads it once.
// Shared memory: static, for the cross-warp step: 8 (m, s) pairs and the total (72 bytes) in
//   the forwards, 8 floats and the total (36 bytes) in softmax_bwd; crossentropy_bwd has none.
// Preconditions: n >= 1; blockDim.x a multiple of 32 and at most SOFTMAX_MAX_THREADS.
// Reductions have a fixed shape, so results are deterministic run to run.
// bf16 variants load bf16, compute in f32, and round once on the store.
// Reference: the runtime's softmax_fwd/bwd (runtime/src/ops/softmax.rs) and
//   cross_entropy_fwd/bwd (runtime/src/ops/loss.rs); test: tests/tests/gpu_softmax.rs
//   (`#[ignore = "needs a CUDA GPU"]`).

#include <cuda_bf16.h>

#define SOFTMAX_MAX_THREADS 256
#define WARP 32
#define MAX_WARPS (SOFTMAX_MAX_THREADS / WARP)
#define FULL_MASK 0xffffffffu
// NVRTC has no <math.h> and so no INFINITY or NAN: -inf and a quiet NaN by their bit patterns
#define NEG_INF __int_as_float(0xff800000)
#define QUIET_NAN __int_as_float(0x7fc00000)

typedef unsigned long long u64;
typedef unsigned int u32;
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = __float2bfloat16(v); }

// ---- the online (max, sum of exp) pair ----

// the running statistics of a set of values: m = their max, s = sum of exp(value - m)
struct MaxSum {
    float m, s;
};

// the statistics of nothing: exp of every value is 0 relative to m = -inf
__device__ __forceinline__ MaxSum empty_stats() { return {NEG_INF, 0.0f}; }

// adds one value. Where it raises the max, the old sum is rescaled by exp(old max - new max)
// (exp(-inf) = 0 covers the first value); -inf entries add nothing (x - m would be NaN when
// m is -inf too).
__device__ __forceinline__ void add_value(MaxSum& a, float x) {
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1.0f;
        a.m = x;
    } else if (x != NEG_INF) {
        a.s += expf(x - a.m);
    }
}

// the statistics of the union of two sets
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    float m = fmaxf(a.m, b.m);
    if (m == NEG_INF) return empty_stats();  // both empty, or all -inf: avoids -inf - -inf
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// ---- block-wide reductions: a warp butterfly, then warp 0 combines the warps' results ----

// the statistics of the whole block, in every thread
__device__ MaxSum block_stats(MaxSum a) {
    __shared__ MaxSum per_warp[MAX_WARPS];
    __shared__ MaxSum total;
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        MaxSum other = {__shfl_xor_sync(FULL_MASK, a.m, offset), __shfl_xor_sync(FULL_MASK, a.s, offset)};
        a = merge(a, other);
    }
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (lane == 0) per_warp[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < blockDim.x / WARP ? per_warp[lane] : empty_stats();
        for (int offset = WARP / 2; offset > 0; offset /= 2) {
            MaxSum other = {__shfl_xor_sync(FULL_MASK, a.m, offset), __shfl_xor_sync(FULL_MASK, a.s, offset)};
            a = merge(a, other);
        }
        if (lane == 0) total = a;
    }
    __syncthreads();
    return total;
}

// the sum of v over the block, in every thread
__device__ float block_sum(float v) {
    __shared__ float per_warp[MAX_WARPS];
    __shared__ float total;
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (lane == 0) per_warp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / WARP ? per_warp[lane] : 0.0f;
        for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

// the (max, sum of exp) of one row, in every thread of the block
template <typename T>
__device__ MaxSum row_stats(const T* xr, u64 n) {
    MaxSum a = empty_stats();
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) add_value(a, load(xr, j));
    return block_stats(a);
}

// ---- softmax: one block per row ----

template <typename T>
__device__ void softmax_fwd(T* y, const T* x, u64 n) {
    const T* xr = x + blockIdx.x * n;
    T* yr = y + blockIdx.x * n;
    MaxSum st = row_stats(xr, n);
    // an all -inf row: zeros (st.s is 0 there, and 1 / 0 would make NaNs)
    float inv = st.m == NEG_INF ? 0.0f : 1.0f / st.s;
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) {
        float e = st.m == NEG_INF ? 0.0f : expf(load(xr, j) - st.m);
        store(yr, j, e * inv);
    }
}

// dx = y (dy - sum(dy y)), from dy_j/dx_k = y_j (delta_jk - y_k)
template <typename T>
__device__ void softmax_bwd(T* dx, const T* dy, const T* y, u64 n) {
    const T* dyr = dy + blockIdx.x * n;
    const T* yr = y + blockIdx.x * n;
    T* dxr = dx + blockIdx.x * n;
    float dot = 0.0f;
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) dot += load(dyr, j) * load(yr, j);
    dot = block_sum(dot);
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) {
        store(dxr, j, load(yr, j) * (load(dyr, j) - dot));
    }
}

// ---- fused softmax cross-entropy: one block per row ----

// lse = m + log s in one read of the row; thread 0 writes lse and the row's loss term
template <typename T>
__device__ void crossentropy_fwd(float* loss, float* lse, const T* logits, const u32* targets, u32 ignore,
                                 u64 v) {
    u64 row = blockIdx.x;
    const T* zr = logits + row * v;
    MaxSum st = row_stats(zr, v);
    if (threadIdx.x != 0) return;
    float l = st.m == NEG_INF ? NEG_INF : st.m + logf(st.s);
    lse[row] = l;
    u32 t = targets[row];
    if (t == ignore) {
        loss[row] = 0.0f;
    } else if (t >= v) {
        loss[row] = QUIET_NAN;  // out of range: see the header
    } else {
        loss[row] = l - load(zr, t);
    }
}

// dz_j = scale (softmax_j - [j == target]), softmax_j = exp(z_j - lse) recomputed from the saved
// lse; zero rows where the target is ignored
template <typename T>
__device__ void crossentropy_bwd(T* dlogits, const T* logits, const u32* targets, const float* lse,
                                 float scale, u32 ignore, u64 v) {
    u64 row = blockIdx.x;
    const T* zr = logits + row * v;
    T* dzr = dlogits + row * v;
    u32 t = targets[row];
    float l = lse[row];
    for (u64 j = threadIdx.x; j < v; j += blockDim.x) {
        float g;
        if (t == ignore) {
            g = 0.0f;
        } else if (t >= v) {
            g = QUIET_NAN;  // out of range: see the header
        } else {
            g = scale * (expf(load(zr, j) - l) - (j == t ? 1.0f : 0.0f));
        }
        store(dzr, j, g);
    }
}

// ---- the entry points, named {op}_{fwd|bwd}_{dtype}; arguments: outputs, inputs, sizes ----

extern "C" __global__ void softmax_fwd_f32(float* y, const float* x, u64 n) { softmax_fwd(y, x, n); }
extern "C" __global__ void softmax_fwd_bf16(bf16* y, const bf16* x, u64 n) { softmax_fwd(y, x, n); }

extern "C" __global__ void softmax_bwd_f32(float* dx, const float* dy, const float* y, u64 n) {
    softmax_bwd(dx, dy, y, n);
}
extern "C" __global__ void softmax_bwd_bf16(bf16* dx, const bf16* dy, const bf16* y, u64 n) {
    softmax_bwd(dx, dy, y, n);
}

extern "C" __global__ void crossentropy_fwd_f32(float* loss, float* lse, const float* logits, const u32* targets,
                                                u32 ignore, u64 v) {
    crossentropy_fwd(loss, lse, logits, targets, ignore, v);
}
extern "C" __global__ void crossentropy_fwd_bf16(float* loss, float* lse, const bf16* logits, const u32* targets,
                                                 u32 ignore, u64 v) {
    crossentropy_fwd(loss, lse, logits, targets, ignore, v);
}

extern "C" __global__ void crossentropy_bwd_f32(float* dlogits, const float* logits, const u32* targets,
                                                const float* lse, float scale, u32 ignore, u64 v) {
    crossentropy_bwd(dlogits, logits, targets, lse, scale, ignore, v);
}
extern "C" __global__ void crossentropy_bwd_bf16(bf16* dlogits, const bf16* logits, const u32* targets,
                                                 const float* lse, float scale, u32 ignore, u64 v) {
    crossentropy_bwd(dlogits, logits, targets, lse, scale, ignore, v);
}
