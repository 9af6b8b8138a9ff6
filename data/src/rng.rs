//! A counter-based random number generator: the k-th draw is a pure function of (seed, k).
//!
//! This is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014) read as a hash: SplitMix64's state after k steps is `seed + k * GAMMA`, and its
//! output is a fixed bit-mixing function of that state. Writing it that way means the loader
//! needs no RNG state at all: to resume at draw k it simply asks for draw k.

/// The golden-ratio increment SplitMix64 adds to its state each step: 2^64 / phi, made odd.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// The two multipliers of SplitMix64's finaliser (from MurmurHash3's, retuned by Stafford).
const MIX_1: u64 = 0xbf58_476d_1ce4_e5b9;
const MIX_2: u64 = 0x94d0_49bb_1331_11eb;

/// Draw number `index` of the stream named by `seed`: uniform over all 64-bit values.
pub fn draw(seed: u64, index: u64) -> u64 {
    // SplitMix64 steps its state before mixing, so draw 0 is the mix of seed + GAMMA.
    let state = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA));
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(MIX_1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX_2);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit value onto `0..n` by taking the high half of `x * n` (Lemire, "Fast
/// random integer generation in an interval", 2019, without the rejection step). The bias is
/// below n / 2^64: for the few million windows of a shard, under one part in 10^12.
pub fn below(x: u64, n: u64) -> u64 {
    ((x as u128 * n as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_splitmix64_reference_values() {
        // First outputs of the sequential SplitMix64 with state 0, as given by the reference
        // implementation that accompanies xoshiro (Vigna, prng.di.unimi.it/splitmix64.c).
        assert_eq!(draw(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(draw(0, 1), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(draw(0, 2), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn below_stays_in_range_and_spreads() {
        let n = 10;
        let mut counts = [0u32; 10];
        for k in 0..10_000 {
            let v = below(draw(7, k), n);
            assert!(v < n);
            counts[v as usize] += 1;
        }
        // 1000 expected per bucket; a fair generator stays well within +-15%
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn different_seeds_give_different_streams() {
        let a: Vec<u64> = (0..4).map(|k| draw(1, k)).collect();
        let b: Vec<u64> = (0..4).map(|k| draw(2, k)).collect();
        assert_ne!(a, b);
    }
}
