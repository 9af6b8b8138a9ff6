//! Launchers of `kernels/cuda/elementwise.cu`: activations (forward, backward) and same-shape
//! binary ops, on contiguous buffers of n elements.
//!
//! Each launcher has an allocating form (`gelu_fwd(..) -> y`) and an `_into` form that writes
//! a buffer the caller owns (the tests poison it first, to catch a kernel that skips elements).
//! Outputs are overwritten, never accumulated.

use crate::check::{bytes_of, check_args, Arg};
use crate::error::{cuda, Result};
use crate::gpu::{DeviceBuffer, Gpu};
use crate::launch::elementwise_config;
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// The element types the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    Bf16,
}

impl ElemType {
    pub const ALL: [ElemType; 2] = [ElemType::F32, ElemType::Bf16];

    pub fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::Bf16 => 2,
        }
    }
}

/// The unary activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GPT-2's tanh approximation.
    Gelu,
    /// x sigmoid(x)
    Silu,
}

/// The same-shape binary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
}

/// The kernel of `act` in direction `backward` for `ty`: `{op}_{fwd|bwd}_{dtype}`.
pub fn activation_kernel(act: Activation, backward: bool, ty: ElemType) -> &'static str {
    use {Activation::*, ElemType::*};
    match (act, backward, ty) {
        (Gelu, false, F32) => "gelu_fwd_f32",
        (Gelu, false, Bf16) => "gelu_fwd_bf16",
        (Gelu, true, F32) => "gelu_bwd_f32",
        (Gelu, true, Bf16) => "gelu_bwd_bf16",
        (Silu, false, F32) => "silu_fwd_f32",
        (Silu, false, Bf16) => "silu_fwd_bf16",
        (Silu, true, F32) => "silu_bwd_f32",
        (Silu, true, Bf16) => "silu_bwd_bf16",
    }
}

pub fn binary_kernel(op: Binary, ty: ElemType) -> &'static str {
    use {Binary::*, ElemType::*};
    match (op, ty) {
        (Add, F32) => "add_fwd_f32",
        (Add, Bf16) => "add_fwd_bf16",
        (Sub, F32) => "sub_fwd_f32",
        (Sub, Bf16) => "sub_fwd_bf16",
        (Mul, F32) => "mul_fwd_f32",
        (Mul, Bf16) => "mul_fwd_bf16",
    }
}

pub fn causal_mask_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "causal_mask_fwd_f32",
        ElemType::Bf16 => "causal_mask_fwd_bf16",
    }
}

pub fn affine_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "affine_fwd_f32",
        ElemType::Bf16 => "affine_fwd_bf16",
    }
}

/// y = act(x).
///
/// Shapes: x [n] -> y [n]
pub fn activation_fwd(
    act: Activation,
    ty: ElemType,
    x: &DeviceBuffer,
    n: usize,
) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(n * ty.size())?;
    activation_fwd_into(&mut y, act, ty, x, n)?;
    Ok(y)
}

/// `activation_fwd` into `y`.
///
/// Shapes: y [n] (written), x [n]
pub fn activation_fwd_into(
    y: &mut DeviceBuffer,
    act: Activation,
    ty: ElemType,
    x: &DeviceBuffer,
    n: usize,
) -> Result<()> {
    let name = activation_kernel(act, false, ty);
    let bytes = bytes_of(name, &[n], ty.size())?;
    check_args(name, &[Arg::new("y", y, bytes), Arg::new("x", x, bytes)])?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Elementwise, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(x.slice()).arg(&n);
    // The arguments are the kernel's (T* y, const T* x, u64 n), in that order; both
    // buffers hold at least n elements of T (checked above) and are distinct (one is borrowed
    // mutably); the kernel reads and writes only indices below n.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// dx = dy act'(x).
///
/// Shapes: dy [n], x [n] -> dx [n]
pub fn activation_bwd(
    act: Activation,
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    n: usize,
) -> Result<DeviceBuffer> {
    let mut dx = x.gpu().alloc(n * ty.size())?;
    activation_bwd_into(&mut dx, act, ty, dy, x, n)?;
    Ok(dx)
}

/// `activation_bwd` into `dx` (overwritten).
///
/// Shapes: dx [n] (written), dy [n], x [n]
pub fn activation_bwd_into(
    dx: &mut DeviceBuffer,
    act: Activation,
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    n: usize,
) -> Result<()> {
    let name = activation_kernel(act, true, ty);
    let bytes = bytes_of(name, &[n], ty.size())?;
    let args = [
        Arg::new("dx", dx, bytes),
        Arg::new("dy", dy, bytes),
        Arg::new("x", x, bytes),
    ];
    check_args(name, &args)?;
    launch3(name, elementwise_config(n), dx, dy, x, n)
}

/// y = a op b.
///
/// Shapes: a [n], b [n] -> y [n]
pub fn binary_fwd(
    op: Binary,
    ty: ElemType,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    n: usize,
) -> Result<DeviceBuffer> {
    let mut y = a.gpu().alloc(n * ty.size())?;
    binary_fwd_into(&mut y, op, ty, a, b, n)?;
    Ok(y)
}

/// `binary_fwd` into `y`.
///
/// Shapes: y [n] (written), a [n], b [n]
pub fn binary_fwd_into(
    y: &mut DeviceBuffer,
    op: Binary,
    ty: ElemType,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    n: usize,
) -> Result<()> {
    let name = binary_kernel(op, ty);
    let bytes = bytes_of(name, &[n], ty.size())?;
    let args = [
        Arg::new("y", y, bytes),
        Arg::new("a", a, bytes),
        Arg::new("b", b, bytes),
    ];
    check_args(name, &args)?;
    launch3(name, elementwise_config(n), y, a, b, n)
}

/// y = mul x + add.
///
/// Shapes: x [n] -> y [n]
pub fn affine_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    mul: f32,
    add: f32,
    n: usize,
) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(n * ty.size())?;
    affine_fwd_into(&mut y, ty, x, mul, add, n)?;
    Ok(y)
}

/// `affine_fwd` into `y`.
///
/// Shapes: y [n] (written), x [n]
pub fn affine_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    mul: f32,
    add: f32,
    n: usize,
) -> Result<()> {
    let name = affine_kernel(ty);
    let bytes = bytes_of(name, &[n], ty.size())?;
    check_args(name, &[Arg::new("y", y, bytes), Arg::new("x", x, bytes)])?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Elementwise, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(x.slice())
        .arg(&mul)
        .arg(&add)
        .arg(&n);
    // The arguments are the kernel's (T* y, const T* x, float mul, float add, u64 n);
    // both buffers hold n elements of T (checked) and are distinct; indices stay below n.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// y = value above the diagonal of every trailing [T, T] matrix (key after query), else x.
///
/// Shapes: x [.., T, T] (n elements) -> y [same]
pub fn causal_mask_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    value: f32,
    t: usize,
    n: usize,
) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(n * ty.size())?;
    causal_mask_fwd_into(&mut y, ty, x, value, t, n)?;
    Ok(y)
}

/// `causal_mask_fwd` into `y` (overwritten).
///
/// Shapes: y [.., T, T] (written), x [.., T, T], n elements each
pub fn causal_mask_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    value: f32,
    t: usize,
    n: usize,
) -> Result<()> {
    let name = causal_mask_kernel(ty);
    if t == 0 || !n.is_multiple_of(t * t) {
        let msg = format!("{n} elements are not whole [{t}, {t}] matrices");
        return Err(crate::check::launch_error(name, msg));
    }
    let bytes = n * ty.size();
    check_args(name, &[Arg::new("y", y, bytes), Arg::new("x", x, bytes)])?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (gpu, t, n) = (x.gpu().clone(), t as u64, n as u64);
    let f = gpu.function(Module::Elementwise, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(x.slice())
        .arg(&value)
        .arg(&t)
        .arg(&n);
    // The arguments are the kernel's (T* y, const T* x, float value, u64 t, u64 n);
    // both buffers hold n elements of T (checked) and are distinct; indices stay below n.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// Launches a kernel of signature (T* out, const T* a, const T* b, u64 n).
fn launch3(
    name: &'static str,
    cfg: Option<LaunchConfig>,
    out: &mut DeviceBuffer,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    n: usize,
) -> Result<()> {
    let Some(cfg) = cfg else {
        return Ok(());
    };
    let gpu: Arc<Gpu> = a.gpu().clone();
    let n = n as u64;
    let f = gpu.function(Module::Elementwise, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(out.slice_mut())
        .arg(a.slice())
        .arg(b.slice())
        .arg(&n);
    // Every kernel launched here has the signature (T* out, const T* a, const T* b,
    // u64 n), the callers check each buffer holds n elements of T, `out` is borrowed mutably so
    // it aliases neither input, and the kernel touches indices below n only.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Elementwise.entries();
        let mut names = Vec::new();
        for ty in ElemType::ALL {
            for act in [Activation::Gelu, Activation::Silu] {
                names.push(activation_kernel(act, false, ty));
                names.push(activation_kernel(act, true, ty));
            }
            for op in [Binary::Add, Binary::Sub, Binary::Mul] {
                names.push(binary_kernel(op, ty));
            }
            names.push(affine_kernel(ty));
            names.push(causal_mask_kernel(ty));
        }
        for name in &names {
            assert!(entries.contains(name), "{name} is not in elementwise.ptx");
        }
        // and the PTX holds nothing the launchers cannot reach
        assert_eq!(entries.len(), names.len());
    }
}
