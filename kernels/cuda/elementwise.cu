// elementwise.cu: unary activations (GELU tanh, SiLU) and same-shape binary ops, forward and
// backward, on contiguous buffers of f32 or bf16.
//
// Computes, element by element over n entries:
//   gelu_fwd:  y  = 0.5 x (1 + tanh(c (x + a x^3)))             c = sqrt(2/pi), a = 0.044715
//   gelu_bwd:  dx = dy (0.5 (1 + th) + 0.5 x (1 - th^2) c (1 + 3 a x^2)),  th = tanh(c (x + a x^3))
//   silu_fwd:  y  = x sigmoid(x)
//   silu_bwd:  dx = dy s (1 + x (1 - s)),                       s = sigmoid(x)
//   add_fwd, sub_fwd, mul_fwd: y = a op b
//   affine_fwd: y = mul x + add
//   causal_mask_fwd: y = value where the column (key) is past the row (query) of each trailing
//     [T, T] matrix, else x (the attention's causal mask; x is [.., T, T] row-major)
//   lincomb_fwd: y = x + sum_s alpha_s k_s over up to 8 terms (a Runge-Kutta stage or step), with its own
//     layout, work split and reference in the header of its section at the end of the file
// Layout: every pointer is a contiguous buffer of n elements; outputs never alias inputs.
// Work split: a grid-stride loop, one element per thread per pass. The launcher
//   (kernels/src/launch.rs, `elementwise_config`) picks 256 threads per block (8 warps: enough
//   to hide the latency of one load per thread, few enough that small tensors still fill the
//   SMs) and min(ceil(n / 256), MAX_BLOCKS) blocks; past that each thread loops.
// Shared memory: none. Preconditions: n < 2^63.
// bf16 variants load bf16, compute in f32, and round once on the store.
// Reference: the runtime's CPU ops (runtime/src/cpu/math.rs); test:
//   tests/tests/gpu_elementwise.rs (`#[ignore = "needs a CUDA GPU"]`).

#include <cuda_bf16.h>

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_CUBIC 0.044715f

typedef unsigned long long u64;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, u64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, u64 i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float gelu(float x) {
    float inner = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float gelu_grad(float x) {
    float th = tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
    float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// the grid-stride loop shared by every kernel below: element i of n, for this thread's share
#define FOR_EACH_ELEMENT(i, n) \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// ---- unary activations, forward: y = f(x) ----

template <typename T>
__device__ void gelu_fwd(T* y, const T* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(y, i, gelu(load(x, i))); }
}

template <typename T>
__device__ void silu_fwd(T* y, const T* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) {
        float v = load(x, i);
        store(y, i, v * sigmoid(v));
    }
}

// ---- unary activations, backward: dx = dy f'(x) (dx overwritten, not accumulated) ----

template <typename T>
__device__ void gelu_bwd(T* dx, const T* dy, const T* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(dx, i, load(dy, i) * gelu_grad(load(x, i))); }
}

template <typename T>
__device__ void silu_bwd(T* dx, const T* dy, const T* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) {
        float v = load(x, i);
        float s = sigmoid(v);
        store(dx, i, load(dy, i) * s * (1.0f + v * (1.0f - s)));
    }
}

// ---- binary ops on same-shape operands (their backward is elementwise too: the runtime
// composes it from these and affine) ----

template <typename T>
__device__ void add_fwd(T* y, const T* a, const T* b, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(y, i, load(a, i) + load(b, i)); }
}

template <typename T>
__device__ void sub_fwd(T* y, const T* a, const T* b, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(y, i, load(a, i) - load(b, i)); }
}

template <typename T>
__device__ void mul_fwd(T* y, const T* a, const T* b, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(y, i, load(a, i) * load(b, i)); }
}

template <typename T>
__device__ void affine_fwd(T* y, const T* x, float mul, float add, u64 n) {
    FOR_EACH_ELEMENT(i, n) { store(y, i, load(x, i) * mul + add); }
}

// ---- the causal mask: element i of a [.., T, T] buffer is (row, col) = ((i / T) % T, i % T) ----

template <typename T>
__device__ void causal_mask_fwd(T* y, const T* x, float value, u64 t, u64 n) {
    FOR_EACH_ELEMENT(i, n) {
        u64 col = i % t, row = (i / t) % t;
        store(y, i, col > row ? value : load(x, i));
    }
}

// ---- the entry points, named {op}_{fwd|bwd}_{dtype}; arguments: outputs, inputs, sizes ----

typedef __nv_bfloat16 bf16;

extern "C" __global__ void gelu_fwd_f32(float* y, const float* x, u64 n) { gelu_fwd(y, x, n); }
extern "C" __global__ void gelu_fwd_bf16(bf16* y, const bf16* x, u64 n) { gelu_fwd(y, x, n); }
extern "C" __global__ void silu_fwd_f32(float* y, const float* x, u64 n) { silu_fwd(y, x, n); }
extern "C" __global__ void silu_fwd_bf16(bf16* y, const bf16* x, u64 n) { silu_fwd(y, x, n); }

extern "C" __global__ void gelu_bwd_f32(float* dx, const float* dy, const float* x, u64 n) {
    gelu_bwd(dx, dy, x, n);
}
extern "C" __global__ void gelu_bwd_bf16(bf16* dx, const bf16* dy, const bf16* x, u64 n) {
    gelu_bwd(dx, dy, x, n);
}
extern "C" __global__ void silu_bwd_f32(float* dx, const float* dy, const float* x, u64 n) {
    silu_bwd(dx, dy, x, n);
}
extern "C" __global__ void silu_bwd_bf16(bf16* dx, const bf16* dy, const bf16* x, u64 n) {
    silu_bwd(dx, dy, x, n);
}

extern "C" __global__ void add_fwd_f32(float* y, const float* a, const float* b, u64 n) { add_fwd(y, a, b, n); }
extern "C" __global__ void add_fwd_bf16(bf16* y, const bf16* a, const bf16* b, u64 n) { add_fwd(y, a, b, n); }
extern "C" __global__ void sub_fwd_f32(float* y, const float* a, const float* b, u64 n) { sub_fwd(y, a, b, n); }
extern "C" __global__ void sub_fwd_bf16(bf16* y, const bf16* a, const bf16* b, u64 n) { sub_fwd(y, a, b, n); }
extern "C" __global__ void mul_fwd_f32(float* y, const float* a, const float* b, u64 n) { mul_fwd(y, a, b, n); }
extern "C" __global__ void mul_fwd_bf16(bf16* y, const bf16* a, const bf16* b, u64 n) { mul_fwd(y, a, b, n); }

extern "C" __global__ void affine_fwd_f32(float* y, const float* x, float mul, float add, u64 n) {
    affine_fwd(y, x, mul, add, n);
}
extern "C" __global__ void affine_fwd_bf16(bf16* y, const bf16* x, float mul, float add, u64 n) {
    affine_fwd(y, x, mul, add, n);
}

extern "C" __global__ void causal_mask_fwd_f32(float* y, const float* x, float value, u64 t, u64 n) {
    causal_mask_fwd(y, x, value, t, n);
}
extern "C" __global__ void causal_mask_fwd_bf16(bf16* y, const bf16* x, float value, u64 t, u64 n) {
    causal_mask_fwd(y, x, value, t, n);
}

// ---- the linear combination y = x + sum_s alpha_s k_s: every stage and step of a Runge-Kutta solver ----
//
// Computes: y[i] = x[i] + alpha_0 k_0[i] + ... + alpha_{m-1} k_{m-1}[i], the terms added in order and each product
//   rounded to f32 before its sum (__fmul_rn, __fadd_rn: NVRTC would otherwise contract them into FMAs), so in
//   f32 it is the CPU's `lincomb` to the bit; bf16 widens exactly on the load and rounds once on the store, so
//   bf16 is the CPU's to the bit too.
// Layout: x, y and each k_s contiguous buffers of n elements of T; y aliases no input. The m <= LINCOMB_MAX_TERMS
//   terms travel by value, as a `LincombTerms` of 104 bytes in the kernel's parameters: a table uploaded per call
//   (as hypernet.cu's step pointers are) would add a host-to-device copy to every stage of every step, and the
//   solvers need at most 4 terms. The term loop is unrolled over the fixed maximum, so each address and alpha
//   is read from the parameter bank at a constant offset (an indexed read would copy the struct to local
//   memory). More terms: the launcher chains launches of 8 (kernels/src/elementwise.rs, `lincomb_fwd_into`).
// Work split: one 16-byte vector per thread per pass (V = 4 f32 or 8 bf16 elements), so x, every k_s and y are
//   each moved once, in full 16-byte transactions. The launcher's grid is elementwise_config(ceil(n / V)) (256
//   threads, at most 2304 blocks), grid-striding over the n / V whole vectors; the n % V trailing elements go
//   to the first n % V threads of the grid, one each.
// Shared memory: none. Preconditions: m <= 8, n < 2^63, every buffer 16-byte aligned (the launcher takes whole
//   buffers of the device allocator, which start 256-byte aligned; the runtime hands it dense tensors only).
// Reference: the CPU branch of `lincomb` in runtime/src/ops/elementwise.rs; test: tests/tests/gpu_elementwise.rs.

#define LINCOMB_MAX_TERMS 8

// The terms of one launch, by value (kernels/src/elementwise.rs has the same struct).
struct LincombTerms {
    u64 k[LINCOMB_MAX_TERMS];  // the device addresses of k_0 .. k_{m-1}, each a const T*
    float alpha[LINCOMB_MAX_TERMS];
    unsigned int count;  // m; the entries past it are never read
};

// One 16-byte vector of T as f32: 4 f32, or 8 bf16 (a bf16 is the top half of the f32 of the same value).
__device__ __forceinline__ void load_vec(float (&v)[4], const float* p) {
    float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}
__device__ __forceinline__ void load_vec(float (&v)[8], const bf16* p) {
    uint4 x = *reinterpret_cast<const uint4*>(p);
    unsigned w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int q = 0; q < 4; q++) {
        v[2 * q] = __uint_as_float(w[q] << 16);
        v[2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u);
    }
}

// The vector back to T, rounded once (to nearest even, as the CPU's bf16 conversion).
__device__ __forceinline__ void store_vec(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_vec(bf16* p, const float (&v)[8]) {
    unsigned w[4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
        __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * q], v[2 * q + 1]);  // .x (low half) = v[2q]
        w[q] = *reinterpret_cast<unsigned*>(&pair);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// acc + alpha k with the product rounded first: the CPU's `*y += alpha * k`.
__device__ __forceinline__ float add_term(float acc, float alpha, float k) {
    return __fadd_rn(acc, __fmul_rn(alpha, k));
}

template <typename T>
__device__ __forceinline__ const T* term(const LincombTerms& terms, int s) {
    return reinterpret_cast<const T*>(terms.k[s]);
}

// y[i] for one element i.
template <typename T>
__device__ __forceinline__ void lincomb_element(T* y, const T* x, const LincombTerms& terms, u64 i) {
    float v = load(x, i);
#pragma unroll
    for (int s = 0; s < LINCOMB_MAX_TERMS; s++)
        if (s < (int)terms.count) v = add_term(v, terms.alpha[s], load(term<T>(terms, s), i));
    store(y, i, v);
}

// y's vector j: elements V j .. V j + V - 1.
template <typename T>
__device__ __forceinline__ void lincomb_vector(T* y, const T* x, const LincombTerms& terms, u64 j) {
    constexpr int V = 16 / sizeof(T);
    float v[V], k[V];
    load_vec(v, x + j * V);
#pragma unroll
    for (int s = 0; s < LINCOMB_MAX_TERMS; s++) {
        if (s >= (int)terms.count) break;
        load_vec(k, term<T>(terms, s) + j * V);
#pragma unroll
        for (int e = 0; e < V; e++) v[e] = add_term(v[e], terms.alpha[s], k[e]);
    }
    store_vec(y + j * V, v);
}

// Shapes: y [n] (written), x [n], terms.count x k_s [n]
template <typename T>
__device__ void lincomb_fwd(T* y, const T* x, const LincombTerms& terms, u64 n) {
    constexpr int V = 16 / sizeof(T);
    const u64 vectors = n / V;
    FOR_EACH_ELEMENT(j, vectors) { lincomb_vector(y, x, terms, j); }  // here an "element" is a vector
    const u64 tail = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    if (tail < n % V) lincomb_element(y, x, terms, vectors * V + tail);
}

extern "C" __global__ void lincomb_fwd_f32(float* y, const float* x, LincombTerms terms, u64 n) {
    lincomb_fwd(y, x, terms, n);
}
extern "C" __global__ void lincomb_fwd_bf16(bf16* y, const bf16* x, LincombTerms terms, u64 n) {
    lincomb_fwd(y, x, terms, n);
}
