//! `analysis::sensitivity` on real models: the tape's Jacobians against finite differences, the
//! trajectory against the solver's, and the exponents of every model kind.

mod common;

use common::{all_kinds, randomize, tiny};
use odeflow_autodiff::Tape;
use odeflow_model::analysis::linalg::Matrix;
use odeflow_model::analysis::sensitivity::token_jacobians;
use odeflow_model::analysis::{token_sensitivity, Dynamics, Options};
use odeflow_model::{Model, ModelKind, Solver};
use odeflow_runtime::Tensor;

const PROMPT: [u32; 6] = [3, 14, 15, 9, 26, 5];

fn random_model(cfg: &odeflow_model::Config) -> Model {
    let model = Model::new(cfg, 5).unwrap();
    randomize(&model, 0.3, 17);
    model
}

/// F(x)[j], the output token's field, at the state `x` [T, D].
fn field_row(dynamics: &Dynamics, x: &[f32], w: &[Tensor], j: usize) -> Vec<f32> {
    let (t, d) = (dynamics.x0.shape()[0], dynamics.x0.shape()[1]);
    let tape = Tape::new();
    let x = tape.constant(Tensor::from_vec(x.to_vec(), &[1, t, d]).unwrap());
    let w: Vec<_> = w.iter().map(|w| tape.constant(w.clone())).collect();
    let y = (dynamics.field)(&x, &w)
        .unwrap()
        .value()
        .to_f32_vec()
        .unwrap();
    y[j * d..(j + 1) * d].to_vec()
}

#[test]
fn the_jacobians_match_central_differences_for_every_model_kind() {
    // the field in f32: steps of 1e-2 leave a truncation error of about h^2 |F'''| ~ 1e-4 and a
    // rounding error of about 1e-7 |F| / h ~ 1e-5, against entries of order 1
    const H: f32 = 1e-2;
    for (name, cfg) in all_kinds() {
        let model = random_model(&cfg);
        let dynamics = Dynamics::of_model(&model, &PROMPT, Solver::Euler, cfg.n_steps).unwrap();
        let (t, d) = (PROMPT.len(), cfg.d_model);
        let j = t - 1;
        let w = &dynamics.weights[1];
        let (_, jac) = token_jacobians(&*dynamics.field, &dynamics.x0, w, j, 5).unwrap();
        assert_eq!(jac.len(), t);
        let x0 = dynamics.x0.to_f32_vec().unwrap();
        let mut worst = 0.0f64;
        let scale = jac.iter().map(Matrix::amax).fold(0.0, f64::max);
        for k in 0..t {
            for e in 0..d {
                let shifted = |h: f32| {
                    let mut x = x0.clone();
                    x[k * d + e] += h;
                    field_row(&dynamics, &x, w, j)
                };
                let (up, down) = (shifted(H), shifted(-H));
                for c in 0..d {
                    let fd = (up[c] - down[c]) as f64 / (2.0 * H as f64);
                    worst = worst.max((fd - jac[k][(c, e)]).abs());
                }
            }
        }
        assert!(scale > 0.1, "{name}: a degenerate Jacobian ({scale})");
        assert!(
            worst < 2e-3 * scale,
            "{name}: worst error {worst}, largest entry {scale}"
        );
    }
}

#[test]
fn the_batch_of_jacobian_rows_changes_nothing() {
    let model = random_model(&tiny(ModelKind::NeuralOde));
    let dynamics = Dynamics::of_model(&model, &PROMPT, Solver::Euler, 3).unwrap();
    let w = &dynamics.weights[0];
    let jacobians = |batch| token_jacobians(&*dynamics.field, &dynamics.x0, w, 4, batch).unwrap();
    let (f1, one) = jacobians(1);
    for batch in [3, 16, 40] {
        let (f, other) = jacobians(batch);
        // the same numbers up to rounding (the GEMM's blocking follows the batch's rows)
        let (f, f1) = (f.to_f32_vec().unwrap(), f1.to_f32_vec().unwrap());
        let diff = f
            .iter()
            .zip(&f1)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "F(x), batch {batch}: {diff}");
        for (a, b) in one.iter().zip(&other) {
            assert!((a - b).amax() < 1e-5, "batch {batch}: {}", (a - b).amax());
        }
    }
    // causal attention: nothing after the output position reaches it
    assert_eq!(one.len(), 5);
}

#[test]
fn the_trajectory_is_the_solvers() {
    let model = random_model(&tiny(ModelKind::NeuralOde));
    let Model::Ode(ode) = &model else {
        unreachable!()
    };
    for solver in [Solver::Euler, Solver::Rk4] {
        let dynamics = Dynamics::of_model(&model, &PROMPT, solver, 3).unwrap();
        let opts = Options {
            output: 5,
            exponents: 16,
            jacobian_batch: 16,
        };
        let s = token_sensitivity(&dynamics, &opts, &mut |_, _| {}).unwrap();
        let (t, d) = (PROMPT.len(), 16);
        let x0 = dynamics.x0.reshape(&[1, t, d]).unwrap();
        let want = solver.integrate(&x0, &ode.field(None), 3).unwrap();
        let (got, want) = (
            s.final_state.to_f32_vec().unwrap(),
            want.to_f32_vec().unwrap(),
        );
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{solver}: {diff}");
        assert_eq!(s.stage_times.len(), 3 * solver.tableau().stages());
    }
}

#[test]
fn every_model_kind_gives_finite_exponents_for_every_token() {
    for (name, cfg) in all_kinds() {
        let model = random_model(&cfg);
        let dynamics = Dynamics::of_model(&model, &PROMPT, Solver::Euler, cfg.n_steps).unwrap();
        let opts = Options {
            output: 5,
            exponents: 16,
            jacobian_batch: 8,
        };
        let s = token_sensitivity(&dynamics, &opts, &mut |_, _| {}).unwrap();
        assert_eq!(s.exponents.len(), 6, "{name}");
        for (k, e) in s.exponents.iter().enumerate() {
            assert_eq!(e.len(), 16);
            assert!(e.iter().all(|x| x.is_finite()), "{name} token {k}: {e:?}");
            assert!(e.windows(2).all(|p| p[0] >= p[1]), "largest first");
            assert!((0.0..=16.0).contains(&s.kaplan_yorke[k]));
        }
    }
}

#[test]
fn bad_prompts_and_options_are_refused() {
    let cfg = tiny(ModelKind::NeuralOde);
    let model = random_model(&cfg);
    let err = Dynamics::of_model(&model, &[], Solver::Euler, 3)
        .err()
        .unwrap();
    assert!(err.to_string().contains("give 1 to 8 tokens"), "{err}");
    let err = Dynamics::of_model(&model, &[40], Solver::Euler, 3)
        .err()
        .unwrap();
    assert!(err
        .to_string()
        .contains("token 40 is not in the model's vocabulary of 32"));
    let gpt2 = random_model(&tiny(ModelKind::Gpt2));
    let err = Dynamics::of_model(&gpt2, &PROMPT, Solver::Rk4, 3)
        .err()
        .unwrap();
    assert!(err.to_string().contains("fixed Euler steps"), "{err}");
    let dynamics = Dynamics::of_model(&model, &PROMPT, Solver::Euler, 3).unwrap();
    let opts = Options {
        output: 6,
        exponents: 16,
        jacobian_batch: 8,
    };
    let err = token_sensitivity(&dynamics, &opts, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("output position 6"), "{err}");
}
