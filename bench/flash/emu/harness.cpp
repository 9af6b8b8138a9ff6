// harness.cpp: one workbench version (FLASH_VERSION, e.g. "../v1.cu") run under the host emulator (emu.h) against
// a double-precision causal attention, forward and backward, at small ragged shapes and every head dim.
//
// Inputs are rounded to bf16 once and the reference reads the same values. The backward is handed the reference's
// out (rounded to bf16, as the forward would store it) and lse (f32), and its reference uses D = dout . out of
// that same out, so each kernel is judged on its own rounding. The bar, element by element, is that of
// tests/tests/gpu_flash.rs:
//   |got - ref| <= 2^-7 (|ref| + mag)
// where mag is the magnitude of the terms the output sums (sum_j P_ij |v_jd| for out, sum_i P_ij |dout_id| for dv,
// scale sum |dS| |q| and scale sum |dS| |k| for dk and dq). bf16's unit roundoff is 2^-8, and an output carries at
// most two roundings of that size, its own and that of the bf16 P or dS its last product reads, so 2^-7 is twice
// the worst case. dS itself is a difference of two f32 dots (dP_ij - D_i) that cancel, so its magnitude also
// counts 2^-10 P_ij (|dout_i| . |v_j| + |dout_i| . |out_i|), far above their f32 error. lse is f32: within
// 2^-14 (|lse| + 1).
//
//   bash bench/flash/emu/run.sh          # every version, plain, then under ASan and TSan
#include "emu.h"

#include FLASH_VERSION

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

std::vector<bf16> to_bf16(const std::vector<float>& x) {
    std::vector<bf16> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16(x[i]);
    return y;
}

std::vector<float> to_f32(const std::vector<bf16>& x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
    return y;
}

// n draws of N(0, std^2), rounded to bf16
std::vector<bf16> normals(size_t n, float std_dev, Rng& rng) {
    std::vector<float> x(n);
    for (auto& v : x) v = std_dev * rng.normal();
    return to_bf16(x);
}

template <typename T>
std::vector<T> poisoned(size_t n) {
    std::vector<T> x(n);
    std::memset(x.data(), 0xff, n * sizeof(T));  // NaN for bf16 and f32
    return x;
}

int failures = 0;

// |got - ref| <= rel (|ref| + mag), element by element
void check(const std::string& label, const std::vector<float>& got, const std::vector<double>& ref,
           const std::vector<double>& mag, double rel) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double err = std::fabs(got[i] - ref[i]), tol = rel * (std::fabs(ref[i]) + mag[i]);
        double ratio = std::isnan(err) ? INFINITY : err / tol;
        if (ratio > worst) worst = ratio, at = i;
    }
    bool ok = worst <= 1.0;
    if (!ok) failures++;
    std::printf("  %-34s %s (worst error %.3f of the bar, at %zu: got %g, want %g)\n", label.c_str(),
                ok ? "ok  " : "FAIL", worst, at, ref.empty() ? 0.0 : got[at], ref.empty() ? 0.0 : ref[at]);
}

// The reference of one shape, per head: S, P, out, lse, and the backward with the magnitudes above.
struct Reference {
    std::vector<double> out, lse, dq, dk, dv, mag_out, mag_dq, mag_dk, mag_dv;
};

Reference reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                    const std::vector<float>& dout, int bh, int t, int hd) {
    Reference r;
    size_t n = (size_t)bh * t * hd;
    for (auto* x : {&r.out, &r.dq, &r.dk, &r.dv, &r.mag_out, &r.mag_dq, &r.mag_dk, &r.mag_dv}) x->assign(n, 0.0);
    r.lse.assign((size_t)bh * t, 0.0);
    double scale = 1.0 / std::sqrt((double)hd);
    std::vector<double> p((size_t)t * t), ds((size_t)t * t), mag_ds((size_t)t * t);
    for (int h = 0; h < bh; h++) {
        auto at = [&](const std::vector<float>& x, int i, int d) { return (double)x[((size_t)h * t + i) * hd + d]; };
        auto idx = [&](int i, int d) { return ((size_t)h * t + i) * hd + d; };
        // forward: P = softmax over keys j <= i
        for (int i = 0; i < t; i++) {
            double mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int d = 0; d < hd; d++) s += at(q, i, d) * at(k, j, d);
                p[(size_t)i * t + j] = s * scale;
                mx = std::max(mx, s * scale);
            }
            double sum = 0;
            for (int j = 0; j <= i; j++) sum += std::exp(p[(size_t)i * t + j] - mx);
            r.lse[(size_t)h * t + i] = mx + std::log(sum);
            for (int j = 0; j < t; j++)
                p[(size_t)i * t + j] = j <= i ? std::exp(p[(size_t)i * t + j] - r.lse[(size_t)h * t + i]) : 0.0;
            for (int d = 0; d < hd; d++)
                for (int j = 0; j <= i; j++) {
                    r.out[idx(i, d)] += p[(size_t)i * t + j] * at(v, j, d);
                    r.mag_out[idx(i, d)] += p[(size_t)i * t + j] * std::fabs(at(v, j, d));
                }
        }
        // backward, from out rounded to bf16 as the kernels see it
        for (int i = 0; i < t; i++) {
            double dsum = 0, dsum_mag = 0;
            for (int d = 0; d < hd; d++) {
                double o = __bfloat162float(__float2bfloat16((float)r.out[idx(i, d)]));
                dsum += at(dout, i, d) * o;
                dsum_mag += std::fabs(at(dout, i, d) * o);
            }
            for (int j = 0; j < t; j++) {
                double dp = 0, dp_mag = 0;
                for (int d = 0; d < hd; d++) {
                    dp += at(dout, i, d) * at(v, j, d);
                    dp_mag += std::fabs(at(dout, i, d) * at(v, j, d));
                }
                double pij = p[(size_t)i * t + j];
                ds[(size_t)i * t + j] = pij * (dp - dsum);
                double slack = std::ldexp(pij * (dp_mag + dsum_mag), -10);
                mag_ds[(size_t)i * t + j] = std::fabs(ds[(size_t)i * t + j]) + slack;
            }
        }
        for (int i = 0; i < t; i++)
            for (int j = 0; j < t; j++) {
                double pij = p[(size_t)i * t + j], dsij = ds[(size_t)i * t + j], m = mag_ds[(size_t)i * t + j];
                for (int d = 0; d < hd; d++) {
                    r.dv[idx(j, d)] += pij * at(dout, i, d);
                    r.mag_dv[idx(j, d)] += pij * std::fabs(at(dout, i, d));
                    r.dq[idx(i, d)] += scale * dsij * at(k, j, d);
                    r.mag_dq[idx(i, d)] += scale * m * std::fabs(at(k, j, d));
                    r.dk[idx(j, d)] += scale * dsij * at(q, i, d);
                    r.mag_dk[idx(j, d)] += scale * m * std::fabs(at(q, i, d));
                }
            }
    }
    return r;
}

template <int HD>
struct Entries;
template <>
struct Entries<32> {
    static constexpr auto fwd = flash_fwd_bf16_hd32;
    static constexpr auto dkdv = flash_bwd_dkdv_bf16_hd32;
    static constexpr auto dq = flash_bwd_dq_bf16_hd32;
};
template <>
struct Entries<64> {
    static constexpr auto fwd = flash_fwd_bf16_hd64;
    static constexpr auto dkdv = flash_bwd_dkdv_bf16_hd64;
    static constexpr auto dq = flash_bwd_dq_bf16_hd64;
};
template <>
struct Entries<128> {
    static constexpr auto fwd = flash_fwd_bf16_hd128;
    static constexpr auto dkdv = flash_bwd_dkdv_bf16_hd128;
    static constexpr auto dq = flash_bwd_dq_bf16_hd128;
};

template <int HD>
void run_case(int bh, int t, uint64_t seed) {
    std::printf("hd %d, b_h %d, T %d\n", HD, bh, t);
    Rng rng{seed};
    size_t n = (size_t)bh * t * HD;
    auto q = normals(n, 1.5f, rng), k = normals(n, 1.5f, rng), v = normals(n, 1.0f, rng);
    auto dout = normals(n, 1.0f, rng);
    Reference ref = reference(to_f32(q), to_f32(k), to_f32(v), to_f32(dout), bh, t, HD);
    unsigned tiles = (t + BQ - 1) / BQ;

    // forward
    auto out = poisoned<bf16>(n);
    auto lse = poisoned<float>((size_t)bh * t);
    emu::launch({(unsigned)bh, tiles, 1}, THREADS, fwd_smem_bytes<HD>(),
                [&] { Entries<HD>::fwd(out.data(), lse.data(), q.data(), k.data(), v.data(), t); });
    check("out", to_f32(out), ref.out, ref.mag_out, 1.0 / 128);
    std::vector<double> one(ref.lse.size(), 1.0);
    check("lse", lse, ref.lse, one, 1.0 / 16384);

    // backward, from the reference's out (as bf16) and lse (as f32)
    std::vector<float> out_ref(n), lse_ref(ref.lse.begin(), ref.lse.end());
    for (size_t i = 0; i < n; i++) out_ref[i] = (float)ref.out[i];
    auto out_b = to_bf16(out_ref);
    auto dsum = poisoned<float>((size_t)bh * t);
    u64 rows = (u64)bh * t;
    unsigned dsum_blocks = (unsigned)((rows + DSUM_THREADS / 32 - 1) / (DSUM_THREADS / 32));
    emu::launch({dsum_blocks, 1, 1}, DSUM_THREADS, 0,
                [&] { flash_bwd_dsum_bf16(dsum.data(), dout.data(), out_b.data(), rows, HD); });
    auto dq = poisoned<bf16>(n), dk = poisoned<bf16>(n), dv = poisoned<bf16>(n);
    unsigned key_tiles = (t + BKV - 1) / BKV;
    emu::launch({(unsigned)bh, key_tiles, 1}, THREADS, dkdv_smem_bytes<HD>(), [&] {
        Entries<HD>::dkdv(dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), lse_ref.data(),
                          dsum.data(), t);
    });
    emu::launch({(unsigned)bh, tiles, 1}, THREADS, dq_smem_bytes<HD>(), [&] {
        Entries<HD>::dq(dq.data(), dout.data(), q.data(), k.data(), v.data(), lse_ref.data(), dsum.data(), t);
    });
    check("dq", to_f32(dq), ref.dq, ref.mag_dq, 1.0 / 128);
    check("dk", to_f32(dk), ref.dk, ref.mag_dk, 1.0 / 128);
    check("dv", to_f32(dv), ref.dv, ref.mag_dv, 1.0 / 128);
}

}  // namespace

int main(int argc, char** argv) {
    // FLASH_EMU_QUICK=1: fewer shapes (for the sanitizer builds, which are slow)
    bool quick = std::getenv("FLASH_EMU_QUICK") != nullptr;
    emu::eager_copies = std::getenv("FLASH_EMU_EAGER") != nullptr;
    std::printf("%s, cp.async copies %s\n", FLASH_VERSION, emu::eager_copies ? "eager" : "lazy");
    std::vector<int> lengths = quick ? std::vector<int>{17, 130} : std::vector<int>{1, 17, 64, 100, 130, 200};
    uint64_t seed = 1;
    for (int t : lengths) {
        int bh = t <= 64 ? 3 : 2;
        run_case<32>(bh, t, seed++);
        run_case<64>(bh, t, seed++);
        run_case<128>(bh, t, seed++);
    }
    (void)argc, (void)argv;
    if (failures) {
        std::printf("%d checks FAILED\n", failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
