//! The runtime's error type.
//!
//! Every variant names the op that failed and carries the data needed to see why (shapes, dtypes,
//! dims). Ops return `Result`; nothing on a path a user can reach panics.

use crate::{DType, Device};

/// Errors raised by tensor construction and ops.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not match")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },

    #[error("{op}: shapes {lhs:?} and {rhs:?} cannot be broadcast together")]
    BroadcastIncompatible {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },

    #[error("{op}: dtypes {lhs} and {rhs} do not match; cast one with `to_dtype` first")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },

    #[error("{op}: dtype {got} is not supported here (expected {expected})")]
    UnsupportedDType {
        op: &'static str,
        got: DType,
        expected: &'static str,
    },

    /// The op has no kernel for this device yet.
    #[error(
        "{op} is not implemented on {device} yet; move the tensor to the CPU with \
         `to_device(Device::Cpu)` (the CUDA backend is being built op by op)"
    )]
    Unsupported { op: &'static str, device: Device },

    /// The CUDA side failed: no driver, a driver call, a launch.
    #[error(transparent)]
    Cuda(#[from] odeflow_kernels::Error),

    #[error("{op}: tensors live on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },

    #[error("{op}: dim {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: usize,
        rank: usize,
    },

    #[error("{op}: {len} elements given for shape {shape:?}, which holds {expected}")]
    ElementCount {
        op: &'static str,
        shape: Vec<usize>,
        expected: usize,
        len: usize,
    },

    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: usize,
        size: usize,
    },

    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
}

/// The runtime's result type.
pub type Result<T> = std::result::Result<T, Error>;
