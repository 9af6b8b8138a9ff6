//! The GEMM kernels against the CPU references, at shapes that exercise every configuration:
//! M, N and K each taking 1, 17, 64, 127, 128, 129 and 300 (below, at, and either side of the
//! 8, 32 and 128 tiles, and several tiles with a ragged edge), each of the four transpose
//! combinations, a batch with a broadcast (stride 0) operand, alpha and beta other than 1 and 0,
//! and K = 0. The output is poisoned with NaN before each launch with beta = 0, so a skipped
//! element fails; with beta != 0 it holds real data that the kernel must scale and add.
//!
//! References: f32, the runtime's CPU matmul (`runtime/src/ops/matmul.rs`); bf16, the f64
//! reference matmul (`runtime/src/reference.rs`) of the inputs already rounded to bf16, so the
//! reference is exact to f64 and the kernel's only error is its own f32 accumulation.
//!
//! Tolerances, per element, with s = |alpha| (|op(A)| |op(B)|)_ij + |beta C0_ij| the size of
//! the terms summed and eps = 2^-23 (f32):
//!   f32:  |got - want| <= (2 sqrt(K) + 3) eps s. Kernel and CPU each sum K products in f32, in
//!         different orders; rounding errors add like a random walk, about sqrt(K) eps s each,
//!         and the epilogue's three roundings (alpha x, beta x, +) add the 3.
//!   bf16: the same bound for the accumulation (the products of bf16 values are exact in f32;
//!         the tensor cores' internal order of summation is not specified, only its f32 result),
//!         plus 2^-8 |want| when C is bf16: one rounding on the store.

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::gemm::{self, GemmKernel, GemmShape};
use odeflow_kernels::{DeviceBuffer, Gpu};
use odeflow_runtime::reference::{self, Array64};
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{device, download, held, normals, upload};
use std::sync::Arc;

/// The sizes each of M, N and K takes: 1, around the tiles (8, 32, 128), and several tiles.
const SIZES: [usize; 7] = [1, 17, 64, 127, 128, 129, 300];

/// Each (trans_a, trans_b).
const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// (M, N, K) such that every size of `SIZES` appears in every position, plus whole tiles in
/// both directions (256 x 256) and many tiles with ragged edges everywhere (300^3).
fn shapes() -> Vec<(usize, usize, usize)> {
    let s = SIZES.len();
    let mut out: Vec<_> = (0..s)
        .map(|i| (SIZES[i], SIZES[(i + 2) % s], SIZES[(i + 4) % s]))
        .collect();
    out.extend([(256, 256, 64), (300, 300, 300)]);
    out
}

/// A batch of [rows, cols] matrices stored transposed ([cols, rows] each), by the runtime's
/// transpose view.
fn transposed(values: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    let t = Tensor::from_vec(values.to_vec(), &[batch, rows, cols]).unwrap();
    t.t().unwrap().contiguous().unwrap().to_f32_vec().unwrap()
}

/// The runtime's f32 CPU matmul of a [batch_a, M, K] by a [batch_b, K, N] (batch dims broadcast).
fn cpu_matmul(a: &[f32], a_shape: [usize; 3], b: &[f32], b_shape: [usize; 3]) -> Vec<f32> {
    let a = Tensor::from_vec(a.to_vec(), &a_shape).unwrap();
    let b = Tensor::from_vec(b.to_vec(), &b_shape).unwrap();
    a.matmul(&b).unwrap().to_f32_vec().unwrap()
}

/// The f64 reference matmul of the same.
fn f64_matmul(a: &[f32], a_shape: [usize; 3], b: &[f32], b_shape: [usize; 3]) -> Vec<f64> {
    let wide =
        |v: &[f32], shape: [usize; 3]| Array64::new(&shape, v.iter().map(|&x| x as f64).collect());
    reference::matmul(&wide(a, a_shape), &wide(b, b_shape)).data
}

/// One product to check: logical op(A) [batch_a, M, K] and op(B) [batch_b, K, N] (batch 1 when
/// broadcast), already rounded to the kernel's input type, and what the CPU says of them.
struct Problem {
    shape: GemmShape,
    input: ElemType,
    /// op(A) and op(B), and how many matrices each holds (1 when broadcast)
    a: Vec<f32>,
    b: Vec<f32>,
    a_batch: usize,
    b_batch: usize,
    /// op(A) op(B), [batch, M, N]: f32 CPU matmul or f64 reference, by input type.
    product: Vec<f64>,
    /// |op(A)| |op(B)|: the size of the terms summed, for the tolerance.
    magnitude: Vec<f64>,
}

impl Problem {
    /// Random operands for `shape` (its transposes are ignored: they are a storage choice).
    fn new(shape: GemmShape, input: ElemType, seed: u64) -> Problem {
        let GemmShape { m, n, k, .. } = shape;
        let batch_of = |stride: usize| if stride == 0 { 1 } else { shape.batch };
        let (a_batch, b_batch) = (batch_of(shape.stride_a), batch_of(shape.stride_b));
        let (a_shape, b_shape) = ([a_batch, m, k], [b_batch, k, n]);
        let (a_len, b_len) = (a_shape.iter().product(), b_shape.iter().product());
        let a = held(&normals(a_len, 1.0, &mut Rng::new(seed)), input);
        let b = held(&normals(b_len, 1.0, &mut Rng::new(seed + 1)), input);
        let product = match input {
            ElemType::F32 => cpu_matmul(&a, a_shape, &b, b_shape)
                .into_iter()
                .map(f64::from)
                .collect(),
            ElemType::Bf16 => f64_matmul(&a, a_shape, &b, b_shape),
        };
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let magnitude = cpu_matmul(&abs(&a), a_shape, &abs(&b), b_shape);
        Problem {
            shape,
            input,
            a,
            b,
            a_batch,
            b_batch,
            product,
            magnitude: magnitude.into_iter().map(f64::from).collect(),
        }
    }

    /// A and B on the device, stored as `shape`'s transposes say.
    fn upload(&self, gpu: &Arc<Gpu>, shape: &GemmShape) -> (DeviceBuffer, DeviceBuffer) {
        let GemmShape { m, n, k, .. } = *shape;
        let a = match shape.trans_a {
            false => self.a.clone(),
            true => transposed(&self.a, self.a_batch, m, k),
        };
        let b = match shape.trans_b {
            false => self.b.clone(),
            true => transposed(&self.b, self.b_batch, k, n),
        };
        (upload(gpu, &a, self.input).0, upload(gpu, &b, self.input).0)
    }

    /// Launches `kernel` at every transpose combination and compares with the CPU.
    fn check(&self, gpu: &Arc<Gpu>, kernel: GemmKernel, alpha: f32, beta: f32, seed: u64) {
        let out = kernel.output();
        let len = self.shape.c_len().unwrap();
        // the initial C: real data when beta != 0, NaN (which must never be read) otherwise
        let c0 = if beta == 0.0 {
            vec![f32::NAN; len]
        } else {
            held(&normals(len, 1.0, &mut Rng::new(seed)), out)
        };
        for (trans_a, trans_b) in TRANSPOSES {
            let shape = self.shape.transposed(trans_a, trans_b);
            let (a, b) = self.upload(gpu, &shape);
            let mut c = upload(gpu, &c0, out).0;
            gemm::gemm_into(&mut c, kernel, &a, &b, alpha, beta, &shape).unwrap();
            let got = download(gpu, &c, out);
            let label = format!("{kernel:?} alpha={alpha} beta={beta} {shape:?}");
            self.assert_close(&label, &got, &c0, out, alpha, beta);
        }
    }

    fn assert_close(
        &self,
        label: &str,
        got: &[f32],
        c0: &[f32],
        out: ElemType,
        alpha: f32,
        beta: f32,
    ) {
        let GemmShape { m, n, k, .. } = self.shape;
        let (alpha, beta) = (alpha as f64, beta as f64);
        let accumulation = (2.0 * (k as f64).sqrt() + 3.0) * f32::EPSILON as f64;
        let store = match out {
            ElemType::F32 => 0.0,
            ElemType::Bf16 => 1.0 / 256.0,
        };
        assert_eq!(got.len(), self.product.len(), "{label}");
        for (i, &g) in got.iter().enumerate() {
            let c = if beta == 0.0 { 0.0 } else { c0[i] as f64 };
            let want = alpha * self.product[i] + beta * c;
            let size = alpha.abs() * self.magnitude[i] + beta.abs() * c.abs();
            let tol = accumulation * size + store * want.abs() + f32::MIN_POSITIVE as f64;
            let (z, row, col) = (i / (m * n), i / n % m, i % n);
            assert!(
                (g as f64 - want).abs() <= tol,
                "{label}: C[{z}][{row}][{col}]: got {g}, want {want} (tolerance {tol:e})"
            );
        }
    }
}

/// The kernels that take inputs of type `input`.
fn kernels_for(input: ElemType) -> Vec<GemmKernel> {
    let all = GemmKernel::ALL.into_iter();
    all.filter(|k| k.input() == input).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_matches_the_cpu_at_every_shape_and_transpose() {
    let gpu = device();
    for (i, (m, n, k)) in shapes().into_iter().enumerate() {
        for input in ElemType::ALL {
            let problem = Problem::new(GemmShape::new(m, n, k), input, 10 * i as u64);
            for kernel in kernels_for(input) {
                problem.check(&gpu, kernel, 1.0, 0.0, 0);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batches_broadcast_a_shared_operand_and_scale_by_alpha_and_beta() {
    let gpu = device();
    let batch = 3;
    for (m, n, k) in [(129, 65, 300), (17, 300, 64), (128, 1, 127)] {
        let dense = GemmShape::batched(batch, m, n, k);
        let shared_a = GemmShape {
            stride_a: 0,
            ..dense
        };
        let shared_b = GemmShape {
            stride_b: 0,
            ..dense
        };
        for (j, shape) in [dense, shared_a, shared_b].into_iter().enumerate() {
            for input in ElemType::ALL {
                let problem = Problem::new(shape, input, 100 + 10 * j as u64);
                for kernel in kernels_for(input) {
                    problem.check(&gpu, kernel, 0.75, 0.0, 0);
                    problem.check(&gpu, kernel, -1.25, 0.5, 7);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn with_k_zero_c_becomes_beta_c() {
    let gpu = device();
    for input in ElemType::ALL {
        let problem = Problem::new(GemmShape::batched(2, 17, 129, 0), input, 200);
        for kernel in kernels_for(input) {
            problem.check(&gpu, kernel, 2.0, -1.5, 3);
            problem.check(&gpu, kernel, 2.0, 0.0, 3);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_empty_output_launches_nothing_and_short_buffers_are_refused() {
    let gpu = device();
    let a = gpu.upload(&[1.0f32; 12]).unwrap();
    let b = gpu.upload(&[1.0f32; 12]).unwrap();
    let mut c = gpu.upload(&[f32::NAN; 4]).unwrap();
    let empty = GemmShape::new(0, 4, 3);
    gemm::gemm_into(&mut c, GemmKernel::F32, &a, &b, 1.0, 0.0, &empty).unwrap();
    assert!(gpu.download::<f32>(&c).unwrap().iter().all(|v| v.is_nan()));
    // [2, 4] x [4, 3] needs 8 + 12 inputs and 6 outputs: C is short
    let err = gemm::gemm_into(
        &mut c,
        GemmKernel::F32,
        &a,
        &b,
        1.0,
        0.0,
        &GemmShape::new(2, 3, 4),
    );
    let msg = err.unwrap_err().to_string();
    assert!(
        msg.contains("gemm_fwd_f32") && msg.contains("C holds 16 bytes"),
        "{msg}"
    );
}
