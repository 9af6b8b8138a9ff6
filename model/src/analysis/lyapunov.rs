//! Lyapunov exponents by the QR iteration of MODEL.md section 11, and the Kaplan-Yorke
//! dimension of a spectrum of exponents.
//!
//! A linear flow dδ/dt = J(t) δ advanced by a one-step method multiplies a perturbation by a
//! matrix M_i per step. The exponents are the growth rates of the volumes the flow stretches:
//! starting from Q = I (or its first m columns), each step
//!
//! ```text
//! Q <- M_i Q,      Q, R = qr(Q),      s_c += log |R_cc|          (c = 1 .. m)
//! lambda_c = s_c / tau                                             tau: the time covered
//! ```
//!
//! The re-orthonormalisation keeps the columns from all collapsing onto the fastest direction;
//! |R_cc| is how much the c-th direction grew, once the faster ones are taken out. For Euler,
//! M_i = I + dt J(t_i): MODEL.md's Q <- Q + dt J Q. A Runge-Kutta tableau (c, A, b) with the
//! Jacobian J_s frozen at each stage gives its linearised step (`tangent_map`):
//!
//! ```text
//! K_s = J_s (I + dt sum_{l<s} A[s][l] K_l),      M = I + dt sum_s b_s K_s
//! ```
//!
//! which for a constant J is the method's stability polynomial R(dt J), so the exponents of
//! dX/dt = A X come out as Re(eigenvalues of A) as dt -> 0.
//!
//! Kaplan-Yorke: with lambda_1 >= lambda_2 >= ..., k the largest count whose partial sum
//! lambda_1 + .. + lambda_k is still >= 0, D_KY = k + (lambda_1 + .. + lambda_k) / |lambda_{k+1}|
//! (0 if lambda_1 < 0; m if every partial sum is >= 0).
//!
//! Reference tests: `model/tests/analysis_lyapunov.rs` (a linear ODE's exponents are the real
//! parts of its eigenvalues; hand-made Kaplan-Yorke cases).

use super::linalg::{thin_qr, Matrix};
use crate::solver::tableau::Tableau;

/// The QR iteration of one linear flow, tracking `m` directions.
#[derive(Clone, Debug)]
pub struct QrIteration {
    /// [n, m], orthonormal columns
    q: Matrix,
    /// sum of log |R_cc| so far, [m]
    log_growth: Vec<f64>,
    /// The time covered so far.
    time: f64,
}

impl QrIteration {
    /// Q = the first m columns of the n x n identity. Panics if m is 0 or above n.
    pub fn new(n: usize, m: usize) -> QrIteration {
        assert!(m >= 1 && m <= n, "track 1 ..= {n} directions, not {m}");
        QrIteration {
            q: Matrix::identity(n, m),
            log_growth: vec![0.0; m],
            time: 0.0,
        }
    }

    /// One step of length `dt` whose tangent map is `step_map`.
    ///
    /// Shapes: step_map [n, n]
    pub fn step(&mut self, step_map: &Matrix, dt: f64) {
        let (q, r) = thin_qr(step_map * &self.q);
        for (c, s) in self.log_growth.iter_mut().enumerate() {
            // a direction the map sends to zero has exponent -inf: kept as it is, the truth
            *s += r[(c, c)].abs().ln();
        }
        self.q = q;
        self.time += dt;
    }

    /// The exponents so far, largest first: log growth per unit time.
    pub fn exponents(&self) -> Vec<f64> {
        let tau = if self.time > 0.0 { self.time } else { 1.0 };
        let mut out: Vec<f64> = self.log_growth.iter().map(|s| s / tau).collect();
        out.sort_by(|a, b| b.total_cmp(a));
        out
    }
}

/// The tangent map of one step of `tab` for the linear flow whose Jacobian at stage s is
/// `stage_jacobians[s]` (see the module docs).
///
/// Shapes: stage_jacobians: stages x [n, n] -> [n, n]
pub fn tangent_map(tab: &Tableau, dt: f64, stage_jacobians: &[Matrix]) -> Matrix {
    assert_eq!(
        stage_jacobians.len(),
        tab.stages(),
        "one Jacobian per stage"
    );
    let n = stage_jacobians[0].nrows();
    let identity = Matrix::identity(n, n);
    let mut k: Vec<Matrix> = Vec::with_capacity(tab.stages());
    for (row, j) in tab.a.iter().zip(stage_jacobians) {
        // K_s = J_s (I + dt sum_l A[s][l] K_l)
        let mut inner = identity.clone();
        for (&a, k_l) in row.iter().zip(&k) {
            if a != 0.0 {
                inner += k_l * (dt * a);
            }
        }
        k.push(j * inner);
    }
    // M = I + dt sum_s b_s K_s
    let mut m = identity;
    for (&b, k_s) in tab.b.iter().zip(&k) {
        if b != 0.0 {
            m += k_s * (dt * b);
        }
    }
    m
}

/// The Kaplan-Yorke dimension of `exponents` (any order; see the module docs).
pub fn kaplan_yorke(exponents: &[f64]) -> f64 {
    let mut sorted = exponents.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut sum = 0.0;
    for (k, &lambda) in sorted.iter().enumerate() {
        if sum + lambda < 0.0 {
            // k exponents keep the sum >= 0; the next one would take it below
            return k as f64 + sum / lambda.abs();
        }
        sum += lambda;
    }
    sorted.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::tableau::{EULER, RK4};

    #[test]
    fn euler_tangent_map_is_i_plus_dt_j() {
        let j = Matrix::from_row_slice(2, 2, &[1.0, 2.0, -3.0, 0.5]);
        let m = tangent_map(&EULER, 0.25, std::slice::from_ref(&j));
        let want = Matrix::identity(2, 2) + &j * 0.25;
        assert!((m - want).amax() < 1e-15);
    }

    #[test]
    fn rk4_tangent_map_of_a_constant_j_is_its_stability_polynomial() {
        // R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24 with z = dt J
        let j = Matrix::from_row_slice(2, 2, &[0.3, -1.0, 0.7, -0.2]);
        let dt = 0.1;
        let m = tangent_map(&RK4, dt, &vec![j.clone(); 4]);
        let z = &j * dt;
        let z2 = &z * &z;
        let z3 = &z2 * &z;
        let z4 = &z3 * &z;
        let want = Matrix::identity(2, 2) + &z + z2 / 2.0 + z3 / 6.0 + z4 / 24.0;
        assert!((m - want).amax() < 1e-15);
    }

    #[test]
    fn kaplan_yorke_by_hand() {
        // 0.5 - 0.2 = 0.3 >= 0, 0.3 - 1.0 < 0: k = 2, D = 2 + 0.3 / 1.0
        assert!((kaplan_yorke(&[-0.2, 0.5, -1.0]) - 2.3).abs() < 1e-12);
        assert_eq!(kaplan_yorke(&[-0.1, -2.0]), 0.0);
        assert_eq!(kaplan_yorke(&[0.1, 0.0, -0.05]), 3.0);
        // the Lorenz attractor's exponents (0.906, 0, -14.572): 2 + 0.906 / 14.572
        let lorenz = kaplan_yorke(&[0.906, 0.0, -14.572]);
        assert!((lorenz - 2.0622).abs() < 1e-4, "{lorenz}");
    }

    #[test]
    fn a_diagonal_flow_grows_each_axis_at_its_own_rate() {
        // M = diag(e^{a dt}, e^{b dt}) for 10 steps of 0.1: exponents a, b exactly
        let (a, b, dt) = (0.7f64, -1.3f64, 0.1);
        let m = Matrix::from_diagonal(&nalgebra::DVector::from_vec(vec![
            (b * dt).exp(),
            (a * dt).exp(),
        ]));
        let mut qr = QrIteration::new(2, 2);
        for _ in 0..10 {
            qr.step(&m, dt);
        }
        let ex = qr.exponents();
        assert!(
            (ex[0] - a).abs() < 1e-12 && (ex[1] - b).abs() < 1e-12,
            "{ex:?}"
        );
    }
}
