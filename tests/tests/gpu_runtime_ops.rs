//! The runtime's CUDA ops against its CPU ops, through the public API only: each case builds
//! CPU tensors, runs the op on them and on their `to_device(Device::Cuda(0))` copies, and
//! compares every output (values, shapes, dtypes, and that the CUDA outputs stay on the device):
//! LayerNorm and RMSNorm forward and backward (with and without weight and bias), softmax
//! forward and backward, the fused cross-entropy forward and backward (with and without an
//! ignore index, up to V = 50257), the embedding gather and scatter-add, AdamW, the sum of
//! squares, and the sum and mean over a dim; f32 and bf16, at a couple of shapes each,
//! always including a row length that is not a multiple of 32 (33, 257, 777, 1000, 50257).
//! The `gpu_*` kernel tests cover the launch configurations; these check the wiring: shapes,
//! dtypes, devices, which outputs exist, views (transposed, narrowed) made dense first, the
//! bf16 results the device adds in f32 and casts once (the embedding backward, the sums), a
//! sum over a dim that is not last (moved last by a strided copy), and the errors: a CPU
//! operand of a CUDA op is `Error::DeviceMismatch`, an out-of-range target `IndexOutOfRange`.
//!
//! Each backward gets the CPU forward's saved values (mean, rstd, y, lse), copied to the device,
//! so each comparison sees one op's error only.
//!
//! Tolerances: |got - want| <= rel (|want| + floor). rel is 64 f32 epsilons (`F32_REL`, 7.6e-6)
//! for f32 outputs, including the f32 statistics of bf16 inputs (computed in f32 from the same
//! values on both sides), and 2^-8 for bf16 outputs (one rounding to bf16, 2^-9, plus a possible
//! flip where the f32 results straddle a tie). floor is the scale of the terms an output is a
//! sum or difference of, as in the kernel tests: max |y| for a norm's y, max |x| for the mean,
//! 0 for rstd and softmax (no cancellation), max rstd max |dy| max |weight| for a norm's dx,
//! max |want| for dweight and dbias, max |y| max |dy| for the softmax backward, 1 for lse,
//! max |lse| for the loss, |dloss / count| for dlogits, the largest sum of |terms| for the
//! embedding backward and the sums (the CPU adds in order, the device in a tree or by atomics:
//! 64 epsilons cover reordering sums of up to 64 terms, or rows of up to 1024 by the sqrt(D)
//! rule of `gpu_reduce.rs`), and max |want| for AdamW's outputs (the kernel repeats the CPU's
//! f32 operations in order, so it should agree to the bit; the slack is for a cancelling p').
//! The sum of squares, added in f32 on the device and f64 on the CPU, gets 2^-16 relative.
//!

use odeflow_kernels::elementwise::ElemType;
use odeflow_runtime::ops::optim::AdamWStep;
use odeflow_runtime::ops::reduce::ReduceOp;
use odeflow_runtime::ops::{embedding, loss, norm, optim, reduce, softmax};
use odeflow_runtime::{DType, Device, Error, Rng, Tensor};
use odeflow_tests::gpu::{assert_close, max_abs, rel, F32_REL};

const CUDA: Device = Device::Cuda(0);
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];
const EPS: f32 = 1e-5;

// ---- helpers ----

/// A CPU tensor of N(mean, std^2) draws from `seed`, rounded to `dtype`.
fn randn(shape: &[usize], mean: f32, std: f32, dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, mean, std, dtype, &mut Rng::new(seed))
}

/// The tensor's copy on device 0.
fn gpu(t: &Tensor) -> Tensor {
    t.to_device(CUDA).expect("a CUDA device")
}

/// Copies of optional tensors on device 0.
fn gpu_opt(t: &Option<Tensor>) -> Option<Tensor> {
    t.as_ref().map(gpu)
}

/// The values (a CUDA tensor is downloaded), widened to f32.
fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// The largest |value| of a tensor.
fn amax(t: &Tensor) -> f64 {
    max_abs(&vals(t))
}

/// The tolerance of an output of `dtype` (see the module doc).
fn rel_of(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => rel(ElemType::Bf16),
        _ => rel(ElemType::F32),
    }
}

/// A CUDA output against its CPU twin: same shape and dtype, on the device, values close.
fn check(label: &str, got: &Tensor, want: &Tensor, rel: f64, floor: f64) {
    assert_eq!(got.device(), CUDA, "{label}: the output left the device");
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{label}: dtype");
    assert_close(label, &vals(got), &vals(want), rel, floor);
}

/// An optional output: present on both sides (and close) or absent on both.
fn check_opt(label: &str, got: &Option<Tensor>, want: &Option<Tensor>, rel: f64) {
    match (got, want) {
        (Some(g), Some(w)) => check(label, g, w, rel, amax(w)),
        (None, None) => {}
        _ => panic!("{label}: the CUDA and CPU ops disagree on whether it exists"),
    }
}

// ---- norms ----

/// Shapes [.., D] of the norm cases: D not a multiple of 32, and a rank-3 x (stats [2, 3]).
const NORM_SHAPES: [&[usize]; 3] = [&[3, 33], &[2, 3, 257], &[67, 64]];

/// The inputs of one norm case: x off-centre (so LayerNorm's mean matters), dy, weight, bias.
struct NormCase {
    label: String,
    x: Tensor,
    dy: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

impl NormCase {
    fn new(shape: &[usize], dtype: DType, with_w: bool, with_b: bool) -> NormCase {
        let d = *shape.last().unwrap();
        NormCase {
            label: format!("{dtype} {shape:?} w={with_w} b={with_b}"),
            x: randn(shape, 0.5, 3.0, dtype, 1),
            dy: randn(shape, 0.0, 1.0, dtype, 2),
            weight: with_w.then(|| randn(&[d], 1.0, 0.2, dtype, 3)),
            bias: with_b.then(|| randn(&[d], 0.0, 0.2, dtype, 4)),
        }
    }

    /// The floor of dx's tolerance: the largest term rstd |dy weight| of the difference it is.
    fn dx_floor(&self, rstd: &Tensor) -> f64 {
        let w = self.weight.as_ref().map_or(1.0, amax);
        amax(rstd) * amax(&self.dy) * w
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layer_norm_forward_and_backward_match_the_cpu() {
    for shape in NORM_SHAPES {
        for dtype in DTYPES {
            for (with_w, with_b) in [(false, false), (true, false), (true, true)] {
                let c = NormCase::new(shape, dtype, with_w, with_b);
                let (w, b) = (c.weight.as_ref(), c.bias.as_ref());
                let (y, mean, rstd) = norm::layer_norm_fwd(&c.x, w, b, EPS).unwrap();
                let (gw, gb) = (gpu_opt(&c.weight), gpu_opt(&c.bias));
                let (gy, gmean, grstd) =
                    norm::layer_norm_fwd(&gpu(&c.x), gw.as_ref(), gb.as_ref(), EPS).unwrap();
                let l = &c.label;
                check(&format!("ln y {l}"), &gy, &y, rel_of(dtype), amax(&y));
                check(&format!("ln mean {l}"), &gmean, &mean, F32_REL, amax(&c.x));
                check(&format!("ln rstd {l}"), &grstd, &rstd, F32_REL, 0.0);

                let (dx, dw, db) =
                    norm::layer_norm_bwd(&c.dy, &c.x, w, with_b, &mean, &rstd).unwrap();
                let (gdx, gdw, gdb) = norm::layer_norm_bwd(
                    &gpu(&c.dy),
                    &gpu(&c.x),
                    gw.as_ref(),
                    with_b,
                    &gpu(&mean),
                    &gpu(&rstd),
                )
                .unwrap();
                check(
                    &format!("ln dx {l}"),
                    &gdx,
                    &dx,
                    rel_of(dtype),
                    c.dx_floor(&rstd),
                );
                check_opt(&format!("ln dweight {l}"), &gdw, &dw, rel_of(dtype));
                check_opt(&format!("ln dbias {l}"), &gdb, &db, rel_of(dtype));
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_forward_and_backward_match_the_cpu() {
    for shape in NORM_SHAPES {
        for dtype in DTYPES {
            for with_w in [false, true] {
                let c = NormCase::new(shape, dtype, with_w, false);
                let w = c.weight.as_ref();
                let (y, rstd) = norm::rms_norm_fwd(&c.x, w, EPS).unwrap();
                let gw = gpu_opt(&c.weight);
                let (gy, grstd) = norm::rms_norm_fwd(&gpu(&c.x), gw.as_ref(), EPS).unwrap();
                let l = &c.label;
                check(&format!("rms y {l}"), &gy, &y, rel_of(dtype), amax(&y));
                check(&format!("rms rstd {l}"), &grstd, &rstd, F32_REL, 0.0);

                let (dx, dw) = norm::rms_norm_bwd(&c.dy, &c.x, w, &rstd).unwrap();
                let (gdx, gdw) =
                    norm::rms_norm_bwd(&gpu(&c.dy), &gpu(&c.x), gw.as_ref(), &gpu(&rstd)).unwrap();
                check(
                    &format!("rms dx {l}"),
                    &gdx,
                    &dx,
                    rel_of(dtype),
                    c.dx_floor(&rstd),
                );
                check_opt(&format!("rms dweight {l}"), &gdw, &dw, rel_of(dtype));
            }
        }
    }
}

// ---- softmax and cross-entropy ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_forward_and_backward_match_the_cpu() {
    let shapes: [&[usize]; 3] = [&[4, 33], &[2, 3, 1000], &[2, 50257]];
    for shape in shapes {
        for dtype in DTYPES {
            let label = format!("{dtype} {shape:?}");
            let x = randn(shape, 0.0, 4.0, dtype, 5);
            let dy = randn(shape, 0.0, 1.0, dtype, 6);
            let y = softmax::softmax_fwd(&x).unwrap();
            let gy = softmax::softmax_fwd(&gpu(&x)).unwrap();
            check(&format!("softmax {label}"), &gy, &y, rel_of(dtype), 0.0);
            let dx = softmax::softmax_bwd(&dy, &y).unwrap();
            let gdx = softmax::softmax_bwd(&gpu(&dy), &gpu(&y)).unwrap();
            let floor = amax(&y) * amax(&dy);
            check(
                &format!("softmax_bwd {label}"),
                &gdx,
                &dx,
                rel_of(dtype),
                floor,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn log_softmax_has_no_cuda_kernel_yet() {
    let x = gpu(&randn(&[2, 5], 0.0, 1.0, DType::F32, 7));
    let err = softmax::log_softmax_fwd(&x).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: "log_softmax",
                device: CUDA
            }
        ),
        "{err}"
    );
}

/// N targets below V, every third one `ignored` when given (so some rows are ignored).
fn targets(n: usize, v: usize, ignored: Option<u32>) -> Tensor {
    let mut rng = Rng::new(8);
    let ids: Vec<u32> = (0..n)
        .map(|i| match ignored {
            Some(t) if i % 3 == 1 => t,
            _ => (rng.uniform() * v as f32) as u32 % v as u32,
        })
        .collect();
    Tensor::from_vec(ids, &[n]).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_forward_and_backward_match_the_cpu() {
    for (n, v) in [(5, 33), (7, 1000), (8, 50257)] {
        for dtype in DTYPES {
            for ignore in [None, Some(v as u32 + 5)] {
                let label = format!("{dtype} [{n}, {v}] ignore={ignore:?}");
                let logits = randn(&[n, v], 0.0, 2.0, dtype, 9);
                let t = targets(n, v, ignore);
                let (loss, lse) = loss::cross_entropy_fwd(&logits, &t, ignore).unwrap();
                let (gl, gt) = (gpu(&logits), gpu(&t));
                let (gloss, glse) = loss::cross_entropy_fwd(&gl, &gt, ignore).unwrap();
                check(
                    &format!("ce loss {label}"),
                    &gloss,
                    &loss,
                    F32_REL,
                    amax(&lse),
                );
                check(&format!("ce lse {label}"), &glse, &lse, F32_REL, 1.0);

                let dloss = Tensor::scalar(1.5);
                let dz = loss::cross_entropy_bwd(&dloss, &logits, &t, &lse, ignore).unwrap();
                let gdz =
                    loss::cross_entropy_bwd(&gpu(&dloss), &gl, &gt, &gpu(&lse), ignore).unwrap();
                let counted = vals(&t).iter().filter(|&&i| (i as usize) < v).count();
                let scale = 1.5 / counted.max(1) as f64;
                check(
                    &format!("ce dlogits {label}"),
                    &gdz,
                    &dz,
                    rel_of(dtype),
                    scale,
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_out_of_range_target_is_an_error_on_cuda_too() {
    // the kernels would write NaN for target 9 of V = 4; the op checks the targets first
    let logits = gpu(&Tensor::zeros(&[2, 4], DType::F32));
    let t = gpu(&Tensor::from_vec(vec![1u32, 9], &[2]).unwrap());
    let err = loss::cross_entropy_fwd(&logits, &t, None).unwrap_err();
    let want = Error::IndexOutOfRange {
        op: "cross_entropy",
        index: 9,
        size: 4,
    };
    assert_eq!(err, want);
}

// ---- embedding ----

/// Ids [2, 7] into a table of `v` rows, with repeats (each row is hit a few times at most).
fn ids(v: usize) -> Tensor {
    let ids: Vec<u32> = (0..14).map(|i| (i * 7 % v) as u32).collect();
    Tensor::from_vec(ids, &[2, 7]).unwrap()
}

/// The embedding backward's floor: the largest sum of |dout| over the positions of one id.
fn scatter_floor(dout: &Tensor, ids: &Tensor, vocab: usize) -> f64 {
    let abs = Tensor::from_vec(vals(dout).iter().map(|g| g.abs()).collect(), dout.shape());
    let sums = embedding::embedding_bwd(&abs.unwrap(), ids, vocab).unwrap();
    amax(&sums)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_and_backward_match_the_cpu() {
    for (v, d) in [(5, 33), (50, 300)] {
        let i = ids(v);
        for dtype in DTYPES {
            let label = format!("{dtype} [{v}, {d}]");
            let table = randn(&[v, d], 0.0, 1.0, dtype, 10);
            let out = embedding::embedding_fwd(&table, &i).unwrap();
            let gout = embedding::embedding_fwd(&gpu(&table), &gpu(&i)).unwrap();
            // a gather copies bits
            check(&format!("embedding {label}"), &gout, &out, 0.0, 0.0);
            // f32 sums on both sides; a bf16 dweight is rounded once at the end on both
            let dout = randn(&[2, 7, d], 0.0, 1.0, dtype, 11);
            let dw = embedding::embedding_bwd(&dout, &i, v).unwrap();
            let gdw = embedding::embedding_bwd(&gpu(&dout), &gpu(&i), v).unwrap();
            let floor = scatter_floor(&dout, &i, v);
            check(
                &format!("embedding_bwd {label}"),
                &gdw,
                &dw,
                rel_of(dtype),
                floor,
            );
        }
    }
}

// ---- AdamW and the sum of squares ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn two_adamw_steps_match_the_cpu_and_leave_the_inputs_alone() {
    let n = 1031;
    for grad_dtype in DTYPES {
        let mut p = randn(&[n], 0.0, 1.0, DType::F32, 12);
        let (mut m, mut v) = (
            Tensor::zeros(&[n], DType::F32),
            Tensor::zeros(&[n], DType::F32),
        );
        let (mut gp, mut gm, mut gv) = (gpu(&p), gpu(&m), gpu(&v));
        for step in 1..=2 {
            let h = AdamWStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                grad_scale: 0.5,
            };
            let g = randn(&[n], 0.0, 1.0, grad_dtype, 12 + step);
            let before = vals(&gp);
            let (p2, m2, v2) = optim::adamw_update(&p, &g, &m, &v, &h).unwrap();
            let (gp2, gm2, gv2) = optim::adamw_update(&gp, &gpu(&g), &gm, &gv, &h).unwrap();
            let label = format!("adamw grad {grad_dtype} step {step}");
            check(&format!("{label} param"), &gp2, &p2, F32_REL, amax(&p2));
            check(&format!("{label} m"), &gm2, &m2, F32_REL, amax(&m2));
            check(&format!("{label} v"), &gv2, &v2, F32_REL, amax(&v2));
            // the op returns new tensors: the parameter it was given is unchanged
            assert_eq!(
                vals(&gp),
                before,
                "{label}: the input parameter was overwritten"
            );
            (p, m, v) = (p2, m2, v2);
            (gp, gm, gv) = (gp2, gm2, gv2);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_sum_of_squares_matches_the_cpu() {
    for n in [1, 1000, 300_001] {
        let x = randn(&[n], 0.0, 1.0, DType::F32, 14);
        let want = optim::sum_squares(&x).unwrap();
        let got = optim::sum_squares(&gpu(&x)).unwrap();
        let tol = want / 65536.0;
        assert!((got - want).abs() <= tol, "n={n}: {got} vs {want}");
    }
}

// ---- sums and means ----

/// The sums' floor: the largest sum of |x| along `dim`.
fn abs_sum_floor(x: &Tensor, dim: usize) -> f64 {
    let abs = Tensor::from_vec(vals(x).iter().map(|v| v.abs()).collect(), x.shape());
    amax(&abs.unwrap().sum(dim, false).unwrap())
}

/// A sum and a mean over `dim` of `x` on both devices, with and without keepdim.
fn check_reduce(x: &Tensor, dim: usize) {
    let n = x.shape()[dim] as f64;
    let rel = rel_of(x.dtype());
    for op in [ReduceOp::Sum, ReduceOp::Mean] {
        for keepdim in [false, true] {
            let label = format!("{op:?} {} {:?} dim {dim} {keepdim}", x.dtype(), x.shape());
            let want = reduce::reduce_fwd(op, x, dim, keepdim).unwrap();
            let got = reduce::reduce_fwd(op, &gpu(x), dim, keepdim).unwrap();
            let floor = match op {
                ReduceOp::Mean => abs_sum_floor(x, dim) / n,
                _ => abs_sum_floor(x, dim),
            };
            check(&label, &got, &want, rel, floor);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sums_and_means_match_the_cpu() {
    let shapes: [&[usize]; 3] = [&[33], &[3, 33], &[2, 5, 777]];
    for shape in shapes {
        for dtype in DTYPES {
            let x = randn(shape, 0.5, 1.0, dtype, 15);
            check_reduce(&x, shape.len() - 1);
            // over the first dim: moved last by a strided copy, then summed as rows
            check_reduce(&x, 0);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_maximum_has_no_cuda_kernel_yet() {
    let x = gpu(&randn(&[2, 5], 0.0, 1.0, DType::F32, 16));
    let err = reduce::reduce_fwd(ReduceOp::Max, &x, 1, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: "max",
                device: CUDA
            }
        ),
        "{err}"
    );
}

// ---- views ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn views_are_made_dense_before_the_kernels() {
    // a transposed view (non-contiguous) and a narrowed one (an offset into its buffer)
    let base = randn(&[33, 6], 0.5, 2.0, DType::F32, 20);
    let (t, gt) = (base.t().unwrap(), gpu(&base).t().unwrap());
    let (y, _, rstd) = norm::layer_norm_fwd(&t, None, None, EPS).unwrap();
    let (gy, _, grstd) = norm::layer_norm_fwd(&gt, None, None, EPS).unwrap();
    check("layer_norm of a transpose y", &gy, &y, F32_REL, amax(&y));
    check(
        "layer_norm of a transpose rstd",
        &grstd,
        &rstd,
        F32_REL,
        0.0,
    );
    let (n, gn) = (
        base.narrow(0, 3, 20).unwrap(),
        gpu(&base).narrow(0, 3, 20).unwrap(),
    );
    let y = softmax::softmax_fwd(&n).unwrap();
    let gy = softmax::softmax_fwd(&gn).unwrap();
    check("softmax of a narrowed view", &gy, &y, F32_REL, 0.0);
}

// ---- a CPU operand of a CUDA op ----

/// Asserts that `result` is a `DeviceMismatch`.
fn assert_mismatch<T>(label: &str, result: odeflow_runtime::Result<T>) {
    match result {
        Err(Error::DeviceMismatch { .. }) => {}
        Err(e) => panic!("{label}: expected a device mismatch, got {e}"),
        Ok(_) => panic!("{label}: a CPU operand of a CUDA op was accepted"),
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_cpu_operand_of_a_cuda_op_is_a_device_mismatch() {
    let x = randn(&[3, 33], 0.0, 1.0, DType::F32, 19);
    let w = Tensor::ones(&[33], DType::F32);
    let gx = gpu(&x);
    let ln = norm::layer_norm_fwd(&gx, Some(&w), None, EPS);
    assert_mismatch("layer_norm weight", ln);
    let (_, rstd) = norm::rms_norm_fwd(&x, None, EPS).unwrap();
    assert_mismatch(
        "rms_norm_bwd rstd",
        norm::rms_norm_bwd(&gx, &gx, None, &rstd),
    );
    assert_mismatch("softmax_bwd dy", softmax::softmax_bwd(&x, &gx));
    let t = Tensor::from_vec(vec![0u32, 1, 2], &[3]).unwrap();
    assert_mismatch(
        "cross_entropy targets",
        loss::cross_entropy_fwd(&gx, &t, None),
    );
    let table = gpu(&Tensor::zeros(&[5, 4], DType::F32));
    let i = ids(5);
    assert_mismatch("embedding ids", embedding::embedding_fwd(&table, &i));
    let h = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_scale: 1.0,
    };
    let adamw = optim::adamw_update(&gx, &x, &gx, &gx, &h);
    assert_mismatch("adamw grad", adamw);
}
