//! # odeflow-runtime: the tensor and its ops
//!
//! A `Tensor` is a shared buffer (`storage`) plus a `Layout` (shape, strides, offset) that says
//! which elements of the buffer it sees; views change only the layout. Ops live in `ops/`, each
//! forward beside its backward (the autodiff tape calls both). The CPU backend (`cpu/`) holds the
//! cache-blocked SIMD matmul and the parallel loops the ops share. `reference` holds slow f64
//! implementations that the tests and benches compare against. Read `docs/01-tensors.md` for the
//! tour.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod memory;
pub mod ops;
pub mod reference;
pub mod rng;
pub mod storage;
pub mod tensor;
pub mod testing;

pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layout::Layout;
pub use rng::Rng;
pub use tensor::Tensor;
