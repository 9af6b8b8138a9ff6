// strided.cu: the copy of any strided view into a contiguous buffer: what `Tensor::contiguous`
// does for a permuted, narrowed or broadcast CUDA tensor.
//
// Computes: y[i] = x[offset + sum_d idx_d(i) strides[d]] for i < n, where idx(i) is the
//   row-major multi-index of i in `shape` (the last dim fastest). A stride of 0 repeats an
//   element (a broadcast view), so one copy kernel also materialises broadcasts.
// Layout: y contiguous, n = prod(shape) elements; x any buffer the view fits in. Elements are
//   moved as raw bits: `_b32` for 4-byte types (f32, u32), `_b16` for 2-byte ones (bf16, f16).
//   The view is passed by value as a `Strided` (rank <= MAX_RANK), 144 bytes of kernel
//   parameters; outputs never alias inputs.
// Work split: a grid-stride loop, one output element per thread per pass, with the elementwise
//   configuration (kernels/src/launch.rs `elementwise_config`: 256 threads, at most 2304
//   blocks). Writes are coalesced; reads are as coalesced as the view allows (a transposed
//   view reads with a stride: the tiled transpose in layout.cu is the fast path for that case).
//   Each element costs rank divisions, which is cheap beside its memory traffic.
// Shared memory: none. Preconditions: rank <= 8, every index fits in u64.
// Reference: the runtime's CPU `Tensor::contiguous` (runtime/src/tensor.rs); test:
//   tests/tests/gpu_tensor.rs.

typedef unsigned long long u64;

#define MAX_RANK 8

// A view: element idx of the tensor sits at offset + sum_d idx_d strides[d] of the buffer.
struct Strided {
    u64 shape[MAX_RANK];
    u64 strides[MAX_RANK];
    u64 offset;
    unsigned int rank;
};

template <typename T>
__device__ void strided_copy(T* y, const T* x, Strided view, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        // peel the multi-index off i from the last dim, accumulating the source position
        u64 rest = i, at = view.offset;
        for (int d = (int)view.rank - 1; d >= 0; --d) {
            u64 idx = rest % view.shape[d];
            rest /= view.shape[d];
            at += idx * view.strides[d];
        }
        y[i] = x[at];
    }
}

extern "C" __global__ void strided_copy_fwd_b32(unsigned int* y, const unsigned int* x, Strided view, u64 n) {
    strided_copy(y, x, view, n);
}

extern "C" __global__ void strided_copy_fwd_b16(unsigned short* y, const unsigned short* x, Strided view,
                                                u64 n) {
    strided_copy(y, x, view, n);
}
