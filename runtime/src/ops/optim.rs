//! The optimiser's arithmetic: one fused AdamW update per parameter, and the squared norm that
//! global-norm clipping needs. Fused because the update reads and writes each of the parameter,
//! its gradient and its two moments once; written as separate tensor ops it would make eight
//! passes over memory and allocate five temporaries per parameter per step.
//!
//! AdamW (Loshchilov and Hutter), with the gradient first multiplied by `grad_scale` (the
//! clipping factor) and decoupled weight decay, as PyTorch's `torch.optim.AdamW` computes it:
//!
//! ```text
//! g  = grad_scale * grad
//! m  = beta1 m + (1 - beta1) g
//! v  = beta2 v + (1 - beta2) g^2
//! p  = p - lr (weight_decay p + (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps))
//! ```

use crate::{DType, Device, Error, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise a task, small enough to balance.
const CHUNK: usize = 1 << 14;

/// The hyperparameters of one AdamW step.
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

fn check(param: &Tensor, others: [&Tensor; 3]) -> Result<()> {
    for (name, t) in ["grad", "m", "v"].iter().zip(others) {
        param.check_same_shape("adamw", t)?;
        if name != &"grad" && t.dtype() != DType::F32 {
            return Err(Error::InvalidArgument {
                op: "adamw",
                msg: format!("the moment {name} must be f32, got {}", t.dtype()),
            });
        }
    }
    if param.dtype() != DType::F32 {
        return Err(Error::InvalidArgument {
            op: "adamw",
            msg: format!("master weights must be f32, got {}", param.dtype()),
        });
    }
    Ok(())
}

/// One AdamW step; returns the new (param, m, v).
///
/// Shapes: param, grad, m, v [..] (all the same; param, m, v f32) -> param', m', v' [..] (f32)
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    check(param, [grad, m, v])?;
    match param.device() {
        Device::Cpu => {
            let [p, g, m, v] = [param, grad, m, v].map(|t| t.contiguous());
            let (p, g, m, v) = (p?, g?, m?, v?);
            let (ps, gs, ms, vs) = (p.f32_data(), g.f32_data(), m.f32_data(), v.f32_data());
            let n = ps.len();
            let (mut p2, mut m2, mut v2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let correction1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
            let correction2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
            let (c1, c2) = (correction1 as f32, correction2 as f32);
            // zipped chunks and zipped iterators (no indexing): the loop body vectorises
            let outs = p2.par_chunks_mut(CHUNK).zip(m2.par_chunks_mut(CHUNK));
            let outs = outs.zip(v2.par_chunks_mut(CHUNK));
            let ins = ps.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK));
            let ins = ins.zip(ms.par_chunks(CHUNK).zip(vs.par_chunks(CHUNK)));
            outs.zip(ins)
                .for_each(|(((po, mo), vo), ((pi, gi), (mi, vi)))| {
                    let outs = po.iter_mut().zip(mo.iter_mut()).zip(vo.iter_mut());
                    let ins = pi.iter().zip(gi).zip(mi.iter().zip(vi));
                    for (((po, mo), vo), ((&p, &g), (&m, &v))) in outs.zip(ins) {
                        let g = h.grad_scale * g;
                        let m = h.beta1 * m + (1.0 - h.beta1) * g;
                        let v = h.beta2 * v + (1.0 - h.beta2) * g * g;
                        let step = (m / c1) / ((v / c2).sqrt() + h.eps);
                        *po = p - h.lr * (h.weight_decay * p + step);
                        (*mo, *vo) = (m, v);
                    }
                });
            let shape = param.shape();
            let f32s = |x| Tensor::from_f32_values(x, shape, DType::F32);
            Ok((f32s(p2), f32s(m2), f32s(v2)))
        }
        Device::Cuda(_) => crate::cuda::optim::adamw_update(param, grad, m, v, h),
    }
}

/// The sum of squares of every element, in f64, summed in a fixed order (deterministic
/// whatever the thread count).
///
/// Shapes: x [..] -> f64
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    x.check_float("sum_squares")?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let xs = x.f32_data();
            let partial: Vec<f64> = xs
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&a| (a as f64) * (a as f64)).sum())
                .collect();
            Ok(partial.iter().sum())
        }
        Device::Cuda(_) => crate::cuda::optim::sum_squares(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The update of one element in f64, straight from the formula in the module docs.
    fn reference(p: f64, g: f64, m: f64, v: f64, h: &AdamWStep) -> (f64, f64, f64) {
        let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
        let g = h.grad_scale as f64 * g;
        let m = b1 * m + (1.0 - b1) * g;
        let v = b2 * v + (1.0 - b2) * g * g;
        let mhat = m / (1.0 - b1.powi(h.step as i32));
        let vhat = v / (1.0 - b2.powi(h.step as i32));
        let step = mhat / (vhat.sqrt() + h.eps as f64);
        (p - h.lr as f64 * (h.weight_decay as f64 * p + step), m, v)
    }

    #[test]
    fn three_steps_match_the_f64_formula() {
        let n = 3 * CHUNK + 17; // several chunks and a ragged tail
        let mut rng = Rng::new(1);
        let mut p = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
        let (mut m, mut v) = (
            Tensor::zeros(&[n], DType::F32),
            Tensor::zeros(&[n], DType::F32),
        );
        let mut want: Vec<(f64, f64, f64)> = p
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&x| (x as f64, 0.0, 0.0))
            .collect();
        for step in 1..=3 {
            let h = AdamWStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                grad_scale: 0.5,
            };
            let g = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
            let gs = g.to_vec::<f32>().unwrap();
            (p, m, v) = adamw_update(&p, &g, &m, &v, &h).unwrap();
            for (w, &g) in want.iter_mut().zip(&gs) {
                *w = reference(w.0, g as f64, w.1, w.2, &h);
            }
        }
        let got = p.to_vec::<f32>().unwrap();
        let moments = m.to_vec::<f32>().unwrap();
        for (i, (w, &g)) in want.iter().zip(&got).enumerate() {
            assert!((g as f64 - w.0).abs() < 1e-5, "param {i}: {g} vs {}", w.0);
            assert!((moments[i] as f64 - w.1).abs() < 1e-6, "m {i}");
        }
    }

    #[test]
    fn sum_squares_of_a_known_vector_and_bad_inputs() {
        let x = Tensor::from_vec(vec![3.0f32, -4.0, 12.0], &[3]).unwrap();
        assert_eq!(sum_squares(&x).unwrap(), 169.0);
        let p = Tensor::zeros(&[2], DType::F32);
        let h = AdamWStep {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        let wrong = Tensor::zeros(&[3], DType::F32);
        assert!(adamw_update(&p, &wrong, &p, &p, &h).is_err());
        let bf16 = Tensor::zeros(&[2], DType::BF16);
        let e = adamw_update(&p, &p, &bf16, &p, &h).unwrap_err().to_string();
        assert!(e.contains("must be f32"), "{e}");
    }
}
