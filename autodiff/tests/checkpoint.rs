//! Gradient checkpointing: the recomputed backward must equal the recorded one exactly.

mod common;

use common::MiniOde;
use odeflow_autodiff::{Error, Param, Tape, Var};
use odeflow_runtime::{DType, Rng, Tensor};

/// Runs the mini ODE with or without checkpointing; returns every gradient it produced.
fn gradients(model: &MiniOde, checkpoint: bool) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(3);
    let x0 = Tensor::randn(&[6, model.d], 0.0, 1.0, DType::F32, &mut rng);
    let r = Tensor::randn(&[6, model.d], 0.0, 1.0, DType::F32, &mut rng);
    model.zero_grad();
    let tape = Tape::new();
    let x0 = tape.leaf(x0);
    let loss = model.loss(&tape, &x0, &r, checkpoint).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let mut all = vec![grads.get(&x0).unwrap().to_vec::<f32>().unwrap()];
    for p in model.params() {
        all.push(p.grad().unwrap().to_vec::<f32>().unwrap());
    }
    all
}

#[test]
fn checkpointed_and_recorded_backward_give_identical_gradients() {
    // with dropout on: each step reseeds its own mask, so the recomputation draws it again
    let model = MiniOde::new(6, 3, 5, 0.1, 11);
    let plain = gradients(&model, false);
    let checkpointed = gradients(&model, true);
    let names = ["x0", "h", "f", "g"];
    for ((a, b), name) in plain.iter().zip(&checkpointed).zip(names) {
        assert!(
            a.iter().any(|&v| v != 0.0),
            "{name}: a gradient of zeros proves nothing"
        );
        assert_eq!(a, b, "d{name}: checkpointing changed the gradient");
    }
}

#[test]
fn checkpoint_keeps_only_one_node_per_segment() {
    let model = MiniOde::new(4, 2, 3, 0.0, 1);
    let r = Tensor::ones(&[2, 3], DType::F32);
    let count_nodes = |checkpoint: bool| {
        let tape = Tape::new();
        let x0 = tape.leaf(Tensor::ones(&[2, 3], DType::F32));
        model.loss(&tape, &x0, &r, checkpoint).unwrap();
        tape.len()
    };
    // shared part: leaf x0, 2 params, matmul, split, 4 reshapes, then mul + sum_all = 11 nodes;
    // a recorded step adds param g, layer_norm, matmul, tanh, scale, add = 6 nodes,
    // a checkpointed step adds 1
    assert_eq!(count_nodes(false), 11 + 4 * 6);
    assert_eq!(count_nodes(true), 11 + 4);
}

#[test]
fn a_captured_outer_var_is_refused_with_a_hint() {
    let tape = Tape::new();
    let x = tape.leaf(Tensor::ones(&[2], DType::F32));
    let outer = tape.leaf(Tensor::ones(&[2], DType::F32));
    // the forward run cannot tell (it runs on this tape, where `outer` lives); the recomputation
    // runs on a fresh tape, where `outer` is foreign, and says so
    let y = tape
        .checkpoint(&[&x], move |_, v| v[0].mul(&outer))
        .unwrap();
    let err = tape.backward(&y.sum_all().unwrap()).unwrap_err();
    assert!(matches!(err, Error::ForeignVar { op: "mul" }), "{err}");
}

#[test]
fn nested_checkpoints_and_constant_inputs() {
    // y = exp(2 x) * c through two nested segments; dy/dx = 2 exp(2x) c, c gets no gradient
    let w = Param::new("w", Tensor::from_vec(vec![2.0f32], &[1]).unwrap());
    let tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![0.5f32, -1.0], &[2]).unwrap());
    let c = tape.constant(Tensor::from_vec(vec![3.0f32, 4.0], &[2]).unwrap());
    let w2 = w.clone();
    let y = tape
        .checkpoint(&[&x, &c], move |tape, v| {
            let w3 = w2.clone();
            let inner =
                tape.checkpoint(&[&v[0]], move |tape, u| u[0].mul(&tape.param(&w3))?.exp())?;
            inner.mul(&v[1])
        })
        .unwrap();
    let grads = tape.backward(&y.sum_all().unwrap()).unwrap();
    let dx = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
    let want = [2.0 * 1f32.exp() * 3.0, 2.0 * (-2f32).exp() * 4.0];
    for (g, w) in dx.iter().zip(want) {
        assert!((g - w).abs() < 1e-5 * w.abs(), "{g} vs {w}");
    }
    // dL/dw = sum(x * exp(w x) * c) = 0.5 e 3 + (-1) e^-2 4
    let dw = w.grad().unwrap().to_scalar().unwrap();
    let want_dw = 0.5 * 1f32.exp() * 3.0 - (-2f32).exp() * 4.0;
    assert!((dw - want_dw).abs() < 1e-5, "{dw} vs {want_dw}");
}

#[test]
fn under_no_grad_a_checkpoint_is_a_plain_call() {
    let tape = Tape::new();
    let x = tape.leaf(Tensor::ones(&[2], DType::F32));
    let y: Var = tape.no_grad(|| tape.checkpoint(&[&x], |_, v| v[0].exp()).unwrap());
    assert!(!y.requires_grad());
    assert_eq!(tape.len(), 1, "only the leaf");
}
