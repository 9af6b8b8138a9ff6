//! Helpers for tests in every crate: tensors in awkward layouts, and closeness checks against
//! the f64 references of `crate::reference`. An op must give the same answer whatever layout its
//! inputs have, so the tests feed it views as well as fresh buffers.

use crate::reference::Array64;
use crate::{DType, Rng, Tensor};

/// How a test tensor is laid out in memory: the op must not care.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// Row-major.
    Contiguous,
    /// A permute view of a buffer stored with the dims reversed.
    Reversed,
    /// A narrow view into a buffer with two extra rows on dim 0.
    Narrowed,
}

pub const LAYOUTS: [Layout; 3] = [Layout::Contiguous, Layout::Reversed, Layout::Narrowed];
pub const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// A tensor of `shape` with values uniform in [lo, hi), stored with `layout`.
pub fn make(shape: &[usize], layout: Layout, dtype: DType, seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = Rng::new(seed);
    match layout {
        Layout::Contiguous => Tensor::rand_uniform(shape, lo, hi, dtype, &mut rng),
        Layout::Reversed => {
            let reversed: Vec<usize> = shape.iter().rev().copied().collect();
            let base = Tensor::rand_uniform(&reversed, lo, hi, dtype, &mut rng);
            let perm: Vec<usize> = (0..shape.len()).rev().collect();
            base.permute(&perm).unwrap()
        }
        Layout::Narrowed if !shape.is_empty() => {
            let mut bigger = shape.to_vec();
            bigger[0] += 2;
            let base = Tensor::rand_uniform(&bigger, lo, hi, dtype, &mut rng);
            base.narrow(0, 1, shape[0]).unwrap()
        }
        Layout::Narrowed => Tensor::rand_uniform(shape, lo, hi, dtype, &mut rng),
    }
}

/// The tolerance unit of a dtype: the error of one rounding of the result (bf16/f16), or a
/// few dozen f32 roundings for the short f32 sums of these tests.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 64.0 * f32::EPSILON as f64,
        _ => dtype.epsilon() as f64,
    }
}

/// Asserts |got - want| <= units * tol(dtype) * (1 + |want|) elementwise, and equal shapes.
pub fn assert_close(got: &Tensor, want: &Array64, units: f64, what: &str) {
    assert_eq!(got.shape(), &want.shape[..], "{what}: shape");
    let bound = units * tol(got.dtype());
    let values = got.to_f32_vec().unwrap();
    for (i, (&g, &w)) in values.iter().zip(&want.data).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= bound * (1.0 + w.abs()) || (g as f64 == w),
            "{what} ({}): element {i}: got {g}, want {w}, err {err:.3e} > {:.3e}",
            got.dtype(),
            bound * (1.0 + w.abs())
        );
    }
}

/// The tensor's values as an f64 array (reads any layout).
pub fn arr(t: &Tensor) -> Array64 {
    Array64::from_tensor(t).unwrap()
}
