//! Small models and helpers shared by the model tests.
#![allow(dead_code)]

use odeflow_autodiff::Tape;
use odeflow_model::{Config, Forward, LlamaNorm, Model, ModelKind};
use odeflow_runtime::{DType, Rng, Tensor};

/// A model small enough for finite differences: V 32, P 8, D 16, H 2, L 3, E 3, S 3.
pub fn tiny(kind: ModelKind) -> Config {
    let cfg = Config {
        vocab_size: 32,
        seq_len: 8,
        d_model: 16,
        n_heads: 2,
        n_steps: 3,
        time_embed_dim: 3,
        sinusoidal_dim: 3,
        d_ff: 24,
        dropout: 0.0,
        ..Config::tiny()
    };
    cfg.with_model(kind)
}

/// Every kind of model the tests cover, with a label.
pub fn all_kinds() -> Vec<(&'static str, Config)> {
    let reference = Config {
        llama_norm: LlamaNorm::Reference,
        ..tiny(ModelKind::LlamaOde)
    };
    vec![
        ("neural-ode", tiny(ModelKind::NeuralOde)),
        ("llama-ode", tiny(ModelKind::LlamaOde)),
        ("llama-ode (reference norm)", reference),
        ("gpt2", tiny(ModelKind::Gpt2)),
    ]
}

/// Replaces every parameter by N(0, std^2) noise, so that no path through the model is
/// switched off (the reference init has W0 = G = Bn = 0, which would hide their gradients).
pub fn randomize(model: &Model, std: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    for p in model.params() {
        let v = Tensor::randn(&p.shape(), 0.0, std, DType::F32, &mut rng);
        p.set_value(v).unwrap();
    }
}

/// Random token ids in 0..V.
///
/// Shapes: -> [b, t] (u32)
pub fn tokens(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
    Tensor::from_vec(ids, &[b, t]).unwrap()
}

/// The logits of an evaluation pass, as f32s.
pub fn logits(model: &Model, ids: &Tensor, fwd: &Forward) -> Vec<f32> {
    let tape = Tape::new();
    let y = tape.no_grad(|| model.forward(&tape, ids, fwd)).unwrap();
    y.value().to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
