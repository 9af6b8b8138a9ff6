// emu.h: just enough of CUDA to run the flash kernels (bench/flash/v*.cu) on the host, one std::thread per CUDA
// thread, so their index arithmetic, masking, tiling and barriers can be checked on a machine with no GPU.
//
// What it models, and how:
//   - blocks run one after another; the threads of a block run concurrently, __syncthreads is a std::barrier;
//   - __shared__ memory is the one `flash_smem` array (filled with 0xFF bytes, bf16 NaNs, before each block, so
//     a read of a row nobody wrote poisons the result);
//   - warp-wide instructions (mma.sync, ldmatrix, shfl) meet at a per-warp barrier: every lane posts its
//     operands, every lane then reads what the PTX ISA says it receives. The fragment layouts below are written
//     from the ISA's tables ("Matrix Fragments for mma.m16n8k16", "ldmatrix"), not copied from the kernels;
//   - cp.async copies are queued per thread and performed at cp.async.wait_group (LAZY, the latest the hardware
//     may complete them: catches a read before the wait) or at issue (EAGER: with -fsanitize=thread, catches a
//     copy into a buffer another warp still reads).
// What it cannot check: timing, bank conflicts, register pressure, or whether the ISA tables were read right
// (a mistake here and in a kernel would agree). Built and run by bench/flash/emu/run.sh.
#pragma once
#include <algorithm>
#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "cuda_bf16.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define FLASH_EMULATE 1

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float __int_as_float(unsigned bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
using std::max;
using std::min;

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;

namespace emu {

constexpr size_t SMEM_CAPACITY = 256 * 1024;
constexpr size_t CANARY = 64;

struct Warp {
    std::barrier<> bar{32};
    uint32_t word[32][8];
    const void* addr[32];
};

struct Block {
    explicit Block(unsigned threads) : bar(threads), warps(new Warp[threads / 32]) {}
    std::barrier<> bar;
    std::unique_ptr<Warp[]> warps;
};

inline Block* block = nullptr;
inline thread_local int lane_id = 0, warp_id = 0;
inline bool eager_copies = false;

inline Warp& warp() { return block->warps[warp_id]; }

// a warp-wide step: post, meet, read, meet (so no lane overwrites its post before every lane has read it)
template <typename Post, typename Read>
inline void warp_step(Post post, Read read) {
    Warp& w = warp();
    post(w);
    w.bar.arrive_and_wait();
    read(w);
    w.bar.arrive_and_wait();
}

inline float bf(uint32_t bits16) { return __bfloat162float({(uint16_t)bits16}); }

struct Copy {
    void* dst;
    const void* src;
    int bytes;
    bool valid;
};
inline thread_local std::vector<Copy> open_group;
inline thread_local std::vector<std::vector<Copy>> committed;

inline void perform(const Copy& c) {
    if (c.valid)
        std::memcpy(c.dst, c.src, c.bytes);
    else
        std::memset(c.dst, 0, c.bytes);
}

}  // namespace emu

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    float r;
    emu::warp_step([&](emu::Warp& w) { std::memcpy(&w.word[emu::lane_id][0], &v, 4); },
                   [&](emu::Warp& w) { std::memcpy(&r, &w.word[emu::lane_id ^ mask][0], 4); });
    return r;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, lane = 4 g + t:
//   A register r holds row g + 8 (r % 2), columns 2t + 8 (r / 2) and + 1 (the lower in the low half);
//   B register r holds column g, rows 2t + 8 r and + 1; accumulator e is row g + 8 (e / 2), column 2t + e % 2.
inline void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    float A[16][16], B[16][8];
    emu::warp_step(
        [&](emu::Warp& w) {
            for (int r = 0; r < 4; r++) w.word[emu::lane_id][r] = a[r];
            w.word[emu::lane_id][4] = b0;
            w.word[emu::lane_id][5] = b1;
        },
        [&](emu::Warp& w) {
            for (int l = 0; l < 32; l++) {
                int g = l / 4, t = l % 4;
                for (int r = 0; r < 4; r++) {
                    uint32_t x = w.word[l][r];
                    int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
                    A[row][col] = emu::bf(x & 0xffff);
                    A[row][col + 1] = emu::bf(x >> 16);
                }
                for (int r = 0; r < 2; r++) {
                    uint32_t x = w.word[l][4 + r];
                    int k = 2 * t + 8 * r;
                    B[k][g] = emu::bf(x & 0xffff);
                    B[k + 1][g] = emu::bf(x >> 16);
                }
            }
        });
    int g = emu::lane_id / 4, t = emu::lane_id % 4;
    for (int e = 0; e < 4; e++) {
        int row = g + 8 * (e / 2), col = 2 * t + e % 2;
        float acc = d[e];
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
        d[e] = acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l gives the address of row l % 8 of matrix l / 8 (16
// bytes, 16-byte aligned). Register i of lane 4 g + t holds matrix i's (row g, columns 2t, 2t + 1), or with
// .trans its (rows 2t, 2t + 1, column g).
inline void emu_ldmatrix(unsigned (&r)[4], const void* p, bool trans) {
    assert(((uintptr_t)p & 15) == 0 && "ldmatrix rows are 16-byte aligned");
    emu::warp_step([&](emu::Warp& w) { w.addr[emu::lane_id] = p; },
                   [&](emu::Warp& w) {
                       int g = emu::lane_id / 4, t = emu::lane_id % 4;
                       for (int i = 0; i < 4; i++) {
                           uint16_t lo, hi;
                           if (!trans) {
                               const uint16_t* row = (const uint16_t*)w.addr[i * 8 + g];
                               lo = row[2 * t], hi = row[2 * t + 1];
                           } else {
                               lo = ((const uint16_t*)w.addr[i * 8 + 2 * t])[g];
                               hi = ((const uint16_t*)w.addr[i * 8 + 2 * t + 1])[g];
                           }
                           r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
                       }
                   });
}

template <typename T>
inline void ldmatrix_x4(unsigned (&r)[4], const T* p) {
    emu_ldmatrix(r, p, false);
}
template <typename T>
inline void ldmatrix_x4_trans(unsigned (&r)[4], const T* p) {
    emu_ldmatrix(r, p, true);
}

// cp.async.{cg,ca}.shared.global with a source size of `bytes` or 0 (zero fill)
inline void emu_cp_async(void* dst, const void* src, int bytes, bool valid) {
    assert(((uintptr_t)dst % bytes) == 0 && ((uintptr_t)src % bytes) == 0 && "cp.async operands are aligned");
    emu::Copy c{dst, src, bytes, valid};
    if (emu::eager_copies)
        emu::perform(c);
    else
        emu::open_group.push_back(c);
}
inline void cp_async_16(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, 16, valid); }
inline void cp_async_4(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, 4, valid); }
inline void cp_async_commit() {
    emu::committed.push_back(std::move(emu::open_group));
    emu::open_group.clear();
}
template <int N>
inline void cp_async_wait() {
    while (emu::committed.size() > (size_t)N) {
        for (const emu::Copy& c : emu::committed.front()) emu::perform(c);
        emu::committed.erase(emu::committed.begin());
    }
}

// the dynamic shared memory every kernel carves
alignas(16) unsigned char flash_smem[emu::SMEM_CAPACITY];

namespace emu {

// Runs `kernel` on every block of `grid`, `threads` threads each, with `smem` bytes of dynamic shared memory.
// Fails (exits) when a block writes past its shared memory or leaves cp.async copies it never waited for.
inline void launch(dim3 grid, unsigned threads, size_t smem, const std::function<void()>& kernel) {
    if (smem + CANARY > SMEM_CAPACITY) {
        std::fprintf(stderr, "emu: %zu bytes of shared memory, more than the emulator holds\n", smem);
        std::exit(1);
    }
    gridDim = grid;
    blockDim = {threads, 1, 1};
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            std::memset(flash_smem, 0xff, smem + CANARY);
            Block b(threads);
            block = &b;
            std::vector<std::thread> pool;
            std::vector<int> leftover(threads, 0);
            for (unsigned i = 0; i < threads; i++)
                pool.emplace_back([&, i] {
                    threadIdx = {i, 0, 0};
                    blockIdx = {bx, by, 0};
                    lane_id = i % 32, warp_id = i / 32;
                    kernel();
                    leftover[i] = (int)(committed.size() + open_group.size());
                    committed.clear(), open_group.clear();
                });
            for (auto& th : pool) th.join();
            block = nullptr;
            for (size_t i = smem; i < smem + CANARY; i++)
                if (flash_smem[i] != 0xff) {
                    std::fprintf(stderr, "emu: block (%u, %u) wrote past its %zu bytes of shared memory\n", bx, by,
                                 smem);
                    std::exit(1);
                }
            if (*std::max_element(leftover.begin(), leftover.end()) > 0) {
                std::fprintf(stderr, "emu: block (%u, %u) left cp.async copies it never waited for\n", bx, by);
                std::exit(1);
            }
        }
}

}  // namespace emu
