//! The runtime's CUDA side: device buffers inside tensors, transfers, and the dispatch of ops
//! to the kernels of `odeflow-kernels`.
//!
//! A CUDA tensor is the same `Tensor` as a CPU one (shape, strides, dtype) whose storage is a
//! `CudaStorage`: a `DeviceBuffer` from its device's caching allocator. Each device is opened
//! once per process (`gpu`) and shared by every tensor on it. The ops' CUDA arms call the
//! functions here; an op with no kernel yet answers `Error::Unsupported`, which names the op and
//! says how to carry on (on the CPU).
//!
//! One file per family of ops, beside the kernels' own: `elementwise.rs` (GELU, SiLU and their
//! backwards; add, sub, mul with broadcasting; the affine map; the solvers' one-pass `lincomb`),
//! `layout.rs` (`contiguous` of any view, f32 <-> bf16 casts), `matmul.rs` (the batched product
//! on the GEMM), `rows.rs` (LayerNorm, RMSNorm, softmax, cross-entropy, forward and backward),
//! `embedding.rs` (gather and its scatter-add), `optim.rs` (AdamW), `reduce.rs` (sum and mean
//! over any dim, the sum of squares), `flash.rs` (causal flash attention, forward and backward,
//! on the tensor cores), `hypernet.rs` (the hypernetwork's weight generation and its backward,
//! each one fused pass, the backward optionally summed into a gradient gathered so far).
//! Inputs are made dense first (`dense`); f32 and bf16 only. Still `Unsupported` on CUDA: the
//! other unary ops (exp, log, tanh, ...), div and maximum, log-softmax, max and argmax, the
//! flash attention in f32 or at a head dim other than 32, 64, 128 (`flash::supports` says no,
//! and the tape keeps the materialised attention, which runs on the ops above), and f16.

pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod flash;
pub(crate) mod hypernet;
pub(crate) mod layout;
pub(crate) mod matmul;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod rows;

use crate::storage::{Buffer, CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};
use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::{DeviceBuffer, Gpu};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Device `ordinal`, opened on first use and shared afterwards.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let open = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = open.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Gpu::new(ordinal)?;
    open.insert(ordinal, g.clone());
    Ok(g)
}

/// The error of an op that has no CUDA kernel yet.
pub(crate) fn unsupported(op: &'static str, device: Device) -> Error {
    Error::Unsupported { op, device }
}

/// A typed buffer in device memory: `len` elements of `dtype`.
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    len: usize,
    ordinal: usize,
}

impl fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaStorage({} x {} on cuda:{})",
            self.len, self.dtype, self.ordinal
        )
    }
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn buffer(&self) -> &DeviceBuffer {
        &self.buf
    }

    /// Copies a CPU buffer to device `ordinal`.
    pub fn upload(cpu: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        let g = gpu(ordinal)?;
        let buf = match cpu {
            CpuStorage::F32(v) => g.upload(v)?,
            CpuStorage::BF16(v) => g.upload(bytemuck::cast_slice::<_, u16>(v))?,
            CpuStorage::F16(v) => g.upload(bytemuck::cast_slice::<_, u16>(v))?,
            CpuStorage::U32(v) => g.upload(v)?,
        };
        Ok(CudaStorage {
            buf,
            dtype: cpu.dtype(),
            len: cpu.len(),
            ordinal,
        })
    }

    /// Copies the buffer back to the host (waits for the ops that write it).
    pub fn download(&self) -> Result<CpuStorage> {
        let g = self.buf.gpu();
        Ok(match self.dtype {
            DType::F32 => CpuStorage::F32(g.download(&self.buf)?),
            DType::U32 => CpuStorage::U32(g.download(&self.buf)?),
            DType::BF16 => {
                let bits: Vec<u16> = g.download(&self.buf)?;
                CpuStorage::BF16(bits.into_iter().map(half::bf16::from_bits).collect())
            }
            DType::F16 => {
                let bits: Vec<u16> = g.download(&self.buf)?;
                CpuStorage::F16(bits.into_iter().map(half::f16::from_bits).collect())
            }
        })
    }
}

/// The kernels' element type of a float dtype they are compiled for.
pub(crate) fn elem_type(op: &'static str, dtype: DType) -> Result<ElemType> {
    match dtype {
        DType::F32 => Ok(ElemType::F32),
        DType::BF16 => Ok(ElemType::Bf16),
        got => Err(Error::UnsupportedDType {
            op,
            got,
            expected: "f32 or bf16 on CUDA",
        }),
    }
}

/// `t` itself when its elements fill its buffer from the start in row-major order, else a
/// contiguous copy (a permuted, broadcast, or narrowed view): what a kernel's flat input needs.
pub(crate) fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset() == 0 {
        return Ok(t.clone());
    }
    layout::contiguous(t)
}

/// A contiguous CUDA tensor's storage, or the reason it cannot be used as a kernel's flat input.
pub(crate) fn flat<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    if !t.is_contiguous() || t.layout().offset() != 0 {
        // a caller that forgot `dense`
        return Err(unsupported(op, t.device()));
    }
    t.cuda_storage(op)
}

/// Wraps a kernel's output as a contiguous tensor of `shape`.
pub(crate) fn wrap(buf: DeviceBuffer, dtype: DType, shape: &[usize], ordinal: usize) -> Tensor {
    let len = shape.iter().product();
    let storage = CudaStorage {
        buf,
        dtype,
        len,
        ordinal,
    };
    Tensor::from_storage(Storage::new(Buffer::Cuda(storage)), shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_a_tensor_to_cuda_without_a_driver_says_to_use_the_cpu() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        match t.to_device(Device::Cuda(0)) {
            Err(e) if !odeflow_kernels::gpu::driver_present() => {
                assert_eq!(
                    e.to_string(),
                    "no CUDA driver found; run on CPU with --device cpu"
                );
            }
            // with a driver: the values come back unchanged
            Err(e) => panic!("a device is present but the copy failed: {e}"),
            Ok(g) => {
                assert_eq!(g.device(), Device::Cuda(0));
                let back = g.to_device(Device::Cpu).unwrap();
                assert_eq!(back.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
            }
        }
        // to the device it is already on: the same tensor
        assert_eq!(
            t.to_device(Device::Cpu).unwrap().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
    }
}
