//! A seeded random number generator that gives the same numbers on every machine.
//!
//! Initialisation must be reproducible across machines and runs, so odeflow does not use the OS
//! or a crate whose algorithm may change between versions. The generator is xoshiro256**
//! (Blackman and Vigna), seeded through SplitMix64, both a handful of integer operations that
//! every platform computes identically.
//!
//! Normal samples use the Box-Muller transform in f64, rounded to f32. `ln`, `sqrt` and `cos` in
//! f64 come from the platform's math library, which may differ in the last f64 bit between
//! systems; after rounding to f32 such a difference changes the result only in the rare case
//! that it straddles an f32 rounding boundary. The golden-value test below pins the sequence.

/// xoshiro256** state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
    /// The second value of the last Box-Muller pair, returned by the next `normal` call.
    spare_normal: Option<u64>,
}

/// 2^64 / golden ratio: SplitMix64's increment, also used to spread small counters apart.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step: the recommended way to expand a 64-bit seed into xoshiro's state.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(GOLDEN_GAMMA);
    mix64(*x)
}

/// SplitMix64's finaliser: a bijection of u64 whose every output bit depends on every input
/// bit. Seeds derived as `mix64(seed ^ counter * GOLDEN_GAMMA)` look independent.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform f64 in [0, 1) with 53 random bits.
    fn uniform_f64(&mut self) -> f64 {
        const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * TWO_POW_MINUS_53
    }

    /// A uniform f32 in [0, 1) with 24 random bits (every value exactly representable).
    pub fn uniform(&mut self) -> f32 {
        const TWO_POW_MINUS_24: f32 = 1.0 / (1u32 << 24) as f32;
        (self.next_u64() >> 40) as f32 * TWO_POW_MINUS_24
    }

    /// A uniform integer in 0..n (n > 0), by rejection so that every value is equally likely.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below needs n > 0");
        // reject the top partial copy of 0..n in the u64 range to avoid modulo bias
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// A standard normal sample, N(0, 1).
    pub fn normal(&mut self) -> f32 {
        if let Some(bits) = self.spare_normal.take() {
            return f64::from_bits(bits) as f32;
        }
        // Box-Muller: u1 in (0, 1] so that ln(u1) is finite
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare_normal = Some((radius * angle.sin()).to_bits());
        (radius * angle.cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_pinned_values() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        // golden values: if these change, every seeded initialisation in odeflow changes too
        let mut r = Rng::new(0);
        let normals: Vec<f32> = (0..3).map(|_| r.normal()).collect();
        assert_eq!(normals, GOLDEN_NORMALS_SEED0);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    const GOLDEN_NORMALS_SEED0: [f32; 3] = [-0.018964991, -1.3559302, -0.4037211];

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal() as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; allow 5 sigma
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
        }
    }
}
