//! What the GPU tests (`tests/tests/gpu_*.rs`) share: the device, f32 values moved to and from
//! f32 or bf16 buffers, NaN-poisoned outputs, random inputs, the element counts that reach
//! every elementwise grid, and the tolerance check against a CPU reference.
//!
//! Every helper panics on a driver error: the tests that call them are
//! `#[ignore = "needs a CUDA GPU"]`, and a failed upload there is a failed test.

use half::bf16;
use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::launch::{ELEMENTWISE_BLOCK, ELEMENTWISE_MAX_BLOCKS};
use odeflow_kernels::{DeviceBuffer, Gpu};
use odeflow_runtime::{Rng, Tensor};
use std::sync::Arc;

/// Device 0.
pub fn device() -> Arc<Gpu> {
    Gpu::new(0).expect("a CUDA device")
}

/// The values as a buffer of `ty` will hold them (rounded to bf16 for a bf16 buffer).
pub fn held(values: &[f32], ty: ElemType) -> Vec<f32> {
    match ty {
        ElemType::F32 => values.to_vec(),
        ElemType::Bf16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    }
}

/// `values` on the device as `ty`, and the values the device actually holds.
pub fn upload(gpu: &Arc<Gpu>, values: &[f32], ty: ElemType) -> (DeviceBuffer, Vec<f32>) {
    let buffer = match ty {
        ElemType::F32 => gpu.upload(values),
        ElemType::Bf16 => {
            let bits: Vec<u16> = values
                .iter()
                .map(|&v| bf16::from_f32(v).to_bits())
                .collect();
            gpu.upload(&bits)
        }
    };
    (buffer.unwrap(), held(values, ty))
}

/// `values` as a runtime tensor of `ty` (of `shape`) and as the same bits on the device.
pub fn upload_with_tensor(
    gpu: &Arc<Gpu>,
    values: &[f32],
    shape: &[usize],
    ty: ElemType,
) -> (Tensor, DeviceBuffer) {
    let (buffer, held) = upload(gpu, values, ty);
    let tensor = match ty {
        ElemType::F32 => Tensor::from_vec(held, shape),
        ElemType::Bf16 => {
            let b: Vec<bf16> = held.iter().map(|&v| bf16::from_f32(v)).collect();
            Tensor::from_vec(b, shape)
        }
    };
    (tensor.unwrap(), buffer)
}

/// A buffer of `ty` elements, as f32 values.
pub fn download(gpu: &Gpu, buf: &DeviceBuffer, ty: ElemType) -> Vec<f32> {
    match ty {
        ElemType::F32 => gpu.download::<f32>(buf).unwrap(),
        ElemType::Bf16 => {
            let bits = gpu.download::<u16>(buf).unwrap();
            bits.into_iter()
                .map(|b| bf16::from_bits(b).to_f32())
                .collect()
        }
    }
}

/// An output buffer of n NaNs of `ty`: an element the kernel skips stays NaN and fails.
pub fn poisoned(gpu: &Arc<Gpu>, n: usize, ty: ElemType) -> DeviceBuffer {
    upload(gpu, &vec![f32::NAN; n], ty).0
}

/// n draws of a normal distribution of mean 0 and deviation `std`.
pub fn normals(n: usize, std: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| std * rng.normal()).collect()
}

/// Every grid the elementwise launch configuration can choose, by the element count that
/// produces it: one partial block, exactly one, one and one element, and more elements than
/// the capped grid has threads (so each thread's grid-stride loop runs twice).
pub fn elementwise_sizes() -> Vec<usize> {
    let block = ELEMENTWISE_BLOCK as usize;
    let capped = block * ELEMENTWISE_MAX_BLOCKS as usize;
    vec![1, block - 1, block, block + 1, capped + 3]
}

/// An f32 CPU tensor.
pub fn cpu(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap()
}

/// An f32 CPU tensor's values.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

/// 64 f32 epsilons (7.6e-6): the relative tolerance of an f32 output summed in another order.
pub const F32_REL: f64 = 64.0 * f32::EPSILON as f64;

/// The relative tolerance of an output of `ty`: `F32_REL`, or 2^-8 for bf16 (one rounding to
/// bf16, 2^-9, plus a possible flip where the f32 results straddle a tie).
pub fn rel(ty: ElemType) -> f64 {
    match ty {
        ElemType::F32 => F32_REL,
        ElemType::Bf16 => 1.0 / 256.0,
    }
}

/// The largest |x|, 0 for no values.
pub fn max_abs(xs: &[f32]) -> f64 {
    xs.iter().fold(0.0, |m, &x| m.max(x.abs() as f64))
}

/// |got - want| <= rel (|want| + floor), element by element; equal infinities match.
pub fn assert_close(label: &str, got: &[f32], want: &[f32], rel: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() && g == w {
            continue;
        }
        let tol = rel * (w.abs() as f64 + floor);
        assert!(
            (g as f64 - w as f64).abs() <= tol,
            "{label}: element {i} of {}: got {g}, want {w} (tolerance {tol:e})",
            got.len()
        );
    }
}
