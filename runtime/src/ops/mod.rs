//! The ops, each forward beside its backward.
//!
//! Conventions, the same in every file:
//! - A forward takes its inputs and returns its outputs, plus whatever the backward needs that is
//!   cheaper to save than to recompute (LayerNorm's mean and rstd, the log-sum-exp of a loss).
//! - Its backward takes the gradient of the output(s) first (`dy`, `dout`, ...), then the
//!   forward's inputs and saved values in forward order, and returns the gradients of the inputs
//!   in forward order. Gradient tensors are named `d<thing>`.
//! - Backward functions *overwrite*: they return fresh gradient tensors. Accumulation (`+=` into a
//!   parameter's gradient) is the autodiff tape's job.
//! - Float ops accept f32, bf16 and f16 and return the input dtype. The CPU loops compute in f32
//!   (see `crate::dtype`). Saved statistics (mean, rstd, log-sum-exp) are always f32.
//! - Every op checks shapes, dtypes and devices first and returns a `crate::Error` naming itself.
//!
//! Each op dispatches on the device with a `match`; only `Device::Cpu` exists today.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod hypernet;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod shape;
pub mod softmax;

pub use elementwise::{BinaryOp, UnaryOp};
