//! Launcher of `kernels/cuda/strided.cu`: one strided view copied into another (a contiguous
//! buffer for `contiguous`, a slice of the output for `cat`).

use crate::check::{bytes_of, check_args, launch_error, Arg};
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::elementwise_config;
use crate::module::Module;
use cudarc::driver::{DeviceRepr, PushKernelArg};

/// The largest rank the kernel's `Strided` holds (`MAX_RANK` in strided.cu).
pub const MAX_RANK: usize = 8;

/// A view of a buffer, as the kernel takes it by value: element idx sits at
/// offset + sum_d idx_d strides[d]. The field order and types are strided.cu's `struct Strided`
/// (144 bytes with the trailing padding both sides add).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    shape: [u64; MAX_RANK],
    strides: [u64; MAX_RANK],
    offset: u64,
    rank: u32,
}

// `Strided` is a #[repr(C)] struct of plain integers whose layout is the CUDA struct's
// (same field order and types, natural alignment), so its bytes are a valid kernel parameter.
// SAFETY: sound for the reasons just given.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The view of `shape` with `strides` (in elements) from `offset`; refused past MAX_RANK.
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Result<Strided> {
        let kernel = "strided_copy";
        if shape.len() != strides.len() {
            let msg = format!("{} dims but {} strides", shape.len(), strides.len());
            return Err(launch_error(kernel, msg));
        }
        if shape.len() > MAX_RANK {
            let msg = format!("rank {} is past the kernel's {MAX_RANK}", shape.len());
            return Err(launch_error(kernel, msg));
        }
        let mut view = Strided {
            shape: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            offset: offset as u64,
            rank: shape.len() as u32,
        };
        for (d, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            view.shape[d] = n as u64;
            view.strides[d] = s as u64;
        }
        Ok(view)
    }

    /// The row-major (contiguous) view of `shape` from `offset`.
    pub fn contiguous(shape: &[usize], offset: usize) -> Result<Strided> {
        let mut strides = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        Strided::new(shape, &strides, offset)
    }

    /// Whether two views have the same shape.
    pub fn same_shape(&self, other: &Strided) -> bool {
        self.rank == other.rank && self.shape == other.shape
    }

    /// Whether the view repeats an element (a dim of more than one element with stride 0).
    pub fn repeats(&self) -> bool {
        let dims = self
            .shape
            .iter()
            .zip(&self.strides)
            .take(self.rank as usize);
        dims.into_iter().any(|(&n, &s)| n > 1 && s == 0)
    }

    /// Elements of the view.
    pub fn numel(&self) -> usize {
        self.shape[..self.rank as usize].iter().product::<u64>() as usize
    }

    /// One past the furthest element the view reads (0 for an empty view).
    pub fn extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        let dims = self
            .shape
            .iter()
            .zip(&self.strides)
            .take(self.rank as usize);
        let last: u64 = dims.map(|(&n, &s)| (n - 1) * s).sum();
        (self.offset + last + 1) as usize
    }
}

/// The kernel for elements of `elem_bytes` bytes (4: f32, u32; 2: bf16, f16).
pub fn strided_copy_kernel(elem_bytes: usize) -> Option<&'static str> {
    match elem_bytes {
        4 => Some("strided_copy_fwd_b32"),
        2 => Some("strided_copy_fwd_b16"),
        _ => None,
    }
}

/// The view `view` of `x` as a new contiguous buffer.
///
/// Shapes: x [any buffer holding the view] -> y [view's numel] (elements of elem_bytes)
pub fn strided_copy(x: &DeviceBuffer, view: &Strided, elem_bytes: usize) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(view.numel() * elem_bytes)?;
    let shape: Vec<usize> = view.shape[..view.rank as usize]
        .iter()
        .map(|&n| n as usize)
        .collect();
    let dense = Strided::contiguous(&shape, 0)?;
    strided_copy_into(&mut y, &dense, x, view, elem_bytes)?;
    Ok(y)
}

/// Copies the view `src` of `x` into the view `dst` of `y` (those elements overwritten, the
/// rest of `y` untouched).
///
/// Shapes: y [any buffer holding dst] (written where dst reaches), x [any buffer holding src];
/// dst and src of one shape
pub fn strided_copy_into(
    y: &mut DeviceBuffer,
    dst: &Strided,
    x: &DeviceBuffer,
    src: &Strided,
    elem_bytes: usize,
) -> Result<()> {
    let name = strided_copy_kernel(elem_bytes).ok_or_else(|| {
        launch_error(
            "strided_copy",
            format!("no kernel for {elem_bytes}-byte elements"),
        )
    })?;
    if !dst.same_shape(src) || dst.repeats() {
        let msg = "the destination view must have the source's shape and no repeats".into();
        return Err(launch_error(name, msg));
    }
    let n = src.numel();
    let out_bytes = bytes_of(name, &[dst.extent()], elem_bytes)?;
    let in_bytes = bytes_of(name, &[src.extent()], elem_bytes)?;
    check_args(
        name,
        &[Arg::new("y", y, out_bytes), Arg::new("x", x, in_bytes)],
    )?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Strided, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(x.slice())
        .arg(dst)
        .arg(src)
        .arg(&n);
    // The arguments are the kernel's (T* y, const T* x, Strided dst, Strided src,
    // u64 n) with T of elem_bytes bytes; y holds every element dst writes and x every element
    // src reads (their extents, checked above); dst repeats no element, so no two threads
    // write one place; y is borrowed mutably, so it aliases nothing.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_knows_its_size_and_reach() {
        // [3, 4] transposed out of a [4, 3] buffer: strides (1, 3), reaching element 11
        let v = Strided::new(&[3, 4], &[1, 3], 0).unwrap();
        assert_eq!((v.numel(), v.extent()), (12, 12));
        // a broadcast row: stride 0 over 5 rows of a 7-element buffer, from offset 2
        let v = Strided::new(&[5, 4], &[0, 1], 2).unwrap();
        assert_eq!((v.numel(), v.extent()), (20, 6));
        assert_eq!(Strided::new(&[0, 4], &[4, 1], 0).unwrap().extent(), 0);
        assert!(Strided::new(&[1; 9], &[1; 9], 0).is_err());
        assert!(Strided::new(&[2], &[1, 1], 0).is_err());
        assert_eq!(std::mem::size_of::<Strided>(), 144);
        let c = Strided::contiguous(&[2, 3, 4], 5).unwrap();
        assert_eq!((c.numel(), c.extent()), (24, 29));
        assert!(c.same_shape(&Strided::new(&[2, 3, 4], &[1, 2, 6], 0).unwrap()));
        assert!(Strided::new(&[5, 4], &[0, 1], 2).unwrap().repeats());
        assert!(!Strided::new(&[1, 4], &[0, 1], 2).unwrap().repeats());
    }

    #[test]
    fn every_kernel_the_launcher_names_is_in_the_ptx() {
        let entries = Module::Strided.entries();
        let names: Vec<&str> = [4, 2]
            .iter()
            .filter_map(|&b| strided_copy_kernel(b))
            .collect();
        assert_eq!(entries.len(), names.len());
        for name in names {
            assert!(entries.contains(&name), "{name}");
        }
        assert!(strided_copy_kernel(8).is_none());
    }
}
