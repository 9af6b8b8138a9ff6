//! Layout ops on CUDA tensors: the contiguous copy of any view (`kernels/cuda/strided.cu`) and
//! the f32 <-> bf16 casts (`kernels/cuda/layout.cu`).

use super::{flat, unsupported, wrap};
use crate::layout::contiguous_strides;
use crate::{DType, Result, Tensor};
use odeflow_kernels::layout::{self, Cast};
use odeflow_kernels::strided::{self, Strided};
use odeflow_kernels::DeviceBuffer;

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

/// `cat` on CUDA: each part copied into its slice of the output along `dim` (the strided copy
/// with the output's narrowed view as its destination).
///
/// Shapes: xs[i] [.., N_i, ..] -> y [shape] = [.., sum_i N_i, ..]
pub(crate) fn cat(xs: &[Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let first = xs[0].cuda_storage("cat")?;
    let (dtype, elem) = (xs[0].dtype(), xs[0].dtype().size_in_bytes());
    let gpu = first.buffer().gpu().clone();
    let n: usize = shape.iter().product();
    let mut y: DeviceBuffer = gpu.alloc(n * elem)?;
    let out_strides = contiguous_strides(shape);
    let mut start = 0;
    for x in xs {
        // the part's slice of the output: the output's strides, from its first element
        let l = x.layout();
        let dst = Strided::new(x.shape(), &out_strides, start * out_strides[dim])?;
        let src = Strided::new(l.shape(), l.strides(), l.offset())?;
        let xs = x.cuda_storage("cat")?;
        strided::strided_copy_into(&mut y, &dst, xs.buffer(), &src, elem)?;
        start += x.shape()[dim];
    }
    Ok(wrap(y, dtype, shape, first.ordinal()))
}
