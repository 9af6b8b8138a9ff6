// harness.cpp: kernels/cuda/hypernet.cu run under the flash workbench's host emulator (bench/flash/emu/emu.h)
// against a double-precision reference, forward, backward and the dH reduction, at ragged shapes, every dtype
// pair, and grids of one block, a few blocks, and one block per chunk (so a block walks one chunk, several, or a
// ragged share). The backward runs three more times into a gradient gathered so far (acc): in T, in f32 over a
// bf16 T (the `_accf32` entries), and those entries' f32 dF with no acc; each must leave the partials of dH
// bit for bit as the plain run's. No GPU and no CUDA toolkit: only g++.
//
// Inputs are drawn in f32, rounded to T (and H) once, and the reference reads the same values. The bar, element
// by element, is that of tests/tests/gpu_hypernet.rs:
//   |got - ref| <= 2 u |ref| + 2^-16 mag
// where u is the unit roundoff of the output's dtype (2^-8 for bf16, 2^-24 for f32) and mag the sum of the
// absolute values of the terms the output sums (sum_k |h_ik| |f_kc| for w, and so on). The kernels round once, on
// the store (u |ref|); the f32 sums before it carry at most a few dozen roundings of 2^-24 mag each (a chain of
// K or N terms for w and dF, and for dH a lane's 16 columns, a butterfly, one add per chunk, the warps, the
// blocks), which 2^-16 mag = 256 x 2^-24 mag covers with room.
//
//   bash bench/hypernet/emu/run.sh          # plain, then under ASan and TSan
#define HYPERNET_EMULATE 1
#include "emu.h"

// the few CUDA vector types and bit casts hypernet.cu uses beyond emu.h's
struct float4 {
    float x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float __uint_as_float(unsigned bits) { return __int_as_float(bits); }
#define hypernet_smem flash_smem

#include "../../../kernels/cuda/hypernet.cu"

#include <string>

namespace {

struct Rng {
    uint64_t s;
    double uniform() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return ((s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    float normal() { return (float)(std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform())); }
};

// an element type's values in memory and back
inline void put(float& d, float v) { d = v; }
inline void put(bf16& d, float v) { d = __float2bfloat16(v); }
inline float get(float x) { return x; }
inline float get(bf16 x) { return __bfloat162float(x); }
template <typename T>
double unit_roundoff() {
    return sizeof(T) == 2 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
}
template <typename T>
const char* name_of() {
    return sizeof(T) == 2 ? "bf16" : "f32";
}

template <typename T>
std::vector<T> normals(size_t n, Rng& rng) {
    std::vector<T> x(n);
    for (auto& v : x) put(v, rng.normal());
    return x;
}

template <typename T>
std::vector<T> poisoned(size_t n) {
    std::vector<T> x(n);
    std::memset(x.data(), 0xff, n * sizeof(T));  // NaN for bf16 and f32
    return x;
}

int failures = 0;

// |got - ref| <= 2 u |ref| + 2^-16 mag, element by element (a NaN fails)
template <typename T>
void check(const std::string& label, const std::vector<T>& got, const std::vector<double>& ref,
           const std::vector<double>& mag) {
    double worst = 0, u = unit_roundoff<T>();
    size_t at = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double err = std::fabs(get(got[i]) - ref[i]), tol = 2 * u * std::fabs(ref[i]) + std::ldexp(mag[i], -16);
        double ratio = std::isnan(err) ? INFINITY : err / std::max(tol, 1e-300);
        if (ratio > worst) worst = ratio, at = i;
    }
    bool ok = worst <= 1.0;
    if (!ok) failures++;
    std::printf("    %-6s %s (worst error %.3f of the bar, at %zu of %zu)\n", label.c_str(), ok ? "ok  " : "FAIL",
                worst, at, ref.size());
}

// The launcher's grid (kernels/src/hypernet.rs, `hypernet_blocks`): one block per chunk, capped at `resident`.
unsigned grid(u64 p, unsigned resident) {
    u64 chunks = (p + CHUNK - 1) / CHUNK;
    return (unsigned)std::min<u64>(chunks, resident);
}

void fwd(float* w, const float* h, const float* f, int n, int k, u64 p) { hypernet_fwd_f32_hf32(w, h, f, n, k, p); }
void fwd(float* w, const bf16* h, const float* f, int n, int k, u64 p) { hypernet_fwd_f32_hbf16(w, h, f, n, k, p); }
void fwd(bf16* w, const float* h, const bf16* f, int n, int k, u64 p) { hypernet_fwd_bf16_hf32(w, h, f, n, k, p); }
void fwd(bf16* w, const bf16* h, const bf16* f, int n, int k, u64 p) { hypernet_fwd_bf16_hbf16(w, h, f, n, k, p); }
// the backward by its types: dF (and acc) in T, or in f32 over a bf16 T (`_accf32`)
using cfloats = const float* const*;
using cbf16s = const bf16* const*;
void bwd(float* df, float* part, cfloats dws, const float* h, const float* f, const float* acc, int n, int k,
         u64 p) {
    hypernet_bwd_f32_hf32(df, part, dws, h, f, acc, n, k, p);
}
void bwd(float* df, float* part, cfloats dws, const bf16* h, const float* f, const float* acc, int n, int k,
         u64 p) {
    hypernet_bwd_f32_hbf16(df, part, dws, h, f, acc, n, k, p);
}
void bwd(bf16* df, float* part, cbf16s dws, const float* h, const bf16* f, const bf16* acc, int n, int k, u64 p) {
    hypernet_bwd_bf16_hf32(df, part, dws, h, f, acc, n, k, p);
}
void bwd(bf16* df, float* part, cbf16s dws, const bf16* h, const bf16* f, const bf16* acc, int n, int k, u64 p) {
    hypernet_bwd_bf16_hbf16(df, part, dws, h, f, acc, n, k, p);
}
void bwd(float* df, float* part, cbf16s dws, const float* h, const bf16* f, const float* acc, int n, int k,
         u64 p) {
    hypernet_bwd_bf16_hf32_accf32(df, part, dws, h, f, acc, n, k, p);
}
void bwd(float* df, float* part, cbf16s dws, const bf16* h, const bf16* f, const float* acc, int n, int k,
         u64 p) {
    hypernet_bwd_bf16_hbf16_accf32(df, part, dws, h, f, acc, n, k, p);
}
void dh_sum(float* dh, const float* part, int blocks, int nk) { hypernet_dh_f32(dh, part, blocks, nk); }
void dh_sum(bf16* dh, const float* part, int blocks, int nk) { hypernet_dh_bf16(dh, part, blocks, nk); }

// The backward into O, with acc (O, drawn from `rng`) or without (`with_acc` false): dF (acc + dF) held to the
// bar with acc's magnitude added, and the partials of dH bit for bit those of the plain run (`want_part`).
template <typename O, typename T, typename H>
void run_acc(const char* label, bool with_acc, const std::vector<const T*>& ptrs, const std::vector<H>& h,
             const std::vector<T>& f, const std::vector<double>& df_ref, const std::vector<double>& df_mag,
             const std::vector<float>& want_part, int n, int k, u64 p, unsigned blocks, Rng& rng) {
    std::vector<double> ref = df_ref, mag = df_mag;
    std::vector<O> acc;
    if (with_acc) {
        acc = normals<O>((size_t)k * p, rng);
        for (size_t e = 0; e < acc.size(); e++) ref[e] += get(acc[e]), mag[e] += std::fabs(get(acc[e]));
    }
    auto out = poisoned<O>((size_t)k * p);
    auto part = poisoned<float>((size_t)blocks * n * k);
    const O* acc_ptr = with_acc ? acc.data() : nullptr;
    emu::launch({blocks, 1, 1}, THREADS, bwd_smem_bytes<T>(n, k),
                [&] { bwd(out.data(), part.data(), ptrs.data(), h.data(), f.data(), acc_ptr, n, k, p); });
    check(label, out, ref, mag);
    if (std::memcmp(part.data(), want_part.data(), part.size() * sizeof(float)) != 0) {
        failures++;
        std::printf("    %-6s FAIL: the partials of dH differ from the plain backward's\n", label);
    }
}

// One shape, one dtype pair (T for f, w, dF, dW; H for h, dH), one grid cap.
template <typename T, typename H>
void run_case(int n, int k, u64 p, unsigned resident, uint64_t seed) {
    unsigned blocks = grid(p, resident);
    std::printf("  N %d, K %d, P %llu, %s, h %s, %u blocks\n", n, k, (unsigned long long)p, name_of<T>(),
                name_of<H>(), blocks);
    Rng rng{seed};
    auto h = normals<H>((size_t)n * k, rng);
    auto f = normals<T>((size_t)k * p, rng);
    std::vector<std::vector<T>> dws;
    for (int i = 0; i < n; i++) dws.push_back(normals<T>(p, rng));

    // the reference, in double, from the values the kernels read
    std::vector<double> w_ref((size_t)n * p), w_mag((size_t)n * p), df_ref((size_t)k * p), df_mag((size_t)k * p);
    std::vector<double> dh_ref((size_t)n * k), dh_mag((size_t)n * k);
    for (int i = 0; i < n; i++)
        for (int q = 0; q < k; q++) {
            double a = get(h[(size_t)i * k + q]);
            for (u64 c = 0; c < p; c++) {
                double x = get(f[q * p + c]), g = get(dws[i][c]);
                w_ref[i * p + c] += a * x, w_mag[i * p + c] += std::fabs(a * x);
                df_ref[q * p + c] += a * g, df_mag[q * p + c] += std::fabs(a * g);
                dh_ref[(size_t)i * k + q] += g * x, dh_mag[(size_t)i * k + q] += std::fabs(g * x);
            }
        }

    auto w = poisoned<T>((size_t)n * p);
    emu::launch({blocks, 1, 1}, THREADS, fwd_smem_bytes<T>(n, k),
                [&] { fwd(w.data(), h.data(), f.data(), n, k, p); });
    check("w", w, w_ref, w_mag);

    std::vector<const T*> ptrs;
    for (auto& d : dws) ptrs.push_back(d.data());
    auto df = poisoned<T>((size_t)k * p);
    auto part = poisoned<float>((size_t)blocks * n * k);
    emu::launch({blocks, 1, 1}, THREADS, bwd_smem_bytes<T>(n, k),
                [&] { bwd(df.data(), part.data(), ptrs.data(), h.data(), f.data(), (const T*)nullptr, n, k, p); });
    check("df", df, df_ref, df_mag);
    // into a gradient gathered so far: in T, and for a bf16 T in f32 (with and without acc)
    run_acc<T>("acc+df", true, ptrs, h, f, df_ref, df_mag, part, n, k, p, blocks, rng);
    if constexpr (sizeof(T) == 2) {
        run_acc<float>("f32+df", true, ptrs, h, f, df_ref, df_mag, part, n, k, p, blocks, rng);
        run_acc<float>("f32 df", false, ptrs, h, f, df_ref, df_mag, part, n, k, p, blocks, rng);
    }
    auto dh = poisoned<H>((size_t)n * k);
    if (n * k > 0)
        emu::launch({(unsigned)(n * k), 1, 1}, DH_THREADS, DH_THREADS / 32 * 4,
                    [&] { dh_sum(dh.data(), part.data(), (int)blocks, n * k); });
    check("dh", dh, dh_ref, dh_mag);
}

struct Shape {
    int n, k;
    u64 p;
};

}  // namespace

int main() {
    // HYPERNET_EMU_QUICK=1: fewer cases (for the sanitizer builds, which are slow)
    bool quick = std::getenv("HYPERNET_EMU_QUICK") != nullptr;
    emu::eager_copies = std::getenv("HYPERNET_EMU_EAGER") != nullptr;
    std::printf("hypernet.cu, cp.async copies %s\n", emu::eager_copies ? "eager" : "lazy");
    // P: three chunks and a ragged fourth (a multiple of 8, so the 16-byte copies run); odd (plain loads); one
    // partial chunk; a multiple of 4 but not 8 (f32 aligned, bf16 not). N = 1; N and K past one mma tile and one
    // pass of 12 rows (20 x 33).
    // The grid caps matter for the first shape's four chunks: one block walks all four, three blocks walk
    // ragged shares of two chunks each, four blocks walk one each; the others run with two blocks.
    std::vector<Shape> shapes = {{12, 21, 3 * 512 + 40}, {4, 9, 1003}, {1, 9, 104}, {5, 21, 132}, {20, 33, 520}};
    if (quick) shapes = {{12, 21, 1064}, {5, 9, 133}};
    uint64_t seed = 1;
    for (size_t at = 0; at < shapes.size(); at++) {
        const Shape& s = shapes[at];
        std::vector<unsigned> caps{2};
        if (at == 0 && !quick) caps = {1, 3, 1u << 30};
        for (unsigned cap : caps) {
            run_case<float, float>(s.n, s.k, s.p, cap, seed++);
            run_case<bf16, float>(s.n, s.k, s.p, cap, seed++);
            if (quick) continue;
            run_case<bf16, bf16>(s.n, s.k, s.p, cap, seed++);
            run_case<float, bf16>(s.n, s.k, s.p, cap, seed++);
        }
    }
    if (failures) {
        std::printf("%d checks FAILED\n", failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
