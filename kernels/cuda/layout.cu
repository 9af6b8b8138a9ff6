// layout.cu: dtype casts (f32 <-> bf16) and the transpose of the last two dims of a batch.
//
// Computes:
//   cast_fwd_f32_bf16:  y[i] = bf16(x[i])    rounded to nearest, ties to even (__float2bfloat16,
//                                            as the `half` crate's bf16::from_f32 rounds)
//   cast_fwd_bf16_f32:  y[i] = f32(x[i])     exact (a bf16 is the top half of an f32)
//   transpose_fwd:      y[b, c, r] = x[b, r, c]
// Layout: casts: contiguous buffers of n elements. Transposes: x [batch, R, C] row-major in,
//   y [batch, C, R] row-major out, f32 or bf16 (the same type for both; bits are moved unchanged).
//   Outputs never alias inputs; both are overwritten.
//
// Casts: a grid-stride loop, one element per thread per pass, with the elementwise
//   configuration (kernels/src/launch.rs `elementwise_config`: 256 threads, at most 2304 blocks).
//   Shared memory: none. NaN: cvt.rn.bf16.f32 may return the canonical NaN where `half` keeps
//   the payload; a NaN stays a NaN.
//
// Transposes: a naive transpose reads rows and writes columns, so one of the two is strided and
//   every thread of a warp touches its own 32-byte sector. Instead each block moves one TILE x
//   TILE tile through shared memory: it reads the tile's rows of x (consecutive addresses), and
//   writes the tile's rows of y, which are the tile's columns in shared memory.
//   Block: TILE x TILE_ROWS = 32 x 8 threads (256, 8 warps); a warp spans one tile row, and each
//   thread moves TILE / TILE_ROWS = 4 elements, which keeps 4 loads in flight per thread.
//   Grid: (ceil(C / 32), ceil(R / 32), batch); the launcher (kernels/src/layout.rs
//   `transpose_config`) refuses R > 65535 x 32 or batch > 65535 (the grid's y and z limits).
//   Shared memory: TILE x (TILE + PAD) elements, PAD = one 4-byte word of padding per row:
//   4224 bytes (f32, PAD 1) or 2176 bytes (bf16, PAD 2), static.
//   Why the padded row: shared memory has 32 banks of 4 bytes, and a warp reading one column
//   of an unpadded 32 x 32 f32 tile hits addresses 32 words apart, all in one bank: a 32-way
//   conflict, served one address at a time. With rows of 33 words, column entry k sits in
//   bank (33 k) mod 32 = k mod 32: every thread its own bank. A bf16 row of 32 halves is 16
//   words (unpadded, a 16-way conflict); padded by 2 halves it is 17 words, and 17 is odd, so
//   (17 k) mod 32 is again distinct for the 32 threads. (A pad of one half would leave 2-way
//   conflicts in odd columns.)
//   Tiles at the right and bottom edges are partial: the bounds checks skip the missing part.
// Preconditions: n < 2^63; batch R C < 2^63.
// Reference: the runtime's Tensor::to_dtype and Tensor::t (runtime/src/tensor.rs);
//   test: tests/tests/gpu_layout.rs.

#include <cuda_bf16.h>

#define TILE 32       // a warp's width: one tile row is one coalesced 128-byte (f32) access
#define TILE_ROWS 8   // block rows: 256 threads, each moving TILE / TILE_ROWS = 4 elements

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

#define FOR_EACH_ELEMENT(i, n) \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// ---- casts ----

extern "C" __global__ void cast_fwd_f32_bf16(bf16* y, const float* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) { y[i] = __float2bfloat16(x[i]); }
}

extern "C" __global__ void cast_fwd_bf16_f32(float* y, const bf16* x, u64 n) {
    FOR_EACH_ELEMENT(i, n) { y[i] = __bfloat162float(x[i]); }
}

// ---- transposes: one TILE x TILE tile per block, through shared memory ----

template <typename T>
__device__ void transpose_fwd(T* y, const T* x, u64 rows, u64 cols) {
    // padded by one 4-byte word per row, so that a column read hits 32 banks (see the header)
    __shared__ T tile[TILE][TILE + 4 / sizeof(T)];
    u64 matrix = (u64)blockIdx.z * rows * cols;
    x += matrix;
    y += matrix;
    u64 r0 = (u64)blockIdx.y * TILE, c0 = (u64)blockIdx.x * TILE;
    // load: tile[j][k] = x[r0 + j, c0 + k], a warp per tile row, reading consecutive columns
    for (unsigned j = threadIdx.y; j < TILE; j += TILE_ROWS) {
        u64 r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = x[r * cols + c];
    }
    __syncthreads();
    // store: y[c0 + j, r0 + k] = tile[k][j], a warp per row of y, writing consecutive columns
    for (unsigned j = threadIdx.y; j < TILE; j += TILE_ROWS) {
        u64 c = c0 + j, r = r0 + threadIdx.x;
        if (c < cols && r < rows) y[c * rows + r] = tile[threadIdx.x][j];
    }
}

extern "C" __global__ void transpose_fwd_f32(float* y, const float* x, u64 rows, u64 cols) {
    transpose_fwd(y, x, rows, cols);
}
extern "C" __global__ void transpose_fwd_bf16(bf16* y, const bf16* x, u64 rows, u64 cols) {
    transpose_fwd(y, x, rows, cols);
}
