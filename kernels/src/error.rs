//! The kernels' error type: no driver, a failed CUDA call (with the error's name), bad input.

use cudarc::driver::DriverError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// `libcuda` could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver found; run on CPU with --device cpu")]
    NoDriver,

    /// A driver call failed. `name` is CUDA's own (`CUDA_ERROR_OUT_OF_MEMORY`, ...).
    #[error("CUDA call {call} failed: {name} ({message})")]
    Cuda {
        call: &'static str,
        name: String,
        message: String,
    },

    /// A launcher was handed buffers that do not fit the kernel.
    #[error("{kernel}: {msg}")]
    Launch { kernel: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a driver error with the call that returned it.
pub(crate) fn cuda(call: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::Cuda {
        call,
        name: format!("{:?}", e.0),
        message: e
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "no description".into()),
    }
}
