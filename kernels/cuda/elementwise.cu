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
