//! LayerNorm and RMSNorm over the last axis, with optional per-feature weight and bias.
//!
//! The forwards save the per-row statistics (f32) that the backwards need, so the backward never
//! recomputes a reduction it could read. The model's time-dependent norms (MODEL.md sections 4
//! and 6) pass the weight (1 + h(t) G) and bias h(t) Bn computed for the current t.

use crate::cpu;
use crate::{DType, Device, Error, Result, Tensor};

/// Checks x [.., D] and an optional parameter of shape [D] against each other.
fn check_param(op: &'static str, x: &Tensor, p: Option<&Tensor>) -> Result<()> {
    x.check_float(op)?;
    if let Some(p) = p {
        x.check_same_kind(op, p)?;
        p.check_shape(op, &[x.layout().row_len()])?;
    }
    Ok(())
}

/// A [D] parameter as f32, or `default` repeated when absent.
fn param_or(p: Option<&Tensor>, d: usize, default: f32) -> Result<Vec<f32>> {
    match p {
        Some(p) => p.to_f32_vec(),
        None => Ok(vec![default; d]),
    }
}

/// The shape of the per-row statistics: x's shape without the last dim.
fn stats_shape(x: &Tensor) -> Vec<usize> {
    x.shape()[..x.rank().saturating_sub(1)].to_vec()
}

fn check_rank(op: &'static str, x: &Tensor) -> Result<()> {
    if x.rank() == 0 {
        return Err(Error::InvalidArgument {
            op,
            msg: "needs a tensor of rank >= 1 (normalised over the last dim)".into(),
        });
    }
    Ok(())
}

/// LayerNorm: xhat = (x - mean) * rstd with rstd = 1 / sqrt(var + eps) (biased variance),
/// y = xhat * weight + bias. Returns (y, mean, rstd).
///
/// Shapes: x [.., D], weight [D], bias [D] -> y [.., D], mean [..] (f32), rstd [..] (f32)
pub fn layer_norm_fwd(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_rank("layer_norm", x)?;
    check_param("layer_norm", x, weight)?;
    check_param("layer_norm", x, bias)?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let xs = x.f32_data();
            let d = x.layout().row_len();
            let (w, b) = (param_or(weight, d, 1.0)?, param_or(bias, d, 0.0)?);
            let rows = xs.len() / d.max(1);
            let row = |r: usize| &xs[r * d..(r + 1) * d];
            let mean = cpu::map_rows(rows, d, |r| cpu::math::sum(row(r)) / d as f32);
            let rstd = cpu::map_rows(rows, d, |r| {
                let var = row(r).iter().map(|v| (v - mean[r]).powi(2)).sum::<f32>() / d as f32;
                1.0 / (var + eps).sqrt()
            });
            let mut y = vec![0.0; xs.len()];
            cpu::for_each_row(&mut y, d, |r, out| {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = (row(r)[j] - mean[r]) * rstd[r] * w[j] + b[j];
                }
            });
            let stats = stats_shape(&x);
            Ok((
                Tensor::from_f32_values(y, x.shape(), x.dtype()),
                Tensor::from_f32_values(mean, &stats, DType::F32),
                Tensor::from_f32_values(rstd, &stats, DType::F32),
            ))
        }
        Device::Cuda(_) => crate::cuda::rows::layer_norm_fwd(x, weight, bias, eps),
    }
}

/// LayerNorm backward. With g = dy * weight (the gradient at xhat):
///   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))     (the two means run over the row)
///   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy.
/// The gradients of absent parameters are returned as `None`.
///
/// Shapes: dy [.., D], x [.., D], weight [D], mean [..], rstd [..] -> dx [.., D], dweight [D],
/// dbias [D]
pub fn layer_norm_bwd(
    dy: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    dy.check_same_kind("layer_norm_bwd", x)?;
    dy.check_same_shape("layer_norm_bwd", x)?;
    check_rank("layer_norm_bwd", x)?;
    check_param("layer_norm_bwd", x, weight)?;
    mean.check_shape("layer_norm_bwd", &stats_shape(x))?;
    rstd.check_shape("layer_norm_bwd", &stats_shape(x))?;
    match x.device() {
        Device::Cpu => {
            let (dy, x) = (dy.contiguous()?, x.contiguous()?);
            let (mean, rstd) = (mean.to_f32_vec()?, rstd.to_f32_vec()?);
            let norm = Normalised::new(&x, &mean, &rstd);
            let grads = norm_bwd(&dy, &norm, weight, true)?;
            let dbias = has_bias.then(|| grads.dbias.clone());
            finish_grads(grads, &x, weight.is_some(), dbias)
        }
        Device::Cuda(_) => crate::cuda::rows::layer_norm_bwd(dy, x, weight, has_bias, mean, rstd),
    }
}

/// RMSNorm: rstd = 1 / sqrt(mean(x^2) + eps), y = x * rstd * weight. Returns (y, rstd).
///
/// Shapes: x [.., D], weight [D] -> y [.., D], rstd [..] (f32)
pub fn rms_norm_fwd(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
    check_rank("rms_norm", x)?;
    check_param("rms_norm", x, weight)?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let xs = x.f32_data();
            let d = x.layout().row_len();
            let w = param_or(weight, d, 1.0)?;
            let rows = xs.len() / d.max(1);
            let row = |r: usize| &xs[r * d..(r + 1) * d];
            let rstd = cpu::map_rows(rows, d, |r| {
                let ms = row(r).iter().map(|v| v * v).sum::<f32>() / d as f32;
                1.0 / (ms + eps).sqrt()
            });
            let mut y = vec![0.0; xs.len()];
            cpu::for_each_row(&mut y, d, |r, out| {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = row(r)[j] * rstd[r] * w[j];
                }
            });
            Ok((
                Tensor::from_f32_values(y, x.shape(), x.dtype()),
                Tensor::from_f32_values(rstd, &stats_shape(&x), DType::F32),
            ))
        }
        Device::Cuda(_) => crate::cuda::rows::rms_norm_fwd(x, weight, eps),
    }
}

/// RMSNorm backward. With xhat = x * rstd and g = dy * weight:
///   dx = rstd * (g - xhat * mean(g * xhat)),   dweight = sum over rows of dy * xhat.
/// (LayerNorm's formula without the mean-centring term.)
///
/// Shapes: dy [.., D], x [.., D], weight [D], rstd [..] -> dx [.., D], dweight [D]
pub fn rms_norm_bwd(
    dy: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    rstd: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    dy.check_same_kind("rms_norm_bwd", x)?;
    dy.check_same_shape("rms_norm_bwd", x)?;
    check_rank("rms_norm_bwd", x)?;
    check_param("rms_norm_bwd", x, weight)?;
    rstd.check_shape("rms_norm_bwd", &stats_shape(x))?;
    match x.device() {
        Device::Cpu => {
            let (dy, x) = (dy.contiguous()?, x.contiguous()?);
            let rstd = rstd.to_f32_vec()?;
            let zeros = vec![0.0; rstd.len()];
            let norm = Normalised::new(&x, &zeros, &rstd);
            let grads = norm_bwd(&dy, &norm, weight, false)?;
            let (dx, dweight, _) = finish_grads(grads, &x, weight.is_some(), None)?;
            Ok((dx, dweight))
        }
        Device::Cuda(_) => crate::cuda::rows::rms_norm_bwd(dy, x, weight, rstd),
    }
}

/// x with its saved statistics: xhat = (x - mean) * rstd, row by row.
struct Normalised<'a> {
    xs: std::borrow::Cow<'a, [f32]>,
    mean: &'a [f32],
    rstd: &'a [f32],
    d: usize,
}

impl<'a> Normalised<'a> {
    fn new(x: &'a Tensor, mean: &'a [f32], rstd: &'a [f32]) -> Self {
        let d = x.layout().row_len();
        Normalised {
            xs: x.f32_data(),
            mean,
            rstd,
            d,
        }
    }

    fn xhat(&self, r: usize, j: usize) -> f32 {
        (self.xs[r * self.d + j] - self.mean[r]) * self.rstd[r]
    }

    fn rows(&self) -> usize {
        self.rstd.len()
    }
}

/// The f32 gradients shared by both norms, before they become tensors.
struct NormGrads {
    dx: Vec<f32>,
    dweight: Vec<f32>,
    dbias: Vec<f32>,
}

/// The shared backward: `centred` adds LayerNorm's -mean(g) term.
fn norm_bwd(
    dy: &Tensor,
    n: &Normalised,
    weight: Option<&Tensor>,
    centred: bool,
) -> Result<NormGrads> {
    let d = n.d;
    let w = param_or(weight, d, 1.0)?;
    let dys = dy.f32_data();
    let mut dx = vec![0.0; dys.len()];
    cpu::for_each_row(&mut dx, d, |r, out| {
        let g = |j: usize| dys[r * d + j] * w[j];
        let mean_g = if centred {
            (0..d).map(g).sum::<f32>() / d as f32
        } else {
            0.0
        };
        let mean_gx = (0..d).map(|j| g(j) * n.xhat(r, j)).sum::<f32>() / d as f32;
        for (j, o) in out.iter_mut().enumerate() {
            *o = n.rstd[r] * (g(j) - mean_g - n.xhat(r, j) * mean_gx);
        }
    });
    let dweight = cpu::sum_over_rows(n.rows(), d, |r, acc| {
        acc.iter_mut()
            .enumerate()
            .for_each(|(j, a)| *a += dys[r * d + j] * n.xhat(r, j));
    });
    let dbias = cpu::sum_over_rows(n.rows(), d, |r, acc| {
        acc.iter_mut()
            .zip(&dys[r * d..(r + 1) * d])
            .for_each(|(a, g)| *a += g);
    });
    Ok(NormGrads { dx, dweight, dbias })
}

/// Wraps the f32 gradients as tensors of x's dtype.
fn finish_grads(
    g: NormGrads,
    x: &Tensor,
    has_weight: bool,
    dbias: Option<Vec<f32>>,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let d = [x.layout().row_len()];
    let dx = Tensor::from_f32_values(g.dx, x.shape(), x.dtype());
    let dweight = has_weight.then(|| Tensor::from_f32_values(g.dweight, &d, x.dtype()));
    let dbias = dbias.map(|b| Tensor::from_f32_values(b, &d, x.dtype()));
    Ok((dx, dweight, dbias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_backward_by_hand() {
        // dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy (no weight). Take eps = 0,
        // x = [0, 1, 2]: mean 1, var 2/3, rstd = sqrt(3/2), xhat = [-1, 0, 1] * rstd.
        // dy = [0, 1, 0]: mean(g) = 1/3, mean(g xhat) = 0, so dx = rstd * [-1/3, 2/3, -1/3].
        let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0], &[1, 3]).unwrap();
        let (_, mean, rstd) = layer_norm_fwd(&x, None, None, 0.0).unwrap();
        let dy = Tensor::from_vec(vec![0.0f32, 1.0, 0.0], &[1, 3]).unwrap();
        let (dx, dw, db) = layer_norm_bwd(&dy, &x, None, false, &mean, &rstd).unwrap();
        let r = 1.5f32.sqrt();
        let want = [-r / 3.0, 2.0 * r / 3.0, -r / 3.0];
        let got = dx.to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(dw.is_none() && db.is_none());
        assert_eq!(mean.to_vec::<f32>().unwrap(), vec![1.0]);
    }

    #[test]
    fn norm_rejects_a_weight_of_the_wrong_size() {
        let x = Tensor::zeros(&[2, 4], DType::F32);
        let w = Tensor::ones(&[3], DType::F32);
        assert!(matches!(
            layer_norm_fwd(&x, Some(&w), None, 1e-5),
            Err(Error::ShapeMismatch {
                op: "layer_norm",
                ..
            })
        ));
        assert!(rms_norm_fwd(&Tensor::scalar(1.0), None, 1e-6).is_err());
    }
}
