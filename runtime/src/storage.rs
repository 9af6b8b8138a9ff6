//! The buffers behind tensors.
//!
//! A `Storage` is a flat, typed buffer on one device. Tensors hold it behind an `Arc`, so cloning
//! a tensor or taking a view is cheap and shares the buffer. A buffer is never mutated once a
//! tensor holds it: every op writes a fresh buffer, so a tensor behaves like a value and a view
//! can never see its parent change under it. Each storage is charged to the memory meter
//! (`crate::memory`) for as long as it lives.

use crate::cuda::CudaStorage;
use crate::memory::Charge;
use crate::{DType, Device, Element};
use half::{bf16, f16};
use std::borrow::Cow;

/// A typed buffer in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
}

/// A buffer on some device.
#[derive(Debug)]
pub enum Buffer {
    Cpu(CpuStorage),
    /// Device memory; its bytes are metered by its device's allocator (`Gpu::memory`), not by
    /// the CPU's storage meter.
    Cuda(CudaStorage),
}

/// A buffer plus its entry on the memory meter: the bytes are refunded when it is dropped.
#[derive(Debug)]
pub struct Storage {
    buffer: Buffer,
    _charge: Charge,
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wraps a typed vector.
    pub fn from_vec<T: Element>(data: Vec<T>) -> Self {
        use bytemuck::allocation::cast_vec;
        match T::DTYPE {
            DType::F32 => CpuStorage::F32(cast_vec(data)),
            DType::BF16 => CpuStorage::BF16(cast_vec(data)),
            DType::F16 => CpuStorage::F16(cast_vec(data)),
            DType::U32 => CpuStorage::U32(cast_vec(data)),
        }
    }

    /// The buffer as a slice of `T`. Internal invariant: `T` is the buffer's dtype (callers
    /// match on `dtype()` first), so a mismatch is a bug and panics.
    pub fn as_slice<T: Element>(&self) -> &[T] {
        assert_eq!(
            T::DTYPE,
            self.dtype(),
            "CpuStorage::as_slice with the wrong type"
        );
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::U32(v) => bytemuck::cast_slice(v),
        }
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::U32 => CpuStorage::U32(vec![0; len]),
        }
    }

    /// Rounds f32 values into a buffer of `dtype` (no copy for f32; u32 rounds to nearest).
    pub fn from_f32(values: Vec<f32>, dtype: DType) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(values),
            DType::BF16 => CpuStorage::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuStorage::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::U32 => CpuStorage::U32(values.iter().map(|&x| x.round() as u32).collect()),
        }
    }

    /// The elements `range` widened to f32: borrowed for f32 buffers, converted otherwise.
    pub fn f32_range(&self, range: std::ops::Range<usize>) -> Cow<'_, [f32]> {
        match self {
            CpuStorage::F32(v) => Cow::Borrowed(&v[range]),
            CpuStorage::BF16(v) => Cow::Owned(v[range].iter().map(|x| x.to_f32()).collect()),
            CpuStorage::F16(v) => Cow::Owned(v[range].iter().map(|x| x.to_f32()).collect()),
            CpuStorage::U32(v) => Cow::Owned(v[range].iter().map(|&x| x as f32).collect()),
        }
    }

    /// Copies rows into a new buffer of the same dtype: `len` elements from each of `starts`,
    /// `stride` apart (a unit-stride row is one slice copy).
    pub fn gather_rows(&self, starts: &[usize], len: usize, stride: usize) -> Self {
        fn rows<T: Copy>(v: &[T], starts: &[usize], len: usize, stride: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(starts.len() * len);
            for &s in starts {
                if stride == 1 {
                    out.extend_from_slice(&v[s..s + len]);
                } else {
                    out.extend((0..len).map(|j| v[s + j * stride]));
                }
            }
            out
        }
        match self {
            CpuStorage::F32(v) => CpuStorage::F32(rows(v, starts, len, stride)),
            CpuStorage::BF16(v) => CpuStorage::BF16(rows(v, starts, len, stride)),
            CpuStorage::F16(v) => CpuStorage::F16(rows(v, starts, len, stride)),
            CpuStorage::U32(v) => CpuStorage::U32(rows(v, starts, len, stride)),
        }
    }

    /// Size of the buffer in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }
}

impl Buffer {
    pub fn device(&self) -> Device {
        match self {
            Buffer::Cpu(_) => Device::Cpu,
            Buffer::Cuda(s) => Device::Cuda(s.ordinal()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Buffer::Cpu(s) => s.dtype(),
            Buffer::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buffer::Cpu(s) => s.len(),
            Buffer::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }
}

impl Storage {
    /// Takes ownership of `buffer` and charges its bytes to the memory meter.
    pub fn new(buffer: Buffer) -> Storage {
        let host_bytes = match &buffer {
            Buffer::Cpu(_) => buffer.size_in_bytes(),
            Buffer::Cuda(_) => 0,
        };
        let charge = Charge::new(host_bytes);
        Storage {
            buffer,
            _charge: charge,
        }
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    pub fn device(&self) -> Device {
        self.buffer.device()
    }

    pub fn dtype(&self) -> DType {
        self.buffer.dtype()
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }
}
