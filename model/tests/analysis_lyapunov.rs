//! `analysis::lyapunov` and `analysis::sensitivity` on linear flows: the exponents of
//! dX/dt = A X are the real parts of A's eigenvalues.

use odeflow_autodiff::Var;
use odeflow_model::analysis::linalg::{eigenvalues, Matrix};
use odeflow_model::analysis::lyapunov::{tangent_map, QrIteration};
use odeflow_model::analysis::{token_sensitivity, Dynamics, Options};
use odeflow_model::Solver;
use odeflow_runtime::Tensor;
use std::rc::Rc;

/// Re of the eigenvalues of `a`, largest first.
fn real_parts(a: &Matrix) -> Vec<f64> {
    let mut re: Vec<f64> = eigenvalues(a, "A").unwrap().iter().map(|z| z.re).collect();
    re.sort_by(|x, y| y.total_cmp(x));
    re
}

#[test]
fn a_non_normal_linear_flow_has_the_real_parts_as_exponents_over_a_long_time() {
    // A = S B S^-1: eigenvalues 0.4, -0.2 ± 1.5i, -1; S makes A non-normal, so the QR
    // estimates only converge as the time tau grows, with an error of about log(cond S) / tau
    let mut b = Matrix::zeros(4, 4);
    b[(0, 0)] = 0.4;
    b[(1, 1)] = -0.2;
    b[(1, 2)] = -1.5;
    b[(2, 1)] = 1.5;
    b[(2, 2)] = -0.2;
    b[(3, 3)] = -1.0;
    let s = Matrix::from_fn(4, 4, |i, j| {
        if i == j {
            1.0
        } else {
            0.3 * (i + 2 * j) as f64 / 6.0
        }
    });
    let a = &s * b * s.clone().try_inverse().unwrap();
    let (dt, tau) = (0.05, 400.0);
    let m = tangent_map(Solver::Rk4.tableau(), dt, &vec![a.clone(); 4]);
    let mut qr = QrIteration::new(4, 4);
    for _ in 0..(tau / dt) as usize {
        qr.step(&m, dt);
    }
    let (got, want) = (qr.exponents(), real_parts(&a));
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 0.01,
            "exponents {got:?}, real parts {want:?}"
        );
    }
}

/// A = two rotation-scaling blocks: e^{tA} is e^{a_k t} times a rotation on each plane.
fn two_planes() -> Matrix {
    let mut a = Matrix::zeros(4, 4);
    for (i, (re, im)) in [(0.5, 2.0), (-0.3, 1.0)].into_iter().enumerate() {
        let p = 2 * i;
        a[(p, p)] = re;
        a[(p, p + 1)] = -im;
        a[(p + 1, p)] = im;
        a[(p + 1, p + 1)] = re;
    }
    a
}

/// dX/dt = X A on every token: F(x) = x A (rows are tokens), so dF_j/dX_j = Aᵀ and
/// dF_j/dX_k = 0 for k != j.
fn linear_dynamics(a: &Matrix, t: usize, solver: Solver, steps: usize) -> Dynamics {
    let d = a.nrows();
    let values: Vec<f32> = (0..d * d).map(|i| a[(i / d, i % d)] as f32).collect();
    let w = Tensor::from_vec(values, &[d, d]).unwrap();
    let x0: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let field = Rc::new(|x: &Var, w: &[Var]| {
        let (n, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        x.reshape(&[n * t, d])?.matmul(&w[0])?.reshape(&[n, t, d])
    });
    Dynamics {
        x0: Tensor::from_vec(x0, &[t, d]).unwrap(),
        field,
        solver,
        steps,
        times: solver.eval_times(steps),
        weights: vec![vec![w]; solver.eval_times(steps).len()],
    }
}

#[test]
fn the_sensitivity_pipeline_on_x_a_gives_the_real_parts_of_a() {
    // on the planes of `two_planes` the QR iteration from Q = I is exact at any time: each
    // plane's map is a scaled rotation, so |R_cc| is its scale, e^{Re λ dt} up to RK4's error
    let a = two_planes();
    let dynamics = linear_dynamics(&a, 3, Solver::Rk4, 20);
    let opts = Options {
        output: 2,
        exponents: 4,
        jacobian_batch: 3,
    };
    let mut calls = 0;
    let s = token_sensitivity(&dynamics, &opts, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 20, "progress after every step");
    let want = real_parts(&a);
    assert_eq!(want, vec![0.5, 0.5, -0.3, -0.3]);
    for (g, w) in s.exponents[2].iter().zip(&want) {
        // RK4 at dt |λ| = 0.1: a log error of about 1e-7 a step; the Jacobian is f32
        assert!((g - w).abs() < 1e-5, "{:?} vs {want:?}", s.exponents[2]);
    }
    // the other tokens do not reach the output token: J_k = 0, M_k = I, exponents 0
    for k in 0..2 {
        assert!(
            s.exponents[k].iter().all(|e| e.abs() < 1e-12),
            "{:?}",
            s.exponents[k]
        );
        assert_eq!(s.kaplan_yorke[k], 4.0);
    }
    // 0.5 + 0.5 - 0.3 - 0.3 >= 0: every partial sum stays non-negative
    assert_eq!(s.kaplan_yorke[2], 4.0);
    assert_eq!(s.stage_times.len(), 80);
    assert_eq!(&s.stage_times[..4], &[0.0, 0.025, 0.025, 0.05]);
}

#[test]
fn euler_gives_the_exponents_of_its_own_map() {
    // Euler's map I + dt A scales plane k by |1 + dt λ_k| a step: exponents
    // L log|1 + λ_k / L|, which tend to Re λ_k as L grows
    let a = two_planes();
    let steps = 8;
    let s = token_sensitivity(
        &linear_dynamics(&a, 1, Solver::Euler, steps),
        &Options {
            output: 0,
            exponents: 4,
            jacobian_batch: 4,
        },
        &mut |_, _| {},
    )
    .unwrap();
    let l = steps as f64;
    let rate = |re: f64, im: f64| l * ((1.0 + re / l).powi(2) + (im / l).powi(2)).sqrt().ln();
    let want = [
        rate(0.5, 2.0),
        rate(0.5, 2.0),
        rate(-0.3, 1.0),
        rate(-0.3, 1.0),
    ];
    for (g, w) in s.exponents[0].iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{:?} vs {want:?}", s.exponents[0]);
    }
    assert_eq!(
        s.stage_times,
        vec![0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    );
}
