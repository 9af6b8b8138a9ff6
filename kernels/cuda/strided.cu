// strided.cu: the copy of one strided view into another: what `Tensor::contiguous` does for a
// permuted, narrowed or broadcast CUDA tensor (the destination a contiguous buffer), and what
// `cat` does for each of its parts (the destination a slice of the output).
//
// Computes: for each multi-index idx of `shape` (n = prod(shape) of them, the last dim fastest),
//   y[dst.offset + sum_d idx_d dst.strides[d]] = x[src.offset + sum_d idx_d src.strides[d]].
//   A source stride of 0 repeats an element (a broadcast view), so one copy kernel also
//   materialises broadcasts. The destination must not repeat an element (no stride 0).
// Layout: x and y any buffers the views fit in. Elements are moved as raw bits: `_b32` for
//   4-byte types (f32, u32), `_b16` for 2-byte ones (bf16, f16). The views are passed by value
//   as two `Strided` (rank <= MAX_RANK, the shape in `src`), 288 bytes of kernel parameters;
//   y never aliases x.
// Work split: a grid-stride loop, one output element per thread per pass, with the elementwise
//   configuration (kernels/src/launch.rs `elementwise_config`: 256 threads, at most 2304
//   blocks). Writes are coalesced; reads are as coalesced as the view allows (a transposed
//   view reads with a stride: the tiled transpose in layout.cu is the fast path for that case).
//   Each element costs rank divisions, which is cheap beside its memory traffic.
// Shared memory: none. Preconditions: rank <= 8, every index fits in u64, dst and src of one
//   shape, dst without repeated elements (the launcher checks the last two).
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
__device__ void strided_copy(T* y, const T* x, Strided dst, Strided src, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        // peel the multi-index off i from the last dim, accumulating both positions
        u64 rest = i, from = src.offset, to = dst.offset;
        for (int d = (int)src.rank - 1; d >= 0; --d) {
            u64 idx = rest % src.shape[d];
            rest /= src.shape[d];
            from += idx * src.strides[d];
            to += idx * dst.strides[d];
        }
        y[to] = x[from];
    }
}

extern "C" __global__ void strided_copy_fwd_b32(unsigned int* y, const unsigned int* x, Strided dst, Strided src,
                                                u64 n) {
    strided_copy(y, x, dst, src, n);
}

extern "C" __global__ void strided_copy_fwd_b16(unsigned short* y, const unsigned short* x, Strided dst,
                                                Strided src, u64 n) {
    strided_copy(y, x, dst, src, n);
}
