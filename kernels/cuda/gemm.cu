// gemm.cu: the matrix product, batched, with either operand transposed: an f32 SIMT kernel and a bf16
// tensor-core kernel (mma.sync). No cuBLAS.
//
// Computes, for every batch entry z < batch:
//   C[z] = alpha op(A[z]) op(B[z]) + beta C[z]        op(A) is [M, K], op(B) is [K, N], C is [M, N]
// where op(X) = X, or X^T when trans_x is set. With beta = 0, C is never read (it may hold NaN).
//   gemm_fwd_f32:         A, B, C f32; products summed in f32.
//   gemm_fwd_bf16:        A, B bf16; products summed in f32 by the tensor cores; C bf16 (one rounding, on store).
//   gemm_fwd_bf16_f32out: the same with C f32 (what the backward wants for a weight gradient).
// The names follow {op}_{fwd|bwd}_{dtype}: this is the forward of a matmul, and its backward is two more calls
// of the same kernels (dA = dC B^T, dB = A^T dC, by the transpose flags), so there is no gemm_bwd. The dtype
// names the inputs; `_f32out` marks the one kernel whose output type differs from its inputs.
//
// Layout: every matrix is row-major and dense (no leading-dimension argument):
//   A[z] stored [M, K] (trans_a = 0) or [K, M] (trans_a = 1), starting at a + z stride_a;
//   B[z] stored [K, N] (trans_b = 0) or [N, K] (trans_b = 1), starting at b + z stride_b;
//   C[z] stored [M, N], starting at c + z stride_c.
// Strides are in elements; stride 0 broadcasts an operand over the batch (a weight shared by every entry).
// A transposed operand is read through the indexing of its tile loads, never copied.
//
// Work split: one block per [BM, BN] tile of one C[z]; grid = (ceil(N / BN), ceil(M / BM), batch). The block
// walks K in steps of BK: it copies the [BM, BK] tile of op(A) and the [BK, BN] tile of op(B) to shared memory
// (loads past M, N or K fill zeros, so any shape is correct), synchronises, multiplies, and moves on.
//   gemm_fwd_f32: 128x128x8 block tile, 256 threads as 16 x 16, each computing an 8 x 8 register micro-tile.
//     Static shared memory 2 x 8 x (128 + 4) x 4 B = 8448 B.
//   gemm_fwd_bf16*: 128x128x32 block tile, 8 warps as 2 (M) x 4 (N), each warp a 64 x 32 tile made of 4 x 4
//     mma.m16n8k16 tiles (64 f32 accumulators per thread). Static shared memory 2 x 128 x (32 + 8) x 2 B = 20480 B.
// Every tile size is a named constant below, with its reason. Dynamic shared memory: none.
// Preconditions: M, N, K < 2^31 - 256 (int indices reach a tile past the edge); batch <= 65535 (gridDim.z);
// distinct batch entries of C do not overlap (stride_c >= M N when batch > 1); C overlaps neither A nor B.
// The launcher (kernels/src/gemm.rs) checks them.
// Reference: the runtime's CPU matmul (runtime/src/ops/matmul.rs) for f32, the f64 reference matmul
//   (runtime/src/reference.rs) for bf16; test: tests/tests/gpu_gemm.rs (`#[ignore = "needs a CUDA GPU"]`).
//
// Known cost: every tile load is one scalar global read per element (2 bytes for bf16), so the bf16 kernel is
// bound by its loads long before its tensor cores; it is written to be right at any shape first, not fast.
// What would come next, in order (not done here): cp.async double buffering, so the next tile's global loads
// overlap this tile's math; 16-byte vector loads when the operand's rows are aligned; ldmatrix for the bf16
// fragments; then wgmma with TMA on sm_90a, which this compute_90 PTX cannot use.

#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

// ---- tiling of gemm_fwd_f32 (H200: 228 KB shared memory and 64K registers per SM, 132 SMs) ----

// Block tile. Each value copied to shared memory is used 128 times, so a block does 2 x 128 x 128 flops for
// every 2 x 128 x 4 bytes it loads: 32 flop/byte, above the H200's f32 ridge (67 TFLOP/s over 4.8 TB/s = 14).
// A 4096 x 4096 output is 1024 tiles: several waves over 132 SMs, so the ragged last wave costs little.
constexpr int F32_BM = 128;
constexpr int F32_BN = 128;
// Per-thread micro-tile: 64 accumulators. Each step of k a thread reads 8 + 8 values from shared memory and
// does 64 FMAs, 4 per value read: what an SM's 128 FMA lanes need to outpace its 32 shared-memory words/clock.
constexpr int F32_TM = 8;
constexpr int F32_TN = 8;
constexpr int F32_THREADS = (F32_BM / F32_TM) * (F32_BN / F32_TN);  // 256
// K step. Each thread copies BK x 128 / 256 = 4 values of each operand per step. Occupancy is set by
// registers (about 128 per thread: 2 blocks, 16 warps per SM), not by shared memory, so a deeper tile would
// only lengthen the loads between two barriers.
constexpr int F32_BK = 8;
// Shared tiles are stored [BK][BM + PAD]: the pad makes the transposing store (k fastest) of a k-contiguous
// operand hit 32 distinct banks (bank = 4 k + i), and keeps each row 16-byte aligned for float4 reads.
constexpr int F32_PAD = 4;
constexpr int F32_PITCH_A = F32_BM + F32_PAD;
constexpr int F32_PITCH_B = F32_BN + F32_PAD;

// ---- tiling of gemm_fwd_bf16 and gemm_fwd_bf16_f32out ----

// The tensor-core instruction: mma.sync.aligned.m16n8k16, a [16, 16] x [16, 8] product per warp.
constexpr int MMA_M = 16;
constexpr int MMA_N = 8;
constexpr int MMA_K = 16;
// Block tile: the same 128 x 128 reuse as the f32 kernel (64 flop/byte of bf16), and BK = 32 gives each warp
// two mma k-steps per barrier pair. The block loads 2 x 128 x 32 values per step, 16 per thread.
constexpr int BF_BM = 128;
constexpr int BF_BN = 128;
constexpr int BF_BK = 32;
// 8 warps as 2 x 4: each warp owns a 64 x 32 tile, 4 x 4 mma tiles. Per k-step of 16 a warp loads 4 x 4 + 4 x 2
// fragment registers for 16 mmas, and holds 64 f32 accumulators per thread (about 128 registers in all:
// 2 blocks, 16 warps per SM).
constexpr int BF_WARPS_M = 2;
constexpr int BF_WARPS_N = 4;
constexpr int BF_THREADS = 32 * BF_WARPS_M * BF_WARPS_N;  // 256
constexpr int BF_WM = BF_BM / BF_WARPS_M;                 // 64
constexpr int BF_WN = BF_BN / BF_WARPS_N;                 // 32
constexpr int BF_MT = BF_WM / MMA_M;                      // 4 mma tiles down a warp's tile
constexpr int BF_NT = BF_WN / MMA_N;                      // 4 across
// Shared tiles are stored k-contiguous, [BM][BK + PAD] and [BN][BK + PAD], so each fragment register is one
// 32-bit load of two adjacent k. A row of 40 bf16 is 20 words: the 8 rows (groupID) x 4 words (threadID in
// group) a fragment load touches fall in 32 distinct banks, and rows stay 16-byte aligned for cp.async later.
constexpr int BF_PAD = 8;
constexpr int BF_PITCH = BF_BK + BF_PAD;

// the arithmetic the indexing below relies on
static_assert(F32_TM == 8 && F32_TN == 8, "load8 reads a micro-tile row as two float4");
static_assert(F32_BM % F32_TM == 0 && F32_BN % F32_TN == 0, "micro-tiles cover the f32 block tile");
static_assert(BF_WM % MMA_M == 0 && BF_WN % MMA_N == 0 && BF_BK % MMA_K == 0, "mma tiles cover a warp's tile");
static_assert(BF_PITCH % 8 == 0, "bf16 shared rows stay 16-byte aligned");

// ---- element access ----

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = __float2bfloat16(v); }

// Element (i, k) of an operand, zero past its edges: i is a row of op(A) or a column of op(B), k runs along
// the sum. The operand is stored either k-contiguous ([rows, depth]: A, or B^T) or i-contiguous ([depth, rows]:
// A^T, or B); that is all a transpose changes.
template <typename T>
__device__ __forceinline__ T operand_at(const T* p, bool k_contiguous, int i, int k, int rows, int depth) {
    if (i >= rows || k >= depth) return T(0.0f);
    u64 at = k_contiguous ? (u64)i * depth + k : (u64)k * rows + i;
    return p[at];
}

// Which tile element thread-step e copies: consecutive e take consecutive addresses of the stored operand,
// so a warp's global reads coalesce whether it is stored k-contiguous or not.
template <int TILE, int BK>
__device__ __forceinline__ void tile_position(int e, bool k_contiguous, int& i, int& k) {
    i = k_contiguous ? e / BK : e % TILE;
    k = k_contiguous ? e % BK : e / TILE;
}

// The alpha/beta epilogue. C is read only when beta != 0, so a NaN-poisoned output with beta = 0 stays harmless.
template <typename T>
__device__ __forceinline__ float scale_and_add(float acc, float alpha, float beta, const T* c, u64 at) {
    return beta == 0.0f ? alpha * acc : alpha * acc + beta * to_f32(c[at]);
}

// ---- gemm_fwd_f32: shared-memory tiles, an 8 x 8 register micro-tile per thread ----

// Copies the [TILE, BK] tile of an f32 operand at (i0, k0) into s[k][i] (k-major, so the math reads a row of i).
template <int TILE, int PITCH>
__device__ void load_tile_f32(float (*s)[PITCH], const float* p, bool k_contiguous, int i0, int k0, int rows,
                              int depth) {
    for (int e = threadIdx.x; e < TILE * F32_BK; e += F32_THREADS) {
        int i, k;
        tile_position<TILE, F32_BK>(e, k_contiguous, i, k);
        s[k][i] = operand_at(p, k_contiguous, i0 + i, k0 + k, rows, depth);
    }
}

// Eight consecutive floats of shared memory as two float4 reads: p is 16-byte aligned, because rows are
// (pitch 132 x 4 B = 33 x 16 B) and the micro-tile offsets r0, c0 are multiples of 8.
__device__ __forceinline__ void load8(float (&v)[8], const float* p) {
    float4 lo = *reinterpret_cast<const float4*>(p);
    float4 hi = *reinterpret_cast<const float4*>(p + 4);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// acc += the product of the shared tiles over their BK columns, for this thread's rows r0.. and columns c0..
__device__ __forceinline__ void multiply_tile_f32(float (&acc)[F32_TM][F32_TN], const float (*sa)[F32_PITCH_A],
                                                  const float (*sb)[F32_PITCH_B], int r0, int c0) {
#pragma unroll
    for (int k = 0; k < F32_BK; k++) {
        float a[F32_TM], b[F32_TN];
        load8(a, &sa[k][r0]);
        load8(b, &sb[k][c0]);
#pragma unroll
        for (int i = 0; i < F32_TM; i++)
#pragma unroll
            for (int j = 0; j < F32_TN; j++) acc[i][j] += a[i] * b[j];
    }
}

__device__ void gemm_f32(float* c, const float* a, const float* b, float alpha, float beta, int m, int n, int k,
                         bool trans_a, bool trans_b, u64 stride_a, u64 stride_b, u64 stride_c) {
    __shared__ __align__(16) float sa[F32_BK][F32_PITCH_A];
    __shared__ __align__(16) float sb[F32_BK][F32_PITCH_B];
    a += blockIdx.z * stride_a;
    b += blockIdx.z * stride_b;
    c += blockIdx.z * stride_c;
    int m0 = blockIdx.y * F32_BM, n0 = blockIdx.x * F32_BN;
    int r0 = (threadIdx.x / (F32_BN / F32_TN)) * F32_TM;  // this thread's micro-tile, within the block tile
    int c0 = (threadIdx.x % (F32_BN / F32_TN)) * F32_TN;

    // walk K: A is k-contiguous unless transposed, B only when transposed
    float acc[F32_TM][F32_TN] = {};
    for (int k0 = 0; k0 < k; k0 += F32_BK) {
        load_tile_f32<F32_BM, F32_PITCH_A>(sa, a, !trans_a, m0, k0, m, k);
        load_tile_f32<F32_BN, F32_PITCH_B>(sb, b, trans_b, n0, k0, n, k);
        __syncthreads();
        multiply_tile_f32(acc, sa, sb, r0, c0);
        __syncthreads();
    }

    // write back the micro-tile, guarded at the ragged edges
#pragma unroll
    for (int i = 0; i < F32_TM; i++) {
        int row = m0 + r0 + i;
        if (row >= m) break;
#pragma unroll
        for (int j = 0; j < F32_TN; j++) {
            int col = n0 + c0 + j;
            if (col >= n) break;
            u64 at = (u64)row * n + col;
            c[at] = scale_and_add(acc[i][j], alpha, beta, c, at);
        }
    }
}

// ---- gemm_fwd_bf16*: shared-memory tiles, tensor cores via mma.sync.m16n8k16 ----

// Copies the [TILE, BK] tile of a bf16 operand at (i0, k0) into s[i][k] (k-contiguous, as the fragments want).
// An i-contiguous operand (A^T, or B) is stored down a column of the tile: a 4-way bank conflict on the store
// (rows 20 words apart repeat banks every 8 rows), the price of coalesced global reads until ldmatrix.trans.
template <int TILE>
__device__ void load_tile_bf16(bf16 (*s)[BF_PITCH], const bf16* p, bool k_contiguous, int i0, int k0, int rows,
                               int depth) {
    for (int e = threadIdx.x; e < TILE * BF_BK; e += BF_THREADS) {
        int i, k;
        tile_position<TILE, BF_BK>(e, k_contiguous, i, k);
        s[i][k] = operand_at(p, k_contiguous, i0 + i, k0 + k, rows, depth);
    }
}

// Two adjacent bf16 of a shared row, (k, k + 1) with k even, as one 32-bit fragment register: the lower k in the
// lower 16 bits, which is how mma packs a .bf16x2 pair.
__device__ __forceinline__ unsigned pair_at(const bf16* row, int k) {
    return *reinterpret_cast<const unsigned*>(row + k);
}

// d += a b for one m16n8k16 tile: a is [16, 16] row-major, b is [16, 8] column-major, d is [16, 8] f32.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The fragments, as the PTX ISA lays them out for mma.m16n8k16 with .bf16 ("Matrix Fragments for mma.m16n8k16
// with floating point type"). With lane = 4 g + t (g = groupID, t = threadID_in_group), for a tile at (r, c):
//   A register 0: row r + g,     k 2t, 2t+1       B register 0: column c + g, k 2t, 2t+1
//   A register 1: row r + g + 8, k 2t, 2t+1       B register 1: column c + g, k 2t+8, 2t+9
//   A register 2: row r + g,     k 2t+8, 2t+9
//   A register 3: row r + g + 8, k 2t+8, 2t+9
//   accumulator j (0..3): row r + g + 8 (j / 2), column c + 2t + (j % 2)
__device__ __forceinline__ void load_a_fragment(unsigned (&f)[4], const bf16 (*sa)[BF_PITCH], int r, int kk,
                                                int g, int t) {
    f[0] = pair_at(sa[r + g], kk + 2 * t);
    f[1] = pair_at(sa[r + g + 8], kk + 2 * t);
    f[2] = pair_at(sa[r + g], kk + 2 * t + 8);
    f[3] = pair_at(sa[r + g + 8], kk + 2 * t + 8);
}

__device__ __forceinline__ void load_b_fragment(unsigned (&f)[2], const bf16 (*sb)[BF_PITCH], int c, int kk,
                                                int g, int t) {
    f[0] = pair_at(sb[c + g], kk + 2 * t);
    f[1] = pair_at(sb[c + g], kk + 2 * t + 8);
}

// acc += the product of the shared tiles over their BK columns, for the warp's tile at (wr, wc).
__device__ __forceinline__ void multiply_tile_bf16(float (&acc)[BF_MT][BF_NT][4], const bf16 (*sa)[BF_PITCH],
                                                   const bf16 (*sb)[BF_PITCH], int wr, int wc, int g, int t) {
#pragma unroll
    for (int kk = 0; kk < BF_BK; kk += MMA_K) {
        unsigned fa[BF_MT][4], fb[BF_NT][2];
#pragma unroll
        for (int i = 0; i < BF_MT; i++) load_a_fragment(fa[i], sa, wr + i * MMA_M, kk, g, t);
#pragma unroll
        for (int j = 0; j < BF_NT; j++) load_b_fragment(fb[j], sb, wc + j * MMA_N, kk, g, t);
#pragma unroll
        for (int i = 0; i < BF_MT; i++)
#pragma unroll
            for (int j = 0; j < BF_NT; j++) mma_m16n8k16(acc[i][j], fa[i], fb[j]);
    }
}

template <typename TC>
__device__ void gemm_bf16(TC* c, const bf16* a, const bf16* b, float alpha, float beta, int m, int n, int k,
                          bool trans_a, bool trans_b, u64 stride_a, u64 stride_b, u64 stride_c) {
    __shared__ __align__(16) bf16 sa[BF_BM][BF_PITCH];
    __shared__ __align__(16) bf16 sb[BF_BN][BF_PITCH];
    a += blockIdx.z * stride_a;
    b += blockIdx.z * stride_b;
    c += blockIdx.z * stride_c;
    int m0 = blockIdx.y * BF_BM, n0 = blockIdx.x * BF_BN;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int wr = (warp / BF_WARPS_N) * BF_WM;  // the warp's tile, within the block tile
    int wc = (warp % BF_WARPS_N) * BF_WN;
    int g = lane / 4, t = lane % 4;

    // walk K: A is k-contiguous unless transposed, B only when transposed
    float acc[BF_MT][BF_NT][4] = {};
    for (int k0 = 0; k0 < k; k0 += BF_BK) {
        load_tile_bf16<BF_BM>(sa, a, !trans_a, m0, k0, m, k);
        load_tile_bf16<BF_BN>(sb, b, trans_b, n0, k0, n, k);
        __syncthreads();
        multiply_tile_bf16(acc, sa, sb, wr, wc, g, t);
        __syncthreads();
    }

    // write back each accumulator where the fragment layout puts it, guarded at the ragged edges
#pragma unroll
    for (int i = 0; i < BF_MT; i++)
#pragma unroll
        for (int j = 0; j < BF_NT; j++)
#pragma unroll
            for (int v = 0; v < 4; v++) {
                int row = m0 + wr + i * MMA_M + g + 8 * (v / 2);
                int col = n0 + wc + j * MMA_N + 2 * t + v % 2;
                if (row >= m || col >= n) continue;
                u64 at = (u64)row * n + col;
                store(c, at, scale_and_add(acc[i][j][v], alpha, beta, c, at));
            }
}

// ---- the entry points; arguments: output, inputs, scalars, sizes ----

extern "C" __global__ void __launch_bounds__(F32_THREADS)
gemm_fwd_f32(float* c, const float* a, const float* b, float alpha, float beta, int m, int n, int k, int trans_a,
             int trans_b, u64 stride_a, u64 stride_b, u64 stride_c) {
    gemm_f32(c, a, b, alpha, beta, m, n, k, trans_a, trans_b, stride_a, stride_b, stride_c);
}

extern "C" __global__ void __launch_bounds__(BF_THREADS)
gemm_fwd_bf16(bf16* c, const bf16* a, const bf16* b, float alpha, float beta, int m, int n, int k, int trans_a,
              int trans_b, u64 stride_a, u64 stride_b, u64 stride_c) {
    gemm_bf16(c, a, b, alpha, beta, m, n, k, trans_a, trans_b, stride_a, stride_b, stride_c);
}

extern "C" __global__ void __launch_bounds__(BF_THREADS)
gemm_fwd_bf16_f32out(float* c, const bf16* a, const bf16* b, float alpha, float beta, int m, int n, int k,
                     int trans_a, int trans_b, u64 stride_a, u64 stride_b, u64 stride_c) {
    gemm_bf16(c, a, b, alpha, beta, m, n, k, trans_a, trans_b, stride_a, stride_b, stride_c);
}
