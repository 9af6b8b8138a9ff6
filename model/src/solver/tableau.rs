//! Explicit Runge-Kutta methods as data (Butcher tableaus), and the one step they all share.
//!
//! A tableau (c, A, b) with s stages advances X from t to t + dt by
//!
//! ```text
//! k_s = F( X + dt sum_{j<s} A[s][j] k_j ,  t + c_s dt )      s = 0 .. stages-1
//! X'  = X + dt sum_s b_s k_s
//! ```
//!
//! The step is generic over the state (`Combine`): the forward solve steps a `Var` (so the tape can
//! record or checkpoint it), and the adjoint steps the pair (state, adjoint) as plain tensors.

use odeflow_autodiff::{Result, Var};
use odeflow_runtime::ops::elementwise;
use odeflow_runtime::Tensor;

/// An explicit Runge-Kutta method: stage times `c`, stage mixing `a` (row s has s entries, the
/// strictly lower triangle), and slope weights `b`.
#[derive(Debug, PartialEq)]
pub struct Tableau {
    pub c: &'static [f64],
    pub a: &'static [&'static [f64]],
    pub b: &'static [f64],
    /// The global error of a solve is O(dt^order).
    pub order: u32,
}

impl Tableau {
    pub fn stages(&self) -> usize {
        self.b.len()
    }
}

/// The reference's Euler, which evaluates F at the *right* end of the step:
/// X_{i+1} = X_i + dt F(X_i, t_{i+1}) (MODEL.md section 1). Still first order: moving the time
/// argument by dt changes each slope by O(dt). Its c = 1 is not the row sum of A (0), which
/// the adjoint's backward solve uses instead (`adjoint.rs`, `reversed_stage_time`).
pub const EULER: Tableau = Tableau {
    c: &[1.0],
    a: &[&[]],
    b: &[1.0],
    order: 1,
};

/// The explicit midpoint rule: a half Euler step, then the whole step with the midpoint's slope.
pub const MIDPOINT: Tableau = Tableau {
    c: &[0.0, 0.5],
    a: &[&[], &[0.5]],
    b: &[0.0, 1.0],
    order: 2,
};

/// Heun's method (the explicit trapezoid): the mean of the slopes at both ends.
pub const HEUN: Tableau = Tableau {
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[0.5, 0.5],
    order: 2,
};

/// The classic fourth-order Runge-Kutta method.
pub const RK4: Tableau = Tableau {
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    order: 4,
};

/// A state a Runge-Kutta step can advance: it only needs `self + sum_s alpha_s k_s`, computed
/// in one pass (`elementwise::lincomb`: each stage and the step read every slope once and write
/// the new state once, where a chain of scale and add would make two passes per slope).
pub trait Combine: Clone {
    fn lincomb(&self, terms: &[(f32, &Self)]) -> Result<Self>;
}

impl Combine for Var {
    fn lincomb(&self, terms: &[(f32, &Var)]) -> Result<Var> {
        Var::lincomb(self, terms)
    }
}

impl Combine for Tensor {
    fn lincomb(&self, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
        Ok(elementwise::lincomb(self, terms)?)
    }
}

/// One step of `tab` from `x`: `slope(s, X_s)` gives stage s's slope k_s at its stage state.
pub fn rk_step<S, F>(tab: &Tableau, x: &S, dt: f32, mut slope: F) -> Result<S>
where
    S: Combine,
    F: FnMut(usize, &S) -> Result<S>,
{
    let mut k: Vec<S> = Vec::with_capacity(tab.stages());
    for row in tab.a {
        // X_s = X + dt sum_j A[s][j] k_j
        let xs = combine(x, dt, row, &k)?;
        k.push(slope(k.len(), &xs)?);
    }
    // X' = X + dt sum_s b_s k_s
    combine(x, dt, tab.b, &k)
}

/// x + dt sum_j coefs_j k_j, skipping zero coefficients (so a stage that uses no earlier slope
/// costs nothing, and the reference's Euler is exactly x + dt k).
fn combine<S: Combine>(x: &S, dt: f32, coefs: &[f64], k: &[S]) -> Result<S> {
    let terms: Vec<(f32, &S)> = coefs
        .iter()
        .zip(k)
        .filter(|(&coef, _)| coef != 0.0)
        .map(|(&coef, k)| (coef as f32 * dt, k))
        .collect();
    if terms.is_empty() {
        return Ok(x.clone());
    }
    x.lincomb(&terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tableau_is_consistent_and_explicit() {
        for tab in [&EULER, &MIDPOINT, &HEUN, &RK4] {
            // sum b = 1: a constant slope is integrated exactly
            assert!((tab.b.iter().sum::<f64>() - 1.0).abs() < 1e-15);
            for (s, row) in tab.a.iter().enumerate() {
                assert_eq!(row.len(), s, "row {s} must mix only the earlier stages");
            }
            assert_eq!(tab.c.len(), tab.stages());
        }
        // the textbook (c = row sums of A) holds for all but the reference's right-end Euler
        for tab in [&MIDPOINT, &HEUN, &RK4] {
            for (row, c) in tab.a.iter().zip(tab.c) {
                assert!((row.iter().sum::<f64>() - c).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn rk4_integrates_a_cubic_in_time_exactly() {
        // dx/dt = 4 t^3 from x(0) = 0: x(1) = 1; RK4 is Simpson's rule here, exact for cubics
        let x = Tensor::scalar(0.0f32);
        let mut t0 = 0.0;
        let mut x1 = x;
        for _ in 0..2 {
            let slope = |s: usize, _: &Tensor| {
                let t: f64 = t0 + RK4.c[s] * 0.5;
                Ok(Tensor::scalar(4.0 * t.powi(3) as f32))
            };
            x1 = rk_step(&RK4, &x1, 0.5, slope).unwrap();
            t0 += 0.5;
        }
        assert!((x1.to_scalar().unwrap() - 1.0).abs() < 1e-6);
    }
}
