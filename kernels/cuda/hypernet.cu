// hypernet.cu: the hypernetwork's weight generation and its backward (MODEL.md section 3), f32 and bf16.
//
// Computes, with H the [N, K] coefficient rows of the N evaluation times (K = E + 1 rows [1, h(t_i)] for a weight,
// K = E rows h(t_i) for a bias or a norm) and F the [K, P] stacked parameter (P = d_in d_out, or D):
//   hypernet_fwd:  W[i, c] = sum_k H[i, k] F[k, c]                                   W [N, P]
//   hypernet_bwd:  dF[k, c] = sum_i H[i, k] dW_i[c]  (+ acc[k, c] when acc is given)   dF [K, P]
//                  partial[b, i, k] = sum over block b's columns c of dW_i[c] F[k, c]          (f32 scratch)
//   hypernet_dh:   dH[i, k] = sum_b partial[b, i, k], over b in a fixed order                  dH [N, K]
// Layout: F, W, dF dense row-major in the kernel's dtype T (f32 or bf16); H, dH dense [N, K] in their own dtype
//   (f32 or bf16, the `_h*` suffix); the N step gradients dW_i are N separate dense [P] buffers of T, passed as a
//   device array of N pointers (`dws`), because the tape holds them apart and joining them would be a copy.
//   Arithmetic is f32 throughout (H is widened once into shared memory); bf16 outputs are rounded once, on the
//   store. Every output is overwritten, never accumulated in place.
// The sum into a gradient (`acc`): the backward may be handed acc [K, P], the gradient a parameter has gathered
//   so far (nullptr: none), which it reads in the same store step that writes dF, storing acc + dF, rounded once
//   to the output's type O. O is T, or f32 for a bf16 T (the `_accf32` entries: an f32 gradient gathered over a
//   bf16 parameter, the sum never rounded to bf16); acc, when given, is in O too. acc and dF are distinct buffers
//   (the launcher's borrows see to it), though in place would be correct too: each element of acc is read, and
//   its sum written, by one thread.
//
// Why fused: N and K are tiny (4 to 48 and 8 to 21) and P is the size of a weight matrix (up to 768 x 3072), so
// both directions are memory-bound, with about 2 N K FLOPs per (N + K) elements. The least a pass can move, and
// what the GB/s of bench/src/bin/gpu_hypernet.rs counts, in elements of T:
//   forward   (K + N) P       read F once, write W once;
//   backward  (N + 2K) P      read the N dW_i and F once, write dF once (plus the [blocks, N, K] f32 partials,
//                             about 1 KB per block, and H);
//   into acc  (N + 3K) P      and read acc once, in the same pass (acc and the sum 2K P of them, in O);
//                             writing dF and adding it to acc afterwards would move (N + 5K) P (dF written,
//                             then dF and acc read and their sum written).
// The composed path (a GEMM per direction, and a join of the dW_i into one [N, P] copy first) moves about
// (4N + 3K) P in the backward. The issue's target is 80% of a device-to-device copy's bandwidth on these bytes.
//
// Work split (H200: 132 SMs, 228 KB of shared memory and 64K registers each):
//   Grid: G blocks of THREADS = 128, G = min(ceil(P / CHUNK), SMs x the blocks that fit on one SM), chosen by the
//   launcher (kernels/src/hypernet.rs) from the driver's occupancy. Block b owns a contiguous share of the P
//   columns, [b U / G, (b + 1) U / G) units of SHARE_ALIGN = 8 columns (U = ceil(P / 8)): every block moves the
//   same bytes to within 8 columns, so no block is left running alone at the end (a grid of one block per
//   chunk would leave a ragged last wave). It walks its share in chunks of CHUNK = 512 columns; per chunk:
//   1. load slabs: the chunk's [K, CHUNK] slab of F (and in the backward the [N, CHUNK] slab of the dW_i) into
//      shared memory, by cp.async 16-byte copies that hold no registers, so a whole slab is in flight at once
//      (a block's 21 KB to 43 KB, and several blocks per SM: far above the ~30 KB per SM that hides the HBM's
//      latency). Columns past the share are zero-filled. Rows of F start 16-byte aligned only when P is a
//      multiple of 16 bytes of T (`aligned`); otherwise the slab is filled by plain element loads (correct,
//      slower, and no weight of the model has such a P);
//   2. combine (forward: W; backward: dF): thread t owns columns 4t .. 4t + 3 of the chunk and computes ROWS = 12
//      output rows at a time, out[r] = sum_q coef[q][r] slab[q], with 12 x 4 f32 accumulators in registers and
//      the coefficients (H^T in the forward, H in the backward, as f32) read from shared memory by broadcast;
//      then it stores 4 columns of each row (16 bytes of f32, 8 of bf16; plain stores when P is not aligned),
//      in the backward after adding acc's same 4 columns when acc is given (a load of the same width, straight
//      from global memory: each element is read once, so a slab in shared memory would buy nothing);
//   3. dH (backward only): this chunk's dW F^T [N, K] added into per-warp f32 accumulators in shared memory.
//      bf16: on the tensor cores, mma.m16n8k16 with dW's slab as A (16 rows of i) and F's slab as B (8 columns
//      of k per tile), warp w taking the chunk's 16-column steps w, w + 4, ...; f32: in SIMT, warp w taking
//      4 x 4 tiles of (i, k), its lanes splitting the columns, and a shuffle sum per tile. The bf16 path is on
//      the tensor cores because bf16's budget is half of f32's: at N = 12, K = 21 one column of bf16 leaves
//      about 7 SM cycles at full bandwidth, of which the SIMT dF already takes 2 in FMAs alone;
//   After its last chunk a block sums its warps' accumulators (in warp order) into partial[b] ([N, K] f32).
//   hypernet_dh: one block of DH_THREADS = 128 per (i, k); thread t adds partial[b] for b = t, t + 128, ... in
//   order, then a shuffle butterfly and the warps in order: a fixed order, so dH is the same run to run (on a
//   given device: G depends on its SM count). No atomics anywhere.
// Shared memory (dynamic, carved from hypernet_smem; slab rows padded by 16 bytes, so the 8 rows an ldmatrix
//   reads start 4 banks apart; carves `fwd_smem_bytes` and `bwd_smem_bytes` in kernels/src/hypernet.rs):
//   forward  slab F [K][STRIDE] T, coef [K][round_up(N, 12)] f32;
//   backward slab F [K'][STRIDE] T, slab dW [N'][STRIDE] T, coef [N][round_up(K, 12)] f32, dh [4][N][K] f32,
//            with K' = round_up(K, 16), N' = round_up(N, 16) for bf16 (the rows an mma tile reads; the padding
//            rows are never written, and feed only products past N or K, which are never stored), K and N for f32.
//   At N = 12, K = 21: forward 22 KB (bf16) / 43 KB (f32), backward 54 KB / 72 KB.
// Preconditions: N, K >= 0 and P >= 1 (the launcher launches nothing for P = 0); the grid within the share
//   arithmetic (G x ceil(P / 8) < 2^64, checked by the launcher); every buffer 16-byte aligned, as the device
//   allocator's are (an f32 dF over a bf16 F then starts its rows 32-byte aligned whenever F's are 16).
// Reference: runtime/src/cpu/hypernet.rs through runtime/src/ops/hypernet.rs (generate, generate_bwd_acc); test:
//   tests/tests/gpu_hypernet.rs (`#[ignore = "needs a CUDA GPU"]`); the host emulator harness
//   bench/hypernet/emu/harness.cpp runs these kernels on the CPU against a double-precision reference.

#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

#define FULL_MASK 0xffffffffu

// ---- the work split ----

// 4 warps: enough loads in flight with several blocks per SM, and 4 warps to split a chunk's mma steps.
constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;
// Columns per thread in the combine: 4 x ROWS = 48 accumulators, so the kernels stay near 64 to 96 registers and
// 5 to 8 blocks fit an SM. 4 columns are 16 bytes of f32 and 8 of bf16 per load and store.
constexpr int COLS = 4;
// Columns per chunk: one per thread's 4, so every thread has work in a full chunk.
constexpr int CHUNK = THREADS * COLS;
// Output rows per pass of the combine: N = 12 (the GPT-2-small-shaped model's evaluation times) in one pass, and
// K = 21 in two; more rows would spill past 128 registers with bf16's conversions.
constexpr int ROWS = 12;
// Block shares start at multiples of 8 columns: 16 bytes of bf16 (and 32 of f32), so a share's cp.async copies
// start aligned when P is.
constexpr int SHARE_ALIGN = 8;
// Bytes of padding at the end of each slab row (see the header).
constexpr int PAD_BYTES = 16;
// Rows of one mma tile: the bf16 slabs are padded to a multiple of it.
constexpr int MMA_ROWS = 16;
// Threads of the dH reduction, one block per (i, k).
constexpr int DH_THREADS = 128;
// Blocks per SM the f32 backward is compiled for (`__launch_bounds__`), which caps it at 65536 / (4 x 128) = 128
// registers: left free, ptxas hoists the 12 rows' acc loads and takes 149 (3 blocks per SM by registers); held to
// 128 it takes 119, without spills. (The bf16 backward stays at 122 unbounded.)
constexpr int BWD_F32_BLOCKS = 4;

// Elements of T per 16-byte copy, and per padded slab row.
template <typename T>
__host__ __device__ constexpr int vec_elems() {
    return 16 / (int)sizeof(T);
}
template <typename T>
__host__ __device__ constexpr int slab_stride() {
    return CHUNK + PAD_BYTES / (int)sizeof(T);
}

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// The dynamic shared memory the launcher sizes; each kernel carves it.
extern __shared__ __align__(16) unsigned char hypernet_smem[];

// The carves (the launcher's fwd_smem_bytes and bwd_smem_bytes compute the same; a CPU test compares them):
// rows of F's and dW's backward slabs (whole mma tiles for bf16), and the bytes of each kernel's shared memory.
template <typename T>
__host__ __device__ constexpr int bwd_slab_rows(int rows) {
    return sizeof(T) == 2 ? round_up(rows, MMA_ROWS) : rows;
}
template <typename T>
__host__ __device__ constexpr int fwd_smem_bytes(int n, int k) {
    return k * slab_stride<T>() * (int)sizeof(T) + k * round_up(n, ROWS) * 4;
}
template <typename T>
__host__ __device__ constexpr int bwd_smem_bytes(int n, int k) {
    int slabs = (bwd_slab_rows<T>(k) + bwd_slab_rows<T>(n)) * slab_stride<T>() * (int)sizeof(T);
    return slabs + n * round_up(k, ROWS) * 4 + WARPS * n * k * 4;
}

// ---- asynchronous copies and the tensor-core instructions ----
// The host emulator (bench/hypernet/emu) compiles this file as C++ with HYPERNET_EMULATE defined and supplies its
// own cp_async_*, ldmatrix_x4 and mma_bf16: inline PTX has no host meaning. The same wrappers as flash.cu's.
#ifndef HYPERNET_EMULATE
// 16 bytes from global to shared memory without passing through registers (.cg: cached in L2 only); `valid`
// false writes 16 zero bytes instead (a source size of 0 reads nothing).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(valid ? 16 : 0)
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

// Four 8 x 8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8 (16 bytes,
// 16-byte aligned), and register i of lane 4 g + t receives matrix i's row g, columns 2t and 2t + 1.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// d += a b for one m16n8k16 tile: a [16, 16] row-major, b [16, 8] column-major, d [16, 8] f32.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// ---- elements: f32 in registers, T in memory ----

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store1(float* p, float v) { *p = v; }
__device__ __forceinline__ void store1(bf16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ float zero_of(float) { return 0.0f; }
__device__ __forceinline__ bf16 zero_of(bf16) { return __float2bfloat16(0.0f); }

// Four consecutive elements as f32: one 16-byte load of f32, one 8-byte load of bf16 (a bf16 is the top half of
// the f32 with the same value). The address is 16- (f32) or 8-byte (bf16) aligned.
__device__ __forceinline__ void load4(float (&v)[COLS], const float* s) {
    float4 x = *reinterpret_cast<const float4*>(s);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}
__device__ __forceinline__ void load4(float (&v)[COLS], const bf16* s) {
    uint2 x = *reinterpret_cast<const uint2*>(s);
    v[0] = __uint_as_float(x.x << 16), v[1] = __uint_as_float(x.x & 0xffff0000u);
    v[2] = __uint_as_float(x.y << 16), v[3] = __uint_as_float(x.y & 0xffff0000u);
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<unsigned*>(&v);
}

// Four consecutive elements from f32, rounded to T; same alignment as load4.
__device__ __forceinline__ void store4(float* d, const float (&v)[COLS]) {
    *reinterpret_cast<float4*>(d) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(bf16* d, const float (&v)[COLS]) {
    uint2 x;
    x.x = pack_bf16(v[0], v[1]), x.y = pack_bf16(v[2], v[3]);
    *reinterpret_cast<uint2*>(d) = x;
}

__device__ __forceinline__ u64 min_u64(u64 a, u64 b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// ---- phase 0: the block's share of the columns ----

// Block b's columns [lo, hi) of the P columns cut into `blocks` near-equal shares at multiples of SHARE_ALIGN.
// Every share is non-empty while blocks <= ceil(P / 8), which the launcher's G guarantees.
__device__ __forceinline__ void column_share(u64 b, u64 blocks, u64 p, u64& lo, u64& hi) {
    u64 units = (p + SHARE_ALIGN - 1) / SHARE_ALIGN;
    lo = min_u64(p, b * units / blocks * SHARE_ALIGN);
    hi = min_u64(p, (b + 1) * units / blocks * SHARE_ALIGN);
}

// ---- phase 1: load slabs ----

// Starts copying rows [0, rows) of columns [c0, c0 + width) into `slab` ([rows][STRIDE]), row r from
// row_ptr(r) + c0; the columns [width, CHUNK) become zeros. Aligned: 16-byte cp.async copies, committed as one
// group for the caller's cp_async_wait; width is then a multiple of vec_elems (shares start at multiples of 8
// columns and P is a multiple of the vector). Not aligned: plain loads, complete on return. Either way the
// slab may be read only after a __syncthreads that follows the wait.
template <typename T, typename RowPtr>
__device__ void load_slab(T* slab, RowPtr row_ptr, int rows, u64 c0, int width, bool aligned) {
    constexpr int STRIDE = slab_stride<T>();
    if (aligned) {
        constexpr int V = vec_elems<T>();
        constexpr int SEGS = CHUNK / V;  // 16-byte segments per row
        for (int s = threadIdx.x; s < rows * SEGS; s += THREADS) {
            int r = s / SEGS, j = (s % SEGS) * V;
            const T* row = row_ptr(r);
            bool valid = j < width;
            cp_async_16(slab + r * STRIDE + j, valid ? row + c0 + j : row, valid);
        }
        cp_async_commit();
    } else {
        for (int e = threadIdx.x; e < rows * CHUNK; e += THREADS) {
            int r = e / CHUNK, j = e % CHUNK;
            slab[r * STRIDE + j] = j < width ? row_ptr(r)[c0 + j] : zero_of(T());
        }
    }
}

// ---- phase 2: combine ----

// Writes `rows` (<= ROWS) rows of 4 summed columns at d, d + p, ...: `cols` (<= 4) columns of each, one
// vector store per row when aligned (cols is then 4). With `acc` (laid out as d; nullptr: none) each element is
// acc + sum, acc read in the same step and the sum rounded once, to O.
template <typename O>
__device__ __forceinline__ void write_rows(O* d, const O* acc, u64 p, const float (&sum)[ROWS][COLS], int rows,
                                           int cols, bool aligned) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (r >= rows) break;
        const u64 at = r * p;
        float v[COLS] = {sum[r][0], sum[r][1], sum[r][2], sum[r][3]};
        if (aligned) {
            if (acc) {
                float a[COLS];
                load4(a, acc + at);
#pragma unroll
                for (int c = 0; c < COLS; c++) v[c] = a[c] + v[c];
            }
            store4(d + at, v);
        } else {
#pragma unroll
            for (int c = 0; c < COLS; c++)
                if (c < cols) store1(d + at + c, acc ? to_f32(acc[at + c]) + v[c] : v[c]);
        }
    }
}

// out[r][c0 + j] = (acc[r][c0 + j] +) sum_{q < in_rows} coef[q][r] slab[q][j] for r < out_rows and j < width,
// out's (and acc's) rows p apart and coef's rows coef_stride apart (a multiple of ROWS, zero past out_rows).
// Thread t computes j = 4t .. 4t + 3, ROWS output rows per pass over the slab; the coefficients of one q are the
// same for every thread (a broadcast read).
template <typename T, typename O>
__device__ void combine(O* out, const O* acc, u64 p, u64 c0, int width, const float* coef, int coef_stride,
                        const T* slab, int in_rows, int out_rows, bool aligned) {
    constexpr int STRIDE = slab_stride<T>();
    const int j = threadIdx.x * COLS;
    if (j >= width) return;
    for (int r0 = 0; r0 < out_rows; r0 += ROWS) {
        float sum[ROWS][COLS] = {};
        for (int q = 0; q < in_rows; q++) {
            float x[COLS];
            load4(x, slab + q * STRIDE + j);
            // ROWS coefficients as 16-byte broadcast loads: coef_stride and r0 are multiples of 4
            const float4* cq = reinterpret_cast<const float4*>(coef + q * coef_stride + r0);
#pragma unroll
            for (int r4 = 0; r4 < ROWS / 4; r4++) {
                float4 a4 = cq[r4];
                float a[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int c = 0; c < COLS; c++) sum[4 * r4 + r][c] = fmaf(a[r], x[c], sum[4 * r4 + r][c]);
            }
        }
        int rows = out_rows - r0 < ROWS ? out_rows - r0 : ROWS;
        int cols = width - j < COLS ? width - j : COLS;
        const u64 at = r0 * p + c0 + j;
        write_rows(out + at, acc ? acc + at : acc, p, sum, rows, cols, aligned);
    }
}

// ---- phase 3: this chunk's share of dH, into the warp's accumulators ----

// f32, SIMT: warp w takes the 4 x 4 tiles (i0.., k0..) w, w + 4, ...; lane l sums columns 4l .. 4l + 3,
// 4l + 128 .., of the tile's 16 dot products, and a butterfly adds the lanes. Rows past N or K are read clamped
// (a real row) and their sums dropped. Columns past width are zeros in both slabs.
__device__ void dh_chunk(float* acc, const float* f_slab, const float* dw_slab, int n, int k, int width) {
    constexpr int STRIDE = slab_stride<float>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tiles_k = (k + 3) / 4, tiles = (n + 3) / 4 * tiles_k;
    for (int t = warp; t < tiles; t += WARPS) {
        const int i0 = t / tiles_k * 4, k0 = t % tiles_k * 4;
        float s[4][4] = {};
        for (int j = lane * COLS; j < width; j += 32 * COLS) {
            float a[4][COLS], b[4][COLS];
#pragma unroll
            for (int x = 0; x < 4; x++) load4(a[x], dw_slab + min(i0 + x, n - 1) * STRIDE + j);
#pragma unroll
            for (int y = 0; y < 4; y++) load4(b[y], f_slab + min(k0 + y, k - 1) * STRIDE + j);
#pragma unroll
            for (int x = 0; x < 4; x++)
#pragma unroll
                for (int y = 0; y < 4; y++)
#pragma unroll
                    for (int c = 0; c < COLS; c++) s[x][y] = fmaf(a[x][c], b[y][c], s[x][y]);
        }
#pragma unroll
        for (int x = 0; x < 4; x++)
#pragma unroll
            for (int y = 0; y < 4; y++) {
                float v = warp_sum(s[x][y]);
                if (lane == 0 && i0 + x < n && k0 + y < k) acc[(i0 + x) * k + k0 + y] += v;
            }
    }
}

// bf16, tensor cores: for each [16 (i), 32 (k)] block of dH, warp w walks the chunk's 16-column steps w, w + 4,
// ...: A = dW's slab rows i0 .. i0 + 15 (one ldmatrix.x4), B = F's slab rows k0 .. k0 + 31 as four 8-column tiles
// (two ldmatrix.x4, the second only where K reaches past k0 + 16). Accumulator e of tile j of lane 4g + t is
// (i0 + g + 8 (e / 2), k0 + 8j + 2t + e % 2); entries past N or K come from padding rows and are dropped.
__device__ void dh_chunk(float* acc, const bf16* f_slab, const bf16* dw_slab, int n, int k, int width) {
    constexpr int STRIDE = slab_stride<bf16>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    // the rows and columns lane l addresses in an ldmatrix.x4 of A (16 x 16) and of two B tiles (16 x 8 each)
    const int a_row = lane % 16, a_col = lane / 16 * 8;
    const int b_row = lane / 16 * 8 + lane % 8, b_col = lane / 8 % 2 * 8;
    for (int i0 = 0; i0 < n; i0 += MMA_ROWS)
        for (int k0 = 0; k0 < k; k0 += 2 * MMA_ROWS) {
            const bool second = k0 + MMA_ROWS < k;
            float d[4][4] = {};
            for (int c = warp * MMA_ROWS; c < width; c += WARPS * MMA_ROWS) {
                unsigned a[4], b[4];
                ldmatrix_x4(a, dw_slab + (i0 + a_row) * STRIDE + c + a_col);
                ldmatrix_x4(b, f_slab + (k0 + b_row) * STRIDE + c + b_col);
                mma_bf16(d[0], a, b[0], b[1]);
                mma_bf16(d[1], a, b[2], b[3]);
                if (second) {
                    ldmatrix_x4(b, f_slab + (k0 + MMA_ROWS + b_row) * STRIDE + c + b_col);
                    mma_bf16(d[2], a, b[0], b[1]);
                    mma_bf16(d[3], a, b[2], b[3]);
                }
            }
#pragma unroll
            for (int jt = 0; jt < 4; jt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = i0 + g + 8 * (e / 2), q = k0 + 8 * jt + 2 * t + e % 2;
                    if (i < n && q < k) acc[i * k + q] += d[jt][e];
                }
        }
}

// ---- the kernels ----

// Shapes: w [N, P] (written), h [N, K], f [K, P]
template <typename T, typename H>
__device__ void hypernet_fwd(T* w, const H* h, const T* f, int n, int k, u64 p) {
    constexpr int STRIDE = slab_stride<T>();
    const int n_pad = round_up(n, ROWS);
    T* slab = reinterpret_cast<T*>(hypernet_smem);                                       // [K][STRIDE]
    float* coef = reinterpret_cast<float*>(hypernet_smem + k * STRIDE * sizeof(T));       // [K][n_pad]
    // coef[q][i] = h[i, q], zero for the padding rows i >= N
    for (int e = threadIdx.x; e < k * n_pad; e += THREADS) {
        int q = e / n_pad, i = e % n_pad;
        coef[e] = i < n ? to_f32(h[i * k + q]) : 0.0f;
    }
    const bool aligned = p % vec_elems<T>() == 0;
    u64 lo, hi;
    column_share(blockIdx.x, gridDim.x, p, lo, hi);
    for (u64 c0 = lo; c0 < hi; c0 += CHUNK) {
        const int width = (int)min_u64(CHUNK, hi - c0);
        load_slab(slab, [&](int r) { return f + r * p; }, k, c0, width, aligned);
        if (aligned) cp_async_wait<0>();
        __syncthreads();  // the slab (and, the first time, coef) is complete
        combine(w, (const T*)nullptr, p, c0, width, coef, n_pad, slab, k, n, aligned);
        __syncthreads();  // everyone is done with the slab before the next chunk's copies land in it
    }
}

// Shapes: df [K, P] (written, O), partial [G, N, K] f32 (written), dws N x [P], h [N, K], f [K, P],
//         acc [K, P] (O, or nullptr)
template <typename T, typename H, typename O>
__device__ void hypernet_bwd(O* df, float* partial, const T* const* dws, const H* h, const T* f, const O* acc, int n,
                             int k, u64 p) {
    constexpr int STRIDE = slab_stride<T>();
    const int f_rows = bwd_slab_rows<T>(k), dw_rows = bwd_slab_rows<T>(n);
    const int k_pad = round_up(k, ROWS);
    unsigned char* at = hypernet_smem;
    T* f_slab = reinterpret_cast<T*>(at);  // [f_rows][STRIDE]
    at += f_rows * STRIDE * sizeof(T);
    T* dw_slab = reinterpret_cast<T*>(at);  // [dw_rows][STRIDE]
    at += dw_rows * STRIDE * sizeof(T);
    float* coef = reinterpret_cast<float*>(at);  // [N][k_pad]: coef[i][q] = h[i, q], zero for q >= K
    at += n * k_pad * sizeof(float);
    float* dh = reinterpret_cast<float*>(at);  // [WARPS][N][K]
    for (int e = threadIdx.x; e < n * k_pad; e += THREADS) {
        int i = e / k_pad, q = e % k_pad;
        coef[e] = q < k ? to_f32(h[i * k + q]) : 0.0f;
    }
    for (int e = threadIdx.x; e < WARPS * n * k; e += THREADS) dh[e] = 0.0f;
    const bool aligned = p % vec_elems<T>() == 0;
    u64 lo, hi;
    column_share(blockIdx.x, gridDim.x, p, lo, hi);
    float* mine = dh + threadIdx.x / 32 * n * k;
    for (u64 c0 = lo; c0 < hi; c0 += CHUNK) {
        const int width = (int)min_u64(CHUNK, hi - c0);
        load_slab(f_slab, [&](int r) { return f + r * p; }, k, c0, width, aligned);
        load_slab(dw_slab, [&](int r) { return dws[r]; }, n, c0, width, aligned);
        if (aligned) cp_async_wait<0>();
        __syncthreads();  // both slabs (and, the first time, coef and the zeroed dh) are complete
        combine(df, acc, p, c0, width, coef, k_pad, dw_slab, n, k, aligned);
        dh_chunk(mine, f_slab, dw_slab, n, k, width);
        __syncthreads();  // everyone is done with the slabs before the next chunk's copies land in them
    }
    // the block's partial: its warps' sums, added in warp order
    __syncthreads();
    for (int e = threadIdx.x; e < n * k; e += THREADS) {
        float s = 0.0f;
        for (int w = 0; w < WARPS; w++) s += dh[w * n * k + e];
        partial[(u64)blockIdx.x * n * k + e] = s;
    }
}

// dh[q] = sum_b partial[b][q], block q. Shapes: dh [N K] (written), partial [blocks, N K] f32
template <typename H>
__device__ void hypernet_dh(H* dh, const float* partial, int blocks, int nk) {
    float* per_warp = reinterpret_cast<float*>(hypernet_smem);  // [DH_THREADS / 32]
    const int q = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float s = 0.0f;
    for (int b = threadIdx.x; b < blocks; b += DH_THREADS) s += partial[(u64)b * nk + q];
    s = warp_sum(s);
    if (lane == 0) per_warp[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < DH_THREADS / 32; w++) total += per_warp[w];
        store1(dh + q, total);
    }
}

// ---- the entry points: hypernet_{fwd,bwd}_{T}_h{H}, hypernet_bwd_bf16_h{H}_accf32 and hypernet_dh_{H};
// outputs, then inputs, then sizes ----

extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_fwd_f32_hf32(float* w, const float* h, const float* f, int n, int k, u64 p) {
    hypernet_fwd(w, h, f, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_fwd_f32_hbf16(float* w, const bf16* h, const float* f, int n, int k, u64 p) {
    hypernet_fwd(w, h, f, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_fwd_bf16_hf32(bf16* w, const float* h, const bf16* f, int n, int k, u64 p) {
    hypernet_fwd(w, h, f, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_fwd_bf16_hbf16(bf16* w, const bf16* h, const bf16* f, int n, int k, u64 p) {
    hypernet_fwd(w, h, f, n, k, p);
}

// the backward's dF (and acc) in T; `_accf32`: a bf16 T's dF (and acc) in f32
extern "C" __global__ void __launch_bounds__(THREADS, BWD_F32_BLOCKS)
    hypernet_bwd_f32_hf32(float* df, float* partial, const float* const* dws, const float* h, const float* f,
                          const float* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS, BWD_F32_BLOCKS)
    hypernet_bwd_f32_hbf16(float* df, float* partial, const float* const* dws, const bf16* h, const float* f,
                           const float* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_bwd_bf16_hf32(bf16* df, float* partial, const bf16* const* dws, const float* h, const bf16* f,
                           const bf16* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_bwd_bf16_hbf16(bf16* df, float* partial, const bf16* const* dws, const bf16* h, const bf16* f,
                            const bf16* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_bwd_bf16_hf32_accf32(float* df, float* partial, const bf16* const* dws, const float* h, const bf16* f,
                                  const float* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}
extern "C" __global__ void __launch_bounds__(THREADS)
    hypernet_bwd_bf16_hbf16_accf32(float* df, float* partial, const bf16* const* dws, const bf16* h, const bf16* f,
                                   const float* acc, int n, int k, u64 p) {
    hypernet_bwd(df, partial, dws, h, f, acc, n, k, p);
}

extern "C" __global__ void __launch_bounds__(DH_THREADS)
    hypernet_dh_f32(float* dh, const float* partial, int blocks, int nk) {
    hypernet_dh(dh, partial, blocks, nk);
}
extern "C" __global__ void __launch_bounds__(DH_THREADS)
    hypernet_dh_bf16(bf16* dh, const float* partial, int blocks, int nk) {
    hypernet_dh(dh, partial, blocks, nk);
}
