//! The softmax and fused cross-entropy kernels against the runtime's CPU ops (`softmax_fwd`,
//! `softmax_bwd`, `cross_entropy_fwd`, `cross_entropy_bwd`), f32 and bf16, at row lengths that
//! hit every block size the launcher picks: one warp with a partial (1, 31) or full (32) row,
//! two warps (33), a full block (255, 256), a block whose threads loop (257, 1000), and a
//! GPT-2 vocabulary (50257); and 1 or several rows (one block each).
//!
//! Every output is poisoned with NaN before its launch. The CPU gets the values the device
//! holds (rounded to bf16 for the bf16 kernels); each backward gets the CPU forward's output
//! (y, lse) on both sides. The conventions are checked too: an all -inf row's softmax is zeros,
//! ignored targets give a zero loss term and a zero gradient row, and an out-of-range target
//! gives NaNs (where the CPU op returns an error).
//!
//! Tolerances: |got - want| <= rel (|want| + floor). rel is 64 f32 epsilons (7.6e-6) for f32
//! outputs, including the f32 loss and lse of the bf16 kernels; 2^-8 for bf16 outputs (one
//! rounding to bf16, 2^-9, plus a possible flip where the f32 results straddle a tie). floor
//! is the scale of the terms an output is a difference of: 0 for softmax (exp keeps its
//! relative accuracy, so even e^-20 is checked to rel), 1 for lse = m + log s (log s has an
//! absolute error, and lse may be near 0), max |y| max |dy| for the
//! softmax backward (y (dy - sum dy y)), max |lse| for the loss terms (lse - z), and |scale|
//! for dlogits (scale (p - 1) at the target).

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::softmax::{self, SOFTMAX_MAX_THREADS};
use odeflow_kernels::Gpu;
use odeflow_runtime::ops::{loss as cpu_loss, softmax as cpu_softmax};
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{
    assert_close, cpu, device, download, max_abs, normals, poisoned, rel, upload, values, F32_REL,
};
use std::sync::Arc;

/// Row lengths that cover every block size (see the module doc).
fn row_lengths() -> Vec<usize> {
    let max = SOFTMAX_MAX_THREADS as usize;
    vec![1, 31, 32, 33, max - 1, max, max + 1, 1000, 50257]
}

/// Logits with a masked entry in the first row and, with more than one row, an all -inf last
/// row (the conventions' cases).
fn masked_logits(rows: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut x = normals(rows * n, 3.0, &mut Rng::new(seed));
    if n > 1 {
        x[n / 2] = f32::NEG_INFINITY;
    }
    if rows > 1 {
        x[(rows - 1) * n..].fill(f32::NEG_INFINITY);
    }
    x
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_forward_and_backward_match_the_cpu() {
    let gpu = device();
    for n in row_lengths() {
        for rows in [1, 3] {
            for ty in ElemType::ALL {
                let label = format!("softmax {ty:?} [{rows}, {n}]");
                let (x, xs) = upload(&gpu, &masked_logits(rows, n, 1), ty);
                let want = values(&cpu_softmax::softmax_fwd(&cpu(&xs, &[rows, n])).unwrap());
                let mut y = poisoned(&gpu, rows * n, ty);
                softmax::softmax_fwd_into(&mut y, ty, &x, rows, n).unwrap();
                let got = download(&gpu, &y, ty);
                assert_close(&format!("{label} fwd"), &got, &want, rel(ty), 0.0);
                if rows > 1 {
                    assert!(got[(rows - 1) * n..].iter().all(|&p| p == 0.0), "{label}");
                }
                // the backward from the CPU's y (as the device holds it)
                let (yb, ys) = upload(&gpu, &want, ty);
                let (dy, dys) = upload(&gpu, &normals(rows * n, 1.0, &mut Rng::new(2)), ty);
                let (dyc, yc) = (cpu(&dys, &[rows, n]), cpu(&ys, &[rows, n]));
                let want = values(&cpu_softmax::softmax_bwd(&dyc, &yc).unwrap());
                let mut dx = poisoned(&gpu, rows * n, ty);
                softmax::softmax_bwd_into(&mut dx, ty, &dy, &yb, rows, n).unwrap();
                let floor = max_abs(&ys) * max_abs(&dys);
                let got = download(&gpu, &dx, ty);
                assert_close(&format!("{label} bwd"), &got, &want, rel(ty), floor);
            }
        }
    }
}

/// Random targets below v, with row 1 (when there is one) set to `ignore`.
fn targets(rows: usize, v: usize, ignore: Option<u32>, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut t: Vec<u32> = (0..rows).map(|_| rng.below(v as u64) as u32).collect();
    if let (Some(i), true) = (ignore, rows > 1) {
        t[1] = i;
    }
    t
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_forward_and_backward_match_the_cpu() {
    let gpu = device();
    for v in row_lengths() {
        for (rows, ignore) in [(1, None), (5, Some(7u32)), (4, Some(u32::MAX))] {
            for ty in ElemType::ALL {
                let label = format!("cross-entropy {ty:?} [{rows}, {v}] ignore {ignore:?}");
                check_cross_entropy(&gpu, &label, ty, rows, v, ignore);
            }
        }
    }
}

fn check_cross_entropy(
    gpu: &Arc<Gpu>,
    label: &str,
    ty: ElemType,
    rows: usize,
    v: usize,
    ignore: Option<u32>,
) {
    let (z, zs) = upload(gpu, &normals(rows * v, 3.0, &mut Rng::new(3)), ty);
    let t = targets(rows, v, ignore, 4);
    let tg = gpu.upload(&t).unwrap();
    let (zc, tc) = (
        cpu(&zs, &[rows, v]),
        Tensor::from_vec(t.clone(), &[rows]).unwrap(),
    );
    let (loss, lse) = cpu_loss::cross_entropy_fwd(&zc, &tc, ignore).unwrap();
    let (loss, lse_want) = (loss.to_scalar().unwrap(), values(&lse));

    // forward: per-row terms and lse, then the host's mean
    let mut gloss = poisoned(gpu, rows, ElemType::F32);
    let mut glse = poisoned(gpu, rows, ElemType::F32);
    softmax::cross_entropy_fwd_into(&mut gloss, &mut glse, ty, &z, &tg, ignore, rows, v).unwrap();
    let got = download(gpu, &glse, ElemType::F32);
    assert_close(&format!("{label} lse"), &got, &lse_want, F32_REL, 1.0);
    let terms = download(gpu, &gloss, ElemType::F32);
    let counted: Vec<bool> = t.iter().map(|&ti| Some(ti) != ignore).collect();
    for (i, (&term, &c)) in terms.iter().zip(&counted).enumerate() {
        assert!(
            c || term == 0.0,
            "{label}: ignored row {i} has loss term {term}"
        );
    }
    let count = counted.iter().filter(|&&c| c).count();
    let mean = softmax::mean_loss(&terms, count);
    let floor = max_abs(&lse_want);
    assert_close(&format!("{label} loss"), &[mean], &[loss], F32_REL, floor);

    // backward, from the CPU's lse
    let dloss = 1.5f32;
    let want = cpu_loss::cross_entropy_bwd(&Tensor::scalar(dloss), &zc, &tc, &lse, ignore);
    let want = values(&want.unwrap());
    let scale = softmax::cross_entropy_scale(dloss, count);
    let lse_gpu = gpu.upload(&lse_want).unwrap();
    let mut dz = poisoned(gpu, rows * v, ty);
    softmax::cross_entropy_bwd_into(&mut dz, ty, &z, &tg, &lse_gpu, scale, ignore, rows, v)
        .unwrap();
    let got = download(gpu, &dz, ty);
    let bwd = format!("{label} bwd");
    assert_close(&bwd, &got, &want, rel(ty), scale.abs() as f64);
    for i in (0..rows).filter(|&i| !counted[i]) {
        assert!(
            got[i * v..(i + 1) * v].iter().all(|&g| g == 0.0),
            "{bwd}: row {i}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_target_ignored_gives_zero_loss_and_gradient() {
    let gpu = device();
    let (rows, v) = (3, 40);
    let z = gpu
        .upload(&normals(rows * v, 1.0, &mut Rng::new(5)))
        .unwrap();
    let t = gpu.upload(&[9u32; 3]).unwrap();
    let ty = ElemType::F32;
    let (loss, lse) = softmax::cross_entropy_fwd(ty, &z, &t, Some(9), rows, v).unwrap();
    let terms = gpu.download::<f32>(&loss).unwrap();
    assert_eq!(softmax::mean_loss(&terms, 0), 0.0);
    assert!(terms.iter().all(|&x| x == 0.0), "{terms:?}");
    let scale = softmax::cross_entropy_scale(1.0, 0);
    let dz = softmax::cross_entropy_bwd(ty, &z, &t, &lse, scale, Some(9), rows, v).unwrap();
    assert!(gpu.download::<f32>(&dz).unwrap().iter().all(|&g| g == 0.0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_out_of_range_target_gives_nan_where_the_cpu_gives_an_error() {
    let gpu = device();
    let (rows, v) = (2, 10);
    let logits = normals(rows * v, 1.0, &mut Rng::new(6));
    let t = [3u32, 12];
    let (zc, tc) = (
        cpu(&logits, &[rows, v]),
        Tensor::from_vec(t.to_vec(), &[rows]).unwrap(),
    );
    assert!(cpu_loss::cross_entropy_fwd(&zc, &tc, None).is_err());
    let (z, tg) = (gpu.upload(&logits).unwrap(), gpu.upload(&t).unwrap());
    let ty = ElemType::F32;
    let (loss, lse) = softmax::cross_entropy_fwd(ty, &z, &tg, None, rows, v).unwrap();
    let terms = gpu.download::<f32>(&loss).unwrap();
    assert!(terms[0].is_finite() && terms[1].is_nan(), "{terms:?}");
    let dz = softmax::cross_entropy_bwd(ty, &z, &tg, &lse, 0.5, None, rows, v).unwrap();
    let dz = gpu.download::<f32>(&dz).unwrap();
    assert!(dz[..v].iter().all(|g| g.is_finite()) && dz[v..].iter().all(|g| g.is_nan()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_launch_with_short_buffers_is_refused() {
    let gpu = device();
    let z = gpu.upload(&[0.0f32; 20]).unwrap();
    let t = gpu.upload(&[0u32; 1]).unwrap();
    // two rows of 10 logits, but one target
    let err = softmax::cross_entropy_fwd(ElemType::F32, &z, &t, None, 2, 10).err();
    let msg = err.expect("one target for two rows").to_string();
    assert_eq!(
        msg,
        "crossentropy_fwd_f32: targets holds 4 bytes, the launch needs 8"
    );
    let err = softmax::softmax_fwd(ElemType::F32, &z, 3, 10).err();
    let msg = err.expect("20 values are not 3 rows of 10").to_string();
    assert!(
        msg.contains("softmax_fwd_f32") && msg.contains("x holds 80 bytes"),
        "{msg}"
    );
}
