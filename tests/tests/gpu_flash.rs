//! The CUDA flash attention (`kernels/cuda/flash.cu`, through the runtime's
//! `ops::attention::flash_attention_fwd` / `_bwd` on bf16 CUDA tensors) against the CPU's tiled
//! attention (`runtime/src/cpu/flash.rs`, through the same ops on f32 CPU tensors), forward
//! (out, lse) and backward (dq, dk, dv), at every head dim the kernels have (32, 64, 128) and
//! T in {1, 17, 64, 100, 257, 1024}: one position, a ragged first tile, exactly one tile, a
//! ragged second tile, five tiles with one row in the last, and sixteen; B x H of 2 x 3 (1 x 2
//! at T = 1024). Every launch configuration the launcher picks is among them (the grid is
//! (B H, ceil(T / 64)) and the kernels are chosen by hd alone).
//!
//! Both sides read the same values: inputs drawn, rounded to bf16 once, and given to the CPU as
//! f32. The CPU computes in f32 and keeps f32 outputs; the device rounds P and dS to bf16 for
//! the tensor cores and its outputs to bf16. The backward gets the CPU forward's out (rounded to
//! bf16, as the device's forward would store it) and lse on both sides, so each comparison sees
//! one kernel's error only.
//!
//! Tolerances, element by element: |got - want| <= 2^-7 (|want| + mag). bf16's unit roundoff is
//! u = 2^-8 (8 significant bits), and an output of the device carries at most two roundings of
//! that size: its own (u |want|) and that of the bf16 operands of its last product, which sum
//! terms of total magnitude mag: sum_j P_ij |v_jd| for out, sum_i P_ij |dout_id| for dv,
//! scale sum_i |dS_ij| |q_id| for dk and scale sum_j |dS_ij| |k_jd| for dq. dS_ij = P_ij (dP_ij -
//! D_i) is a difference of two f32 dot products that may cancel, so its magnitude counts
//! 2^-10 P_ij (|dout_i| . |v_j| + |dout_i| . |out_i|) besides |dS_ij|: far above their f32
//! error (about hd 2^-24 of those dots), far below the bf16 terms. So u (|want| + mag) bounds the
//! error, and the bar is twice that. lse is f32 on both sides, computed in different orders
//! (tiles of 64, base-2 exponentials on the device): |got - want| <= 2^-14 (|want| + 1), the
//! worst-case error of summing 1024 positive f32 terms, where the usual error is far smaller.
//! The magnitudes come from the materialised attention (`attention_fwd`'s probabilities) and
//! CPU products of absolute values. `the_bar_admits_a_correct_bf16_result` checks on the CPU
//! that the bar passes the CPU's own bf16 result (its one rounding) and fails a wrong one.

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::flash::{self as kernels, FlashPtx, FlashShape};
use odeflow_runtime::ops::attention::{
    attention_fwd, flash_attention_bwd, flash_attention_fwd, flash_supported,
};
use odeflow_runtime::{DType, Device, Error, Rng, Tensor};
use odeflow_tests::gpu::{assert_close, device, poisoned};

const CUDA: Device = Device::Cuda(0);
/// Twice bf16's unit roundoff (see the module doc).
const REL: f64 = 1.0 / 128.0;
/// The relative tolerance of lse, with a floor of 1.
const LSE_REL: f64 = 1.0 / 16384.0;
/// The weight of the f32 error of dS's two dots in its magnitude.
const DS_SLACK: f32 = 1.0 / 1024.0;

// ---- helpers ----

/// A CPU f32 tensor of N(0, std^2) draws from `seed`, rounded to bf16 values.
fn bf16_values(shape: &[usize], std: f32, seed: u64) -> Tensor {
    let t = Tensor::randn(shape, 0.0, std, DType::BF16, &mut Rng::new(seed));
    t.to_dtype(DType::F32).unwrap()
}

/// The same values as a bf16 tensor on device 0.
fn cuda_bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_device(CUDA).unwrap()
}

/// The values (downloaded from the device, widened to f32).
fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// |x|, element by element, as an f32 CPU tensor.
fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = vals(t).iter().map(|x| x.abs()).collect();
    Tensor::from_vec(v, t.shape()).unwrap()
}

/// The first element where |got - want| > rel (|want| + mag) (a NaN counts), as
/// (index, got, want, tolerance).
fn violation(got: &[f32], want: &[f32], mag: &[f32], rel: f64) -> Option<(usize, f32, f32, f64)> {
    assert_eq!((got.len(), mag.len()), (want.len(), want.len()), "lengths");
    let elems = got.iter().zip(want).zip(mag).enumerate();
    elems
        .map(|(i, ((&g, &w), &m))| (i, g, w, rel * (w.abs() as f64 + m as f64)))
        // a NaN compares false with anything, so it is caught apart
        .find(|&(_, g, w, tol)| (g as f64 - w as f64).abs() > tol || g.is_nan())
}

/// |got - want| <= rel (|want| + mag), element by element.
fn assert_within(label: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f64) {
    if let Some((i, g, w, tol)) = violation(got, want, mag, rel) {
        let n = got.len();
        panic!("{label}: element {i} of {n}: got {g}, want {w} (tolerance {tol:e})");
    }
}

/// One case: bf16-valued f32 CPU inputs of shape [B, H, T, hd].
struct Case {
    label: String,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
}

impl Case {
    fn new(b: usize, h: usize, t: usize, hd: usize, seed: u64) -> Case {
        let shape = [b, h, t, hd];
        // q and k at 1.5 spread the scores over about +-3, so softmax rows range from peaked
        // to flat
        Case {
            label: format!("[{b}, {h}, {t}, {hd}]"),
            q: bf16_values(&shape, 1.5, seed),
            k: bf16_values(&shape, 1.5, seed + 1),
            v: bf16_values(&shape, 1.0, seed + 2),
            dout: bf16_values(&shape, 1.0, seed + 3),
        }
    }
}

/// The magnitudes of the module doc, from the materialised probabilities P [B, H, T, T] and the
/// backward's out (bf16 values): (out, dq, dk, dv).
fn magnitudes(c: &Case, out_b: &Tensor) -> [Vec<f32>; 4] {
    let scale = 1.0 / (c.q.shape()[3] as f32).sqrt();
    let (_, p) = attention_fwd(&c.q, &c.k, &c.v).unwrap();
    let (aq, ak, av, ag) = (abs(&c.q), abs(&c.k), abs(&c.v), abs(&c.dout));
    let mag_out = p.matmul(&av).unwrap();
    let mag_dv = p.t().unwrap().matmul(&ag).unwrap();
    // dS = P (dP - D), and the magnitude of the two dots it subtracts
    let dp = c.dout.matmul(&c.v.t().unwrap()).unwrap();
    let d = c.dout.mul(out_b).unwrap().sum(3, true).unwrap();
    let ds = p.mul(&dp.sub(&d).unwrap()).unwrap();
    let dp_mag = ag.matmul(&av.t().unwrap()).unwrap();
    let d_mag = ag.mul(&abs(out_b)).unwrap().sum(3, true).unwrap();
    let dots = p.mul(&dp_mag.add(&d_mag).unwrap()).unwrap();
    let mag_ds = abs(&ds).add(&dots.scale(DS_SLACK).unwrap()).unwrap();
    let mag_dq = mag_ds.matmul(&ak).unwrap().scale(scale).unwrap();
    let mag_dk = mag_ds
        .t()
        .unwrap()
        .matmul(&aq)
        .unwrap()
        .scale(scale)
        .unwrap();
    [mag_out, mag_dq, mag_dk, mag_dv].map(|m| vals(&m))
}

/// The CPU's forward and backward of a case (f32), the backward from its out as bf16 values:
/// (out, lse, out_b, [dq, dk, dv]).
fn cpu_reference(c: &Case) -> (Tensor, Tensor, Tensor, [Tensor; 3]) {
    let (out, lse) = flash_attention_fwd(&c.q, &c.k, &c.v).unwrap();
    let out_b = out
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let (dq, dk, dv) = flash_attention_bwd(&c.dout, &c.q, &c.k, &c.v, &out_b, &lse).unwrap();
    (out, lse, out_b, [dq, dk, dv])
}

/// The CUDA forward and backward of a case, the backward from the given out and lse.
fn cuda_run(c: &Case, out_b: &Tensor, lse: &Tensor) -> (Tensor, Tensor, [Tensor; 3]) {
    let (q, k, v) = (cuda_bf16(&c.q), cuda_bf16(&c.k), cuda_bf16(&c.v));
    assert!(
        flash_supported(&q),
        "{}: the kernel should take it",
        c.label
    );
    let (out, lse_d) = flash_attention_fwd(&q, &k, &v).unwrap();
    let (dout, out_d) = (cuda_bf16(&c.dout), cuda_bf16(out_b));
    let lse_in = lse.to_device(CUDA).unwrap();
    let (dq, dk, dv) = flash_attention_bwd(&dout, &q, &k, &v, &out_d, &lse_in).unwrap();
    for (name, t) in [("out", &out), ("dq", &dq), ("dk", &dk), ("dv", &dv)] {
        assert_eq!(t.device(), CUDA, "{}: {name} left the device", c.label);
        assert_eq!((t.dtype(), t.shape()), (DType::BF16, c.q.shape()), "{name}");
    }
    assert_eq!(
        (lse_d.dtype(), lse_d.shape()),
        (DType::F32, &c.q.shape()[..3])
    );
    (out, lse_d, [dq, dk, dv])
}

/// The case sizes of the module doc: (B, H, T) for each T.
fn sizes() -> Vec<(usize, usize, usize)> {
    let mut out: Vec<_> = [1, 17, 64, 100, 257].iter().map(|&t| (2, 3, t)).collect();
    out.push((1, 2, 1024));
    out
}

// ---- the comparisons ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn forward_and_backward_match_the_cpu_at_every_head_dim_and_ragged_length() {
    let mut seed = 1;
    for hd in kernels::FLASH_HEAD_DIMS {
        for (b, h, t) in sizes() {
            let c = Case::new(b, h, t, hd, seed);
            seed += 4;
            let (out, lse, out_b, grads) = cpu_reference(&c);
            let mags = magnitudes(&c, &out_b);
            let (gout, glse, ggrads) = cuda_run(&c, &out_b, &lse);
            let label = &c.label;
            assert_within(
                &format!("{label} out"),
                &vals(&gout),
                &vals(&out),
                &mags[0],
                REL,
            );
            assert_close(
                &format!("{label} lse"),
                &vals(&glse),
                &vals(&lse),
                LSE_REL,
                1.0,
            );
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                let (got, want) = (vals(&ggrads[i]), vals(&grads[i]));
                assert_within(&format!("{label} {name}"), &got, &want, &mags[i + 1], REL);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn keys_after_a_position_change_nothing_before_it() {
    // T = 100: p inside the first tile, at its last row, at the second tile's first row, and
    // the last row but one; keys and values after p are redrawn
    let (b, h, t, hd) = (1, 2, 100, 64);
    let c = Case::new(b, h, t, hd, 7);
    let run = |k: &Tensor, v: &Tensor| {
        let (q, k, v) = (cuda_bf16(&c.q), cuda_bf16(k), cuda_bf16(v));
        let (out, lse) = flash_attention_fwd(&q, &k, &v).unwrap();
        let dout = cuda_bf16(&c.dout);
        let (dq, _, _) = flash_attention_bwd(&dout, &q, &k, &v, &out, &lse).unwrap();
        (vals(&out), vals(&lse), vals(&dq))
    };
    let base = run(&c.k, &c.v);
    for p in [0, 40, 63, 64, 98] {
        let (k2, v2) = (redraw_after(&c.k, p, 11), redraw_after(&c.v, p, 12));
        let moved = run(&k2, &v2);
        for head in 0..b * h {
            let rows = head * t..head * t + p + 1;
            let elems = rows.start * hd..rows.end * hd;
            // masked keys get a weight of exactly 0, so the kept rows agree to the bit
            assert_eq!(
                moved.0[elems.clone()],
                base.0[elems.clone()],
                "out, p = {p}"
            );
            assert_eq!(moved.1[rows.clone()], base.1[rows], "lse, p = {p}");
            assert_eq!(moved.2[elems.clone()], base.2[elems], "dq, p = {p}");
        }
        // and the redraw did move a later row
        let later = (p + 1) * hd..(p + 2) * hd;
        assert_ne!(
            moved.0[later.clone()],
            base.0[later],
            "p = {p}: nothing changed"
        );
    }
}

/// x [B, H, T, hd] with the positions after p redrawn from `seed`.
fn redraw_after(x: &Tensor, p: usize, seed: u64) -> Tensor {
    let (shape, fresh) = (x.shape().to_vec(), bf16_values(x.shape(), 1.5, seed));
    let (t, hd) = (shape[2], shape[3]);
    let (mut v, f) = (vals(x), vals(&fresh));
    for (i, value) in v.iter_mut().enumerate() {
        if (i / hd) % t > p {
            *value = f[i];
        }
    }
    Tensor::from_vec(v, &shape).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_output_element_is_written() {
    // the launchers' _into forms over NaN-poisoned buffers, at a ragged T
    let gpu = device();
    for hd in kernels::FLASH_HEAD_DIMS {
        let shape = FlashShape::new(3, 100, hd);
        let n = shape.b_h * shape.t * hd;
        let c = Case::new(1, 3, shape.t, hd, 21);
        let up = |t: &Tensor| {
            let bits: Vec<u16> = vals(t)
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            gpu.upload(&bits).unwrap()
        };
        let (q, k, v, dout) = (up(&c.q), up(&c.k), up(&c.v), up(&c.dout));
        let mut out = poisoned(&gpu, n, ElemType::Bf16);
        let mut lse = poisoned(&gpu, shape.b_h * shape.t, ElemType::F32);
        kernels::flash_fwd_into(&mut out, &mut lse, FlashPtx::Promoted, &q, &k, &v, &shape)
            .unwrap();
        let [mut dq, mut dk, mut dv] = [0; 3].map(|_| poisoned(&gpu, n, ElemType::Bf16));
        let grads = [&mut dq, &mut dk, &mut dv];
        let ptx = FlashPtx::Promoted;
        kernels::flash_bwd_into(grads, ptx, &dout, &q, &k, &v, &out, &lse, &shape).unwrap();
        let floats = odeflow_tests::gpu::download(&gpu, &lse, ElemType::F32);
        assert!(floats.iter().all(|x| x.is_finite()), "hd {hd}: lse");
        for (name, buf) in [("out", &out), ("dq", &dq), ("dk", &dk), ("dv", &dv)] {
            let got = odeflow_tests::gpu::download(&gpu, buf, ElemType::Bf16);
            assert!(
                got.iter().all(|x| x.is_finite()),
                "hd {hd}: {name} has a NaN"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn what_the_kernels_do_not_take_is_refused_cleanly() {
    // f32 on CUDA: no kernel, so no tiled attention; the functions say Unsupported
    let q32 = bf16_values(&[1, 2, 17, 64], 1.0, 31)
        .to_device(CUDA)
        .unwrap();
    assert!(!flash_supported(&q32));
    let err = flash_attention_fwd(&q32, &q32, &q32).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // bf16 at a head dim flash.cu does not instantiate
    let q48 = cuda_bf16(&bf16_values(&[1, 2, 17, 48], 1.0, 32));
    assert!(!flash_supported(&q48));
    let err = flash_attention_fwd(&q48, &q48, &q48).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let lse = Tensor::zeros(&[1, 2, 17], DType::F32)
        .to_device(CUDA)
        .unwrap();
    let err = flash_attention_bwd(&q48, &q48, &q48, &q48, &q48, &lse).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // and the launcher itself names the head dims it has
    let gpu = device();
    let buf = poisoned(&gpu, 2 * 17 * 48, ElemType::Bf16);
    let refused = kernels::flash_fwd(&buf, &buf, &buf, &FlashShape::new(2, 17, 48));
    let err = refused.err().expect("no kernel for hd 48").to_string();
    assert!(err.contains("head dim 48"), "{err}");
}

// ---- the bar itself, on the CPU ----

#[test]
fn the_bar_admits_a_correct_bf16_result() {
    // the CPU's tiled attention on bf16 tensors (f32 math, outputs rounded once to bf16)
    // passes the bar against its f32 result; a wrong answer (one position's output from the
    // next row) does not
    let c = Case::new(1, 2, 70, 32, 41);
    let (out, _, out_b, grads) = cpu_reference(&c);
    let mags = magnitudes(&c, &out_b);
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (bq, bk, bv) = (bf(&c.q), bf(&c.k), bf(&c.v));
    let (bout, blse) = flash_attention_fwd(&bq, &bk, &bv).unwrap();
    assert_within("bf16 out", &vals(&bout), &vals(&out), &mags[0], REL);
    let (bdq, bdk, bdv) =
        flash_attention_bwd(&bf(&c.dout), &bq, &bk, &bv, &bf(&out_b), &blse).unwrap();
    for (i, got) in [bdq, bdk, bdv].iter().enumerate() {
        assert_within("bf16 grad", &vals(got), &vals(&grads[i]), &mags[i + 1], REL);
    }
    let mut wrong = vals(&out);
    wrong.copy_within(33 * 32..34 * 32, 32 * 32);
    let caught = violation(&wrong, &vals(&out), &mags[0], REL);
    assert!(caught.is_some(), "the bar passed a wrong row");
}
