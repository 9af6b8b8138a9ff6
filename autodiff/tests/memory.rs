//! What the tape holds in memory, read from the runtime's storage meter. The meter is
//! process-wide, so these tests live in their own binary and run one at a time.

mod common;

use common::MiniOde;
use odeflow_autodiff::{memory, Tape};
use odeflow_runtime::{DType, Rng, Tensor};
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const F32: usize = 4;

fn inputs(t: usize, d: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(9);
    let x0 = Tensor::randn(&[t, d], 0.0, 1.0, DType::F32, &mut rng);
    let r = Tensor::randn(&[t, d], 0.0, 1.0, DType::F32, &mut rng);
    (x0, r)
}

fn param_grad_bytes(model: &MiniOde) -> usize {
    model.params().iter().map(|p| p.numel() * F32).sum()
}

#[test]
fn after_backward_only_the_gradients_remain() {
    let _serial = serial();
    let model = MiniOde::new(8, 3, 16, 0.1, 2);
    let (x0, r) = inputs(32, 16);
    for checkpoint in [false, true] {
        model.zero_grad();
        let base = memory::live_bytes();
        let tape = Tape::new();
        let x0 = tape.leaf(x0.clone());
        let loss = model.loss(&tape, &x0, &r, checkpoint).unwrap();
        let grads = tape.backward(&loss).unwrap();
        // grads holds dx0; the tape and the pass's Vars are still alive here, but the tape
        // saved nothing more: what is left is the parameters' gradients and the loss scalar
        drop(grads);
        assert_eq!(
            memory::live_bytes() - base,
            param_grad_bytes(&model) + F32,
            "checkpoint = {checkpoint}"
        );
        drop((loss, x0, tape));
        model.zero_grad();
        assert_eq!(
            memory::live_bytes(),
            base,
            "checkpoint = {checkpoint}: a leak"
        );
    }
}

#[test]
fn a_checkpointed_forward_keeps_only_the_step_inputs() {
    let _serial = serial();
    let (l, t, d) = (16, 64, 32);
    let model = MiniOde::new(l, 3, d, 0.1, 4);
    let (x0, r) = inputs(t, d);
    let tape = Tape::new();
    let x0 = tape.leaf(x0);
    let (loss, usage) = memory::measure(|| model.loss(&tape, &x0, &r, true).unwrap());
    // kept: the step weights [L, D*D] (one buffer, the segments hold views of it), the step
    // outputs x_1 .. x_L [T, D] each (x_0 existed before), and the loss scalar
    assert_eq!(usage.retained, (l * d * d + l * t * d + 1) * F32);
    drop((loss, tape));
}

#[test]
fn checkpointing_cuts_the_peak_of_a_training_step() {
    let _serial = serial();
    let (l, t, d) = (16, 64, 32);
    let model = MiniOde::new(l, 3, d, 0.1, 4);
    let (x0, r) = inputs(t, d);
    let peak = |checkpoint: bool| {
        model.zero_grad();
        let ((), usage) = memory::measure(|| {
            let tape = Tape::new();
            let x0 = tape.leaf(x0.clone());
            let loss = model.loss(&tape, &x0, &r, checkpoint).unwrap();
            tape.backward(&loss).unwrap();
        });
        usage.peak
    };
    let (plain, checkpointed) = (peak(false), peak(true));
    // recorded, each step keeps ~5 [T, D] activations (norm output, product, tanh, dropout,
    // scaled update) plus the mask; checkpointed, one [T, D] input per step plus one step's
    // activations at a time. The step weights and the gradients are common to both.
    assert!(
        2 * checkpointed < plain,
        "checkpointed peak {checkpointed} B is not below half the recorded {plain} B"
    );
}

/// The tape's attention keeps out and one f32 log-sum-exp per query for its backward, and its
/// backward never holds more than a few [B, H, T, hd] tensors: memory linear in T. The
/// materialised reference keeps the [B, H, T, T] probabilities, which the same accounting sees.
#[test]
fn attention_saves_memory_linear_in_t() {
    let _serial = serial();
    let (b, h, hd) = (1, 2, 16);
    for t in [256, 512] {
        let mut rng = Rng::new(t as u64);
        let shape = [b, h, t, hd];
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(&shape, 0.0, 1.0, DType::F32, &mut rng))
            .collect();
        let head_bytes = b * h * t * hd * F32;
        for materialised in [false, true] {
            let tape = Tape::new();
            let v: Vec<_> = qkv.iter().map(|x| tape.leaf(x.clone())).collect();
            let (y, usage) = memory::measure(|| {
                if materialised {
                    odeflow_autodiff::Var::attention_materialised(&v[0], &v[1], &v[2])
                } else {
                    odeflow_autodiff::Var::attention(&v[0], &v[1], &v[2])
                }
                .unwrap()
            });
            let saved = usage.retained - head_bytes; // what is kept beside the output
            let want = if materialised {
                b * h * t * t * F32
            } else {
                b * h * t * F32
            };
            assert_eq!(
                saved, want,
                "T {t}, materialised {materialised}: saved bytes"
            );
            if !materialised {
                let (_, bwd) = memory::measure(|| tape.backward(&y.sum_all().unwrap()).unwrap());
                // the loss scalar, the seed's broadcast, dq, dk, dv: nothing T x T
                assert!(
                    bwd.peak <= 4 * head_bytes + F32,
                    "T {t}: the backward peaked at {} bytes, over 4 x {head_bytes} + 4",
                    bwd.peak
                );
            }
        }
    }
}
