//! The elementwise kernels against the CPU reference, at every launch configuration their
//! launcher picks: one partial block, exactly one block, one block and one element, and more
//! elements than the capped grid has threads (so each thread's grid-stride loop runs twice).
//! The output is poisoned with NaN before each launch, so a skipped element fails the test.
//!
//! Tolerances: f32, 4 ulps of the reference plus 1e-6 (tanhf and expf against the CPU's own
//! vectorised exp and tanh); bf16, one bf16 rounding (2^-8 relative) of the f32 result plus
//! 1e-6, since the kernel computes in f32 and rounds once on the store.

use odeflow_kernels::elementwise::{self, Activation, Binary, ElemType};
use odeflow_runtime::cpu::math::{gelu, gelu_grad};
use odeflow_runtime::Rng;
use odeflow_tests::gpu::{device, download, elementwise_sizes, normals, poisoned, upload};

/// 3 N(0, 1) draws from `seed`: wide enough to reach the activations' tails.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    normals(n, 3.0, &mut Rng::new(seed))
}

fn assert_close(label: &str, got: &[f32], want: &[f64], ty: ElemType) {
    let rel = match ty {
        ElemType::F32 => 4.0 * f32::EPSILON as f64,
        ElemType::Bf16 => 1.0 / 256.0,
    };
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs() + 1e-6;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{label}: element {i} of {}: got {g}, want {w}",
            got.len()
        );
    }
}

/// An activation and its derivative, in f64.
type Reference = (fn(f64) -> f64, fn(f64) -> f64);

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn activations_forward_and_backward_match_the_cpu() {
    let gpu = device();
    for n in elementwise_sizes() {
        for ty in ElemType::ALL {
            let (x, xs) = upload(&gpu, &inputs(n, 1), ty);
            let (dy, dys) = upload(&gpu, &inputs(n, 2), ty);
            for act in [Activation::Gelu, Activation::Silu] {
                let (f, df): Reference = match act {
                    Activation::Gelu => (|v| gelu(v as f32) as f64, |v| gelu_grad(v as f32) as f64),
                    Activation::Silu => (
                        |v| v * sigmoid(v),
                        |v| sigmoid(v) * (1.0 + v * (1.0 - sigmoid(v))),
                    ),
                };
                let label = format!("{act:?} {ty:?} n={n}");
                let mut y = poisoned(&gpu, n, ty);
                elementwise::activation_fwd_into(&mut y, act, ty, &x, n).unwrap();
                let want: Vec<f64> = xs.iter().map(|&v| f(v as f64)).collect();
                assert_close(&format!("{label} fwd"), &download(&gpu, &y, ty), &want, ty);
                let mut dx = poisoned(&gpu, n, ty);
                elementwise::activation_bwd_into(&mut dx, act, ty, &dy, &x, n).unwrap();
                let want: Vec<f64> = xs
                    .iter()
                    .zip(&dys)
                    .map(|(&v, &g)| g as f64 * df(v as f64))
                    .collect();
                assert_close(&format!("{label} bwd"), &download(&gpu, &dx, ty), &want, ty);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn binary_and_affine_ops_match_the_cpu() {
    let gpu = device();
    for n in elementwise_sizes() {
        for ty in ElemType::ALL {
            let (a, av) = upload(&gpu, &inputs(n, 3), ty);
            let (b, bv) = upload(&gpu, &inputs(n, 4), ty);
            for op in [Binary::Add, Binary::Sub, Binary::Mul] {
                let mut y = poisoned(&gpu, n, ty);
                elementwise::binary_fwd_into(&mut y, op, ty, &a, &b, n).unwrap();
                let want: Vec<f64> = av
                    .iter()
                    .zip(&bv)
                    .map(|(&p, &q)| {
                        let (p, q) = (p as f64, q as f64);
                        match op {
                            Binary::Add => p + q,
                            Binary::Sub => p - q,
                            Binary::Mul => p * q,
                        }
                    })
                    .collect();
                let label = format!("{op:?} {ty:?} n={n}");
                assert_close(&label, &download(&gpu, &y, ty), &want, ty);
            }
            let mut y = poisoned(&gpu, n, ty);
            elementwise::affine_fwd_into(&mut y, ty, &a, -1.5, 0.25, n).unwrap();
            let want: Vec<f64> = av.iter().map(|&p| p as f64 * -1.5 + 0.25).collect();
            assert_close(
                &format!("affine {ty:?} n={n}"),
                &download(&gpu, &y, ty),
                &want,
                ty,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_allocator_reuses_freed_buffers_and_counts_its_peak() {
    let gpu = device();
    gpu.reset_peak();
    let before = gpu.memory();
    let a = gpu.alloc(1000).unwrap();
    let after_one = gpu.memory();
    assert_eq!(
        after_one.lent - before.lent,
        1024,
        "1000 bytes take a 1024-byte class"
    );
    drop(a);
    assert_eq!(gpu.memory().lent, before.lent);
    let cached = gpu.memory().cached;
    let _b = gpu.alloc(900).unwrap(); // the same class: served from the cache
    assert_eq!(gpu.memory().cached, cached - 1024);
    assert!(gpu.memory().peak >= before.lent + 1024);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_launch_with_short_buffers_is_refused() {
    let gpu = device();
    let x = gpu.upload(&[1.0f32; 8]).unwrap();
    let err = elementwise::activation_fwd(Activation::Gelu, ElemType::F32, &x, 9).err();
    let msg = err.expect("9 elements do not fit in 8").to_string();
    assert!(
        msg.contains("gelu_fwd_f32") && msg.contains("32 bytes"),
        "{msg}"
    );
}
