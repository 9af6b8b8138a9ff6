//! # odeflow-kernels: the hand-written CUDA kernels
//!
//! odeflow's GPU code, without cuBLAS or cuDNN:
//!
//! - `kernels/cuda/*.cu`: the kernels in CUDA C, one file per op family, each with a header
//!   saying what it computes, how the work is split, and which test holds its reference;
//! - `kernels/ptx/*.ptx`: the PTX NVRTC makes of them (`kernels/ptx/generate.py`), committed,
//!   and checked by CI against a fresh compile and by `ptxas` for sm_90;
//! - `module.rs`: the PTX embedded in the binary behind a `Module` enum;
//! - `gpu.rs`: a device (context, one stream, the modules it loaded, a caching allocator);
//! - `launch.rs`: the launch configurations and CUDA's grid limits, pure arithmetic so the CPU
//!   tests check them;
//! - `check.rs`: the argument checks every launcher makes before it touches the driver;
//! - one file of launchers per `.cu` file (`elementwise.rs`, ..., `flash.rs`, `hypernet.rs`).
//!
//! The crate builds and its CPU tests pass on a machine with no CUDA toolkit and no GPU: the
//! driver is loaded at run time, and `Gpu::new` without one is `Error::NoDriver` ("no CUDA
//! driver found; run on CPU with --device cpu"). The tests that need a GPU compare every kernel
//! with the CPU reference (`tests/tests/gpu_*.rs`, `#[ignore = "needs a CUDA GPU"]`).

mod check;
pub mod elementwise;
pub mod embedding;
mod error;
pub mod flash;
pub mod gemm;
pub mod gpu;
pub mod hypernet;
pub mod launch;
pub mod layout;
pub mod module;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod softmax;
pub mod strided;

pub use error::{Error, Result};
pub use gpu::{DeviceBuffer, Gpu, Mark, MemoryStats};
pub use module::Module;
