//! The LayerNorm and RMSNorm kernels against the runtime's CPU ops (`layer_norm_fwd`/`bwd`,
//! `rms_norm_fwd`/`bwd`), f32 and bf16, with and without weight and bias, at shapes that hit
//! every launch configuration the launchers pick:
//! - the warp-per-row grid: 1 row, a partial last block (3 rows), an exact one (4), one row
//!   more (5); D = 1, a warp's width and one either side (31, 32, 33), several strides (1025);
//! - the dweight/dbias passes: no rows (no first pass: the sums are zeros), one partial chunk
//!   (fewer than 64 rows), several chunks over several column blocks (67 x 257, D > 256), and
//!   more rows than 256 chunks of 64 (16385: rows per chunk grows).
//!
//! Every output is poisoned with NaN before its launch, so a skipped element (or a dweight
//! that is added to rather than overwritten) fails. The CPU gets the values the device holds
//! (rounded to bf16 for the bf16 kernels), and the backward gets the CPU forward's mean and
//! rstd on both sides, so each comparison sees one kernel's error only.
//!
//! Tolerances: |got - want| <= rel (|want| + floor), where floor is the scale of the terms the
//! output is summed or subtracted from, since row sums in another order make absolute errors
//! of that scale: the largest |want| of the output; the largest |x| for the mean (which can be
//! near 0); the largest rstd |dy weight| for dx (which is a difference of such terms, and
//! cancels almost entirely when D = 1 for RMSNorm). rel is 64 f32 epsilons
//! (7.6e-6) for f32 outputs, including the f32 statistics of the bf16 kernels (computed in
//! f32 from the same inputs); and 2^-8 for bf16 outputs (one rounding to bf16, 2^-9, plus a
//! possible flip to the neighbouring bf16 value where the f32 results straddle a tie).

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::norm::{self, DPARAMS_MAX_CHUNKS, DPARAMS_MIN_ROWS_PER_CHUNK};
use odeflow_kernels::{DeviceBuffer, Gpu};
use odeflow_runtime::ops::norm as cpu_norm;
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{
    assert_close, cpu, device, download, max_abs, normals, poisoned, rel, upload, values, F32_REL,
};
use std::sync::Arc;

const EPS: f32 = 1e-5;

/// (rows, D) pairs that cover every configuration (see the module doc).
fn shapes() -> Vec<(usize, usize)> {
    let capped = DPARAMS_MIN_ROWS_PER_CHUNK * DPARAMS_MAX_CHUNKS;
    vec![
        (1, 1),
        (3, 31),
        (4, 32),
        (5, 33),
        (1, 1025),
        (0, 8),
        (67, 257),
        (capped + 1, 3),
    ]
}

/// n draws of N(mean, std^2) from `seed`.
fn around(n: usize, seed: u64, mean: f32, std: f32) -> Vec<f32> {
    let draws = normals(n, std, &mut Rng::new(seed));
    draws.into_iter().map(|x| mean + x).collect()
}

/// The inputs of one case: x, dy [rows, D], weight, bias [D], on the device and as held.
struct Case {
    rows: usize,
    d: usize,
    ty: ElemType,
    x: (DeviceBuffer, Vec<f32>),
    dy: (DeviceBuffer, Vec<f32>),
    weight: (DeviceBuffer, Vec<f32>),
    bias: (DeviceBuffer, Vec<f32>),
}

impl Case {
    fn new(gpu: &Arc<Gpu>, rows: usize, d: usize, ty: ElemType) -> Case {
        let n = rows * d;
        // x off-centre, so that LayerNorm's mean matters
        Case {
            rows,
            d,
            ty,
            x: upload(gpu, &around(n, 1, 0.5, 3.0), ty),
            dy: upload(gpu, &around(n, 2, 0.0, 1.0), ty),
            weight: upload(gpu, &around(d, 3, 1.0, 0.2), ty),
            bias: upload(gpu, &around(d, 4, 0.0, 0.2), ty),
        }
    }

    fn label(&self, what: &str) -> String {
        format!("{what} {:?} [{}, {}]", self.ty, self.rows, self.d)
    }

    fn x_cpu(&self) -> Tensor {
        cpu(&self.x.1, &[self.rows, self.d])
    }

    fn dy_cpu(&self) -> Tensor {
        cpu(&self.dy.1, &[self.rows, self.d])
    }

    fn weight_cpu(&self, with: bool) -> Option<Tensor> {
        with.then(|| cpu(&self.weight.1, &[self.d]))
    }

    fn bias_cpu(&self, with: bool) -> Option<Tensor> {
        with.then(|| cpu(&self.bias.1, &[self.d]))
    }

    fn weight_gpu(&self, with: bool) -> Option<&DeviceBuffer> {
        with.then_some(&self.weight.0)
    }

    fn bias_gpu(&self, with: bool) -> Option<&DeviceBuffer> {
        with.then_some(&self.bias.0)
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layer_norm_forward_matches_the_cpu() {
    let gpu = device();
    for (rows, d) in shapes() {
        for ty in ElemType::ALL {
            let c = Case::new(&gpu, rows, d, ty);
            for (with_w, with_b) in [(false, false), (true, false), (true, true)] {
                let label = c.label(&format!("layernorm fwd w={with_w} b={with_b}"));
                let (w, b) = (c.weight_cpu(with_w), c.bias_cpu(with_b));
                let (y, mean, rstd) =
                    cpu_norm::layer_norm_fwd(&c.x_cpu(), w.as_ref(), b.as_ref(), EPS).unwrap();
                let (y, mean, rstd) = (values(&y), values(&mean), values(&rstd));
                let mut gy = poisoned(&gpu, rows * d, ty);
                let mut gmean = poisoned(&gpu, rows, ElemType::F32);
                let mut grstd = poisoned(&gpu, rows, ElemType::F32);
                let (wg, bg) = (c.weight_gpu(with_w), c.bias_gpu(with_b));
                norm::layer_norm_fwd_into(
                    &mut gy, &mut gmean, &mut grstd, ty, &c.x.0, wg, bg, rows, d, EPS,
                )
                .unwrap();
                let got = download(&gpu, &gy, ty);
                assert_close(&format!("{label} y"), &got, &y, rel(ty), max_abs(&y));
                let got = download(&gpu, &gmean, ElemType::F32);
                let floor = max_abs(&c.x.1);
                assert_close(&format!("{label} mean"), &got, &mean, F32_REL, floor);
                let got = download(&gpu, &grstd, ElemType::F32);
                assert_close(&format!("{label} rstd"), &got, &rstd, F32_REL, 0.0);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_forward_matches_the_cpu() {
    let gpu = device();
    for (rows, d) in shapes() {
        for ty in ElemType::ALL {
            let c = Case::new(&gpu, rows, d, ty);
            for with_w in [false, true] {
                let label = c.label(&format!("rmsnorm fwd w={with_w}"));
                let w = c.weight_cpu(with_w);
                let (y, rstd) = cpu_norm::rms_norm_fwd(&c.x_cpu(), w.as_ref(), EPS).unwrap();
                let (y, rstd) = (values(&y), values(&rstd));
                let mut gy = poisoned(&gpu, rows * d, ty);
                let mut grstd = poisoned(&gpu, rows, ElemType::F32);
                let wg = c.weight_gpu(with_w);
                norm::rms_norm_fwd_into(&mut gy, &mut grstd, ty, &c.x.0, wg, rows, d, EPS).unwrap();
                let got = download(&gpu, &gy, ty);
                assert_close(&format!("{label} y"), &got, &y, rel(ty), max_abs(&y));
                let got = download(&gpu, &grstd, ElemType::F32);
                assert_close(&format!("{label} rstd"), &got, &rstd, F32_REL, 0.0);
            }
        }
    }
}

/// The floor of dx's tolerance: the largest term rstd |dy weight| of the difference it is.
fn dx_floor(dx: &[f32], rstd: &[f32], dy: &[f32], weight: Option<&[f32]>) -> f64 {
    let w = weight.map_or(1.0, max_abs);
    max_abs(dx).max(max_abs(rstd) * max_abs(dy) * w)
}

/// Compares an optional parameter gradient: present on both sides or on neither.
fn assert_grad(
    label: &str,
    gpu: &Gpu,
    got: Option<&DeviceBuffer>,
    want: Option<Tensor>,
    ty: ElemType,
) {
    match (got, want) {
        (Some(g), Some(w)) => {
            let (got, want) = (download(gpu, g, ty), values(&w));
            assert_close(label, &got, &want, rel(ty), max_abs(&want));
        }
        (None, None) => {}
        _ => panic!("{label}: the GPU and the CPU disagree on whether it exists"),
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layer_norm_backward_matches_the_cpu() {
    let gpu = device();
    for (rows, d) in shapes() {
        for ty in ElemType::ALL {
            let c = Case::new(&gpu, rows, d, ty);
            for (with_w, with_b) in [(false, false), (false, true), (true, true)] {
                let label = c.label(&format!("layernorm bwd w={with_w} b={with_b}"));
                let (w, b) = (c.weight_cpu(with_w), c.bias_cpu(with_b));
                let x = c.x_cpu();
                let (_, mean, rstd) =
                    cpu_norm::layer_norm_fwd(&x, w.as_ref(), b.as_ref(), EPS).unwrap();
                let (dx, dw, db) =
                    cpu_norm::layer_norm_bwd(&c.dy_cpu(), &x, w.as_ref(), with_b, &mean, &rstd)
                        .unwrap();
                let gmean = gpu.upload(&values(&mean)).unwrap();
                let grstd = gpu.upload(&values(&rstd)).unwrap();
                let mut gdx = poisoned(&gpu, rows * d, ty);
                let mut gdw = with_w.then(|| poisoned(&gpu, d, ty));
                let mut gdb = with_b.then(|| poisoned(&gpu, d, ty));
                norm::layer_norm_bwd_into(
                    &mut gdx,
                    gdw.as_mut(),
                    gdb.as_mut(),
                    ty,
                    &c.dy.0,
                    &c.x.0,
                    c.weight_gpu(with_w),
                    &gmean,
                    &grstd,
                    rows,
                    d,
                )
                .unwrap();
                let (got, want) = (download(&gpu, &gdx, ty), values(&dx));
                let wv = with_w.then_some(&c.weight.1[..]);
                let floor = dx_floor(&want, &values(&rstd), &c.dy.1, wv);
                assert_close(&format!("{label} dx"), &got, &want, rel(ty), floor);
                assert_grad(&format!("{label} dweight"), &gpu, gdw.as_ref(), dw, ty);
                assert_grad(&format!("{label} dbias"), &gpu, gdb.as_ref(), db, ty);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_backward_matches_the_cpu() {
    let gpu = device();
    for (rows, d) in shapes() {
        for ty in ElemType::ALL {
            let c = Case::new(&gpu, rows, d, ty);
            for with_w in [false, true] {
                let label = c.label(&format!("rmsnorm bwd w={with_w}"));
                let w = c.weight_cpu(with_w);
                let x = c.x_cpu();
                let (_, rstd) = cpu_norm::rms_norm_fwd(&x, w.as_ref(), EPS).unwrap();
                let (dx, dw) = cpu_norm::rms_norm_bwd(&c.dy_cpu(), &x, w.as_ref(), &rstd).unwrap();
                let grstd = gpu.upload(&values(&rstd)).unwrap();
                let mut gdx = poisoned(&gpu, rows * d, ty);
                let mut gdw = with_w.then(|| poisoned(&gpu, d, ty));
                norm::rms_norm_bwd_into(
                    &mut gdx,
                    gdw.as_mut(),
                    ty,
                    &c.dy.0,
                    &c.x.0,
                    c.weight_gpu(with_w),
                    &grstd,
                    rows,
                    d,
                )
                .unwrap();
                let (got, want) = (download(&gpu, &gdx, ty), values(&dx));
                let wv = with_w.then_some(&c.weight.1[..]);
                let floor = dx_floor(&want, &values(&rstd), &c.dy.1, wv);
                assert_close(&format!("{label} dx"), &got, &want, rel(ty), floor);
                assert_grad(&format!("{label} dweight"), &gpu, gdw.as_ref(), dw, ty);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_allocating_forms_return_what_the_into_forms_write() {
    let gpu = device();
    let c = Case::new(&gpu, 5, 33, ElemType::F32);
    let (w, b) = (Some(&c.weight.0), Some(&c.bias.0));
    let (y, mean, rstd) = norm::layer_norm_fwd(c.ty, &c.x.0, w, b, 5, 33, EPS).unwrap();
    let (dx, dw, db) =
        norm::layer_norm_bwd(c.ty, &c.dy.0, &c.x.0, w, true, &mean, &rstd, 5, 33).unwrap();
    let x = c.x_cpu();
    let (wc, bc) = (c.weight_cpu(true), c.bias_cpu(true));
    let (cy, cmean, crstd) = cpu_norm::layer_norm_fwd(&x, wc.as_ref(), bc.as_ref(), EPS).unwrap();
    let (cdx, cdw, cdb) =
        cpu_norm::layer_norm_bwd(&c.dy_cpu(), &x, wc.as_ref(), true, &cmean, &crstd).unwrap();
    let want = values(&cy);
    assert_close(
        "y",
        &download(&gpu, &y, c.ty),
        &want,
        F32_REL,
        max_abs(&want),
    );
    // the GPU's own mean and rstd fed its backward here: a little more slack than F32_REL
    let want = values(&cdx);
    let floor = dx_floor(&want, &values(&crstd), &c.dy.1, Some(&c.weight.1));
    assert_close(
        "dx",
        &download(&gpu, &dx, c.ty),
        &want,
        4.0 * F32_REL,
        floor,
    );
    assert_grad("dweight", &gpu, dw.as_ref(), cdw, c.ty);
    assert_grad("dbias", &gpu, db.as_ref(), cdb, c.ty);
    let (y, rstd) = norm::rms_norm_fwd(c.ty, &c.x.0, None, 5, 33, EPS).unwrap();
    let (dx, dw) = norm::rms_norm_bwd(c.ty, &c.dy.0, &c.x.0, None, &rstd, 5, 33).unwrap();
    assert!(dw.is_none());
    let (cy, crstd) = cpu_norm::rms_norm_fwd(&x, None, EPS).unwrap();
    let (cdx, _) = cpu_norm::rms_norm_bwd(&c.dy_cpu(), &x, None, &crstd).unwrap();
    let want = values(&cy);
    assert_close(
        "rms y",
        &download(&gpu, &y, c.ty),
        &want,
        F32_REL,
        max_abs(&want),
    );
    let want = values(&cdx);
    let floor = dx_floor(&want, &values(&crstd), &c.dy.1, None);
    assert_close(
        "rms dx",
        &download(&gpu, &dx, c.ty),
        &want,
        4.0 * F32_REL,
        floor,
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_launch_with_short_buffers_is_refused() {
    let gpu = device();
    let x = gpu.upload(&[1.0f32; 8]).unwrap();
    let w = gpu.upload(&[1.0f32; 3]).unwrap();
    // a weight of 3 for rows of 4
    let err = norm::rms_norm_fwd(ElemType::F32, &x, Some(&w), 2, 4, EPS).err();
    let msg = err.expect("a weight of 3 does not fit D = 4").to_string();
    assert_eq!(
        msg,
        "rmsnorm_fwd_f32: weight holds 12 bytes, the launch needs 16"
    );
    // x of 8 for 3 rows of 4
    let err = norm::layer_norm_fwd(ElemType::F32, &x, None, None, 3, 4, EPS).err();
    let msg = err.expect("8 values are not 3 rows of 4").to_string();
    assert!(
        msg.contains("layernorm_fwd_f32") && msg.contains("x holds 32 bytes"),
        "{msg}"
    );
}
