//! The fused AdamW kernel against the runtime's CPU update (`ops::optim::adamw_update`), at every
//! launch configuration its launcher picks (one partial block, exactly one block, one block and
//! one element, more elements than the capped grid has threads), for an f32 and a bf16
//! gradient, with and without weight decay and clipping, at early and late steps.
//!
//! The update is in place, so its buffers cannot be poisoned: instead every element's moment
//! changes at every step (random gradients), so an element the kernel skipped keeps its old
//! value and fails the comparison.
//!
//! Tolerance: 4 f32 ulps on each of param, m and v. The kernel performs the CPU's operations in
//! the CPU's order with no FMA contraction and the same f32 bias corrections, so it should be
//! bit-identical; the few ulps leave room for nothing else.

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::optim::{self, AdamWStep};
use odeflow_runtime::ops::optim as cpu;
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{device, elementwise_sizes, normals, upload_with_tensor};

const ULPS: u32 = 4;

/// The distance between two f32s in units in the last place (0 when equal, both NaN excluded).
fn ulps(a: f32, b: f32) -> u32 {
    // map the sign-magnitude bits onto a line where adjacent floats differ by 1
    let line = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits < 0x8000_0000 {
            bits
        } else {
            0x8000_0000 - bits
        }
    };
    (line(a) - line(b)).unsigned_abs().min(u32::MAX as u64) as u32
}

fn assert_ulps(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            ulps(g, w) <= ULPS,
            "{label}: element {i} of {}: got {g}, want {w} ({} ulps)",
            got.len(),
            ulps(g, w)
        );
    }
}

/// The runtime's step with the same hyperparameters.
fn cpu_step(h: &AdamWStep) -> cpu::AdamWStep {
    cpu::AdamWStep {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        step: h.step,
        grad_scale: h.grad_scale,
    }
}

/// The steps tried: the first (largest bias correction), with clipping and decay; an early one
/// without decay; a late one, where the corrections round to nearly 1.
fn steps() -> Vec<AdamWStep> {
    let base = AdamWStep {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
        grad_scale: 0.37,
    };
    vec![
        base,
        AdamWStep {
            step: 2,
            weight_decay: 0.0,
            grad_scale: 1.0,
            ..base
        },
        AdamWStep {
            step: 5000,
            beta2: 0.999,
            ..base
        },
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_matches_the_cpu_update() {
    let gpu = device();
    let mut rng = Rng::new(7);
    for n in elementwise_sizes() {
        for ty in ElemType::ALL {
            // a state from earlier steps: m of either sign, v positive
            let mut p = normals(n, 1.0, &mut rng);
            let mut m = normals(n, 0.1, &mut rng);
            let mut v: Vec<f32> = normals(n, 0.1, &mut rng).iter().map(|x| x * x).collect();
            for h in steps() {
                let label = format!("{ty:?} grad, n={n}, step {}", h.step);
                let g = normals(n, 2.0, &mut rng);
                let (g_cpu, g_gpu) = upload_with_tensor(&gpu, &g, &[n], ty);
                // the device starts from the CPU's state, so each step is compared on its own
                let (mut pd, mut md, mut vd) = (
                    gpu.upload(&p).unwrap(),
                    gpu.upload(&m).unwrap(),
                    gpu.upload(&v).unwrap(),
                );
                optim::adamw_update(&mut pd, &mut md, &mut vd, &g_gpu, ty, &h, n).unwrap();
                let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), &[n]).unwrap();
                let (p2, m2, v2) =
                    cpu::adamw_update(&t(&p), &g_cpu, &t(&m), &t(&v), &cpu_step(&h)).unwrap();
                (p, m, v) = (
                    p2.to_vec::<f32>().unwrap(),
                    m2.to_vec::<f32>().unwrap(),
                    v2.to_vec::<f32>().unwrap(),
                );
                assert_ulps(&format!("{label}: m"), &gpu.download(&md).unwrap(), &m);
                assert_ulps(&format!("{label}: v"), &gpu.download(&vd).unwrap(), &v);
                assert_ulps(&format!("{label}: param"), &gpu.download(&pd).unwrap(), &p);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_refuses_short_buffers_and_step_zero() {
    let gpu = device();
    let h = steps()[0];
    let (mut p, mut m, mut v) = (
        gpu.upload(&[0.0f32; 8]).unwrap(),
        gpu.upload(&[0.0f32; 8]).unwrap(),
        gpu.upload(&[0.0f32; 7]).unwrap(),
    );
    let g = gpu.upload(&[0.0f32; 8]).unwrap();
    let err = optim::adamw_update(&mut p, &mut m, &mut v, &g, ElemType::F32, &h, 8).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("adamw_fwd_f32") && msg.contains("v holds 28 bytes"),
        "{msg}"
    );
    let step0 = AdamWStep { step: 0, ..h };
    let err = optim::adamw_update(&mut p, &mut m, &mut v, &g, ElemType::F32, &step0, 7);
    assert!(err.unwrap_err().to_string().contains("1-based"));
}
