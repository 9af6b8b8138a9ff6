//! The argument checks every launcher makes before it touches the driver: each buffer holds
//! the bytes the launch reads or writes, all buffers live on one device, and the sizes the
//! launcher multiplies do not overflow. A failure is `Error::Launch` with the kernel's name
//! and the buffer's ("x holds 32 bytes, the launch needs 36").
//!
//! The size and device rules are pure functions of numbers (`check_sizes`, `check_devices`),
//! so the CPU tests below exercise them without a GPU; `check_args` applies both to real
//! buffers.

use crate::error::{Error, Result};
use crate::gpu::DeviceBuffer;
use std::sync::Arc;

/// One buffer argument of a launch: its name in the kernel's signature, the buffer, and the
/// bytes the launch reads or writes in it.
pub(crate) struct Arg<'a> {
    pub name: &'static str,
    pub buffer: &'a DeviceBuffer,
    pub bytes: usize,
}

impl<'a> Arg<'a> {
    pub(crate) fn new(name: &'static str, buffer: &'a DeviceBuffer, bytes: usize) -> Arg<'a> {
        Arg {
            name,
            buffer,
            bytes,
        }
    }
}

/// Every buffer must hold what the launch needs and live on the first one's device.
pub(crate) fn check_args(kernel: &str, args: &[Arg]) -> Result<()> {
    let sizes: Vec<_> = args
        .iter()
        .map(|a| (a.name, a.buffer.bytes(), a.bytes))
        .collect();
    check_sizes(kernel, &sizes)?;
    // the address of a buffer's `Gpu` identifies its device
    let devices: Vec<_> = args
        .iter()
        .map(|a| (a.name, Arc::as_ptr(a.buffer.gpu()) as usize))
        .collect();
    check_devices(kernel, &devices)
}

/// Each `(name, held bytes, needed bytes)` must hold what the launch needs.
pub(crate) fn check_sizes(kernel: &str, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, held, needed) in sizes {
        if held < needed {
            let msg = format!("{name} holds {held} bytes, the launch needs {needed}");
            return Err(launch_error(kernel, msg));
        }
    }
    Ok(())
}

/// Each `(name, device id)` must be on the first one's device.
fn check_devices(kernel: &str, devices: &[(&str, usize)]) -> Result<()> {
    let Some(&(first, device)) = devices.first() else {
        return Ok(());
    };
    for &(name, other) in devices {
        if other != device {
            let msg = format!("{name} lives on another device than {first}");
            return Err(launch_error(kernel, msg));
        }
    }
    Ok(())
}

/// The bytes of a buffer of shape `dims` with `elem`-byte elements, or an error when the count
/// overflows a usize (a launch could then index past the buffer it was sized from).
pub(crate) fn bytes_of(kernel: &str, dims: &[usize], elem: usize) -> Result<usize> {
    dims.iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| launch_error(kernel, format!("{dims:?} x {elem} bytes overflows")))
}

/// Checks a [rows, row_len] shape: row_len >= 1, its size in bytes (as f32, the widest dtype)
/// fits in a usize, and at most `max_rows` rows (what the launch's grid can cover). Returns
/// rows * row_len.
pub(crate) fn check_rows(
    kernel: &str,
    rows: usize,
    row_len: usize,
    max_rows: usize,
) -> Result<usize> {
    if row_len == 0 {
        let msg = format!("rows of length 0 ([{rows}, 0]): the row length must be >= 1");
        return Err(launch_error(kernel, msg));
    }
    if rows > max_rows {
        let msg = format!("{rows} rows, more than one launch covers ({max_rows})");
        return Err(launch_error(kernel, msg));
    }
    let len = rows.checked_mul(row_len);
    match len.filter(|n| n.checked_mul(4).is_some()) {
        Some(n) => Ok(n),
        None => {
            let msg = format!("[{rows}, {row_len}] has more elements than a usize counts");
            Err(launch_error(kernel, msg))
        }
    }
}

pub(crate) fn launch_error(kernel: &str, msg: String) -> Error {
    Error::Launch {
        kernel: kernel.into(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_checks_name_the_short_buffer() {
        assert!(check_sizes("k", &[("y", 8, 8), ("x", 9, 8)]).is_ok());
        let msg = check_sizes("k", &[("y", 8, 8), ("x", 7, 8)])
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "k: x holds 7 bytes, the launch needs 8");
        let short = [("x", 64, 64), ("weight", 8, 12)];
        let msg = check_sizes("rmsnorm_fwd_bf16", &short)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "rmsnorm_fwd_bf16: weight holds 8 bytes, the launch needs 12"
        );
    }

    #[test]
    fn buffers_on_another_device_are_refused() {
        assert!(check_devices("k", &[]).is_ok());
        assert!(check_devices("k", &[("x", 1), ("y", 1)]).is_ok());
        let msg = check_devices("k", &[("x", 1), ("y", 2)])
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "k: y lives on another device than x");
    }

    #[test]
    fn byte_counts_catch_overflow() {
        assert_eq!(bytes_of("k", &[2, 3, 5], 4).unwrap(), 120);
        assert_eq!(bytes_of("k", &[], 2).unwrap(), 2);
        let err = bytes_of("k", &[usize::MAX / 2, 3], 1).unwrap_err();
        assert!(matches!(err, Error::Launch { .. }), "{err}");
    }

    #[test]
    fn bad_row_shapes_are_refused_with_the_kernel_name() {
        let msg = |r: Result<usize>| r.unwrap_err().to_string();
        let zero = msg(check_rows("layernorm_fwd_f32", 4, 0, 100));
        assert!(
            zero.starts_with("layernorm_fwd_f32: ") && zero.contains("length 0"),
            "{zero}"
        );
        let huge = msg(check_rows("k", usize::MAX / 2, 3, usize::MAX));
        assert!(huge.contains("more elements"), "{huge}");
        let many = msg(check_rows("k", 101, 1, 100));
        assert!(many.contains("more than one launch covers"), "{many}");
        assert_eq!(check_rows("k", 0, 7, 100).unwrap(), 0);
        assert_eq!(check_rows("k", 3, 7, 100).unwrap(), 21);
    }
}
