// flash.cu: causal flash attention, bf16 in and out, f32 accumulation on tensor cores (mma.sync.m16n8k16).
// This file is workbench version 2 (bench/flash/v2.cu), promoted as kernels/cuda/flash.cu: the two are the same
// bytes (a CPU test in bench/src/bin/flash_workbench.rs compares them). Over version 1 (bench/flash/v1.cu):
//   - every mma fragment comes from shared memory by ldmatrix.x4 (one instruction per 16 x 16 A block or per two
//     8-column B blocks; .trans for the operands stored [k][n], V, dout and Q in the products over keys or
//     queries), instead of 4 to 8 scalar shared loads;
//   - the tiles a block walks (K, V in the forward and dq; Q, dout, lse, D in dkdv) are copied by cp.async into
//     two stages: the copy of tile n + 1 runs while the tensor cores work on tile n, and one barrier per tile
//     both publishes the next stage and frees the current one. Rows past T are zero-filled by the copy itself
//     (a source size of 0).
//
// Computes, per (batch*head) bh and query i < T, with s_ij = q_i . k_j / sqrt(hd) and keys j <= i only:
//   out_i = sum_j softmax_j(s_ij) v_j,   lse_i = ln sum_j exp(s_ij)                       (flash_fwd_bf16_hd*)
// and the backward from the saved out and lse, P_ij = exp(s_ij - lse_i) recomputed tile by tile:
//   D_i = dout_i . out_i                                                                   (flash_bwd_dsum_bf16)
//   dv_j = sum_i P_ij dout_i,   dk_j = scale sum_i dS_ij q_i                              (flash_bwd_dkdv_bf16_hd*)
//   dq_i = scale sum_j dS_ij k_j,   dS_ij = P_ij (dout_i . v_j - D_i)                     (flash_bwd_dq_bf16_hd*)
// Layout: q, k, v, out, dout, dq, dk, dv are dense row-major [b_h, T, hd] bf16 (b_h = B * H); lse and D are
//   [b_h, T] f32. Every output is overwritten, never accumulated. No [T, T] matrix exists anywhere: scores
//   and probabilities live in registers, one [16, 64] slice per warp.
//
// Work split (the tiling of the CPU reference runtime/src/cpu/flash.rs, which holds the same algorithm):
//   forward: one block of 4 warps per (bh, tile of BQ = 64 queries); each warp owns 16 query rows, the height
//     of one mma. The block walks key tiles of BKV = 64 from key 0 and stops at the diagonal tile, the only one
//     that applies the causal mask. Phases per key tile: load tiles (K, V to shared memory), scores (S = Q K^T
//     on the tensor cores, Q's fragments kept in registers for the whole walk), online softmax (running max m
//     and sum l per row, the accumulator rescaled by exp(m_old - m_new)), accumulate (O += P V, P rounded to
//     bf16 as the mma's A operand), and after the last tile, write back (out = O / l, lse = m + ln l).
//   backward, as on the CPU, in two passes that each own their output rows, so nothing needs atomics:
//     dsum: one warp per row computes D_i.
//     dkdv: one block per (bh, tile of BKV = 64 keys), 16 keys per warp; it keeps K and V in shared memory and
//       walks query tiles of BQB (64; 32 for hd = 128, for registers) from the diagonal to T: S^T = K Q^T and
//       dP^T = V dout^T, P^T and dS^T, then dV += P^T dout and dK += dS^T Q, with P^T and dS^T (registers)
//       as the A operands.
//     dq: one block per (bh, tile of 64 queries), 16 queries per warp; it walks key tiles from 0 to the
//       diagonal: S = Q K^T and dP = dout V^T, dS, then dQ += dS K.
//   Grid: (b_h, number of tiles); blockIdx.y is mapped so the tiles with the most work start first (the last
//   query tiles of the forward and dq, the first key tiles of dkdv), which shortens the ragged last wave.
// Ragged T: rows past T are loaded as zeros and never written. A valid query i < T masks every key j > i,
//   which includes every padding key j >= T, and the backward also zeroes P for padding queries.
// Shared memory (dynamic, carved from flash_smem; rows padded by PAD = 8 bf16; KV_STAGES = 2 copies of each
//   walked tile): forward Q + 2 x (K + V), 5 x 64 x (hd + 8) x 2 B = 25600 / 46080 / 87040 B for hd 32 / 64 /
//   128; dkdv K + V (64 rows) + 2 x (Q + dout (BQB rows) + lse, D (BQB floats)); dq Q + dout (64 rows) + lse,
//   D (64 floats) + 2 x (K + V). The launcher (kernels/src/flash.rs, FlashTiling) computes the same byte
//   counts and opts in past 48 KB.
// Preconditions: T >= 1 (the launcher launches nothing for T = 0); b_h <= 2^31 - 1 and ceil(T / 64) <= 65535
//   (the grid); b_h T hd < 2^63; buffers 16-byte aligned (every row of hd bf16 is then too), as the device
//   allocator's are.
// Reference: runtime/src/cpu/flash.rs through runtime/src/ops/attention.rs (flash_attention_fwd/_bwd);
//   test: tests/tests/gpu_flash.rs (`#[ignore = "needs a CUDA GPU"]`), and bench/src/bin/flash_workbench.rs,
//   which checks this version against the CPU before it times it.

#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

// NVRTC has no <math.h> and so no INFINITY: -inf by its bit pattern
#define NEG_INF __int_as_float(0xff800000)
#define FULL_MASK 0xffffffffu

// ---- tiling (H200: 228 KB of shared memory and 64K registers per SM, 132 SMs) ----

// The tensor-core instruction: mma.sync.aligned.m16n8k16, a [16, 16] x [16, 8] product per warp.
constexpr int MMA_M = 16;
constexpr int MMA_N = 8;
constexpr int MMA_K = 16;
// 4 warps, each owning MMA_M = 16 rows of the block's tile: 64 rows per block. A warp's [16, 64] slice of scores
// is 32 f32 registers per thread, and the forward's [16, hd] accumulator hd / 2 more: the forward stays under 128
// registers for hd <= 64, so 4 blocks (16 warps) fit an SM's 64K registers.
constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int BQ = WARPS * MMA_M;  // 64 queries per block (forward, dq)
// Keys per tile: 64, so a warp's slice of scores is 8 mma columns, and each K or V element copied to shared
// memory serves the block's 64 queries. A head's K and V (T x hd x 2 B each: 256 KB at T = 2048, hd = 64) stay
// in the 50 MB L2 while its query tiles read them, so most copies are served from L2 rather than HBM.
constexpr int BKV = 64;
// Rows of shared tiles are padded by 8 bf16 (16 B): a row of hd + 8 bf16 is (hd / 2 + 4) words, so the 8 rows
// a fragment load touches start 4 banks apart and fall in distinct banks; rows stay 16-byte aligned.
constexpr int PAD = 8;
// The dkdv kernel's query tile: its per-thread registers are two [16, hd] accumulators (dK, dV) plus two
// [16, BQB] slices (S^T, dP^T): 32 + 32 + 32 + 32 floats for hd = 64, and hd = 128 halves BQB to stay near that.
template <int HD>
__host__ __device__ constexpr int bwd_query_tile() {
    return HD <= 64 ? 64 : 32;
}
// Copies of each walked tile (K, V in the forward and dq; Q, dout, lse, D in dkdv): two, so the next tile's
// copy overlaps this tile's math. The forward's hd = 64 block then holds 45 KB: 4 blocks (16 warps) per SM.
constexpr int KV_STAGES = 2;
// Threads of the dsum kernel: one warp per row, 8 rows per block.
constexpr int DSUM_THREADS = 256;
// The most shared memory a block may opt in to on sm_90 (227 KB).
constexpr int MAX_SMEM_BYTES = 227 * 1024;

constexpr float LOG2E = 1.4426950408889634f;  // scores are kept in base 2: exp(x) = exp2(x log2 e)
constexpr float LN2 = 0.6931471805599453f;

static_assert(BQ == BKV, "the forward's diagonal tile holds every row's key at its own start (see scale_and_mask)");

// The dynamic shared memory the launcher sizes (FlashTiling in kernels/src/flash.rs); each kernel carves it.
extern __shared__ __align__(16) unsigned char flash_smem[];

template <int HD>
__host__ __device__ constexpr int tile_bytes(int rows) {
    return rows * (HD + PAD) * 2;
}
template <int HD>
__host__ __device__ constexpr int fwd_smem_bytes() {
    return tile_bytes<HD>(BQ) + KV_STAGES * 2 * tile_bytes<HD>(BKV);
}
template <int HD>
__host__ __device__ constexpr int dkdv_smem_bytes() {
    constexpr int BQB = bwd_query_tile<HD>();
    return 2 * tile_bytes<HD>(BKV) + KV_STAGES * (2 * tile_bytes<HD>(BQB) + 2 * BQB * 4);
}
template <int HD>
__host__ __device__ constexpr int dq_smem_bytes() {
    return 2 * tile_bytes<HD>(BQ) + 2 * BQ * 4 + KV_STAGES * 2 * tile_bytes<HD>(BKV);
}

// ---- warp-level primitives and asynchronous copies ----
// The host emulator (bench/flash/emu) compiles this file as C++ with FLASH_EMULATE defined and supplies its own
// mma_bf16, ldmatrix_x4(_trans) and cp_async_*: inline PTX has no host meaning.
#ifndef FLASH_EMULATE
// d += a b for one m16n8k16 tile: a [16, 16] row-major, b [16, 8] column-major, d [16, 8] f32.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8 (16 bytes,
// 16-byte aligned), and register i of lane 4 g + t receives matrix i's row g, columns 2t and 2t + 1.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// The same, transposed: register i of lane 4 g + t receives matrix i's rows 2t and 2t + 1 of column g.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// 16 bytes from global to shared memory without passing through registers (bypassing L1: .cg); `valid` false
// writes 16 zero bytes instead (a source size of 0 reads nothing), which is how rows past T are filled.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

// The same for one f32 (the .cg form copies 16 bytes only; .ca allows 4).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}

// Closes the group of copies this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight. Other threads' copies become
// visible only after a __syncthreads that follows every thread's wait.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, 1));
    return fmaxf(x, __shfl_xor_sync(FULL_MASK, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(FULL_MASK, x, 1);
    return x + __shfl_xor_sync(FULL_MASK, x, 2);
}

// ---- fragments ----
// The layouts of mma.m16n8k16 with .bf16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"). With lane = 4 g + t (g = groupID, t = threadID_in_group), for a [16, 16] A block and a [16, 8] B block:
//   A register 0: row g,     k 2t, 2t+1       B register 0: column g, k 2t, 2t+1
//   A register 1: row g + 8, k 2t, 2t+1       B register 1: column g, k 2t+8, 2t+9
//   A register 2: row g,     k 2t+8, 2t+9
//   A register 3: row g + 8, k 2t+8, 2t+9
//   accumulator e (0..3): row g + 8 (e / 2), column 2t + (e % 2)
// A register holds two bf16, the lower k in the lower 16 bits.

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<unsigned*>(&v);
}

// The A fragment of the [16, 16] block at (r0, c0) of a row-major shared tile (rows = M, columns = K): its four
// 8 x 8 matrices are (rows r0.., k c0..), (r0 + 8.., c0..), (r0.., c0 + 8..), (r0 + 8.., c0 + 8..), A registers
// 0 to 3; lane l addresses row r0 + l % 16 at column c0 + 8 (l / 16).
template <int PITCH>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const bf16* s, int r0, int c0, int lane) {
    ldmatrix_x4(a, s + (r0 + lane % 16) * PITCH + c0 + (lane / 16) * 8);
}

// The B fragments of two n-tiles (columns n0.. and n0 + 8..) at k-step k0, from a shared tile stored [n][k]
// (K rows for S = Q K^T): b[0], b[1] for n0, b[2], b[3] for n0 + 8. A stored row is one B column, so the
// matrices are (rows n0.., k0..), (n0.., k0 + 8..), (n0 + 8.., k0..), (n0 + 8.., k0 + 8..).
template <int PITCH>
__device__ __forceinline__ void load_b_nk(unsigned (&b)[4], const bf16* s, int n0, int k0, int lane) {
    int mat = lane / 8;
    ldmatrix_x4(b, s + (n0 + (mat / 2) * 8 + lane % 8) * PITCH + k0 + (mat % 2) * 8);
}

// The same two n-tiles from a shared tile stored [k][n] (V rows for O = P V): a B register's two k are two
// stored rows, which is what .trans delivers. The matrices are (rows k0.., columns n0..), (k0 + 8.., n0..),
// (k0.., n0 + 8..), (k0 + 8.., n0 + 8..).
template <int PITCH>
__device__ __forceinline__ void load_b_kn(unsigned (&b)[4], const bf16* s, int k0, int n0, int lane) {
    int mat = lane / 8;
    ldmatrix_x4_trans(b, s + (k0 + (mat % 2) * 8 + lane % 8) * PITCH + n0 + (mat / 2) * 8);
}

// Accumulators of n-tiles 2c and 2c + 1 (16 columns) as the A fragment of k-step c: the accumulator layout of a
// row pair is the A layout of the next product, so scores become probabilities without leaving registers.
__device__ __forceinline__ void pack_a(unsigned (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// ---- tile loads: rows of a [T, HD] head to a padded shared tile, asynchronously ----

// Issues the copies of rows r0 .. r0 + ROWS of g into s[ROWS][HD + PAD], 16 bytes per thread-step; rows >= t
// are zero-filled (their source address is g's first row, which exists: t >= 1, and is not read).
template <int HD, int ROWS>
__device__ __forceinline__ void load_rows(bf16* s, const bf16* g, int r0, int t) {
    constexpr int CHUNKS = HD / 8;  // 16-byte chunks per row
    static_assert(ROWS * CHUNKS % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < ROWS * CHUNKS / THREADS; i++) {
        int c = threadIdx.x + i * THREADS;
        int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        bool valid = r0 + r < t;
        cp_async_16(s + r * (HD + PAD) + col, valid ? g + (u64)(r0 + r) * HD + col : g, valid);
    }
}

// Issues the copies of entries r0 .. r0 + ROWS of a [T] f32 statistic (lse, D) into s[ROWS]; entries >= t are 0.
template <int ROWS>
__device__ __forceinline__ void load_stats(float* s, const float* g, int r0, int t) {
    static_assert(ROWS <= THREADS, "one entry per thread");
    int i = threadIdx.x;
    bool valid = r0 + i < t;
    if (i < ROWS) cp_async_4(s + i, valid ? g + r0 + i : g, valid);
}

// ---- shared phases ----

// acc[j] (+)= the product of a warp's [16, HD] A rows at (r0, 0) of sa and the [NT * 8, HD] rows of sb stored
// [n][k]: a [16, NT * 8] slice of scores (S = Q K^T, dP = dout V^T, and their transposes).
template <int HD, int NT>
__device__ __forceinline__ void rows_times_rows(float (&acc)[NT][4], const bf16* sa, int r0, const bf16* sb,
                                                int lane) {
    constexpr int P = HD + PAD;
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD; kk += MMA_K) {
        unsigned a[4];
        load_a<P>(a, sa, r0, kk, lane);
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            unsigned b[4];
            load_b_nk<P>(b, sb, j * MMA_N, kk, lane);
            mma_bf16(acc[j], a, b[0], b[1]);
            mma_bf16(acc[j + 1], a, b[2], b[3]);
        }
    }
}

// acc (+)= p s, with p a warp's [16, NT * 8] slice in registers (rounded to bf16) and s the [NT * 8, HD] rows of
// a shared tile stored [k][n]: O += P V, dV += P^T dout, dK += dS^T Q, dQ += dS K.
template <int HD, int NT>
__device__ __forceinline__ void slice_times_rows(float (&acc)[HD / MMA_N][4], const float (&p)[NT][4],
                                                 const bf16* s, int lane) {
    constexpr int P = HD + PAD;
#pragma unroll
    for (int c = 0; c < NT / 2; c++) {
        unsigned a[4];
        pack_a(a, p[2 * c], p[2 * c + 1]);
#pragma unroll
        for (int dt = 0; dt < HD / MMA_N; dt += 2) {
            unsigned b[4];
            load_b_kn<P>(b, s, c * MMA_K, dt * MMA_N, lane);
            mma_bf16(acc[dt], a, b[0], b[1]);
            mma_bf16(acc[dt + 1], a, b[2], b[3]);
        }
    }
}

// A warp's [16, HD] accumulator to bf16 rows row0 .. row0 + 15 of g, rows >= t skipped; a thread's two rows,
// row0 + g and row0 + g + 8 (g = groupID), are multiplied by scale0 and scale1.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* g, const float (&acc)[HD / MMA_N][4], float scale0, float scale1,
                                           int row0, int t, int lane) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int row = row0 + lane / 4 + 8 * half;
        if (row >= t) continue;
        float scale = half == 0 ? scale0 : scale1;
#pragma unroll
        for (int dt = 0; dt < HD / MMA_N; dt++) {
            unsigned v = pack_bf16(acc[dt][2 * half] * scale, acc[dt][2 * half + 1] * scale);
            *reinterpret_cast<unsigned*>(g + (u64)row * HD + dt * MMA_N + 2 * (lane % 4)) = v;
        }
    }
}

// ---- forward ----

// Scores to base-2 units (s scale log2 e), -inf where the key comes after the query (only the diagonal tile).
// Every row keeps at least one finite score in every tile it visits: a tile before the diagonal is wholly before
// the block's first query, and the diagonal tile starts at the block's first query (BQ == BKV), which no row of
// the block is before; so the running max is finite after each tile and exp2(m_old - m_new) is never NaN.
template <int NT>
__device__ __forceinline__ void scale_and_mask(float (&s)[NT][4], float scale_log2, bool diagonal, int row0, int k0,
                                               int lane) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = row0 + lane / 4 + 8 * (e / 2);
            int key = k0 + j * MMA_N + 2 * (lane % 4) + e % 2;
            s[j][e] = diagonal && key > row ? NEG_INF : s[j][e] * scale_log2;
        }
}

// Online softmax over one tile, for this thread's two rows (g and g + 8): raise the running max m, rescale the
// running sum l and the accumulator by exp2(m_old - m_new) (exactly 0 on the first tile, where m_old = -inf and
// l, o are still 0), and turn the scores into p = exp2(s - m_new). l is this thread's partial sum over its own
// columns; the four threads of a row add theirs once, in write_back.
template <int HD, int NT>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float (&m)[2], float (&l)[2],
                                               float (&o)[HD / MMA_N][4]) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
        float mx = m[half];
#pragma unroll
        for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
        mx = quad_max(mx);  // the row's four threads agree on its max
        float alpha = exp2f(m[half] - mx);
        m[half] = mx;
        l[half] *= alpha;
#pragma unroll
        for (int dt = 0; dt < HD / MMA_N; dt++) {
            o[dt][2 * half] *= alpha;
            o[dt][2 * half + 1] *= alpha;
        }
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s[j][2 * half] = exp2f(s[j][2 * half] - mx);
            s[j][2 * half + 1] = exp2f(s[j][2 * half + 1] - mx);
            l[half] += s[j][2 * half] + s[j][2 * half + 1];
        }
    }
}

template <int HD>
__device__ void flash_fwd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int t) {
    constexpr int P = HD + PAD, KS = HD / MMA_K, NT = BKV / MMA_N;
    static_assert(fwd_smem_bytes<HD>() <= MAX_SMEM_BYTES, "the forward's tiles fit in shared memory");
    bf16* sq = reinterpret_cast<bf16*>(flash_smem);  // [BQ][P], then per stage: K [BKV][P], V [BKV][P]
    bf16* skv = sq + BQ * P;
    int q0 = (gridDim.y - 1 - blockIdx.y) * BQ;  // the last query tiles (the most keys) first
    u64 head = (u64)blockIdx.x * t * HD;
    q += head, k += head, v += head, out += head, lse += (u64)blockIdx.x * t;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row0 = q0 + warp * MMA_M;  // the warp's first query
    const float scale_log2 = (1.0f / sqrtf((float)HD)) * LOG2E;

    // load tiles: Q and the first K, V tile; Q's fragments then stay in registers for the whole walk
    load_rows<HD, BQ>(sq, q, q0, t);
    load_rows<HD, BKV>(skv, k, 0, t);
    load_rows<HD, BKV>(skv + BKV * P, v, 0, t);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++) load_a<P>(qf[kk], sq, warp * MMA_M, kk * MMA_K, lane);

    float o[HD / MMA_N][4] = {};
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    // causal: the walk stops at the tile holding the block's last (valid) query
    int last = (min(q0 + BQ, t) - 1) / BKV;
    for (int kt = 0; kt <= last; kt++) {
        int k0 = kt * BKV;
        const bf16* sk = skv + (kt % 2) * 2 * BKV * P;
        const bf16* sv = sk + BKV * P;
        // load tiles: start copying the next K, V into the other stage (free: the barrier ending the previous
        // iteration saw every warp finish with it)
        if (kt < last) {
            bf16* next = skv + ((kt + 1) % 2) * 2 * BKV * P;
            load_rows<HD, BKV>(next, k, k0 + BKV, t);
            load_rows<HD, BKV>(next + BKV * P, v, k0 + BKV, t);
            cp_async_commit();
        }

        // scores: S = Q K^T for the warp's [16, 64] slice
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned b[4];
                load_b_nk<P>(b, sk, j * MMA_N, kk * MMA_K, lane);
                mma_bf16(s[j], qf[kk], b[0], b[1]);
                mma_bf16(s[j + 1], qf[kk], b[2], b[3]);
            }
        scale_and_mask(s, scale_log2, k0 + BKV > q0, row0, k0, lane);

        // online softmax, then accumulate O += P V
        online_softmax<HD>(s, m, l, o);
        slice_times_rows<HD>(o, s, sv, lane);

        // the next stage has landed (this thread's copies; the barrier publishes everyone's), and every warp is
        // done with this one
        cp_async_wait<0>();
        __syncthreads();
    }

    // write back: out = O / l, lse = m ln 2 + ln l (m is in base 2)
    float l0 = quad_sum(l[0]), l1 = quad_sum(l[1]);
    store_rows<HD>(out, o, 1.0f / l0, 1.0f / l1, row0, t, lane);
    int row = row0 + lane / 4;
    if (lane % 4 == 0 && row < t) lse[row] = m[0] * LN2 + logf(l0);
    if (lane % 4 == 0 && row + 8 < t) lse[row + 8] = m[1] * LN2 + logf(l1);
}

// ---- backward: D ----

// D_i = dout_i . out_i, one warp per row.
__device__ void flash_dsum(float* dsum, const bf16* dout, const bf16* out, u64 rows, int hd) {
    u64 row = (u64)blockIdx.x * (DSUM_THREADS / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps: the shuffles below see all 32 lanes
    float acc = 0.0f;
    for (int d = lane; d < hd; d += 32)
        acc += __bfloat162float(dout[row * hd + d]) * __bfloat162float(out[row * hd + d]);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(FULL_MASK, acc, offset);
    if (lane == 0) dsum[row] = acc;
}

// ---- backward: dK, dV ----

// Issues the copies of one dkdv stage, the query tile at q0: Q [BQB][P], dout [BQB][P], lse [BQB], D [BQB].
template <int HD, int BQB>
__device__ __forceinline__ void load_query_stage(unsigned char* stage, const bf16* q, const bf16* dout,
                                                 const float* lse, const float* dsum, int q0, int t) {
    bf16* sq = reinterpret_cast<bf16*>(stage);
    bf16* sdo = sq + BQB * (HD + PAD);
    float* slse = reinterpret_cast<float*>(sdo + BQB * (HD + PAD));
    load_rows<HD, BQB>(sq, q, q0, t);
    load_rows<HD, BQB>(sdo, dout, q0, t);
    load_stats<BQB>(slse, lse, q0, t);
    load_stats<BQB>(slse + BQB, dsum, q0, t);
}

// P^T and dS^T for a warp's [16 keys, NQ * 8 queries] slice: st holds the raw scores S^T on entry and P^T on exit,
// dpt holds dP^T on entry and dS^T on exit. P^T is 0 where the query is before the key or past T (only in tiles
// that reach either, `masked`).
template <int NQ>
__device__ __forceinline__ void probs_and_dscores_t(float (&st)[NQ][4], float (&dpt)[NQ][4], const float* slse,
                                                    const float* sd, float scale_log2, bool masked, int key0,
                                                    int q0, int t, int lane) {
#pragma unroll
    for (int j = 0; j < NQ; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int key = key0 + lane / 4 + 8 * (e / 2);
            int c = j * MMA_N + 2 * (lane % 4) + e % 2;  // the query within the tile
            float p = exp2f(st[j][e] * scale_log2 - slse[c] * LOG2E);
            if (masked && (q0 + c < key || q0 + c >= t)) p = 0.0f;
            st[j][e] = p;
            dpt[j][e] = p * (dpt[j][e] - sd[c]);
        }
}

template <int HD>
__device__ void flash_bwd_dkdv(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                               const float* lse, const float* dsum, int t) {
    constexpr int P = HD + PAD, BQB = bwd_query_tile<HD>(), NQ = BQB / MMA_N;
    static_assert(dkdv_smem_bytes<HD>() <= MAX_SMEM_BYTES, "the dkdv tiles fit in shared memory");
    // one stage: Q [BQB][P], dout [BQB][P], lse [BQB], D [BQB]
    constexpr int STAGE_BYTES = 2 * tile_bytes<HD>(BQB) + 2 * BQB * 4;
    bf16* sk = reinterpret_cast<bf16*>(flash_smem);  // [BKV][P]
    bf16* sv = sk + BKV * P;                          // [BKV][P]
    unsigned char* stages = reinterpret_cast<unsigned char*>(sv + BKV * P);
    int k0 = blockIdx.y * BKV;  // the first key tiles (the most queries) first
    u64 head = (u64)blockIdx.x * t * HD;
    q += head, k += head, v += head, dout += head, dk += head, dv += head;
    lse += (u64)blockIdx.x * t, dsum += (u64)blockIdx.x * t;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int key0 = k0 + warp * MMA_M;  // the warp's first key
    const float scale = 1.0f / sqrtf((float)HD), scale_log2 = scale * LOG2E;

    // load tiles: K and V once, with the first query tile's Q, dout, lse, D. Causal: the queries before k0 see
    // none of these keys, so the walk starts at the diagonal.
    int first = k0 / BQB * BQB;
    load_rows<HD, BKV>(sk, k, k0, t);
    load_rows<HD, BKV>(sv, v, k0, t);
    load_query_stage<HD, BQB>(stages, q, dout, lse, dsum, first, t);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float dk_acc[HD / MMA_N][4] = {}, dv_acc[HD / MMA_N][4] = {};
    for (int q0 = first, n = 0; q0 < t; q0 += BQB, n++) {
        const bf16* sq = reinterpret_cast<const bf16*>(stages + (n % 2) * STAGE_BYTES);
        const bf16* sdo = sq + BQB * P;
        const float* slse = reinterpret_cast<const float*>(sdo + BQB * P);
        const float* sd = slse + BQB;
        // load tiles: start copying the next query tile into the other stage
        if (q0 + BQB < t) {
            load_query_stage<HD, BQB>(stages + ((n + 1) % 2) * STAGE_BYTES, q, dout, lse, dsum, q0 + BQB, t);
            cp_async_commit();
        }

        // scores: S^T = K Q^T and dP^T = V dout^T, a [16 keys, BQB queries] slice each
        float st[NQ][4], dpt[NQ][4];
        rows_times_rows<HD>(st, sk, warp * MMA_M, sq, lane);
        rows_times_rows<HD>(dpt, sv, warp * MMA_M, sdo, lane);
        probs_and_dscores_t(st, dpt, slse, sd, scale_log2, q0 < k0 + BKV || q0 + BQB > t, key0, q0, t, lane);

        // accumulate: dV += P^T dout, dK += dS^T Q
        slice_times_rows<HD>(dv_acc, st, sdo, lane);
        slice_times_rows<HD>(dk_acc, dpt, sq, lane);

        // the next stage has landed, and every warp is done with this one
        cp_async_wait<0>();
        __syncthreads();
    }

    // write back: dk = scale dS^T Q (the score's scale, applied once), dv
    store_rows<HD>(dk, dk_acc, scale, scale, key0, t, lane);
    store_rows<HD>(dv, dv_acc, 1.0f, 1.0f, key0, t, lane);
}

// ---- backward: dQ ----

// P and dS for a warp's [16 queries, NT * 8 keys] slice: s holds S on entry, dp holds dP on entry and dS on exit.
// P is 0 where the key comes after the query (only the diagonal tile).
template <int NT>
__device__ __forceinline__ void probs_and_dscores(const float (&s)[NT][4], float (&dp)[NT][4], const float (&lse2)[2],
                                                  const float (&d)[2], float scale_log2, bool diagonal, int row0,
                                                  int k0, int lane) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = row0 + lane / 4 + 8 * (e / 2);
            int key = k0 + j * MMA_N + 2 * (lane % 4) + e % 2;
            float p = exp2f(s[j][e] * scale_log2 - lse2[e / 2]);
            if (diagonal && key > row) p = 0.0f;
            dp[j][e] = p * (dp[j][e] - d[e / 2]);
        }
}

template <int HD>
__device__ void flash_bwd_dq(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                             const float* lse, const float* dsum, int t) {
    constexpr int P = HD + PAD, NT = BKV / MMA_N;
    static_assert(dq_smem_bytes<HD>() <= MAX_SMEM_BYTES, "the dq tiles fit in shared memory");
    bf16* sq = reinterpret_cast<bf16*>(flash_smem);       // [BQ][P]
    bf16* sdo = sq + BQ * P;                               // [BQ][P]
    float* slse = reinterpret_cast<float*>(sdo + BQ * P);  // [BQ]
    float* sd = slse + BQ;                                 // [BQ]
    bf16* skv = reinterpret_cast<bf16*>(sd + BQ);          // per stage: K [BKV][P], V [BKV][P]
    int q0 = (gridDim.y - 1 - blockIdx.y) * BQ;  // the last query tiles (the most keys) first
    u64 head = (u64)blockIdx.x * t * HD;
    q += head, k += head, v += head, dout += head, dq += head;
    lse += (u64)blockIdx.x * t, dsum += (u64)blockIdx.x * t;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row0 = q0 + warp * MMA_M;  // the warp's first query
    const float scale = 1.0f / sqrtf((float)HD), scale_log2 = scale * LOG2E;

    // load tiles: Q, dout and the rows' lse and D once, with the first K, V tile; each thread keeps its two
    // rows' lse and D in registers
    load_rows<HD, BQ>(sq, q, q0, t);
    load_rows<HD, BQ>(sdo, dout, q0, t);
    load_stats<BQ>(slse, lse, q0, t);
    load_stats<BQ>(sd, dsum, q0, t);
    load_rows<HD, BKV>(skv, k, 0, t);
    load_rows<HD, BKV>(skv + BKV * P, v, 0, t);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    int r = warp * MMA_M + lane / 4;
    float lse2[2] = {slse[r] * LOG2E, slse[r + 8] * LOG2E}, d[2] = {sd[r], sd[r + 8]};

    float dq_acc[HD / MMA_N][4] = {};
    int last = (min(q0 + BQ, t) - 1) / BKV;
    for (int kt = 0; kt <= last; kt++) {
        int k0 = kt * BKV;
        const bf16* sk = skv + (kt % 2) * 2 * BKV * P;
        const bf16* sv = sk + BKV * P;
        // load tiles: start copying the next K, V into the other stage
        if (kt < last) {
            bf16* next = skv + ((kt + 1) % 2) * 2 * BKV * P;
            load_rows<HD, BKV>(next, k, k0 + BKV, t);
            load_rows<HD, BKV>(next + BKV * P, v, k0 + BKV, t);
            cp_async_commit();
        }

        // scores: S = Q K^T and dP = dout V^T, a [16 queries, 64 keys] slice each; then P and dS
        float s[NT][4], dp[NT][4];
        rows_times_rows<HD>(s, sq, warp * MMA_M, sk, lane);
        rows_times_rows<HD>(dp, sdo, warp * MMA_M, sv, lane);
        probs_and_dscores(s, dp, lse2, d, scale_log2, k0 + BKV > q0, row0, k0, lane);

        // accumulate: dQ += dS K
        slice_times_rows<HD>(dq_acc, dp, sk, lane);

        // the next stage has landed, and every warp is done with this one
        cp_async_wait<0>();
        __syncthreads();
    }

    // write back: dq = scale dS K
    store_rows<HD>(dq, dq_acc, scale, scale, row0, t, lane);
}

// ---- the entry points; arguments: outputs, inputs, sizes ----

extern "C" __global__ void __launch_bounds__(THREADS)
flash_fwd_bf16_hd32(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int t) {
    flash_fwd<32>(out, lse, q, k, v, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_bwd_dkdv_bf16_hd32(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                        const float* lse, const float* dsum, int t) {
    flash_bwd_dkdv<32>(dk, dv, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_bwd_dq_bf16_hd32(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                      const float* dsum, int t) {
    flash_bwd_dq<32>(dq, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_fwd_bf16_hd64(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int t) {
    flash_fwd<64>(out, lse, q, k, v, t);
}

// 3 blocks per SM (12 warps) instead of the 2 its 230 registers would allow: ptxas fits it in 168 without spills.
extern "C" __global__ void __launch_bounds__(THREADS, 3)
flash_bwd_dkdv_bf16_hd64(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                        const float* lse, const float* dsum, int t) {
    flash_bwd_dkdv<64>(dk, dv, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_bwd_dq_bf16_hd64(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                      const float* dsum, int t) {
    flash_bwd_dq<64>(dq, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_fwd_bf16_hd128(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int t) {
    flash_fwd<128>(out, lse, q, k, v, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_bwd_dkdv_bf16_hd128(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                        const float* lse, const float* dsum, int t) {
    flash_bwd_dkdv<128>(dk, dv, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(THREADS)
flash_bwd_dq_bf16_hd128(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                      const float* dsum, int t) {
    flash_bwd_dq<128>(dq, dout, q, k, v, lse, dsum, t);
}

extern "C" __global__ void __launch_bounds__(DSUM_THREADS)
flash_bwd_dsum_bf16(float* dsum, const bf16* dout, const bf16* out, u64 rows, int hd) {
    flash_dsum(dsum, dout, out, rows, hd);
}
