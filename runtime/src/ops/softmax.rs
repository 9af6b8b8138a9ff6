//! Softmax and log-softmax over the last axis.
//!
//! Both subtract the row maximum before exponentiating, so exp never overflows; a row whose
//! entries are all -inf (a fully masked row) has no distribution: softmax returns zeros there
//! rather than NaN (the convention of flash attention), and log-softmax returns -inf.

use crate::cpu;
use crate::cpu::math;
use crate::{Device, Result, Tensor};

/// Softmax or log-softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

/// One row of softmax or log-softmax, written into `out`.
fn softmax_row(kind: Kind, x: &[f32], out: &mut [f32]) {
    let max = math::max(x);
    if max == f32::NEG_INFINITY {
        let fill = if kind == Kind::Softmax {
            0.0
        } else {
            f32::NEG_INFINITY
        };
        out.fill(fill);
        return;
    }
    // the exponentials go into `out` first: one exp per element, in a loop that vectorises
    out.iter_mut()
        .zip(x)
        .for_each(|(o, &v)| *o = math::exp(v - max));
    let sum = math::sum(out);
    match kind {
        Kind::Softmax => {
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        }
        Kind::LogSoftmax => {
            let log_sum = sum.ln();
            out.iter_mut()
                .zip(x)
                .for_each(|(o, &v)| *o = v - max - log_sum);
        }
    }
}

fn forward(kind: Kind, op: &'static str, x: &Tensor) -> Result<Tensor> {
    x.check_float(op)?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let xs = x.f32_data();
            let n = x.layout().row_len();
            let mut y = vec![0.0; xs.len()];
            cpu::for_each_row(&mut y, n, |r, row| {
                softmax_row(kind, &xs[r * n..(r + 1) * n], row)
            });
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => match kind {
            Kind::Softmax => crate::cuda::rows::softmax_fwd(x),
            // no kernel writes log-probabilities yet (softmax.cu's rows end as probabilities)
            Kind::LogSoftmax => Err(crate::cuda::unsupported(op, x.device())),
        },
    }
}

/// y_i = exp(x_i) / sum_j exp(x_j) along the last axis.
///
/// Shapes: x [.., N] -> y [.., N]
pub fn softmax_fwd(x: &Tensor) -> Result<Tensor> {
    forward(Kind::Softmax, "softmax", x)
}

/// dx_i = y_i (dy_i - sum_j dy_j y_j), from dy_i/dx_k = y_i (delta_ik - y_k).
///
/// Shapes: dy [.., N], y [.., N] (the forward's output) -> dx [.., N]
pub fn softmax_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    backward(Kind::Softmax, "softmax_bwd", dy, y)
}

/// y_i = x_i - log sum_j exp(x_j) along the last axis.
///
/// Shapes: x [.., N] -> y [.., N]
pub fn log_softmax_fwd(x: &Tensor) -> Result<Tensor> {
    forward(Kind::LogSoftmax, "log_softmax", x)
}

/// dx_i = dy_i - exp(y_i) sum_j dy_j, from dy_i/dx_k = delta_ik - softmax_k.
///
/// Shapes: dy [.., N], y [.., N] (the forward's output) -> dx [.., N]
pub fn log_softmax_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    backward(Kind::LogSoftmax, "log_softmax_bwd", dy, y)
}

fn backward(kind: Kind, op: &'static str, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    dy.check_same_kind(op, y)?;
    dy.check_same_shape(op, y)?;
    match y.device() {
        Device::Cpu => {
            let (dy, y) = (dy.contiguous()?, y.contiguous()?);
            let (dys, ys) = (dy.f32_data(), y.f32_data());
            let n = y.layout().row_len();
            let mut dx = vec![0.0; ys.len()];
            cpu::for_each_row(&mut dx, n, |r, row| {
                let (g, p) = (&dys[r * n..(r + 1) * n], &ys[r * n..(r + 1) * n]);
                match kind {
                    Kind::Softmax => {
                        let dot = math::dot(g, p);
                        row.iter_mut().zip(g.iter().zip(p)).for_each(|(o, (g, p))| {
                            *o = p * (g - dot);
                        });
                    }
                    Kind::LogSoftmax => {
                        let total = math::sum(g);
                        row.iter_mut().zip(g.iter().zip(p)).for_each(|(o, (g, p))| {
                            *o = g - math::exp(*p) * total;
                        });
                    }
                }
            });
            Ok(Tensor::from_f32_values(dx, y.shape(), y.dtype()))
        }
        Device::Cuda(_) => match kind {
            Kind::Softmax => crate::cuda::rows::softmax_bwd(dy, y),
            Kind::LogSoftmax => Err(crate::cuda::unsupported(op, y.device())),
        },
    }
}

impl Tensor {
    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        softmax_fwd(self)
    }

    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        log_softmax_fwd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn softmax_with_minus_infinity_ignores_masked_entries() {
        // [0, -inf, 0]: the masked entry gets exactly 0, the others split evenly
        let x = Tensor::from_vec(vec![0.0f32, f32::NEG_INFINITY, 0.0], &[1, 3]).unwrap();
        assert_eq!(
            x.softmax().unwrap().to_vec::<f32>().unwrap(),
            vec![0.5, 0.0, 0.5]
        );
        // an all -inf row: zeros, not NaN; log-softmax -inf
        let x = Tensor::full(&[2], f32::NEG_INFINITY, DType::F32);
        assert_eq!(
            x.softmax().unwrap().to_vec::<f32>().unwrap(),
            vec![0.0, 0.0]
        );
        let ls = x.log_softmax().unwrap().to_vec::<f32>().unwrap();
        assert!(ls.iter().all(|v| *v == f32::NEG_INFINITY));
    }

    #[test]
    fn softmax_of_huge_logits_does_not_overflow() {
        // exp(1000) overflows f32; subtracting the max makes it exp(0) and exp(-1)
        let x = Tensor::from_vec(vec![1000.0f32, 999.0], &[2]).unwrap();
        let y = x.softmax().unwrap().to_vec::<f32>().unwrap();
        let e = (-1.0f32).exp();
        assert!((y[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (y[1] - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn softmax_backward_by_hand() {
        // y = softmax([0, ln 3]) = [1/4, 3/4]; dy = [1, 0]
        // dx = y * (dy - <dy, y>) = [1/4 (1 - 1/4), 3/4 (0 - 1/4)] = [3/16, -3/16]
        let x = Tensor::from_vec(vec![0.0f32, 3f32.ln()], &[2]).unwrap();
        let y = x.softmax().unwrap();
        let dy = Tensor::from_vec(vec![1.0f32, 0.0], &[2]).unwrap();
        let dx = softmax_bwd(&dy, &y).unwrap().to_vec::<f32>().unwrap();
        assert!((dx[0] - 0.1875).abs() < 1e-6 && (dx[1] + 0.1875).abs() < 1e-6);
    }
}
