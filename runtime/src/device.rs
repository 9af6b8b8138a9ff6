//! Where a tensor's storage lives.

use std::fmt;

/// The device that holds a tensor's storage.
///
/// Only the CPU exists today. The CUDA backend (a later issue) adds `Cuda(ordinal)`; every op
/// already dispatches with a `match` on the device so that adding the variant makes the compiler
/// point at each place that needs a GPU path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
