//! The runtime's CUDA side: device buffers inside tensors, transfers, and the dispatch of ops
//! to the kernels of `odeflow-kernels`.
//!
//! A CUDA tensor is the same `Tensor` as a CPU one (shape, strides, dtype) whose storage is a
//! `CudaStorage`: a `DeviceBuffer` from its device's caching allocator. Each device is opened
//! once per process (`gpu`) and shared by every tensor on it. The ops' CUDA arms call the
//! functions here; an op with no kernel yet answers `Error::Unsupported`, which names the op and
//! says how to carry on (on the CPU).
//!
//! What is supported today: moving tensors between devices (`Tensor::to_device`), and on
//! contiguous f32 / bf16 tensors the GELU and SiLU activations with their backwards, same-shape
//! add, sub and mul, and the affine map. Broadcasting, strided views and every other op come
//! with the kernels of issue 8's later steps.

use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::storage::{Buffer, CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};
use odeflow_kernels::elementwise::{self, Activation, Binary, ElemType};
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
fn elem_type(op: &'static str, dtype: DType) -> Result<ElemType> {
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

/// A contiguous CUDA tensor's storage, or the reason it cannot be used as a kernel's flat input.
fn flat<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    if !t.is_contiguous() || t.layout().offset() != 0 {
        // a strided copy kernel comes with the layout kernels
        return Err(unsupported(op, t.device()));
    }
    t.cuda_storage(op)
}

/// Wraps a kernel's output as a contiguous tensor of `shape`.
fn wrap(buf: DeviceBuffer, dtype: DType, shape: &[usize], ordinal: usize) -> Tensor {
    let len = shape.iter().product();
    let storage = CudaStorage {
        buf,
        dtype,
        len,
        ordinal,
    };
    Tensor::from_storage(Storage::new(Buffer::Cuda(storage)), shape)
}

fn activation(op: UnaryOp) -> Option<Activation> {
    match op {
        UnaryOp::Gelu => Some(Activation::Gelu),
        UnaryOp::Silu => Some(Activation::Silu),
        _ => None,
    }
}

/// `unary_fwd` on CUDA: the activations that have a kernel.
///
/// Shapes: x [any] -> y [same]
pub(crate) fn unary_fwd(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let act = activation(op).ok_or_else(|| unsupported(name, x.device()))?;
    let (xs, ty) = (flat(name, x)?, elem_type(name, x.dtype())?);
    let y = elementwise::activation_fwd(act, ty, &xs.buf, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}

/// `unary_bwd` on CUDA: dx = dy f'(x) for the activations that have a kernel.
///
/// Shapes: dy, x [any, equal] -> dx [same]
pub(crate) fn unary_bwd(op: UnaryOp, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let act = activation(op).ok_or_else(|| unsupported(name, x.device()))?;
    let (dys, xs) = (flat(name, dy)?, flat(name, x)?);
    let ty = elem_type(name, x.dtype())?;
    let dx = elementwise::activation_bwd(act, ty, &dys.buf, &xs.buf, xs.len)?;
    Ok(wrap(dx, x.dtype(), x.shape(), xs.ordinal))
}

/// `binary_fwd` on CUDA: add, sub and mul of two tensors of one shape (broadcasting is not
/// there yet: `binary_fwd` has already broadcast both to one shape, so only views that
/// repeat nothing reach a kernel).
///
/// Shapes: a, b [same] -> c [same]
pub(crate) fn binary_fwd(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let kernel = match op {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        _ => return Err(unsupported(name, a.device())),
    };
    let (as_, bs) = (flat(name, a)?, flat(name, b)?);
    let ty = elem_type(name, a.dtype())?;
    let c = elementwise::binary_fwd(kernel, ty, &as_.buf, &bs.buf, as_.len)?;
    Ok(wrap(c, a.dtype(), a.shape(), as_.ordinal))
}

/// `affine_fwd` on CUDA: y = mul x + add.
///
/// Shapes: x [any] -> y [same]
pub(crate) fn affine_fwd(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    let (xs, ty) = (flat("affine", x)?, elem_type("affine", x.dtype())?);
    let y = elementwise::affine_fwd(ty, &xs.buf, mul, add, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
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
