// embedding.cu: the embedding lookup (a gather of table rows) and its backward (a scatter-add).
//
// Computes, for the n positions i (tokens) and the D columns c:
//   embedding_fwd:  out[i, c] = weight[ids[i], c]
//   embedding_bwd:  dweight[ids[i], c] += dout[i, c]          (a token seen k times gets k rows)
// Layout: weight [V, D] and out [n, D] row-major, f32 or bf16 (the same type for both; a gather
//   copies bits, so bf16 stays exact); ids [n] u32; dout [n, D] f32 or bf16; dweight [V, D] f32.
// Accumulates: embedding_bwd ADDS into dweight, which the caller zeroes first for a plain
//   gradient (the allocating launcher does). embedding_fwd overwrites out.
// Work split: one block per position (one row of out or dout), its threads across the D columns,
//   so that a block's loads and stores are consecutive in memory and ids[i] is read once per
//   block. The launcher (kernels/src/embedding.rs `embedding_config`) picks D rounded up to a
//   warp, at most 256 threads (8 warps; wider rows loop), and min(n, 4224) blocks (132 SMs x 32
//   resident blocks, the most the H200 holds at once when blocks are small); past that, each
//   block strides over positions.
// Shared memory: none. Preconditions: n, V, D < 2^63 and V D < 2^63.
// Out-of-range ids: an id >= V is skipped (its row of out is left unwritten; it adds nothing to
//   dweight), so a bad id can never read or write out of bounds. The ids live on the device, so
//   the launcher cannot check them; the runtime validates them on the host before the upload
//   (runtime/src/ops/embedding.rs `check_ids` names the first bad one).
// Determinism: the backward's atomicAdd on f32 makes the order in which the rows of a repeated
//   token are added depend on scheduling, so the last bits of dweight can differ from run to run
//   (the CPU adds in position order). A deterministic version would sort the positions by id
//   (a radix sort of (id, i) pairs), then have one block per distinct id sum its positions in
//   sorted order and store the row once, with no atomics.
// Reference: runtime/src/ops/embedding.rs `embedding_fwd` / `embedding_bwd`;
//   test: tests/tests/gpu_embedding.rs.

#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef unsigned int u32;
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return __bfloat162float(p[i]); }

// the position loop and the column loop shared by both kernels: row i of n, column c of d
#define FOR_EACH_POSITION(i, n) for (u64 i = blockIdx.x; i < (n); i += gridDim.x)
#define FOR_EACH_COLUMN(c, d) for (u64 c = threadIdx.x; c < (d); c += blockDim.x)

// ---- forward: a gather (T is float or bf16; the copy moves bits, no rounding) ----

template <typename T>
__device__ void embedding_fwd(T* out, const T* weight, const u32* ids, u64 n, u64 vocab, u64 d) {
    FOR_EACH_POSITION(i, n) {
        u64 id = ids[i];
        if (id >= vocab) continue;  // never read outside the table (see the header)
        FOR_EACH_COLUMN(c, d) { out[i * d + c] = weight[id * d + c]; }
    }
}

// ---- backward: a scatter-add into the f32 table gradient (accumulates) ----

template <typename T>
__device__ void embedding_bwd(float* dweight, const T* dout, const u32* ids, u64 n, u64 vocab, u64 d) {
    FOR_EACH_POSITION(i, n) {
        u64 id = ids[i];
        if (id >= vocab) continue;  // never write outside the table
        FOR_EACH_COLUMN(c, d) { atomicAdd(&dweight[id * d + c], load(dout, i * d + c)); }
    }
}

// ---- the entry points; arguments: outputs, inputs, sizes ----

extern "C" __global__ void embedding_fwd_f32(float* out, const float* weight, const u32* ids, u64 n, u64 vocab,
                                             u64 d) {
    embedding_fwd(out, weight, ids, n, vocab, d);
}
extern "C" __global__ void embedding_fwd_bf16(bf16* out, const bf16* weight, const u32* ids, u64 n, u64 vocab,
                                              u64 d) {
    embedding_fwd(out, weight, ids, n, vocab, d);
}

extern "C" __global__ void embedding_bwd_f32(float* dweight, const float* dout, const u32* ids, u64 n, u64 vocab,
                                             u64 d) {
    embedding_bwd(dweight, dout, ids, n, vocab, d);
}
extern "C" __global__ void embedding_bwd_bf16(float* dweight, const bf16* dout, const u32* ids, u64 n, u64 vocab,
                                              u64 d) {
    embedding_bwd(dweight, dout, ids, n, vocab, d);
}
