//! The gradients of whole models against finite differences of their loss.
//!
//! The runtime computes in f32, so the loss is evaluated in f32 and its central differences are
//! taken in f64. A single entry's finite difference would drown in f32 rounding, so each
//! parameter tensor is checked along two directions: its gradient's own direction (where the
//! directional derivative equals |g| only if g is right, in size and direction) and a random
//! unit direction.

mod common;

use common::{all_kinds, randomize, tokens};
use odeflow_autodiff::{Param, Tape};
use odeflow_model::{Forward, GradMode, Model, ModelKind, Solver};
use odeflow_runtime::{DType, Rng, Tensor};

/// The loss at the model's current parameters.
fn loss(model: &Model, ids: &Tensor, targets: &Tensor, fwd: &Forward) -> f64 {
    let tape = Tape::new();
    let l = tape
        .no_grad(|| model.loss(&tape, ids, targets, fwd))
        .unwrap();
    l.value().to_scalar().unwrap() as f64
}

/// Every parameter's gradient, as f32s, from one backward pass.
fn gradients(model: &Model, ids: &Tensor, targets: &Tensor, fwd: &Forward) -> Vec<Vec<f32>> {
    model.params().iter().for_each(Param::zero_grad);
    let tape = Tape::new();
    let l = model.loss(&tape, ids, targets, fwd).unwrap();
    tape.backward(&l).unwrap();
    let grad = |p: &Param| match p.grad() {
        Some(g) => g.to_vec::<f32>().unwrap(),
        None => vec![0.0; p.numel()],
    };
    model.params().iter().map(grad).collect()
}

/// d loss / d h along `dir` for parameter `p`, by central differences.
fn directional_fd(
    model: &Model,
    p: &Param,
    dir: &[f32],
    data: (&Tensor, &Tensor),
    fwd: &Forward,
) -> f64 {
    const H: f32 = 1e-2;
    let base = p.value();
    let x = base.to_vec::<f32>().unwrap();
    let shifted = |s: f32| {
        let v: Vec<f32> = x.iter().zip(dir).map(|(a, d)| a + s * d).collect();
        Tensor::from_f32(v, base.shape(), DType::F32).unwrap()
    };
    p.set_value(shifted(H)).unwrap();
    let up = loss(model, data.0, data.1, fwd);
    p.set_value(shifted(-H)).unwrap();
    let down = loss(model, data.0, data.1, fwd);
    p.set_value(base).unwrap();
    (up - down) / (2.0 * H as f64)
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-30);
    v.into_iter().map(|x| x / norm).collect()
}

/// Checks every parameter's backward gradient of `model` under `fwd` against finite differences.
fn check_against_finite_differences(label: &str, model: &Model, fwd: &Forward) {
    let cfg = model.config();
    let (ids, targets) = (
        tokens(2, 6, cfg.vocab_size, 3),
        tokens(2, 6, cfg.vocab_size, 4),
    );
    let grads = gradients(model, &ids, &targets, fwd);
    let mut rng = Rng::new(5);
    for (p, g) in model.params().iter().zip(&grads) {
        let g_norm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        // along g / |g|: the derivative is |g|
        let fd = directional_fd(model, p, &unit(g.clone()), (&ids, &targets), fwd);
        let tol = 2e-2 * g_norm + 1e-4;
        assert!(
            (fd - g_norm).abs() <= tol,
            "{label} {}: |g| {g_norm:.3e}, fd {fd:.3e}",
            p.name()
        );
        // along a random unit direction r: the derivative is g . r
        let r = unit((0..g.len()).map(|_| rng.normal()).collect());
        let analytic: f64 = g
            .iter()
            .zip(&r)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let fd = directional_fd(model, p, &r, (&ids, &targets), fwd);
        assert!(
            (fd - analytic).abs() <= tol,
            "{label} {}: g.r {analytic:.3e}, fd {fd:.3e}",
            p.name()
        );
    }
}

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    for (label, cfg) in all_kinds() {
        let model = Model::new(&cfg, 1).unwrap();
        randomize(&model, 0.25, 2);
        check_against_finite_differences(label, &model, &Forward::eval());
    }
}

#[test]
fn gradients_through_every_solver_match_finite_differences() {
    let model = Model::new(&common::tiny(ModelKind::NeuralOde), 1).unwrap();
    randomize(&model, 0.25, 2);
    for solver in [Solver::Midpoint, Solver::Heun, Solver::Rk4] {
        let fwd = Forward {
            solver,
            ..Forward::eval()
        };
        check_against_finite_differences(solver.name(), &model, &fwd);
    }
}

#[test]
fn checkpointed_and_recorded_solves_give_identical_gradients() {
    for (label, mut cfg) in all_kinds() {
        cfg.dropout = 0.1; // the recomputed steps must redraw the same masks
        let model = Model::new(&cfg, 7).unwrap();
        randomize(&model, 0.2, 8);
        let (ids, targets) = (
            tokens(2, 8, cfg.vocab_size, 9),
            tokens(2, 8, cfg.vocab_size, 10),
        );
        let solvers: &[Solver] = match cfg.model {
            ModelKind::Gpt2 => &[Solver::Euler],
            _ => &Solver::ALL,
        };
        for &solver in solvers {
            let with = |grad| Forward {
                grad,
                solver,
                ..Forward::train(11)
            };
            let recorded = gradients(&model, &ids, &targets, &with(GradMode::Backprop));
            let checkpointed = gradients(&model, &ids, &targets, &with(GradMode::Checkpoint));
            assert_eq!(recorded, checkpointed, "{label} {solver}");
            let eval = Forward {
                solver,
                ..Forward::eval()
            };
            let eval = gradients(&model, &ids, &targets, &eval);
            assert_ne!(
                recorded, eval,
                "{label} {solver}: dropout should change the gradient"
            );
        }
    }
}
