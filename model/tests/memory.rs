//! What a solve keeps for backward, from the runtime's storage meter. This file is its own test
//! binary with one test, so no other test's tensors move the process-wide meter meanwhile.

mod common;

use common::tokens;
use odeflow_autodiff::{memory, Tape};
use odeflow_model::{Config, Forward, GradMode, Model, ModelKind};

#[test]
fn checkpointing_keeps_the_step_inputs_backprop_every_step_and_the_adjoint_nothing() {
    let (b, t) = (4, 32);
    // (bytes kept by the forward pass for backward, peak bytes of forward and backward)
    let usage = |n_steps: usize, grad: GradMode| {
        let cfg = Config {
            n_steps,
            seq_len: t,
            ..Config::tiny().with_model(ModelKind::NeuralOde)
        };
        let model = Model::new(&cfg, 0).unwrap();
        let (ids, targets) = (tokens(b, t, 256, 1), tokens(b, t, 256, 2));
        let before = memory::live_bytes();
        let tape = Tape::new();
        let fwd = Forward {
            grad,
            ..Forward::eval()
        };
        let (kept, step) = memory::measure(|| {
            let loss = model.loss(&tape, &ids, &targets, &fwd).unwrap();
            let kept = memory::live_bytes() - before;
            tape.backward(&loss).unwrap();
            kept
        });
        model.params().iter().for_each(|p| p.zero_grad());
        (kept, step.peak)
    };
    let retained = |n_steps, grad| usage(n_steps, grad).0;
    let (d, f) = (128, 512);
    let state = (b * t * d * 4) as f64; // one [B, T, D] f32 state
    let per_step = |grad| (retained(16, grad) as f64 - retained(8, grad) as f64) / 8.0;
    let (checkpoint, backprop) = (per_step(GradMode::Checkpoint), per_step(GradMode::Backprop));
    // every step also has its own slice of the batched weights: W(t_i) of the four linears,
    // b(t_i), and the two norms' weight and bias
    let matrices = d * 3 * d + d * d + d * f + f * d;
    let vectors = 3 * d + d + f + d + 2 * 2 * d;
    let weights = ((matrices + vectors) * 4) as f64;
    // a checkpointed step keeps exactly its input state and its weights (plus tape bookkeeping)
    let slack = 4096.0;
    assert!(
        (checkpoint - (state + weights)).abs() <= slack,
        "checkpoint keeps {checkpoint} B per step, not one state {state} + weights {weights}"
    );
    // recording the step keeps its activations: norms, qkv, attention probabilities, MLP
    assert!(
        backprop - weights > 8.0 * state,
        "backprop keeps only {backprop} B per step"
    );
    // the adjoint keeps the final state whatever L, and generates W(t) per evaluation: neither
    // what it keeps nor its peak grows with L
    let (kept_8, peak_8) = usage(8, GradMode::Adjoint);
    let (kept_16, peak_16) = usage(16, GradMode::Adjoint);
    assert!(
        kept_16.abs_diff(kept_8) as f64 <= slack,
        "the adjoint keeps {kept_8} B at L = 8 and {kept_16} B at L = 16"
    );
    assert!(
        peak_16.abs_diff(peak_8) as f64 <= slack,
        "the adjoint's step peaks at {peak_8} B at L = 8 and {peak_16} B at L = 16"
    );
    // a checkpointed adjoint keeps one state per segment
    let seg = |n| retained(n, GradMode::CheckpointedAdjoint(4)) as f64;
    let per_segment = (seg(16) - seg(8)) / 2.0;
    assert!(
        (per_segment - state).abs() <= slack,
        "adjoint:4 keeps {per_segment} B per 4 steps, not one state {state}"
    );
}
