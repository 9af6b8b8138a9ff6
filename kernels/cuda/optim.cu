// optim.cu: the fused AdamW update of one parameter tensor, with the global-norm clipping scale.
//
// Computes, element by element over n entries (runtime/src/ops/optim.rs `adamw_update`):
//   g = grad_scale grad
//   m = beta1 m + (1 - beta1) g
//   v = beta2 v + (1 - beta2) g g
//   p = p - lr (weight_decay p + (m / c1) / (sqrt(v / c2) + eps))
// where c1 = 1 - beta1^step and c2 = 1 - beta2^step are the bias corrections. The host computes
// them as the CPU does (in f64, then rounded to f32) and passes them in, so both round alike.
//
// IN PLACE: param, m and v are read and overwritten; this is the one in-place kernel of the
// crate (the update touches each of them once, so a second copy would only cost memory).
// Layout: param, m, v are contiguous f32 buffers of n elements (f32 master weights and moments);
//   grad is n elements of f32 (adamw_fwd_f32) or bf16 (adamw_fwd_bf16grad, widened exactly).
//   No buffer aliases another.
// Work split: a grid-stride loop, one element per thread per pass, with the elementwise
//   configuration (kernels/src/launch.rs `elementwise_config`: 256 threads, at most 2304 blocks).
//   Each element is independent: the kernel is bound by memory (16 bytes read, 12 written each).
// Shared memory: none. Preconditions: n < 2^63; step >= 1 (c1, c2 > 0), checked by the launcher.
// Rounding: every product and sum goes through the __fmul_rn / __fadd_rn / __fsub_rn intrinsics,
//   which the compiler never contracts into an FMA (one rounding where the CPU rounds twice),
//   in the CPU loop's order; `/` and sqrtf are IEEE round-to-nearest without fast-math. So the
//   kernel is meant to reproduce the CPU's f32 result bit for bit.
// Reference: runtime/src/ops/optim.rs `adamw_update`; test: tests/tests/gpu_optim.rs.

#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return __bfloat162float(p[i]); }

// the hyperparameters of one step, as the kernel arguments carry them
struct AdamW {
    float lr, beta1, beta2, eps, weight_decay;
    float correction1, correction2;  // 1 - beta^step, computed on the host
    float grad_scale;                // global-norm clipping factor (1 for none)
};

// one element's update, in the CPU's order of operations (runtime/src/ops/optim.rs)
__device__ __forceinline__ void adamw_element(float* p, float* m, float* v, float grad, const AdamW& h) {
    float g = __fmul_rn(h.grad_scale, grad);
    float m2 = __fadd_rn(__fmul_rn(h.beta1, *m), __fmul_rn(1.0f - h.beta1, g));
    // (1 - beta2) g g, multiplied left to right as the CPU does
    float v2 = __fadd_rn(__fmul_rn(h.beta2, *v), __fmul_rn(__fmul_rn(1.0f - h.beta2, g), g));
    float step = (m2 / h.correction1) / __fadd_rn(sqrtf(v2 / h.correction2), h.eps);
    float decayed = __fadd_rn(__fmul_rn(h.weight_decay, *p), step);
    *p = __fsub_rn(*p, __fmul_rn(h.lr, decayed));
    *m = m2;
    *v = v2;
}

template <typename G>
__device__ void adamw_fwd(float* param, float* m, float* v, const G* grad, const AdamW& h, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        adamw_element(&param[i], &m[i], &v[i], load(grad, i), h);
    }
}

// ---- the entry points; arguments: the in-place buffers, the gradient, the step, the size ----

extern "C" __global__ void adamw_fwd_f32(float* param, float* m, float* v, const float* grad, float lr, float beta1,
                                         float beta2, float eps, float weight_decay, float correction1,
                                         float correction2, float grad_scale, u64 n) {
    AdamW h = {lr, beta1, beta2, eps, weight_decay, correction1, correction2, grad_scale};
    adamw_fwd(param, m, v, grad, h, n);
}

extern "C" __global__ void adamw_fwd_bf16grad(float* param, float* m, float* v, const bf16* grad, float lr,
                                              float beta1, float beta2, float eps, float weight_decay,
                                              float correction1, float correction2, float grad_scale, u64 n) {
    AdamW h = {lr, beta1, beta2, eps, weight_decay, correction1, correction2, grad_scale};
    adamw_fwd(param, m, v, grad, h, n);
}
