// norm.cu: LayerNorm and RMSNorm over the last dim of a [rows, D] buffer, forward and backward,
// f32 and bf16.
//
// Computes, for each row x of D entries (biased variance, eps inside the square root):
//   layernorm_fwd: mean = sum(x) / D,  rstd = 1 / sqrt(sum((x - mean)^2) / D + eps),
//                  y = (x - mean) rstd weight + bias
//   rmsnorm_fwd:   rstd = 1 / sqrt(sum(x^2) / D + eps),  y = x rstd weight
//   layernorm_bwd: with xhat = (x - mean) rstd and g = dy weight,
//                  dx = rstd (g - mean(g) - xhat mean(g xhat))
//   rmsnorm_bwd:   the same with mean = 0 and without the -mean(g) term
//   norm_dparams_partial, norm_dparams_sum: dweight = sum over rows of dy xhat, dbias = sum
//                  over rows of dy (both norms: RMSNorm passes mean = null and ignores dbias)
// Layout: x, y, dy, dx are contiguous [rows, D] in the kernel's dtype; weight, bias, dweight,
//   dbias are [D] in the dtype; mean, rstd are [rows] f32 (always f32: bf16 would lose the
//   statistics' precision for nothing, they are tiny). Outputs never alias inputs; y, mean,
//   rstd, dx, dweight and dbias are overwritten, never accumulated.
// Optional parameters: weight and bias may be null pointers, which mean "weight 1" and
//   "bias 0"; the same kernels serve the norms with and without parameters. In
//   norm_dparams_sum a null dweight or dbias means "not wanted".
//
// Work split, forward and dx: one warp per row. Each lane strides over the row (j = lane,
//   lane + 32, ...), and the row's sums are warp-shuffle butterflies (no shared memory, no
//   __syncthreads, and every lane ends with the total). The launcher (kernels/src/norm.rs,
//   `norm_config`) uses blocks of NORM_WARPS_PER_BLOCK = 4 warps (128 threads) and
//   ceil(rows / 4) blocks; warps past the last row return at once. The forward reads each row
//   three times (mean, variance, output): the second and third reads hit L1/L2 for the model's
//   D, and the two-pass variance is what the CPU reference computes (no cancellation).
//   One warp per row suits D up to a few thousand; for much longer rows a block per row would
//   use the SM better (not written: the model's D is at most 1024).
// Work split, dweight/dbias: deterministic, in two kernels, no atomics. A float atomicAdd
//   would make the sum's order (and so its last bits) depend on scheduling, and a training run
//   would not reproduce bit for bit.
//   1. norm_dparams_partial: grid (ceil(D / 256), chunks), 256 threads, one thread per column
//      j; block (bx, c) adds rows [c rows_per_chunk, (c + 1) rows_per_chunk) of its columns in
//      row order into partial[0][c][j] (dweight) and partial[1][c][j] (dbias): an f32 scratch
//      of [2, chunks, D]. Adjacent threads read adjacent columns, so every row is one
//      coalesced load per warp.
//   2. norm_dparams_sum: ceil(D / 256) blocks of 256 threads; thread j adds its column of the
//      partials in chunk order and rounds once to the dtype.
//   The launcher picks rows_per_chunk = max(64, ceil(rows / 256)) (see `dparams_config`).
// Shared memory: none. Preconditions: D >= 1, blockDim.x a multiple of 32 (the warp kernels),
//   rows * D < 2^63.
// bf16 variants load bf16, compute in f32, and round once on the store.
// Reference: the runtime's layer_norm_fwd/bwd and rms_norm_fwd/bwd (runtime/src/ops/norm.rs);
//   test: tests/tests/gpu_norm.rs (`#[ignore = "needs a CUDA GPU"]`).

#include <cuda_bf16.h>

#define WARP 32
#define FULL_MASK 0xffffffffu

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = __float2bfloat16(v); }

// an optional [D] parameter: `fallback` where the pointer is null
template <typename T>
__device__ __forceinline__ float param(const T* p, u64 j, float fallback) {
    return p ? load(p, j) : fallback;
}

// the sum of v over the 32 lanes of the warp, in every lane (a butterfly: fixed order, so the
// result does not depend on scheduling)
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// the row this warp normalises; rows past the end get `rows` (the caller returns)
__device__ __forceinline__ u64 warp_row() {
    return (blockIdx.x * (u64)blockDim.x + threadIdx.x) / WARP;
}

#define LANE (threadIdx.x % WARP)

// ---- forward: one warp per row ----

// the mean of a row (LayerNorm's first pass)
template <typename T>
__device__ float row_mean(const T* xr, u64 d) {
    float s = 0.0f;
    for (u64 j = LANE; j < d; j += WARP) s += load(xr, j);
    return warp_sum(s) / (float)d;
}

// 1 / sqrt(mean((x - centre)^2) + eps): LayerNorm's rstd with centre = mean, RMSNorm's with 0
template <typename T>
__device__ float row_rstd(const T* xr, float centre, u64 d, float eps) {
    float s = 0.0f;
    for (u64 j = LANE; j < d; j += WARP) {
        float t = load(xr, j) - centre;
        s += t * t;
    }
    // IEEE sqrt and division (no rsqrtf): rounds like the CPU reference's 1 / (var + eps).sqrt()
    return 1.0f / sqrtf(warp_sum(s) / (float)d + eps);
}

// LayerNorm (centred) or RMSNorm (not): writes y, rstd, and mean when centred
template <bool centred, typename T>
__device__ void norm_fwd(T* y, float* mean, float* rstd, const T* x, const T* weight, const T* bias,
                         u64 rows, u64 d, float eps) {
    u64 row = warp_row();
    if (row >= rows) return;
    const T* xr = x + row * d;
    T* yr = y + row * d;
    float m = centred ? row_mean(xr, d) : 0.0f;
    float r = row_rstd(xr, m, d, eps);
    if (LANE == 0) {
        if (centred) mean[row] = m;
        rstd[row] = r;
    }
    for (u64 j = LANE; j < d; j += WARP) {
        store(yr, j, (load(xr, j) - m) * r * param(weight, j, 1.0f) + param(bias, j, 0.0f));
    }
}

// ---- backward, dx: one warp per row; dx = rstd (g - mean(g) - xhat mean(g xhat)) ----

template <bool centred, typename T>
__device__ void norm_bwd(T* dx, const T* dy, const T* x, const T* weight, const float* mean,
                         const float* rstd, u64 rows, u64 d) {
    u64 row = warp_row();
    if (row >= rows) return;
    const T* xr = x + row * d;
    const T* dyr = dy + row * d;
    T* dxr = dx + row * d;
    float m = centred ? mean[row] : 0.0f;
    float r = rstd[row];
    // the two row sums: of g (LayerNorm only) and of g xhat
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (u64 j = LANE; j < d; j += WARP) {
        float g = load(dyr, j) * param(weight, j, 1.0f);
        sum_g += g;
        sum_gx += g * (load(xr, j) - m) * r;
    }
    float mean_g = centred ? warp_sum(sum_g) / (float)d : 0.0f;
    float mean_gx = warp_sum(sum_gx) / (float)d;
    for (u64 j = LANE; j < d; j += WARP) {
        float g = load(dyr, j) * param(weight, j, 1.0f);
        float xhat = (load(xr, j) - m) * r;
        store(dxr, j, r * (g - mean_g - xhat * mean_gx));
    }
}

// ---- backward, dweight and dbias: column sums in two deterministic passes ----

// pass 1: block (bx, c) sums rows [c rows_per_chunk, ...) of column j into the f32 scratch
// partial [2, chunks, D]: partial[0] for dweight (dy xhat), partial[1] for dbias (dy).
// mean is null for RMSNorm (xhat = x rstd).
template <typename T>
__device__ void dparams_partial(float* partial, const T* dy, const T* x, const float* mean,
                                const float* rstd, u64 rows, u64 d, u64 rows_per_chunk) {
    u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    if (j >= d) return;
    u64 chunks = gridDim.y, c = blockIdx.y;
    u64 first = c * rows_per_chunk;
    u64 last = min(rows, first + rows_per_chunk);
    float dw = 0.0f, db = 0.0f;
    for (u64 row = first; row < last; row++) {
        float g = load(dy, row * d + j);
        float m = mean ? mean[row] : 0.0f;
        dw += g * (load(x, row * d + j) - m) * rstd[row];
        db += g;
    }
    partial[c * d + j] = dw;
    partial[(chunks + c) * d + j] = db;
}

// pass 2: thread j adds column j of both partial sums over the chunks, in chunk order
template <typename T>
__device__ void dparams_sum(T* dweight, T* dbias, const float* partial, u64 chunks, u64 d) {
    u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    if (j >= d) return;
    float dw = 0.0f, db = 0.0f;
    for (u64 c = 0; c < chunks; c++) {
        dw += partial[c * d + j];
        db += partial[(chunks + c) * d + j];
    }
    if (dweight) store(dweight, j, dw);
    if (dbias) store(dbias, j, db);
}

// ---- the entry points, named {op}_{fwd|bwd}_{dtype}; arguments: outputs, inputs, sizes ----

extern "C" __global__ void layernorm_fwd_f32(float* y, float* mean, float* rstd, const float* x,
                                             const float* weight, const float* bias, u64 rows, u64 d,
                                             float eps) {
    norm_fwd<true>(y, mean, rstd, x, weight, bias, rows, d, eps);
}
extern "C" __global__ void layernorm_fwd_bf16(bf16* y, float* mean, float* rstd, const bf16* x,
                                              const bf16* weight, const bf16* bias, u64 rows, u64 d,
                                              float eps) {
    norm_fwd<true>(y, mean, rstd, x, weight, bias, rows, d, eps);
}
extern "C" __global__ void rmsnorm_fwd_f32(float* y, float* rstd, const float* x, const float* weight,
                                           u64 rows, u64 d, float eps) {
    norm_fwd<false>(y, (float*)nullptr, rstd, x, weight, (const float*)nullptr, rows, d, eps);
}
extern "C" __global__ void rmsnorm_fwd_bf16(bf16* y, float* rstd, const bf16* x, const bf16* weight,
                                            u64 rows, u64 d, float eps) {
    norm_fwd<false>(y, (float*)nullptr, rstd, x, weight, (const bf16*)nullptr, rows, d, eps);
}

extern "C" __global__ void layernorm_bwd_f32(float* dx, const float* dy, const float* x, const float* weight,
                                             const float* mean, const float* rstd, u64 rows, u64 d) {
    norm_bwd<true>(dx, dy, x, weight, mean, rstd, rows, d);
}
extern "C" __global__ void layernorm_bwd_bf16(bf16* dx, const bf16* dy, const bf16* x, const bf16* weight,
                                              const float* mean, const float* rstd, u64 rows, u64 d) {
    norm_bwd<true>(dx, dy, x, weight, mean, rstd, rows, d);
}
extern "C" __global__ void rmsnorm_bwd_f32(float* dx, const float* dy, const float* x, const float* weight,
                                           const float* rstd, u64 rows, u64 d) {
    norm_bwd<false>(dx, dy, x, weight, (const float*)nullptr, rstd, rows, d);
}
extern "C" __global__ void rmsnorm_bwd_bf16(bf16* dx, const bf16* dy, const bf16* x, const bf16* weight,
                                            const float* rstd, u64 rows, u64 d) {
    norm_bwd<false>(dx, dy, x, weight, (const float*)nullptr, rstd, rows, d);
}

extern "C" __global__ void norm_dparams_partial_f32(float* partial, const float* dy, const float* x,
                                                    const float* mean, const float* rstd, u64 rows, u64 d,
                                                    u64 rows_per_chunk) {
    dparams_partial(partial, dy, x, mean, rstd, rows, d, rows_per_chunk);
}
extern "C" __global__ void norm_dparams_partial_bf16(float* partial, const bf16* dy, const bf16* x,
                                                     const float* mean, const float* rstd, u64 rows, u64 d,
                                                     u64 rows_per_chunk) {
    dparams_partial(partial, dy, x, mean, rstd, rows, d, rows_per_chunk);
}
extern "C" __global__ void norm_dparams_sum_f32(float* dweight, float* dbias, const float* partial, u64 chunks,
                                                u64 d) {
    dparams_sum(dweight, dbias, partial, chunks, d);
}
extern "C" __global__ void norm_dparams_sum_bf16(bf16* dweight, bf16* dbias, const float* partial, u64 chunks,
                                                 u64 d) {
    dparams_sum(dweight, dbias, partial, chunks, d);
}
