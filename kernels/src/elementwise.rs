//! Launchers of `kernels/cuda/elementwise.cu`: activations (forward, backward) and same-shape
//! binary ops, on contiguous buffers of n elements.
//!
//! The linear combination y = x + sum_s alpha_s k_s (`lincomb_fwd`) takes its terms by value in
//! the launch's parameters, at most `LINCOMB_MAX_TERMS` per launch; more are chained.
//!
//! Each launcher has an allocating form (`gelu_fwd(..) -> y`) and an `_into` form that writes
//! a buffer the caller owns (the tests poison it first, to catch a kernel that skips elements).
//! Outputs are overwritten, never accumulated.

use crate::check::{bytes_of, check_args, Arg};
use crate::error::{cuda, Result};
use crate::gpu::{DeviceBuffer, Gpu};
use crate::launch::elementwise_config;
use crate::module::Module;
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
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

pub fn lincomb_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "lincomb_fwd_f32",
        ElemType::Bf16 => "lincomb_fwd_bf16",
    }
}

/// The most terms one launch of `lincomb_fwd` takes (`LINCOMB_MAX_TERMS` in elementwise.cu):
/// twice what the solvers use (4, for RK4), and 104 bytes of parameters.
pub const LINCOMB_MAX_TERMS: usize = 8;

/// Elements per 16-byte vector, the unit of `lincomb_fwd`'s work split: 4 f32 or 8 bf16.
pub fn lincomb_vector(ty: ElemType) -> usize {
    16 / ty.size()
}

/// The terms of one launch as the kernel takes them by value: the device addresses of the
/// k_s, their alphas, and how many there are. The field order and types are elementwise.cu's
/// `struct LincombTerms` (104 bytes with the trailing padding both sides add).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct LincombTerms {
    k: [u64; LINCOMB_MAX_TERMS],
    alpha: [f32; LINCOMB_MAX_TERMS],
    count: u32,
}

// `LincombTerms` is a #[repr(C)] struct of plain integers and floats whose layout is the CUDA
// struct's (same field order and types, natural alignment), so its bytes are a valid kernel
// parameter.
// SAFETY: sound for the reasons just given.
unsafe impl DeviceRepr for LincombTerms {}

/// y = x + sum_s alpha_s k_s, in one pass for up to `LINCOMB_MAX_TERMS` terms.
///
/// Shapes: x [n], each k_s [n] -> y [n]
pub fn lincomb_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    terms: &[(f32, &DeviceBuffer)],
    n: usize,
) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(n * ty.size())?;
    lincomb_fwd_into(&mut y, ty, x, terms, n)?;
    Ok(y)
}

/// `lincomb_fwd` into `y` (overwritten). Past `LINCOMB_MAX_TERMS` terms it chains: the first
/// 8 into a scratch buffer, then the rest added onto it, one launch per 8 terms (in f32 the
/// same bits as one pass; in bf16 one more rounding per launch).
///
/// Shapes: y [n] (written), x [n], each k_s [n]
pub fn lincomb_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    terms: &[(f32, &DeviceBuffer)],
    n: usize,
) -> Result<()> {
    let name = lincomb_kernel(ty);
    let bytes = bytes_of(name, &[n], ty.size())?;
    let mut args = vec![Arg::new("y", y, bytes), Arg::new("x", x, bytes)];
    args.extend(terms.iter().map(|(_, k)| Arg::new("k", k, bytes)));
    check_args(name, &args)?;
    if terms.len() > LINCOMB_MAX_TERMS {
        let (first, rest) = terms.split_at(LINCOMB_MAX_TERMS);
        let partial = lincomb_fwd(ty, x, first, n)?;
        return lincomb_fwd_into(y, ty, &partial, rest, n);
    }
    let Some(cfg) = elementwise_config(n.div_ceil(lincomb_vector(ty))) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Elementwise, name)?;
    // the terms' addresses; each guard waits for the buffer's pending writes and records this
    // launch's read when dropped (after the launch is queued)
    let stream = gpu.stream();
    let (ptrs, _reads): (Vec<u64>, Vec<_>) = terms
        .iter()
        .map(|(_, k)| k.slice().device_ptr(stream))
        .unzip();
    let mut table = LincombTerms {
        k: [0; LINCOMB_MAX_TERMS],
        alpha: [0.0; LINCOMB_MAX_TERMS],
        count: terms.len() as u32,
    };
    for (s, (&(alpha, _), ptr)) in terms.iter().zip(ptrs).enumerate() {
        (table.k[s], table.alpha[s]) = (ptr, alpha);
    }
    let mut launch = stream.launch_builder(&f);
    launch.arg(y.slice_mut()).arg(x.slice()).arg(&table).arg(&n);
    // The arguments are the kernel's (T* y, const T* x, LincombTerms terms, u64 n). y and x
    // hold n elements of T, and so does each of the `count` <= 8 buffers whose addresses the
    // table holds (checked above; they outlive the launch, and the stream orders their later
    // reuse after it); the kernel reads no table entry past `count`, and touches indices below
    // n only. y is borrowed mutably, so it aliases neither x nor any k_s.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
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
            names.push(lincomb_kernel(ty));
        }
        for name in &names {
            assert!(entries.contains(name), "{name} is not in elementwise.ptx");
        }
        // and the PTX holds nothing the launchers cannot reach
        assert_eq!(entries.len(), names.len());
    }

    #[test]
    fn the_lincomb_terms_are_laid_out_as_elementwise_cu_declares_them() {
        // elementwise.cu's struct: 8 addresses, 8 floats, a count, padded to 8 bytes
        let source = include_str!("../cuda/elementwise.cu");
        let define = format!("#define LINCOMB_MAX_TERMS {LINCOMB_MAX_TERMS}");
        assert!(source.contains(&define), "elementwise.cu lacks {define:?}");
        assert_eq!(std::mem::size_of::<LincombTerms>(), 104);
        assert_eq!(std::mem::align_of::<LincombTerms>(), 8);
        // and the PTX's parameter is that size
        let ptx = Module::Elementwise.ptx();
        assert!(ptx.contains(".param .align 8 .b8 lincomb_fwd_f32_param_2[104]"));
        assert_eq!(
            [
                lincomb_vector(ElemType::F32),
                lincomb_vector(ElemType::Bf16)
            ],
            [4, 8]
        );
    }
}
