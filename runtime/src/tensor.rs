//! The `Tensor`: a shared buffer plus a layout that says which of its elements the tensor sees.

use crate::cuda::CudaStorage;
use crate::layout::{broadcast_shape, Layout};
use crate::rng::Rng;
use crate::storage::{Buffer, CpuStorage, Storage};
use crate::{DType, Device, Element, Error, Result};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// An n-dimensional array of `f32`, `bf16`, `f16` or `u32` values on a device.
///
/// Cloning is cheap (the buffer is shared through an `Arc`), and so are the views `reshape` (of a
/// contiguous tensor), `permute`, `transpose`, `narrow` and `broadcast_to`: they build a new
/// `Layout` over the same buffer. Ops never modify a buffer; they return new tensors.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}]",
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}

// construction
impl Tensor {
    /// Wraps a storage and a layout. The layout must fit inside the storage.
    pub(crate) fn from_parts(storage: Arc<Storage>, layout: Layout) -> Tensor {
        debug_assert!(layout.max_extent() <= storage.len());
        Tensor { storage, layout }
    }

    /// A contiguous tensor over a fresh CPU buffer. Internal: `data.len()` must equal the
    /// shape's element count.
    pub(crate) fn from_cpu(data: CpuStorage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let storage = Storage::new(Buffer::Cpu(data));
        Tensor::from_parts(Arc::new(storage), Layout::contiguous(shape))
    }

    /// A contiguous tensor over a fresh storage of exactly `shape`'s element count.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor::from_parts(Arc::new(storage), Layout::contiguous(shape))
    }

    /// This tensor's values on `device` (a copy, contiguous; the tensor itself when it is
    /// already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let cpu = match self.device() {
            Device::Cpu => self.contiguous()?,
            Device::Cuda(_) => {
                let host = self.storage_on_host()?;
                let t = Tensor::from_parts(
                    Arc::new(Storage::new(Buffer::Cpu(host))),
                    self.layout.clone(),
                );
                t.contiguous()?
            }
        };
        match device {
            Device::Cpu => Ok(cpu),
            Device::Cuda(i) => {
                let storage = CudaStorage::upload(cpu.cpu(), i)?;
                Ok(Tensor::from_storage(
                    Storage::new(Buffer::Cuda(storage)),
                    self.shape(),
                ))
            }
        }
    }

    /// A CUDA tensor's whole buffer, copied to the host.
    fn storage_on_host(&self) -> Result<CpuStorage> {
        self.cuda_storage("to_device")?.download()
    }

    /// A contiguous tensor of `dtype` holding `values` rounded to that dtype. Internal: the
    /// length must match the shape (ops compute the shape themselves).
    pub(crate) fn from_f32_values(values: Vec<f32>, shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_cpu(CpuStorage::from_f32(values, dtype), shape)
    }

    /// A CPU tensor that takes ownership of `data`, laid out row-major as `shape`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        check_len("from_vec", data.len(), shape)?;
        Ok(Tensor::from_cpu(CpuStorage::from_vec(data), shape))
    }

    /// A CPU tensor of `dtype` from f32 values, rounded to the dtype.
    pub fn from_f32(values: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        check_len("from_f32", values.len(), shape)?;
        Ok(Tensor::from_f32_values(values, shape, dtype))
    }

    /// A rank-0 f32 tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_f32_values(vec![value], &[], DType::F32)
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f32, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32_values(vec![value; n], shape, dtype)
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_cpu(CpuStorage::zeros(dtype, shape.iter().product()), shape)
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// Values drawn from N(mean, std^2) by `rng`, in row-major order.
    pub fn randn(shape: &[usize], mean: f32, std: f32, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let values = (0..n).map(|_| mean + std * rng.normal()).collect();
        Tensor::from_f32_values(values, shape, dtype)
    }

    /// Values drawn uniformly from [lo, hi) by `rng`, in row-major order.
    pub fn rand_uniform(shape: &[usize], lo: f32, hi: f32, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let values = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_f32_values(values, shape, dtype)
    }
}

// accessors
impl Tensor {
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    pub fn strides(&self) -> &[usize] {
        self.layout.strides()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Size of dim `d`, with a clear error when `d` is out of range.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.layout.check_dim("dim", d)?;
        Ok(self.shape()[d])
    }

    /// True when both tensors are views of the same buffer.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The elements in row-major order, as `T` (which must be the tensor's dtype). A CUDA
    /// tensor is copied to the host first.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                lhs: self.dtype(),
                rhs: T::DTYPE,
            });
        }
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_vec();
        }
        let t = self.contiguous()?;
        let start = t.layout.offset();
        Ok(t.cpu().as_slice::<T>()[start..start + t.numel()].to_vec())
    }

    /// The elements in row-major order, widened to f32 (u32 indices are converted too). A
    /// CUDA tensor is copied to the host first.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_f32_vec();
        }
        Ok(self.contiguous()?.f32_data().into_owned())
    }

    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::InvalidArgument {
                op: "to_scalar",
                msg: format!(
                    "tensor of shape {:?} holds {} elements, not 1",
                    self.shape(),
                    self.numel()
                ),
            });
        }
        Ok(self.to_f32_vec()?[0])
    }
}

// views
impl Tensor {
    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.storage.clone(), layout)
    }

    /// The same elements under another shape of equal size. A view when the tensor is
    /// contiguous or its strides allow one (`Layout::reshape_view`); otherwise the elements are
    /// first copied into row-major order.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        if !self.is_contiguous() {
            // a view when the strides allow it (see `Layout::reshape_view`), else a copy
            if let Some(layout) = self.layout.reshape_view(shape) {
                return Ok(self.with_layout(layout));
            }
        }
        let t = self.contiguous()?;
        let layout = t.layout.reshape(shape)?;
        Ok(t.with_layout(layout))
    }

    /// Reorders the dims: dim `i` of the result is dim `perm[i]` of `self`. Always a view.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(perm)?))
    }

    /// Swaps two dims. Always a view.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        self.layout.check_dim("transpose", d0)?;
        self.layout.check_dim("transpose", d1)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// Swaps the last two dims (the matrix transpose of each matrix in a batch). Always a view.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::InvalidArgument {
                op: "t",
                msg: format!("needs rank >= 2, got shape {:?}", self.shape()),
            });
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Keeps indices `start .. start + len` of dim `dim`. Always a view.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }

    /// Repeats size-1 dims (and adds leading dims) to reach `shape`. Always a view (stride 0).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_to(shape)?))
    }

    /// Inserts a dim of size 1 at position `dim` (0 ..= rank). A view.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim,
                rank: self.rank(),
            });
        }
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// Both tensors broadcast to their common shape (numpy rules), as views.
    pub fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = broadcast_shape(op, a.shape(), b.shape())?;
        Ok((a.broadcast_to(&shape)?, b.broadcast_to(&shape)?))
    }

    /// A row-major copy, or `self` (shared, no copy) when already contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        match self.device() {
            Device::Cpu => {
                let (len, stride) = (self.layout.row_len(), self.layout.row_stride());
                let starts = if self.numel() == 0 {
                    vec![]
                } else {
                    self.layout.row_starts()
                };
                let data = self.cpu().gather_rows(&starts, len, stride);
                Ok(Tensor::from_cpu(data, self.shape()))
            }
            Device::Cuda(_) => crate::cuda::layout::contiguous(self),
        }
    }

    /// A copy converted to `dtype` (rounded to nearest; float to u32 rounds and clamps at 0).
    /// Returns `self` unchanged when the dtype already matches.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if let Device::Cuda(_) = self.device() {
            return crate::cuda::layout::to_dtype(self, dtype);
        }
        let t = self.contiguous()?;
        let values = t.f32_data().into_owned();
        Ok(Tensor::from_f32_values(values, self.shape(), dtype))
    }
}

// access for the CPU kernels
impl Tensor {
    /// The CPU buffer. Every op dispatches on the device before calling this, so a CUDA
    /// tensor never gets here: if one does, an op's dispatch is missing its CUDA arm.
    pub(crate) fn cpu(&self) -> &CpuStorage {
        match self.storage.buffer() {
            Buffer::Cpu(s) => s,
            Buffer::Cuda(_) => panic!("internal: CPU kernel handed a {} tensor", self.device()),
        }
    }

    /// The device buffer of a CUDA tensor.
    pub(crate) fn cuda_storage(&self, op: &'static str) -> Result<&CudaStorage> {
        match self.storage.buffer() {
            Buffer::Cuda(s) => Ok(s),
            Buffer::Cpu(_) => Err(Error::DeviceMismatch {
                op,
                lhs: Device::Cuda(0),
                rhs: Device::Cpu,
            }),
        }
    }

    /// The elements of a *contiguous* tensor as f32 (borrowed when the dtype is f32).
    pub(crate) fn f32_data(&self) -> Cow<'_, [f32]> {
        if !self.is_contiguous() {
            // a safety net: ops make their inputs contiguous first, but a reshape can be a view
            let copy = self
                .contiguous()
                .expect("a CPU tensor has a contiguous copy");
            return Cow::Owned(copy.f32_data().into_owned());
        }
        let start = self.layout.offset();
        self.cpu().f32_range(start..start + self.numel())
    }

    /// The whole buffer as f32, for kernels that walk a strided layout themselves (matmul).
    pub(crate) fn f32_buffer(&self) -> Cow<'_, [f32]> {
        self.cpu().f32_range(0..self.layout.max_extent())
    }
}

// checks shared by the ops
impl Tensor {
    /// Fails unless the tensor holds floats.
    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(Error::UnsupportedDType {
                op,
                got: self.dtype(),
                expected: "f32, bf16 or f16",
            })
        }
    }

    /// Fails unless the tensor holds u32 indices.
    pub(crate) fn check_u32(&self, op: &'static str) -> Result<()> {
        if self.dtype() == DType::U32 {
            Ok(())
        } else {
            Err(Error::UnsupportedDType {
                op,
                got: self.dtype(),
                expected: "u32",
            })
        }
    }

    /// Fails unless both tensors share device and dtype.
    pub(crate) fn check_same_kind(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: other.dtype(),
            });
        }
        Ok(())
    }

    /// Fails unless both tensors have exactly the same shape.
    pub(crate) fn check_same_shape(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.shape() == other.shape() {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().to_vec(),
                rhs: other.shape().to_vec(),
            })
        }
    }

    /// Fails unless the tensor has the given shape.
    pub(crate) fn check_shape(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        if self.shape() == shape {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            })
        }
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let expected: usize = shape.iter().product();
    if len == expected {
        Ok(())
    } else {
        Err(Error::ElementCount {
            op,
            shape: shape.to_vec(),
            expected,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|i| i as f32).collect::<Vec<f32>>(), shape).unwrap()
    }

    #[test]
    fn views_share_storage_and_contiguous_copies_only_when_needed() {
        let x = iota(&[2, 3]);
        let t = x.t().unwrap();
        assert!(t.shares_storage_with(&x));
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        // already contiguous: the same buffer comes back
        assert!(x.contiguous().unwrap().shares_storage_with(&x));
        // a transpose must be copied
        let tc = t.contiguous().unwrap();
        assert!(!tc.shares_storage_with(&x) && tc.is_contiguous());
        // reshape of a contiguous tensor is a view; of a transpose, a copy
        assert!(x.reshape(&[3, 2]).unwrap().shares_storage_with(&x));
        let r = t.reshape(&[6]).unwrap();
        assert!(!r.shares_storage_with(&x));
        assert_eq!(
            r.to_vec::<f32>().unwrap(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
    }

    #[test]
    fn narrow_and_broadcast_are_views_with_the_right_values() {
        let x = iota(&[3, 4]);
        let n = x.narrow(1, 1, 2).unwrap();
        assert!(n.shares_storage_with(&x));
        assert_eq!(
            n.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]
        );
        let row = iota(&[1, 2]).broadcast_to(&[2, 3, 2]).unwrap();
        assert_eq!(row.strides(), &[0, 0, 1]);
        assert_eq!(row.to_vec::<f32>().unwrap(), [0.0, 1.0].repeat(6));
        let col = iota(&[2, 1]).broadcast_to(&[2, 3]).unwrap();
        assert_eq!(
            col.to_vec::<f32>().unwrap(),
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
    }

    #[test]
    fn errors_name_the_op_and_carry_the_shapes() {
        let a = iota(&[2, 3]);
        let b = iota(&[4, 5]);
        let err = a.add(&b).unwrap_err();
        assert_eq!(
            err,
            Error::BroadcastIncompatible {
                op: "add",
                lhs: vec![2, 3],
                rhs: vec![4, 5]
            }
        );
        assert!(err.to_string().contains("add") && err.to_string().contains("[4, 5]"));
        let err = a.matmul(&b).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { op: "matmul", .. }));
        let h = a.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            a.add(&h),
            Err(Error::DTypeMismatch { op: "add", .. })
        ));
        assert!(matches!(
            Tensor::from_vec(vec![1.0f32; 5], &[2, 3]),
            Err(Error::ElementCount {
                expected: 6,
                len: 5,
                ..
            })
        ));
        assert!(matches!(
            a.sum(2, false),
            Err(Error::DimOutOfRange {
                dim: 2,
                rank: 2,
                ..
            })
        ));
        let ids = Tensor::from_vec(vec![1u32], &[1]).unwrap();
        assert!(matches!(
            ids.exp(),
            Err(Error::UnsupportedDType { op: "exp", .. })
        ));
        assert!(a.to_vec::<half::f16>().is_err());
    }

    #[test]
    fn empty_tensors_pass_through_ops() {
        let e = Tensor::zeros(&[0, 3], DType::F32);
        assert_eq!(e.exp().unwrap().shape(), &[0, 3]);
        assert_eq!(
            e.sum(0, false).unwrap().to_vec::<f32>().unwrap(),
            vec![0.0; 3]
        );
        assert_eq!(e.t().unwrap().contiguous().unwrap().shape(), &[3, 0]);
        let w = Tensor::zeros(&[3, 2], DType::F32);
        assert_eq!(e.matmul(&w).unwrap().shape(), &[0, 2]);
    }

    #[test]
    fn bf16_math_rounds_once_at_the_end() {
        // 1 + 2^-9 is not a bf16 value; computed in f32 then rounded it becomes 1
        let a = Tensor::from_f32(vec![1.0], &[1], DType::BF16).unwrap();
        let b = Tensor::from_f32(vec![2f32.powi(-9)], &[1], DType::BF16).unwrap();
        let c = a.add(&b).unwrap();
        assert_eq!(c.dtype(), DType::BF16);
        assert_eq!(c.to_f32_vec().unwrap(), vec![1.0]);
    }
}
