//! Element types.
//!
//! Tensors hold `f32`, `bf16` or `f16` values (the float types of training), or `u32` indices
//! (token ids, targets, argmax results). The CPU kernels compute in f32: a bf16/f16 tensor is
//! widened to f32 on its way into an op and rounded back on its way out, so every sum is
//! accumulated in f32, as the GPU kernels will do.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    /// Unsigned 32-bit integers: indices, never the operand of float math.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// True for the three float types.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// Machine epsilon (the gap between 1 and the next value), the unit of every tolerance in the
    /// tests: f32 2^-23, bf16 2^-7 (8 significand bits), f16 2^-10.
    pub fn epsilon(self) -> f32 {
        match self {
            DType::F32 => f32::EPSILON,
            DType::BF16 => 2f32.powi(-7),
            DType::F16 => 2f32.powi(-10),
            DType::U32 => 1.0,
        }
    }

    /// Rounds an f32 to the nearest value of this dtype and widens it back (identity for f32).
    pub fn round_f32(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::BF16 => bf16::from_f32(x).to_f32(),
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::U32 => x.round().max(0.0),
        }
    }

    /// The lowercase name used in messages and file formats.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that can be the element of a tensor: `f32`, `bf16`, `f16` or `u32`.
///
/// Used by the typed constructors and accessors (`Tensor::from_vec`, `Tensor::to_vec`).
pub trait Element: Copy + Send + Sync + bytemuck::Pod + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
