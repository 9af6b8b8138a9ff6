//! `analysis::linalg`: eigenvalues of matrices whose spectrum is known in closed form.

use odeflow_model::analysis::linalg::{eigenvalues, random_orthogonal, Complex, Matrix};

/// The largest distance between two spectra, each wanted eigenvalue paired with the nearest
/// one not yet taken (sorting alone would pair ±2.5 whichever way rounding breaks the tie).
fn distance(got: &[Complex<f64>], want: &[Complex<f64>]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut taken = vec![false; got.len()];
    let mut worst = 0.0f64;
    for w in want {
        let (i, d) = got
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .map(|(i, g)| (i, (g - w).norm()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("as many as wanted");
        taken[i] = true;
        worst = worst.max(d);
    }
    worst
}

/// [[cos θ, -sin θ], [sin θ, cos θ]] scaled by r, at rows and columns (i, i + 1) of `m`.
fn put_rotation(m: &mut Matrix, i: usize, r: f64, theta: f64) {
    let (c, s) = (r * theta.cos(), r * theta.sin());
    m[(i, i)] = c;
    m[(i, i + 1)] = -s;
    m[(i + 1, i)] = s;
    m[(i + 1, i + 1)] = c;
}

#[test]
fn rotations_in_any_basis_have_eigenvalues_on_their_circles() {
    // blocks r_k R(θ_k) have eigenvalues r_k e^(±iθ_k); Qᵀ A Q keeps them for orthogonal Q
    let blocks = [(1.0, 0.4), (0.5, 2.0), (2.0, 1.1)];
    let mut a = Matrix::zeros(6, 6);
    let mut want = Vec::new();
    for (b, &(r, theta)) in blocks.iter().enumerate() {
        put_rotation(&mut a, 2 * b, r, theta);
        want.push(Complex::from_polar(r, theta));
        want.push(Complex::from_polar(r, -theta));
    }
    let q = random_orthogonal(6, 7);
    let a = q.transpose() * a * &q;
    let got = eigenvalues(&a, "rotations").unwrap();
    assert!(distance(&got, &want) < 1e-12, "{got:?}");
}

#[test]
fn a_triangular_matrix_has_its_diagonal_as_eigenvalues() {
    let n = 7;
    let a = Matrix::from_fn(n, n, |i, j| match (i, j) {
        (i, j) if i == j => i as f64 - 2.5,
        (i, j) if i < j => ((i * 5 + j * 3) % 7) as f64 - 3.0,
        _ => 0.0,
    });
    let want: Vec<Complex<f64>> = (0..n).map(|i| Complex::new(i as f64 - 2.5, 0.0)).collect();
    let got = eigenvalues(&a, "upper triangular").unwrap();
    assert!(distance(&got, &want) < 1e-12, "{got:?}");
    let got = eigenvalues(&a.transpose(), "lower triangular").unwrap();
    assert!(distance(&got, &want) < 1e-12, "{got:?}");
}

#[test]
fn a_diagonalisable_matrix_has_the_spectrum_it_was_built_from() {
    // A = S B S^-1 with B block-diagonal: real eigenvalues 3, -1, 0.25 and the pair -0.5 ± 2i
    let mut b = Matrix::zeros(5, 5);
    b[(0, 0)] = 3.0;
    b[(1, 1)] = -1.0;
    b[(2, 2)] = 0.25;
    b[(3, 3)] = -0.5;
    b[(3, 4)] = -2.0;
    b[(4, 3)] = 2.0;
    b[(4, 4)] = -0.5;
    let s = Matrix::from_fn(5, 5, |i, j| {
        if i == j {
            2.0
        } else {
            ((i * 3 + j * 7) % 5) as f64 * 0.3 - 0.5
        }
    });
    let a = &s * b * s.clone().try_inverse().unwrap();
    let want = [
        Complex::new(3.0, 0.0),
        Complex::new(-1.0, 0.0),
        Complex::new(0.25, 0.0),
        Complex::new(-0.5, 2.0),
        Complex::new(-0.5, -2.0),
    ];
    let got = eigenvalues(&a, "S B S^-1").unwrap();
    assert!(distance(&got, &want) < 1e-10, "{got:?}");
    // sorted by magnitude, a pair adjacent with the positive imaginary part first
    assert!((got[0] - Complex::new(3.0, 0.0)).norm() < 1e-10);
    assert!(got[1].im > 0.0 && (got[1] - got[2].conj()).norm() < 1e-10);
}

#[test]
fn the_cyclic_permutation_that_stalls_francis_still_gets_its_roots_of_unity() {
    // x_i -> x_{i+1 mod n}: eigenvalues e^(2 pi i k / n). nalgebra's Francis iteration stalls on
    // n = 8 as it is; the retry in an orthogonal basis converges
    for n in [5usize, 8, 16] {
        let p = Matrix::from_fn(n, n, |i, j| if i == (j + 1) % n { 1.0 } else { 0.0 });
        let want: Vec<Complex<f64>> = (0..n)
            .map(|k| Complex::from_polar(1.0, 2.0 * std::f64::consts::PI * k as f64 / n as f64))
            .collect();
        let got = eigenvalues(&p, "a cyclic permutation").unwrap();
        // every root is found once: match each wanted root to its nearest
        for w in &want {
            let near = got
                .iter()
                .map(|g| (g - w).norm())
                .fold(f64::INFINITY, f64::min);
            assert!(near < 1e-10, "n {n}: {w} missing from {got:?}");
        }
        assert!(got.iter().all(|g| (g.norm() - 1.0).abs() < 1e-10));
    }
}
