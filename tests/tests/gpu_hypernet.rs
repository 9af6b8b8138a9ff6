//! The CUDA hypernetwork generation (`kernels/cuda/hypernet.cu`, through the runtime's
//! `ops::hypernet::{generate, generate_bwd}` on CUDA tensors) against the same ops on CPU tensors
//! (`runtime/src/cpu/hypernet.rs`), forward (w) and backward (dh, df), for f in f32 and bf16
//! with h in f32 or bf16, at shapes that reach every path of the kernels: P a multiple of 8
//! over several 512-column chunks and a ragged one (the 16-byte copies), P odd or 2 mod 4 (the
//! plain loads), P below one chunk and below 8, N = 1 and N = 48, K = 9 and 21, N past one mma
//! tile and K past two (20 x 33), and the GPT-2-small-shaped model's attention projection
//! (N = 12, K = 21, P = 768 x 768), where every block walks several chunks of its share. One
//! case hands the backward gradients that are views (a narrowed slice, a transpose), which the
//! runtime makes dense one by one.
//!
//! The backward into a gradient gathered so far (`generate_bwd_acc`, the kernels' `acc`) is
//! held to the CPU's at the same shapes, with acc in f's dtype, in f32 over a bf16 f (the
//! `_accf32` kernels), and in bf16 over an f32 f (the runtime's widened path); without acc it
//! is the plain backward to the bit.
//!
//! Both sides read the same values: inputs drawn in their dtype on the CPU and copied to the
//! device. The CPU sums in f32 (dh in f64) and rounds once to the output's dtype; the device
//! sums in f32 in another order (dh over chunks, warps and blocks; bf16's dh on the tensor
//! cores) and rounds once. Tolerance, element by element:
//!
//! ```text
//! |got - want| <= 2 u |want| + 2^-16 mag
//! ```
//!
//! u is the unit roundoff of the output's dtype (2^-8 for bf16, 2^-24 for f32): each side's
//! rounding is within u of its f32 sum. mag is the sum of the terms' absolute values (the same
//! op on |h|, |f|, |dw|): two f32 sums of the same terms differ by at most the number of
//! roundings a term passes through times 2^-24 mag, a few dozen here (K or N for w and df; for
//! dh a lane's 16 columns, a butterfly, one add per chunk, four warps, the blocks), which
//! 2^-16 mag = 256 x 2^-24 mag covers; a missing term is of order mag / K and fails it.
//! `the_bar_admits_a_rounding_and_refuses_a_missing_term` checks that on the CPU. Into acc, the
//! same bar with |acc| added to mag: each side adds acc to its f32 sum and rounds once.

use odeflow_runtime::ops::hypernet::{generate, generate_bwd, generate_bwd_acc};
use odeflow_runtime::{DType, Device, Error, Rng, Tensor};

const CUDA: Device = Device::Cuda(0);

// ---- the bar ----

/// The unit roundoff of `dtype`'s significand.
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1.0 / 256.0,
        _ => f32::EPSILON as f64 / 2.0,
    }
}

/// The weight of mag in the bar: 256 roundings of 2^-24.
const MAG_REL: f64 = 1.0 / 65536.0;

/// The first element where |got - want| > 2 u |want| + 2^-16 mag (a NaN counts), as
/// (index, got, want, tolerance).
fn violation(got: &[f32], want: &[f32], mag: &[f32], u: f64) -> Option<(usize, f32, f32, f64)> {
    assert_eq!((got.len(), mag.len()), (want.len(), want.len()), "lengths");
    let elems = got.iter().zip(want).zip(mag).enumerate();
    elems
        .map(|(i, ((&g, &w), &m))| (i, g, w, 2.0 * u * w.abs() as f64 + MAG_REL * m as f64))
        .find(|&(_, g, w, tol)| (g as f64 - w as f64).abs() > tol || g.is_nan())
}

/// `got` (a device result, brought back) against the CPU's `want`: same dtype, shape, and
/// values within the bar.
fn assert_within(label: &str, got: &Tensor, want: &Tensor, mag: &Tensor) {
    assert_eq!(got.device(), CUDA, "{label}: left the device");
    assert_eq!(
        (got.dtype(), got.shape()),
        (want.dtype(), want.shape()),
        "{label}"
    );
    let (g, w, m) = (vals(got), vals(want), vals(mag));
    if let Some((i, g, w, tol)) = violation(&g, &w, &m, unit_roundoff(want.dtype())) {
        let n = m.len();
        panic!("{label}: element {i} of {n}: got {g}, want {w} (tolerance {tol:e})");
    }
}

// ---- helpers ----

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// |x| as an f32 CPU tensor.
fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = vals(t).iter().map(|x| x.abs()).collect();
    Tensor::from_vec(v, t.shape()).unwrap()
}

fn cuda(t: &Tensor) -> Tensor {
    t.to_device(CUDA).unwrap()
}

/// One case: CPU inputs in their dtypes.
struct Case {
    label: String,
    h: Tensor,
    f: Tensor,
    dws: Vec<Tensor>,
}

impl Case {
    fn new(n: usize, f_shape: &[usize], f_ty: DType, h_ty: DType, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let k = f_shape[0];
        let h = Tensor::randn(&[n, k], 0.0, 1.0, h_ty, &mut rng);
        let f = Tensor::randn(f_shape, 0.0, 1.0, f_ty, &mut rng);
        let dws = (0..n)
            .map(|_| Tensor::randn(&f_shape[1..], 0.0, 1.0, f_ty, &mut rng))
            .collect();
        let label = format!("N {n}, f {f_shape:?} {f_ty:?}, h {h_ty:?}");
        Case { label, h, f, dws }
    }
}

/// The case on both devices, every output held to the bar; the device's gradients are made
/// from `device_dws` (the case's own, on the device, unless a test passes views).
fn check_case(c: &Case, device_dws: &[Tensor]) {
    // the CPU's results, and the magnitudes: the same ops on absolute values, in f32
    let want_w = generate(&c.h, &c.f).unwrap();
    let (want_dh, want_df) = generate_bwd(&c.dws, &c.h, &c.f).unwrap();
    let (ah, af) = (abs(&c.h), abs(&c.f));
    let adws: Vec<Tensor> = c.dws.iter().map(abs).collect();
    let mag_w = generate(&ah, &af).unwrap();
    let (mag_dh, mag_df) = generate_bwd(&adws, &ah, &af).unwrap();

    let (h, f) = (cuda(&c.h), cuda(&c.f));
    let w = generate(&h, &f).unwrap();
    assert_within(&format!("{}: w", c.label), &w, &want_w, &mag_w);
    let (dh, df) = generate_bwd(device_dws, &h, &f).unwrap();
    assert_within(&format!("{}: dh", c.label), &dh, &want_dh, &mag_dh);
    assert_within(&format!("{}: df", c.label), &df, &want_df, &mag_df);
}

const DTYPE_PAIRS: [(DType, DType); 4] = [
    (DType::F32, DType::F32),
    (DType::BF16, DType::F32),
    (DType::BF16, DType::BF16),
    (DType::F32, DType::BF16),
];

// ---- against the CPU ----

/// (N, f's shape) at every path of the kernels.
const SHAPES: [(usize, &[usize]); 8] = [
    (12, &[21, 3 * 512 + 40]), // aligned, four chunks, the last ragged
    (4, &[9, 1003]),           // P odd: plain loads
    (1, &[9, 8, 13]),          // N = 1, P = 104 (one partial chunk, aligned)
    (5, &[21, 130]),           // P = 2 mod 4: plain loads for both dtypes
    (3, &[21, 5]),             // P below one 16-byte vector
    (20, &[33, 520]),          // N past one mma tile, K past two
    (48, &[21, 768]),          // the most steps, a norm parameter [K, D]
    (12, &[20, 4096]),         // a bias's E = 20 rows
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn generate_and_its_backward_match_the_cpu_at_every_path() {
    let mut seed = 1;
    for (n, f_shape) in SHAPES {
        for (f_ty, h_ty) in DTYPE_PAIRS {
            let c = Case::new(n, f_shape, f_ty, h_ty, seed);
            seed += 1;
            let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
            check_case(&c, &dws);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_models_attention_projection_matches_the_cpu() {
    // N = 12 evaluation times, K = E + 1 = 21, [K, 768, 768]: every block walks several chunks
    for (f_ty, h_ty) in [(DType::BF16, DType::F32), (DType::F32, DType::F32)] {
        let c = Case::new(12, &[21, 768, 768], f_ty, h_ty, 77);
        let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
        check_case(&c, &dws);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gradients_that_are_views_are_read_as_their_values() {
    // step 0's gradient is a narrowed slice of a longer buffer (an offset), step 1's a
    // transpose of its [33, 24] matrix (strides); both are made dense before the kernel
    let c = Case::new(3, &[9, 24, 33], DType::BF16, DType::F32, 5);
    let mut dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
    let long = Tensor::randn(&[30, 33], 0.0, 1.0, DType::BF16, &mut Rng::new(9));
    let slice = cuda(&long).narrow(0, 6, 24).unwrap();
    let transposed = cuda(&c.dws[1].t().unwrap().contiguous().unwrap())
        .t()
        .unwrap();
    assert!(slice.layout().offset() != 0 && !transposed.is_contiguous());
    let mut cpu_dws = c.dws.clone();
    cpu_dws[0] = long.narrow(0, 6, 24).unwrap().contiguous().unwrap();
    (dws[0], dws[1]) = (slice, transposed);
    let c = Case { dws: cpu_dws, ..c };
    check_case(&c, &dws);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_backward_is_the_same_bits_run_to_run() {
    // dH is summed in a fixed order (no atomics): two runs agree to the bit
    let c = Case::new(12, &[21, 20_000], DType::BF16, DType::F32, 11);
    let (h, f) = (cuda(&c.h), cuda(&c.f));
    let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
    let (dh1, df1) = generate_bwd(&dws, &h, &f).unwrap();
    let (dh2, df2) = generate_bwd(&dws, &h, &f).unwrap();
    assert_eq!(vals(&dh1), vals(&dh2));
    assert_eq!(vals(&df1), vals(&df2));
}

// ---- into a gradient gathered so far ----

/// The backward into acc (drawn in `acc_ty`) on both devices: dh as without acc, and acc + df
/// within the bar, mag being the plain backward's plus |acc|.
fn check_acc_case(c: &Case, acc_ty: DType, seed: u64) {
    let acc = Tensor::randn(c.f.shape(), 0.0, 1.0, acc_ty, &mut Rng::new(seed));
    let (want_dh, want_sum) = generate_bwd_acc(&c.dws, &c.h, &c.f, Some(&acc)).unwrap();
    let (ah, af, aacc) = (abs(&c.h), abs(&c.f), abs(&acc));
    let adws: Vec<Tensor> = c.dws.iter().map(abs).collect();
    let (mag_dh, mag_sum) = generate_bwd_acc(&adws, &ah, &af, Some(&aacc)).unwrap();
    let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
    let (h, f) = (cuda(&c.h), cuda(&c.f));
    let (dh, sum) = generate_bwd_acc(&dws, &h, &f, Some(&cuda(&acc))).unwrap();
    let label = format!("{}, acc {acc_ty:?}", c.label);
    assert_within(&format!("{label}: dh"), &dh, &want_dh, &mag_dh);
    assert_within(&format!("{label}: acc + df"), &sum, &want_sum, &mag_sum);
}

/// The dtypes of acc over an f of `f_ty`: its own, and the other one (f32 over bf16 is the
/// `_accf32` kernels; bf16 over f32 the runtime's widened path).
fn acc_dtypes(f_ty: DType) -> [DType; 2] {
    match f_ty {
        DType::BF16 => [DType::BF16, DType::F32],
        _ => [DType::F32, DType::BF16],
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_backward_into_a_gradient_matches_the_cpu_at_every_path() {
    let mut seed = 100;
    for (n, f_shape) in SHAPES {
        for (f_ty, h_ty) in DTYPE_PAIRS {
            let c = Case::new(n, f_shape, f_ty, h_ty, seed);
            for acc_ty in acc_dtypes(f_ty) {
                check_acc_case(&c, acc_ty, seed + 1);
            }
            seed += 2;
        }
    }
    // the model's attention projection under mixed precision: a bf16 f, an f32 gradient
    let c = Case::new(12, &[21, 768, 768], DType::BF16, DType::F32, 78);
    check_acc_case(&c, DType::F32, 79);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_backward_without_a_gradient_is_the_plain_backward_to_the_bit() {
    for (f_ty, h_ty) in DTYPE_PAIRS {
        let c = Case::new(12, &[21, 3 * 512 + 40], f_ty, h_ty, 12);
        let (h, f) = (cuda(&c.h), cuda(&c.f));
        let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
        let (dh1, df1) = generate_bwd(&dws, &h, &f).unwrap();
        let (dh2, df2) = generate_bwd_acc(&dws, &h, &f, None).unwrap();
        assert_eq!((df2.dtype(), dh2.dtype()), (f_ty, h_ty), "{}", c.label);
        assert_eq!(vals(&dh1), vals(&dh2), "{}: dh", c.label);
        assert_eq!(vals(&df1), vals(&df2), "{}: df", c.label);
    }
}

// ---- errors ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_ops_refuse_what_the_kernels_cannot_take() {
    let c = Case::new(3, &[9, 40], DType::F32, DType::F32, 3);
    let (h, f) = (cuda(&c.h), cuda(&c.f));
    let dws: Vec<Tensor> = c.dws.iter().map(cuda).collect();
    // one gradient short
    let err = generate_bwd(&dws[..2], &h, &f).unwrap_err();
    assert!(err.to_string().contains("one gradient per step"), "{err}");
    // a gradient of another dtype
    let mut mixed = dws.clone();
    mixed[1] = mixed[1].to_dtype(DType::BF16).unwrap();
    let err = generate_bwd(&mixed, &h, &f).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    // f16 has no kernel (cast on the CPU: the device has no f16 cast either)
    let f16 = cuda(&c.f.to_dtype(DType::F16).unwrap());
    let err = generate(&h, &f16).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");
    // h on the CPU, f on the device
    let err = generate(&c.h, &f).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_launchers_refuse_short_buffers_and_a_wrong_count() {
    use odeflow_kernels::elementwise::ElemType;
    use odeflow_kernels::hypernet::{hypernet_bwd, hypernet_fwd, HypernetShape};
    let gpu = odeflow_kernels::Gpu::new(0).unwrap();
    let shape = HypernetShape::new(4, 9, 100);
    let (h, f) = (
        gpu.alloc(4 * 9 * 4).unwrap(),
        gpu.alloc(9 * 99 * 4).unwrap(),
    );
    let Err(err) = hypernet_fwd(ElemType::F32, ElemType::F32, &h, &f, &shape) else {
        panic!("a short f was taken");
    };
    let msg = err.to_string();
    assert!(msg.starts_with("hypernet_fwd_f32_hf32: f holds"), "{msg}");
    let f = gpu.alloc(9 * 100 * 4).unwrap();
    let dw = gpu.alloc(100 * 4).unwrap();
    let f32 = ElemType::F32;
    let Err(err) = hypernet_bwd(f32, f32, f32, &[&dw; 3], &h, &f, None, &shape) else {
        panic!("3 gradients were taken for 4 steps");
    };
    assert!(
        err.to_string().contains("3 step gradients for N = 4"),
        "{err}"
    );
    // an acc one element short, and a bf16 dF over an f32 F (which no kernel writes)
    let short = gpu.alloc(9 * 100 * 4 - 4).unwrap();
    let Err(err) = hypernet_bwd(f32, f32, f32, &[&dw; 4], &h, &f, Some(&short), &shape) else {
        panic!("a short acc was taken");
    };
    let msg = err.to_string();
    assert!(msg.starts_with("hypernet_bwd_f32_hf32: acc holds"), "{msg}");
    let bf16 = ElemType::Bf16;
    let Err(err) = hypernet_bwd(f32, f32, bf16, &[&dw; 4], &h, &f, None, &shape) else {
        panic!("a bf16 dF over an f32 F was taken");
    };
    assert!(
        err.to_string().contains("no kernel writes a bf16 dF"),
        "{err}"
    );
}

// ---- the bar itself, on the CPU ----

#[test]
fn the_bar_admits_a_rounding_and_refuses_a_missing_term() {
    // the CPU's bf16 w (its f32 sum rounded once) passes against its own f32 w, and so does
    // the f32 w against itself; a w that drops the last of the K terms fails
    let c = Case::new(6, &[21, 300], DType::F32, DType::F32, 8);
    let want = vals(&generate(&c.h, &c.f).unwrap());
    let mag = vals(&generate(&abs(&c.h), &abs(&c.f)).unwrap());
    let rounded: Vec<f32> = want
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    let u_bf16 = unit_roundoff(DType::BF16);
    assert_eq!(violation(&rounded, &want, &mag, u_bf16), None);
    assert_eq!(
        violation(&want, &want, &mag, unit_roundoff(DType::F32)),
        None
    );
    let mut f = vals(&c.f);
    f[20 * 300..].iter_mut().for_each(|x| *x = 0.0);
    let missing = Tensor::from_vec(f, c.f.shape()).unwrap();
    let short = vals(&generate(&c.h, &missing).unwrap());
    assert!(violation(&short, &want, &mag, unit_roundoff(DType::F32)).is_some());
    // a NaN never passes
    let mut nan = want.clone();
    nan[7] = f32::NAN;
    assert!(violation(&nan, &want, &mag, u_bf16).is_some());
}
