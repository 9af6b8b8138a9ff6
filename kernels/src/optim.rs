//! Launcher of `kernels/cuda/optim.cu`: the fused AdamW update, in place.
//!
//! The update reads and overwrites the parameter and its two moments (`&mut DeviceBuffer`s), and
//! only reads the gradient: the one in-place launcher of the crate, so there is no allocating or
//! `_into` form. It uses the elementwise launch configuration (`launch::elementwise_config`,
//! whose grids `launch.rs` tests).

use crate::check::{bytes_of, check_args, launch_error, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::elementwise_config;
use crate::module::Module;
use cudarc::driver::PushKernelArg;

/// The hyperparameters of one AdamW step: the same fields as the runtime's
/// `odeflow_runtime::ops::optim::AdamWStep`.
// A deliberate mirror, not a re-export: the runtime depends on this crate, so it cannot use it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// The 1-based step number, for the bias corrections.
    pub step: u64,
    /// Multiplies the gradient first (global-norm clipping; 1 for none).
    pub grad_scale: f32,
}

impl AdamWStep {
    /// The bias corrections (1 - beta1^step, 1 - beta2^step), computed exactly as the CPU
    /// update does (in f64, then rounded to f32), so the kernel divides by the same numbers.
    pub fn corrections(&self) -> (f32, f32) {
        let correction1 = 1.0 - (self.beta1 as f64).powi(self.step as i32);
        let correction2 = 1.0 - (self.beta2 as f64).powi(self.step as i32);
        (correction1 as f32, correction2 as f32)
    }
}

/// The kernel for a gradient of type `grad`: the weights and moments are always f32.
pub fn adamw_kernel(grad: ElemType) -> &'static str {
    match grad {
        ElemType::F32 => "adamw_fwd_f32",
        ElemType::Bf16 => "adamw_fwd_bf16grad",
    }
}

/// Refuses the steps the update cannot take: step 0 (a bias correction of 0 divides by zero)
/// and a step count past i32 (the CPU's `powi` exponent).
fn check_step(kernel: &str, h: &AdamWStep) -> Result<()> {
    if h.step == 0 || h.step > i32::MAX as u64 {
        let msg = format!("step must be in 1..=2^31-1 (it is 1-based), got {}", h.step);
        return Err(launch_error(kernel, msg));
    }
    Ok(())
}

/// One AdamW step on n elements, in place (runtime/src/ops/optim.rs `adamw_update`):
/// param, m and v are read and overwritten; grad (of type `grad_ty`) is read.
///
/// Shapes: param [n] (f32), m [n] (f32), v [n] (f32), all updated; grad [n] (f32 or bf16)
pub fn adamw_update(
    param: &mut DeviceBuffer,
    m: &mut DeviceBuffer,
    v: &mut DeviceBuffer,
    grad: &DeviceBuffer,
    grad_ty: ElemType,
    h: &AdamWStep,
    n: usize,
) -> Result<()> {
    let name = adamw_kernel(grad_ty);
    check_step(name, h)?;
    let f32_bytes = bytes_of(name, &[n], 4)?;
    let grad_bytes = bytes_of(name, &[n], grad_ty.size())?;
    let args = [
        Arg::new("param", param, f32_bytes),
        Arg::new("m", m, f32_bytes),
        Arg::new("v", v, f32_bytes),
        Arg::new("grad", grad, grad_bytes),
    ];
    check_args(name, &args)?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (c1, c2) = h.corrections();
    let (gpu, n) = (grad.gpu().clone(), n as u64);
    let f = gpu.function(Module::Optim, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(param.slice_mut())
        .arg(m.slice_mut())
        .arg(v.slice_mut());
    launch.arg(grad.slice());
    launch.arg(&h.lr).arg(&h.beta1).arg(&h.beta2).arg(&h.eps);
    launch
        .arg(&h.weight_decay)
        .arg(&c1)
        .arg(&c2)
        .arg(&h.grad_scale);
    launch.arg(&n);
    // The arguments are the kernel's (float* param, float* m, float* v, const G* grad,
    // float lr, beta1, beta2, eps, weight_decay, correction1, correction2, grad_scale, u64 n),
    // in that order; param, m, v hold n f32s and grad n elements of G (checked above); the three
    // updated buffers are distinct `&mut` borrows and grad is a shared one, so none aliases
    // another; the kernel touches indices below n only.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn step(step: u64) -> AdamWStep {
        AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_scale: 1.0,
        }
    }

    #[test]
    fn every_kernel_the_launcher_names_is_in_the_ptx() {
        let entries = Module::Optim.entries();
        let names: Vec<&str> = ElemType::ALL.iter().map(|&ty| adamw_kernel(ty)).collect();
        for name in &names {
            assert!(entries.contains(name), "{name} is not in optim.ptx");
        }
        assert_eq!(entries.len(), names.len(), "optim.ptx holds {entries:?}");
    }

    #[test]
    fn the_bias_corrections_are_rounded_from_f64() {
        // step 1: 1 - 0.9 is 0.1 up to the f32 rounding of beta1 itself
        let (c1, c2) = step(1).corrections();
        assert_eq!(c1, (1.0 - 0.9f32 as f64) as f32);
        assert_eq!(c2, (1.0 - 0.999f32 as f64) as f32);
        // late in training both corrections approach 1
        let (c1, c2) = step(100_000).corrections();
        assert_eq!(c1, 1.0);
        assert!((c2 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn step_zero_and_huge_steps_are_refused() {
        assert!(check_step("k", &step(1)).is_ok());
        assert!(check_step("k", &step(i32::MAX as u64)).is_ok());
        for bad in [0, i32::MAX as u64 + 1] {
            let err = check_step("adamw_fwd_f32", &step(bad)).unwrap_err();
            assert!(matches!(err, Error::Launch { .. }));
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }
}
