//! `analysis::spectra`: the hd x hd shortcut against the full D x D spectrum, the head split
//! against the model's own attention, and the points each model kind is analysed at.

mod common;

use common::{randomize, tiny};
use odeflow_autodiff::Tape;
use odeflow_model::analysis::linalg::{eigenvalues, Complex, Matrix};
use odeflow_model::analysis::spectra::{block_spectra, model_weights, BlockMatrices};
use odeflow_model::analysis::{model_spectra, Axis, MatrixKind, Points};
use odeflow_model::block::BlockWeights;
use odeflow_model::layers;
use odeflow_model::{Model, ModelKind, Solver};
use odeflow_runtime::Tensor;

/// A tiny model of `kind` with every parameter random, so no matrix is degenerate.
fn random_model(kind: ModelKind) -> Model {
    let model = Model::new(&tiny(kind), 3).unwrap();
    randomize(&model, 0.3, 11);
    model
}

/// The block's weights at t = 0.6 (ODE) or of the first layer.
fn some_weights(model: &Model) -> BlockWeights {
    let points = match model {
        Model::Ode(_) => Points::Times(vec![0.6]),
        _ => Points::SolverGrid {
            solver: Solver::Euler,
            steps: model.config().n_steps,
        },
    };
    model_weights(model, &points).unwrap().1.remove(0).1
}

#[test]
fn the_hd_by_hd_shortcut_has_the_full_spectrum_without_its_zeros() {
    for kind in [ModelKind::NeuralOde, ModelKind::LlamaOde] {
        let model = random_model(kind);
        let m = BlockMatrices::from_weights(&some_weights(&model), model.config().n_heads).unwrap();
        let (d, hd) = (m.d_model(), m.head_dim());
        assert_eq!((d, hd), (16, 8));
        for h in 0..m.n_heads {
            for (full, small) in [(m.qk_full(h), m.qk_small(h)), (m.ov_full(h), m.ov_small(h))] {
                assert_eq!((full.nrows(), small.nrows()), (d, hd));
                let full = eigenvalues(&full, "full").unwrap();
                let small = eigenvalues(&small, "small").unwrap();
                let scale = small[0].norm();
                // the hd largest of the D x D spectrum are the hd x hd one; the rest are zeros
                for (a, b) in full.iter().zip(&small) {
                    assert!(
                        (a - b).norm() < 1e-9 * scale,
                        "{kind:?} head {h}: {a} vs {b}"
                    );
                }
                assert!(
                    full[hd..].iter().all(|z| z.norm() < 1e-9 * scale),
                    "{full:?}"
                );
            }
        }
    }
}

/// Row `i` of a [T, D] tensor as an f64 row vector.
fn row(values: &[f32], d: usize, i: usize) -> Matrix {
    Matrix::from_fn(1, d, |_, e| values[i * d + e] as f64)
}

#[test]
fn the_head_matrices_rebuild_the_models_attention() {
    // the attention of token i, head by head from the split matrices, with zero biases:
    // out_i = sum_h sum_b softmax_b(x_i W_Q^h W_K^hᵀ x_bᵀ / sqrt(hd)) x_b W_V^h W_O^h
    let model = random_model(ModelKind::NeuralOde);
    let BlockWeights::Gpt(w) = some_weights(&model) else {
        panic!("a GPT block")
    };
    let tape = Tape::new();
    let (d, t, n_heads) = (16, 3, 2);
    // the weights onto this tape, with zero biases
    let zero = |n: usize| Some(tape.constant(Tensor::zeros(&[n], odeflow_runtime::DType::F32)));
    let c_attn = layers::Linear {
        w: tape.constant(w.c_attn.w.value().clone()),
        b: zero(3 * d),
    };
    let c_proj = layers::Linear {
        w: tape.constant(w.attn_proj.w.value().clone()),
        b: zero(d),
    };
    let xs: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.71).sin()).collect();
    let x = tape.constant(Tensor::from_vec(xs.clone(), &[1, t, d]).unwrap());
    let got = layers::gpt_attention(&x, &c_attn, &c_proj, n_heads).unwrap();
    let got = got.value().to_f32_vec().unwrap();

    let m = BlockMatrices::from_weights(&BlockWeights::Gpt(w), n_heads).unwrap();
    let scale = 1.0 / (m.head_dim() as f64).sqrt();
    for i in 0..t {
        let mut want = Matrix::zeros(1, d);
        for h in 0..n_heads {
            let (qk, ov) = (m.qk_full(h), m.ov_full(h));
            let scores: Vec<f64> = (0..=i)
                .map(|b| (row(&xs, d, i) * &qk * row(&xs, d, b).transpose())[(0, 0)] * scale)
                .collect();
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - top).exp()).sum();
            for (b, s) in scores.iter().enumerate() {
                want += row(&xs, d, b) * &ov * ((s - top).exp() / z);
            }
        }
        for e in 0..d {
            let (g, w) = (got[i * d + e] as f64, want[(0, e)]);
            assert!(
                (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                "token {i} dim {e}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn each_evaluation_has_every_head_of_qk_and_ov_and_the_mlp() {
    let model = random_model(ModelKind::NeuralOde);
    let m = BlockMatrices::from_weights(&some_weights(&model), 2).unwrap();
    let spectra = block_spectra(&m).unwrap();
    let kinds: Vec<(MatrixKind, Option<usize>, usize)> = spectra
        .iter()
        .map(|s| (s.kind, s.head, s.eigenvalues.len()))
        .collect();
    use MatrixKind::*;
    assert_eq!(
        kinds,
        [
            (Qk, Some(0), 8),
            (Qk, Some(1), 8),
            (Ov, Some(0), 8),
            (Ov, Some(1), 8),
            (Mlp, None, 16)
        ]
    );
    // the MLP's is W_fc W_proj's
    let want = eigenvalues(&(&m.mlp_in * &m.mlp_out), "W_fc W_proj").unwrap();
    let got: &[Complex<f64>] = &spectra[4].eigenvalues;
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).norm() < 1e-12));
}

#[test]
fn ode_models_are_analysed_at_any_t_and_fixed_ones_per_layer() {
    let ode = random_model(ModelKind::NeuralOde);
    let grid = Points::SolverGrid {
        solver: Solver::Rk4,
        steps: 2,
    };
    let (axis, at) = model_spectra(&ode, &grid, &mut |_, _| {}).unwrap();
    let ts: Vec<f64> = at.iter().map(|p| p.t).collect();
    assert_eq!((axis, ts), (Axis::Time, vec![0.0, 0.25, 0.5, 0.75, 1.0]));
    let mut seen = Vec::new();
    let times = Points::Times(vec![0.1, 0.9]);
    let (_, at) = model_spectra(&ode, &times, &mut |done, n| seen.push((done, n))).unwrap();
    assert_eq!(seen, [(1, 2), (2, 2)]);
    // the weights change with t
    assert_ne!(at[0].spectra[0].eigenvalues, at[1].spectra[0].eigenvalues);

    let err = model_spectra(&ode, &Points::Times(vec![1.5]), &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("t = 1.5 is outside [0, 1]"),
        "{err}"
    );

    let gpt2 = random_model(ModelKind::Gpt2);
    let (axis, at) = model_spectra(&gpt2, &grid, &mut |_, _| {}).unwrap();
    let layers: Vec<f64> = at.iter().map(|p| p.t).collect();
    assert_eq!((axis, layers), (Axis::Layer, vec![1.0, 2.0, 3.0]));
    let err = model_spectra(&gpt2, &times, &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("its spectra are per layer"),
        "{err}"
    );

    // a re-discretised model holds the ODE's weights at t_i = (i + 1) / N'
    let Model::Ode(m) = &ode else { unreachable!() };
    let discrete = Model::Discrete(m.to_discrete(4).unwrap());
    let (axis, at) = model_spectra(&discrete, &grid, &mut |_, _| {}).unwrap();
    let (_, want) = model_spectra(&ode, &Points::Times(vec![0.5]), &mut |_, _| {}).unwrap();
    assert_eq!((axis, at.len(), at[1].t), (Axis::Time, 4, 0.5));
    // the same weights up to f32 rounding (one product of 4 time rows against one of 1)
    let close = |a: &[Complex<f64>], b: &[Complex<f64>]| {
        let scale = b[0].norm();
        a.iter().zip(b).all(|(x, y)| (x - y).norm() < 1e-5 * scale)
    };
    assert!(close(
        &at[1].spectra[0].eigenvalues,
        &want[0].spectra[0].eigenvalues
    ));
}
