//! Layout ops on CUDA tensors: the contiguous copy of any view (`kernels/cuda/strided.cu`) and
//! the f32 <-> bf16 casts (`kernels/cuda/layout.cu`).

use super::{flat, unsupported, wrap};
use crate::{DType, Result, Tensor};
use odeflow_kernels::layout::{self, Cast};
use odeflow_kernels::strided::{self, Strided};

/// `Tensor::contiguous` on CUDA: the view's elements, in row-major order, in a new buffer.
///
/// Shapes: x [any view] -> [same], contiguous
pub(crate) fn contiguous(x: &Tensor) -> Result<Tensor> {
    let storage = x.cuda_storage("contiguous")?;
    let l = x.layout();
    let view = Strided::new(l.shape(), l.strides(), l.offset())?;
    let y = strided::strided_copy(storage.buffer(), &view, x.dtype().size_in_bytes())?;
    Ok(wrap(y, x.dtype(), x.shape(), storage.ordinal()))
}

/// `Tensor::to_dtype` on CUDA, for the casts that have a kernel (f32 <-> bf16).
///
/// Shapes: x [any] -> [same], contiguous
pub(crate) fn to_dtype(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let cast = match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) => Cast::F32ToBf16,
        (DType::BF16, DType::F32) => Cast::Bf16ToF32,
        _ => return Err(unsupported("to_dtype", x.device())),
    };
    let x = x.contiguous()?;
    let xs = flat("to_dtype", &x)?;
    let y = layout::cast_fwd(cast, xs.buffer(), xs.len())?;
    Ok(wrap(y, dtype, x.shape(), xs.ordinal()))
}
