//! The time embedding phi(t) (MODEL.md section 2) and the solver's time grid.
//!
//! ```text
//! w_k    = 10000^(-k/S),  k = 0 .. S-1
//! phi(t) = [ t, sin(1000 t w_0) .. sin(1000 t w_{S-1}),
//!               cos(1000 t w_0) .. cos(1000 t w_{S-1}) ]
//! ```
//!
//! phi has no parameters and is shared by every hypernetwork. It is computed in f64 and rounded
//! once: the arguments reach 1000 radians, where an f32 argument would already be off by 1e-4.

use odeflow_runtime::{DType, Tensor};

/// The frequency base of the sinusoids.
const TIME_BASE: f64 = 10000.0;
/// The sinusoids see 1000 t: the fastest one turns about 159 times over t in [0, 1].
const TIME_SCALE: f64 = 1000.0;

/// phi(t): 2S + 1 entries.
pub fn phi(t: f64, s: usize) -> Vec<f32> {
    let angle = |k: usize| TIME_SCALE * t * TIME_BASE.powf(-(k as f64) / s as f64);
    let sines = (0..s).map(|k| angle(k).sin());
    let cosines = (0..s).map(|k| angle(k).cos());
    std::iter::once(t)
        .chain(sines)
        .chain(cosines)
        .map(|x| x as f32)
        .collect()
}

/// phi at each time, one row per time.
///
/// Shapes: ts [N] -> [N, 2S+1] (f32)
pub fn phi_rows(ts: &[f64], s: usize) -> Tensor {
    let values: Vec<f32> = ts.iter().flat_map(|&t| phi(t, s)).collect();
    Tensor::from_f32(values, &[ts.len(), 2 * s + 1], DType::F32).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_matches_hand_computed_values() {
        // S = 2: w = [1, 10000^(-1/2)] = [1, 0.01]; at t = 0.5 the angles are 500 and 5 rad
        let got = phi(0.5, 2);
        let want: [f64; 5] = [
            0.5,
            -0.467_771_805, // sin(500)
            -0.958_924_275, // sin(5)
            -0.883_849_273, // cos(500)
            0.283_662_185,  // cos(5)
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // at t = 0: [0, sin 0 .., cos 0 ..]
        assert_eq!(phi(0.0, 3), vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn rows_stack_phi_of_each_time() {
        let rows = phi_rows(&[0.25, 1.0], 4);
        assert_eq!(rows.shape(), &[2, 9]);
        let v = rows.to_vec::<f32>().unwrap();
        assert_eq!(&v[9..], phi(1.0, 4).as_slice());
    }
}
