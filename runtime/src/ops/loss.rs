//! Fused softmax cross-entropy: the mean loss over the targets, and its gradient on the logits.
//!
//! Fusing avoids materialising the probabilities in the forward pass: the loss of a row is
//! lse - logit[target] with lse = log sum_j exp(logit_j), and the backward recomputes
//! softmax = exp(logit - lse) from the saved lse.

use crate::cpu;
use crate::cpu::math;
use crate::{DType, Device, Error, Result, Tensor};

fn check_inputs(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    logits.check_float(op)?;
    targets.check_u32(op)?;
    if logits.rank() != 2 {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("logits must be [N, V], got {:?}", logits.shape()),
        });
    }
    let (n, v) = (logits.shape()[0], logits.shape()[1]);
    targets.check_shape(op, &[n])?;
    Ok((n, v))
}

/// The targets as usize, with `None` for ignored positions; an out-of-range target is an error.
fn read_targets(
    op: &'static str,
    targets: &Tensor,
    v: usize,
    ignore_index: Option<u32>,
) -> Result<Vec<Option<usize>>> {
    let mut out = Vec::with_capacity(targets.numel());
    for t in targets.to_vec::<u32>()? {
        if Some(t) == ignore_index {
            out.push(None);
        } else if (t as usize) < v {
            out.push(Some(t as usize));
        } else {
            return Err(Error::IndexOutOfRange {
                op,
                index: t as usize,
                size: v,
            });
        }
    }
    Ok(out)
}

/// loss = mean over non-ignored rows i of (lse_i - logits[i, targets[i]]).
/// Returns (loss, lse). If every target is ignored the loss is 0 (and so is its gradient),
/// where PyTorch would return NaN: an empty batch contributes nothing rather than poisoning
/// the run.
///
/// Shapes: logits [N, V], targets [N] (u32) -> loss [] (f32), lse [N] (f32)
pub fn cross_entropy_fwd(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
) -> Result<(Tensor, Tensor)> {
    let (n, v) = check_inputs("cross_entropy", logits, targets)?;
    let tgt = read_targets("cross_entropy", targets, v, ignore_index)?;
    match logits.device() {
        Device::Cpu => {
            let logits = logits.contiguous()?;
            let z = logits.f32_data();
            let lse = cpu::map_rows(n, v, |i| log_sum_exp(&z[i * v..(i + 1) * v]));
            let count = tgt.iter().flatten().count();
            let total: f64 = (0..n)
                .filter_map(|i| tgt[i].map(|t| (lse[i] - z[i * v + t]) as f64))
                .sum();
            let loss = if count == 0 {
                0.0
            } else {
                (total / count as f64) as f32
            };
            Ok((
                Tensor::scalar(loss),
                Tensor::from_f32_values(lse, &[n], DType::F32),
            ))
        }
        Device::Cuda(_) => {
            // `read_targets` above has checked the targets on the host (downloading them, N
            // u32s, when they live on the device): a kernel cannot return an error, and would
            // write a NaN loss term for an out-of-range target instead
            let count = tgt.iter().flatten().count();
            crate::cuda::rows::cross_entropy_fwd(logits, targets, ignore_index, count)
        }
    }
}

/// dlogits[i, j] = dloss / count * (softmax(logits_i)_j - [j == targets[i]]), and zero on
/// ignored rows; count is the number of non-ignored rows (the mean's divisor).
///
/// Shapes: dloss [] (any float), logits [N, V], targets [N] (u32), lse [N] -> dlogits [N, V]
pub fn cross_entropy_bwd(
    dloss: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    ignore_index: Option<u32>,
) -> Result<Tensor> {
    let (n, v) = check_inputs("cross_entropy_bwd", logits, targets)?;
    lse.check_shape("cross_entropy_bwd", &[n])?;
    let tgt = read_targets("cross_entropy_bwd", targets, v, ignore_index)?;
    let g = dloss.to_scalar()?;
    match logits.device() {
        Device::Cpu => {
            let logits = logits.contiguous()?;
            let z = logits.f32_data();
            let lse = lse.to_f32_vec()?;
            let count = tgt.iter().flatten().count().max(1);
            let scale = g / count as f32;
            let mut dz = vec![0.0; n * v];
            cpu::for_each_row(&mut dz, v, |i, row| {
                let Some(t) = tgt[i] else { return };
                for (j, o) in row.iter_mut().enumerate() {
                    *o = scale * math::exp(z[i * v + j] - lse[i]);
                }
                row[t] -= scale;
            });
            Ok(Tensor::from_f32_values(dz, &[n, v], logits.dtype()))
        }
        Device::Cuda(_) => {
            // the targets were checked on the host by `read_targets`, as in the forward
            let count = tgt.iter().flatten().count();
            crate::cuda::rows::cross_entropy_bwd(g, logits, targets, lse, ignore_index, count)
        }
    }
}

/// log sum_j exp(x_j), stable: max + log sum_j exp(x_j - max).
fn log_sum_exp(x: &[f32]) -> f32 {
    let max = math::max(x);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + x.iter().map(|&v| math::exp(v - max)).sum::<f32>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_v_and_ignored_rows_do_not_count() {
        // equal logits over V = 4 classes: every target has probability 1/4, loss ln 4
        let logits = Tensor::zeros(&[2, 4], DType::F32);
        let targets = Tensor::from_vec(vec![3u32, 9], &[2]).unwrap();
        let (loss, _) = cross_entropy_fwd(&logits, &targets, Some(9)).unwrap();
        assert!((loss.to_scalar().unwrap() - 4f32.ln()).abs() < 1e-6);
        // without the ignore index, target 9 is out of range for V = 4
        assert!(matches!(
            cross_entropy_fwd(&logits, &targets, None),
            Err(Error::IndexOutOfRange {
                index: 9,
                size: 4,
                ..
            })
        ));
    }

    #[test]
    fn gradient_is_softmax_minus_one_hot_over_count() {
        // row 0: softmax = 1/4 each, target 3: grad [1/4, 1/4, 1/4, -3/4] / count(1)
        let logits = Tensor::zeros(&[2, 4], DType::F32);
        let targets = Tensor::from_vec(vec![3u32, 7], &[2]).unwrap();
        let (_, lse) = cross_entropy_fwd(&logits, &targets, Some(7)).unwrap();
        let dloss = Tensor::scalar(1.0);
        let dz = cross_entropy_bwd(&dloss, &logits, &targets, &lse, Some(7)).unwrap();
        let dz = dz.to_vec::<f32>().unwrap();
        assert_eq!(&dz[..4], &[0.25, 0.25, 0.25, -0.75]);
        assert_eq!(&dz[4..], &[0.0; 4]);
    }
}
