//! The elementwise kernels against the CPU reference, at every launch configuration their
//! launcher picks: one partial block, exactly one block, one block and one element, and more
//! elements than the capped grid has threads (so each thread's grid-stride loop runs twice).
//! The output is poisoned with NaN before each launch, so a skipped element fails the test.
//!
//! Tolerances: f32, 4 ulps of the reference plus 1e-6 (tanhf and expf against the CPU's own
//! vectorised exp and tanh); bf16, one bf16 rounding (2^-8 relative) of the f32 result plus
//! 1e-6, since the kernel computes in f32 and rounds once on the store.
//!
//! The linear combination `lincomb_fwd` (y = x + sum_s alpha_s k_s) is held to the CPU op
//! `ops::elementwise::lincomb` to the bit, in both dtypes: both widen the same values to f32,
//! round each product and then each sum in the same order (the kernel's __fmul_rn and
//! __fadd_rn forbid the FMA that would skip the product's rounding), and round to bf16 once,
//! to nearest even. Past 8 terms the launcher chains launches, which in bf16 rounds once more
//! per launch: there the bar is 4 u mag (u = 2^-8, mag = |x| + sum_s |alpha_s| |k_s|), a
//! rounding of the intermediate and of the result and the CPU's own, each within u mag.

use odeflow_kernels::elementwise::{self, Activation, Binary, ElemType};
use odeflow_kernels::launch::{ELEMENTWISE_BLOCK, ELEMENTWISE_MAX_BLOCKS};
use odeflow_kernels::DeviceBuffer;
use odeflow_runtime::cpu::math::{gelu, gelu_grad};
use odeflow_runtime::ops::elementwise::lincomb;
use odeflow_runtime::{DType, Device, Rng, Tensor};
use odeflow_tests::gpu::{
    device, download, elementwise_sizes, normals, poisoned, upload, upload_with_tensor,
};

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

// ---- the linear combination ----

/// The alphas of up to 11 terms: RK4's weights first, then others of both signs and sizes.
const ALPHAS: [f32; 11] = [
    1.0 / 6.0,
    1.0 / 3.0,
    1.0 / 3.0,
    1.0 / 6.0,
    -0.75,
    2.5,
    0.1,
    -3.0,
    0.5,
    1.25,
    -0.2,
];

/// Element counts that reach every path of lincomb's split into 16-byte vectors (V = 4 f32 or
/// 8 bf16 elements): fewer than one vector; one or a few vectors and a ragged tail (one
/// partial block); 8 blocks' worth of f32 vectors (one of bf16) and a tail; and more vectors
/// than the capped grid has threads in either dtype (each thread loops), and a tail.
fn lincomb_sizes() -> Vec<usize> {
    let block = ELEMENTWISE_BLOCK as usize;
    let capped = block * ELEMENTWISE_MAX_BLOCKS as usize;
    vec![1, 3, 7, 13, 8 * block + 5, 8 * capped + 29]
}

/// The bits of f32 values, so that equality is to the bit (and a NaN never matches).
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// |x| + sum_s |alpha_s| |k_s|, element by element: the size of what lincomb sums.
fn lincomb_mag(x: &[f32], ks: &[Vec<f32>]) -> Vec<f64> {
    let mut mag: Vec<f64> = x.iter().map(|v| v.abs() as f64).collect();
    for (alpha, k) in ALPHAS.iter().zip(ks) {
        for (m, v) in mag.iter_mut().zip(k) {
            *m += (alpha * v).abs() as f64;
        }
    }
    mag
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn lincomb_matches_the_cpu_op_to_the_bit_at_every_size_and_term_count() {
    let gpu = device();
    for n in lincomb_sizes() {
        for ty in ElemType::ALL {
            let (x_cpu, x) = upload_with_tensor(&gpu, &inputs(n, 10), &[n], ty);
            let uploaded: Vec<(Tensor, DeviceBuffer)> = (0..ALPHAS.len())
                .map(|s| upload_with_tensor(&gpu, &inputs(n, 11 + s as u64), &[n], ty))
                .collect();
            // 0 to 5 terms in one launch, 11 in two (chained)
            for m in (0..=5).chain([ALPHAS.len()]) {
                let terms = &uploaded[..m];
                let cpu_terms: Vec<(f32, &Tensor)> = ALPHAS
                    .iter()
                    .copied()
                    .zip(terms.iter().map(|t| &t.0))
                    .collect();
                let dev_terms: Vec<(f32, &DeviceBuffer)> = ALPHAS
                    .iter()
                    .copied()
                    .zip(terms.iter().map(|t| &t.1))
                    .collect();
                let want = lincomb(&x_cpu, &cpu_terms).unwrap().to_f32_vec().unwrap();
                let mut y = poisoned(&gpu, n, ty);
                elementwise::lincomb_fwd_into(&mut y, ty, &x, &dev_terms, n).unwrap();
                let got = download(&gpu, &y, ty);
                let label = format!("lincomb {ty:?} n={n}, {m} terms");
                if m <= elementwise::LINCOMB_MAX_TERMS || ty == ElemType::F32 {
                    assert!(bits(&got) == bits(&want), "{label}: not the CPU's bits");
                    continue;
                }
                // chained in bf16: one more rounding per launch (the module doc)
                let values: Vec<Vec<f32>> =
                    terms.iter().map(|t| t.0.to_f32_vec().unwrap()).collect();
                let mag = lincomb_mag(&x_cpu.to_f32_vec().unwrap(), &values);
                for (i, ((&g, &w), &size)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    let tol = 4.0 / 256.0 * size;
                    assert!(
                        (g as f64 - w as f64).abs() <= tol,
                        "{label}: element {i}: got {g}, want {w} (tolerance {tol:e})"
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn lincomb_on_cuda_tensors_reads_views_as_their_values() {
    // x a narrowed slice (an offset), k_0 dense, k_1 a transpose (strides), k_2 a broadcast
    // row (stride 0), k_3 dense: [33, 37] each, 1221 elements (not whole vectors or blocks)
    let cuda = |t: &Tensor| t.to_device(Device::Cuda(0)).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let mut rng = Rng::new(31);
        let mut draw = |shape: &[usize]| Tensor::randn(shape, 0.0, 1.0, dtype, &mut rng);
        let (long, k0, k1) = (draw(&[40, 37]), draw(&[33, 37]), draw(&[37, 33]));
        let (row, k3) = (draw(&[1, 37]), draw(&[33, 37]));
        let views = |long: &Tensor, k0: &Tensor, k1: &Tensor, row: &Tensor, k3: &Tensor| {
            let x = long.narrow(0, 5, 33).unwrap();
            let ks = [
                k0.clone(),
                k1.t().unwrap(),
                row.broadcast_to(&[33, 37]).unwrap(),
                k3.clone(),
            ];
            (x, ks)
        };
        let (x_cpu, ks_cpu) = views(&long, &k0, &k1, &row, &k3);
        let (x_dev, ks_dev) = views(
            &cuda(&long),
            &cuda(&k0),
            &cuda(&k1),
            &cuda(&row),
            &cuda(&k3),
        );
        assert!(x_dev.layout().offset() != 0 && !ks_dev[1].is_contiguous());
        for m in 0..=ks_cpu.len() {
            let cpu_terms: Vec<(f32, &Tensor)> = ALPHAS.iter().copied().zip(&ks_cpu[..m]).collect();
            let dev_terms: Vec<(f32, &Tensor)> = ALPHAS.iter().copied().zip(&ks_dev[..m]).collect();
            let want = lincomb(&x_cpu, &cpu_terms).unwrap();
            let got = lincomb(&x_dev, &dev_terms).unwrap();
            let label = format!("lincomb of views, {dtype:?}, {m} terms");
            assert_eq!(got.device(), Device::Cuda(0), "{label}");
            assert_eq!(
                (got.dtype(), got.shape()),
                (dtype, &[33, 37][..]),
                "{label}"
            );
            let (got, want) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
            assert!(bits(&got) == bits(&want), "{label}: not the CPU's bits");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn lincomb_refuses_a_short_term() {
    let gpu = device();
    let (x, k) = (
        gpu.upload(&[1.0f32; 8]).unwrap(),
        gpu.upload(&[1.0f32; 7]).unwrap(),
    );
    let err = elementwise::lincomb_fwd(ElemType::F32, &x, &[(0.5, &x), (2.0, &k)], 8).err();
    let msg = err.expect("a term of 7 elements for 8").to_string();
    assert!(
        msg.starts_with("lincomb_fwd_f32: k holds 28 bytes"),
        "{msg}"
    );
}
