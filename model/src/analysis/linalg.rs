//! The dense linear algebra of the analysis, in f64: eigenvalues of a general real matrix, and
//! the thin QR factorisation the Lyapunov iteration re-orthonormalises with.
//!
//! Both come from nalgebra (the reason for nalgebra over faer is in `model/Cargo.toml`):
//! eigenvalues from its real Schur decomposition (Hessenberg reduction, then Francis'
//! implicit double-shift QR), QR from Householder reflections. The matrices are small (hd x hd
//! per head, D x D for the MLP and the Jacobians), so everything is dense and in f64, whatever
//! the model computed in.
//!
//! One numeric guard: nalgebra's Francis iteration has no exceptional shifts, so on a few
//! highly structured matrices (a cyclic permutation of 8 or 16 entries, a companion matrix) it
//! stalls. An orthogonal similarity Qᵀ A Q has the same eigenvalues and breaks the structure,
//! so a stalled matrix is retried once after one with a fixed pseudo-random Q
//! (`the_cyclic_permutation_that_stalls_francis_still_gets_its_roots_of_unity` holds the case).
//!
//! Reference tests: `model/tests/analysis_linalg.rs` (rotations, triangular and diagonalisable
//! matrices of known spectrum).

use crate::{Error, Result};
use nalgebra::linalg::Schur;
use nalgebra::DMatrix;

pub use nalgebra::Complex;

/// A dense f64 matrix (column-major inside; build it with `from_row_major`).
pub type Matrix = DMatrix<f64>;

/// Francis sweeps allowed per eigenvalue, as LAPACK's dhseqr allows (ITMAX = 30 max(10, n)).
const SWEEPS_PER_EIGENVALUE: usize = 30;
/// The seed of the fixed orthogonal similarity a stalled matrix is retried with.
const RETRY_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A `rows` x `cols` matrix from row-major f32 values (a weight tensor's layout).
///
/// Panics if `values` does not hold rows * cols numbers (a bug in the caller).
pub fn from_row_major(rows: usize, cols: usize, values: &[f32]) -> Matrix {
    assert_eq!(values.len(), rows * cols, "{rows} x {cols} values");
    Matrix::from_fn(rows, cols, |i, j| values[i * cols + j] as f64)
}

/// The eigenvalues of the square matrix `a` (`what` names it in an error), sorted by
/// decreasing magnitude; a conjugate pair is adjacent, the one with positive imaginary part
/// first.
///
/// Shapes: a [n, n] -> n eigenvalues
pub fn eigenvalues(a: &Matrix, what: &str) -> Result<Vec<Complex<f64>>> {
    let n = a.nrows();
    if a.ncols() != n {
        let msg = format!("{what} is {n} x {}, not square", a.ncols());
        return Err(Error::Analysis { msg });
    }
    if a.iter().any(|x| !x.is_finite()) {
        let msg = format!("{what} holds a NaN or infinite entry: the checkpoint has diverged");
        return Err(Error::Analysis { msg });
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let sweeps = SWEEPS_PER_EIGENVALUE * n.max(10);
    let schur = Schur::try_new(a.clone(), f64::EPSILON, sweeps).or_else(|| {
        let q = random_orthogonal(n, RETRY_SEED);
        Schur::try_new(q.transpose() * a * &q, f64::EPSILON, sweeps)
    });
    let Some(schur) = schur else {
        let msg = format!(
            "the eigenvalues of {what} ({n} x {n}) did not converge in {sweeps} QR sweeps, even \
             after an orthogonal change of basis"
        );
        return Err(Error::Analysis { msg });
    };
    let mut values: Vec<Complex<f64>> = schur.complex_eigenvalues().iter().copied().collect();
    sort_by_magnitude(&mut values);
    Ok(values)
}

/// Sorts by decreasing |z|, then by decreasing real part, then by decreasing imaginary part,
/// so the order is the same on every machine.
pub fn sort_by_magnitude(values: &mut [Complex<f64>]) {
    values.sort_by(|a, b| {
        b.norm()
            .total_cmp(&a.norm())
            .then(b.re.total_cmp(&a.re))
            .then(b.im.total_cmp(&a.im))
    });
}

/// The thin QR factorisation a = Q R of a tall matrix: Q [n, m] with orthonormal columns and
/// R [m, m] upper triangular.
///
/// Shapes: a [n, m], m <= n -> (Q [n, m], R [m, m])
pub fn thin_qr(a: Matrix) -> (Matrix, Matrix) {
    let qr = a.qr();
    (qr.q(), qr.r())
}

/// A fixed n x n orthogonal matrix: the Q of a matrix of uniform noise drawn from `seed`.
pub fn random_orthogonal(n: usize, seed: u64) -> Matrix {
    let mut state = seed;
    let noise = Matrix::from_fn(n, n, |_, _| {
        // xorshift64: a few lines of noise are enough to break a matrix's structure
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    });
    thin_qr(noise).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_by_two_rotation_has_the_pair_exp_plus_minus_i_theta() {
        // [[cos, -sin], [sin, cos]]: characteristic polynomial z^2 - 2 cos z + 1, roots e^(±iθ)
        let theta: f64 = 0.3;
        let r =
            Matrix::from_row_slice(2, 2, &[theta.cos(), -theta.sin(), theta.sin(), theta.cos()]);
        let ev = eigenvalues(&r, "a rotation").unwrap();
        assert!(
            (ev[0] - Complex::new(theta.cos(), theta.sin())).norm() < 1e-14,
            "{ev:?}"
        );
        assert!(
            (ev[1] - Complex::new(theta.cos(), -theta.sin())).norm() < 1e-14,
            "{ev:?}"
        );
    }

    #[test]
    fn thin_qr_reconstructs_and_is_orthonormal() {
        let a = Matrix::from_fn(5, 3, |i, j| {
            ((i * 3 + j * 7) % 5) as f64 - 2.0 + 0.1 * i as f64
        });
        let (q, r) = thin_qr(a.clone());
        assert_eq!((q.shape(), r.shape()), ((5, 3), (3, 3)));
        assert!((&q * &r - &a).amax() < 1e-12);
        assert!((q.transpose() * &q - Matrix::identity(3, 3)).amax() < 1e-12);
        assert!(
            (0..3).all(|i| (0..i).all(|j| r[(i, j)] == 0.0)),
            "R is upper triangular"
        );
    }

    #[test]
    fn bad_matrices_are_refused_by_name() {
        let err = eigenvalues(&Matrix::zeros(2, 3), "W_fc W_proj").unwrap_err();
        assert!(
            err.to_string().contains("W_fc W_proj is 2 x 3, not square"),
            "{err}"
        );
        let nan = Matrix::from_element(2, 2, f64::NAN);
        let err = eigenvalues(&nan, "QK of head 0").unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }
}
