//! The solvers against closed-form solutions, and the adjoint's gradient against backprop.

mod common;

use common::{randomize, tokens};
use odeflow_autodiff::{Param, Tape, Var};
use odeflow_model::solver::Field;
use odeflow_model::{Forward, GradMode, Model, ModelKind, Solver};
use odeflow_runtime::Tensor;
use std::rc::Rc;

/// Rotation speed and growth rate of the linear test ODE.
fn omega(t: f64) -> f64 {
    2.0 * (1.0 + t)
}
fn growth(t: f64) -> f64 {
    (2.0 * t).cos()
}

/// dx/dt = x W(t) for a row vector x [1, 2], with W(t) = growth(t) I + omega(t) J and
/// J = [[0, 1], [-1, 0]]. I and J commute, so
/// x(1) = x(0) exp(G) [[cos θ, sin θ], [-sin θ, cos θ]]
/// with G = ∫ growth = sin(2)/2 and θ = ∫ omega = 3.
fn linear_field() -> Field {
    Field {
        f: Rc::new(|x: &Var, w: &[Var], _| x.matmul(&w[0])),
        weights: Rc::new(|tape: &Tape, ts: &[f64]| {
            let w = |&t: &f64| {
                let (g, o) = (growth(t) as f32, omega(t) as f32);
                let m = Tensor::from_vec(vec![g, o, -o, g], &[2, 2]).unwrap();
                vec![tape.constant(m)]
            };
            Ok(ts.iter().map(w).collect())
        }),
        dropout_seed: None,
    }
}

fn linear_exact(x0: [f64; 2]) -> [f64; 2] {
    let (g, theta) = ((2.0f64).sin() / 2.0, 3.0f64);
    let (c, s, e) = (theta.cos(), theta.sin(), g.exp());
    [e * (x0[0] * c - x0[1] * s), e * (x0[0] * s + x0[1] * c)]
}

fn linear_error(solver: Solver, n: usize) -> f64 {
    let x0 = [1.0, -0.5];
    let tape = Tape::new();
    let x = tape.constant(Tensor::from_vec(vec![x0[0] as f32, x0[1] as f32], &[1, 2]).unwrap());
    let x1 = solver
        .solve(&x, &linear_field(), n, GradMode::Backprop)
        .unwrap();
    let got = x1.value().to_vec::<f32>().unwrap();
    let want = linear_exact(x0);
    ((got[0] as f64 - want[0]).powi(2) + (got[1] as f64 - want[1]).powi(2)).sqrt()
}

/// log2(e(L) / e(2L)) for each consecutive pair: the order the errors show.
fn observed_orders(errs: &[f64]) -> Vec<f64> {
    errs.windows(2).map(|e| (e[0] / e[1]).log2()).collect()
}

#[test]
fn each_solvers_error_shrinks_at_its_order() {
    for solver in Solver::ALL {
        // RK4 reaches f32 rounding (about 1e-6 here) past 32 steps
        let ns: &[usize] = match solver {
            Solver::Rk4 => &[4, 8, 16, 32],
            _ => &[4, 8, 16, 32, 64],
        };
        let errs: Vec<f64> = ns.iter().map(|&n| linear_error(solver, n)).collect();
        let p = solver.order() as f64;
        for order in observed_orders(&errs) {
            assert!(
                (p - 0.2..p + 0.3).contains(&order),
                "{solver}: errors {errs:.3?} show order {order:.2}, not {p}"
            );
        }
    }
}

/// Every parameter's gradient of one loss, concatenated.
fn gradient(model: &Model, fwd: &Forward) -> Vec<f64> {
    let cfg = model.config();
    let (ids, targets) = (
        tokens(2, 8, cfg.vocab_size, 3),
        tokens(2, 8, cfg.vocab_size, 4),
    );
    model.params().iter().for_each(Param::zero_grad);
    let tape = Tape::new();
    let loss = model.loss(&tape, &ids, &targets, fwd).unwrap();
    tape.backward(&loss).unwrap();
    let mut all = Vec::new();
    for p in model.params() {
        // these gradients are integrals of sin(1000 t) against the adjoint: they are not
        // resolved at these L either (the weights are zero, their gradients are not)
        if p.name().ends_with("hyper.lin1.weight") {
            continue;
        }
        match p.grad() {
            Some(g) => all.extend(g.to_vec::<f32>().unwrap().into_iter().map(f64::from)),
            None => all.extend(std::iter::repeat_n(0.0, p.numel())),
        }
    }
    all
}

fn relative_error(a: &[f64], reference: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(reference).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = reference.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

/// Zeroes the hypernetworks' input weights of every sinusoid but the slowest.
///
/// phi(t) holds sin(1000 t) (MODEL.md section 2): a field that turns that fast in t is not
/// resolved until dt is well under 1/1000, so no solver shows its order at test-sized L. With
/// those inputs silenced the field is smooth in t and the asymptotic rates appear from L = 4.
fn smooth_in_time(model: &Model) {
    let s = model.config().sinusoidal_dim;
    for p in model
        .params()
        .iter()
        .filter(|p| p.name().ends_with("hyper.lin1.weight"))
    {
        let shape = p.shape();
        let e = shape[1];
        let mut w = p.value().to_vec::<f32>().unwrap();
        for k in 0..s - 1 {
            for row in [1 + k, 1 + s + k] {
                w[row * e..(row + 1) * e].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        p.set_value(Tensor::from_vec(w, &shape).unwrap()).unwrap();
    }
}

#[test]
fn adjoint_error_against_backprop_shrinks_at_the_solvers_order() {
    let model = Model::new(&common::tiny(ModelKind::NeuralOde), 1).unwrap();
    randomize(&model, 0.25, 2);
    smooth_in_time(&model);
    let fwd = |grad, solver, n| Forward {
        grad,
        solver,
        steps: Some(n),
        ..Forward::eval()
    };
    for solver in Solver::ALL {
        let ns: &[usize] = match solver {
            Solver::Rk4 => &[4, 8, 16],
            _ => &[8, 16, 32],
        };
        let errs: Vec<f64> = ns
            .iter()
            .map(|&n| {
                let exact = gradient(&model, &fwd(GradMode::Backprop, solver, n));
                let adjoint = gradient(&model, &fwd(GradMode::Adjoint, solver, n));
                relative_error(&adjoint, &exact)
            })
            .collect();
        // the first pair may still be short of the asymptotic rate (Euler: 0.69 from 8 to 16)
        let p = solver.order() as f64;
        let orders = observed_orders(&errs);
        assert!(
            orders.iter().all(|&o| o > p - 0.5) && orders[orders.len() - 1] > p - 0.25,
            "{solver}: adjoint errors {errs:.3?} show orders {orders:.2?}, not {p}"
        );
    }
}

#[test]
fn saving_states_along_the_way_makes_the_adjoint_closer_to_exact() {
    let model = Model::new(&common::tiny(ModelKind::NeuralOde), 1).unwrap();
    randomize(&model, 0.25, 2);
    smooth_in_time(&model);
    for solver in Solver::ALL {
        let n = 8;
        let error = |grad| {
            let fwd = |grad| Forward {
                grad,
                solver,
                steps: Some(n),
                ..Forward::eval()
            };
            let exact = gradient(&model, &fwd(GradMode::Backprop));
            relative_error(&gradient(&model, &fwd(grad)), &exact)
        };
        let (every_step, halves, none) = (
            error(GradMode::CheckpointedAdjoint(1)),
            error(GradMode::CheckpointedAdjoint(n / 2)),
            error(GradMode::Adjoint),
        );
        // RK4's re-integrated state barely drifts at this L: its error is the backward solve's
        // own, and a reset halfway can as well undo a cancellation (6.579e-4 against 6.578e-4)
        let halves_help = solver == Solver::Rk4 || halves < none;
        assert!(
            every_step < halves && every_step < none && halves_help,
            "{solver}: saved every step {every_step:.3e}, every {} {halves:.3e}, never {none:.3e}",
            n / 2
        );
        // a segment longer than the solve is the plain adjoint
        assert_eq!(error(GradMode::CheckpointedAdjoint(4 * n)), none);
    }
}
