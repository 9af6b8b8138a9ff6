//! exp, tanh, sigmoid and GELU in plain f32 arithmetic that the compiler can vectorise.
//!
//! libm's `expf`/`tanhf` are accurate but opaque function calls: a loop that calls them runs one
//! element at a time, and GELU on an MLP's hidden layer cost more than the matmul beside it. These
//! versions are straight-line code (no calls, no data-dependent branches), so a loop over a slice
//! becomes SIMD code.
//!
//! exp(x) is the textbook range reduction: x = n ln2 + r with n an integer and |r| <= ln2 / 2,
//! then exp(x) = 2^n exp(r), with exp(r) from its Taylor series to r^7 (truncation error below
//! 1e-8 relative on that interval) and 2^n built directly in the float's exponent bits. ln2 is
//! split in a high part exact in few bits and a low correction (Cody and Waite), so r = x - n ln2
//! loses nothing to cancellation. Measured against f64 in the tests: relative error under 4e-7
//! over the whole range, a few ulps.
//!
//! tanh and sigmoid are written through exp of a non-positive argument, so nothing overflows;
//! their error is absolute (about 1e-7), not relative, near 0, which is all the activations need.

/// Below this exp(x) is smaller than the least normal f32; we return 0 (as exp(-inf) must be).
const EXP_LO: f32 = -87.336_55;
/// Above this exp(x) overflows f32; we return +inf.
const EXP_HI: f32 = 88.722_83;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with only 12 significant bits so that n * LN2_HI is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude below 2^22 to an integer
/// (round to nearest even) with two plain additions, which vectorise on every x86-64.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for every f32, including -inf (0), +inf (inf) and NaN (NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    let shifted = xc * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // the integer n also sits in the low mantissa bits of `shifted` (no float-to-int convert,
    // whose saturating semantics in Rust keep the loop from vectorising)
    let ni = shifted.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // exp(r) = 1 + r + r^2/2! + ... + r^7/7!, in Horner form
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n, built in the exponent bits. n spans [-126, 128] and 2^128 is not an f32, so the
    // power goes in as two halves, each a normal float.
    let pow2 = |k: i32| f32::from_bits(((k + 127) << 23) as u32);
    let y = p * pow2(ni >> 1) * pow2(ni - (ni >> 1));
    // clamp kept NaN as NaN; out-of-range inputs get their exact limits
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else {
        y
    }
}

/// tanh x = sign(x) (1 - e) / (1 + e), with e = exp(-2|x|) in (0, 1].
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// 1 / (1 + e^-x), through e = exp(-|x|) so that nothing overflows.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    // s = sigmoid(|x|); sigmoid(-a) = 1 - sigmoid(a) = e s
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// sqrt(2 / pi), the scale inside GELU's tanh approximation.
pub const GELU_SCALE: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation (Hendrycks and Gimpel).
pub const GELU_CUBIC: f32 = 0.044_715;

/// The tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in GPT-2.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let inner = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    0.5 * x * (1.0 + tanh(inner))
}

/// d gelu / dx. With u = c (x + a x^3):
///   d [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 a x^2)
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let th = tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
    let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
}

/// Partial results kept side by side by the reductions below: 8 f32 lanes fill an AVX register.
const LANES: usize = 8;

/// The sum of `xs`, added in 8 interleaved partial sums (then those in order). A float sum in
/// one accumulator cannot be reordered by the compiler, so it runs one add per add latency;
/// eight independent sums vectorise. The order is fixed, so the result is deterministic (and a
/// little more accurate than the sequential sum, not less).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a += x);
    }
    acc.iter().sum::<f32>() + tail
}

/// The dot product of two equal-length slices, with 8 partial sums like `sum`.
#[inline(always)]
pub fn dot(xs: &[f32], ys: &[f32]) -> f32 {
    debug_assert_eq!(xs.len(), ys.len());
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f32; LANES];
    for (x, y) in xc.zip(yc) {
        for ((a, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *a += p * q;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element, -inf for an empty slice; NaNs are skipped unless every element is NaN
/// (`f32::max`'s rule, applied lane by lane).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a = a.max(x));
    }
    acc.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points spread over [lo, hi], both ends included.
    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_matches_f64_to_a_few_ulps_over_the_whole_range() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.5, 200_000).chain(grid(-1.0, 1.0, 10_000)) {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn exp_limits_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        // the top of the range must not overflow early (the 2^(n-1) * 2 trick)
        let top = exp(EXP_HI);
        assert!(top.is_finite() && top > 3.0e38, "{top}");
    }

    #[test]
    fn tanh_sigmoid_gelu_match_f64() {
        let (mut tanh_err, mut sig_err, mut gelu_err, mut grad_err) =
            (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for x in grid(-30.0, 30.0, 100_000) {
            let xd = x as f64;
            tanh_err = tanh_err.max((tanh(x) as f64 - xd.tanh()).abs());
            sig_err = sig_err.max((sigmoid(x) as f64 - 1.0 / (1.0 + (-xd).exp())).abs());
            let (c, a) = (GELU_SCALE as f64, GELU_CUBIC as f64);
            let th = (c * (xd + a * xd.powi(3))).tanh();
            let g = 0.5 * xd * (1.0 + th);
            gelu_err = gelu_err.max((gelu(x) as f64 - g).abs() / g.abs().max(1.0));
            let dg = 0.5 * (1.0 + th) + 0.5 * xd * (1.0 - th * th) * c * (1.0 + 3.0 * a * xd * xd);
            grad_err = grad_err.max((gelu_grad(x) as f64 - dg).abs());
        }
        assert!(tanh_err < 2e-7, "tanh {tanh_err:e}");
        assert!(sig_err < 2e-7, "sigmoid {sig_err:e}");
        assert!(gelu_err < 4e-7, "gelu {gelu_err:e}");
        assert!(grad_err < 2e-6, "gelu' {grad_err:e}");
        assert!(tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn lane_reductions_match_the_plain_ones() {
        for n in [0usize, 1, 7, 8, 9, 64, 1000] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let ys: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let want_sum: f64 = xs.iter().map(|&x| x as f64).sum();
            let want_dot: f64 = xs.iter().zip(&ys).map(|(&x, &y)| x as f64 * y as f64).sum();
            let scale = 1.0 + n as f64;
            assert!((sum(&xs) as f64 - want_sum).abs() < 1e-5 * scale, "sum {n}");
            assert!(
                (dot(&xs, &ys) as f64 - want_dot).abs() < 1e-4 * scale,
                "dot {n}"
            );
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want_max, "max {n}");
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
        assert_eq!(max(&[f32::NEG_INFINITY; 9]), f32::NEG_INFINITY);
    }
}
