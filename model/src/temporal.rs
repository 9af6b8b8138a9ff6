//! Time-dependent weights: the hypernetwork h(t), the temporal linear and the temporal norm
//! (MODEL.md sections 3 and 4).
//!
//! ```text
//! h(t) = lin2( silu( lin1( phi(t) ) ) )        lin1: (2S+1) -> E, lin2: E -> E
//! W(t) = W0 + sum_k h_k(t) W_k,   b(t) = sum_k h_k(t) B_k
//! LN_t(x) = (1 + h(t) G) * normalise(x) + h(t) Bn
//! ```
//!
//! Every module asks for its weights at all N evaluation times of a solve at once. W0 and the
//! W_k are stored stacked as one [E+1, d_in, d_out] parameter F (row 0 is W0), so that with
//! rows [1, h(t_j)] the weights of every step are a single product:
//!
//! ```text
//! [N, E+1] x [E+1, d_in d_out]  ->  [N, d_in d_out]
//! ```
//!
//! Its backward is dF = Hᵀ dW, a sum over the steps, and dH = dW Fᵀ. The biases and the norms'
//! scale and shift have the same form without the leading 1. All of them go through one op,
//! `Var::generate` (`runtime/src/ops/hypernet.rs`): its N outputs are per-step views of one
//! buffer, written in one pass over F, and its backward takes the N per-step gradients as they
//! are and reads them once for both dF and dH (no join into an [N, P] copy, no second pass).

use crate::init::Init;
use crate::layers::{Linear, Norm, NormKind};
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::{DType, Tensor};

/// The std of every weight matrix at initialisation (MODEL.md section 3).
pub const INIT_STD: f32 = 0.02;
/// The B_k of b(t) start at this times a standard normal, so b(t) is tiny but not zero.
pub const BIAS_INIT_STD: f32 = 1e-4;

/// The small MLP that turns phi(t) into the E coefficients h(t).
pub struct HyperNet {
    /// [2S+1, E], [E]
    lin1: (Param, Param),
    /// [E, E], [E]
    lin2: (Param, Param),
}

impl HyperNet {
    /// Weights N(0, 0.02^2), biases 0, under `{prefix}.hyper.lin{1,2}.{weight,bias}`.
    pub fn new(init: &mut Init, prefix: &str, phi_dim: usize, e: usize) -> HyperNet {
        let mut linear = |name: &str, d_in: usize| {
            let w = init.normal(
                &format!("{prefix}.hyper.{name}.weight"),
                &[d_in, e],
                INIT_STD,
            );
            let b = init.zeros(&format!("{prefix}.hyper.{name}.bias"), &[e]);
            (w, b)
        };
        let lin1 = linear("lin1", phi_dim);
        let lin2 = linear("lin2", e);
        HyperNet { lin1, lin2 }
    }

    /// h(t_j) for each row phi(t_j).
    ///
    /// Shapes: phi [N, 2S+1] -> h [N, E]
    pub fn forward(&self, tape: &Tape, phi: &Var) -> Result<Var> {
        let lift = |(w, b): &(Param, Param)| -> Result<Linear> {
            Ok(Linear {
                w: tape.param_cast(w)?,
                b: Some(tape.param_cast(b)?),
            })
        };
        lift(&self.lin2)?.forward(&lift(&self.lin1)?.forward(phi)?.silu()?)
    }
}

/// A linear map whose weight and bias are functions of t.
pub struct TemporalLinear {
    hyper: HyperNet,
    /// F = [W0; W_1 .. W_E]: [E+1, d_in, d_out]
    weight: Param,
    /// [B_1 .. B_E]: [E, d_out], or none (the Llama variant has no bias)
    bias: Option<Param>,
}

impl TemporalLinear {
    /// W0 ~ N(0, w0_std^2) (0 in the reference), W_k ~ N(0, 0.02^2), B_k ~ 1e-4 N(0, 1)
    /// (MODEL.md section 3; `Config::w0_init_std` says why W0 may start non-zero), under
    /// `{prefix}.weight`, `{prefix}.bias` and `{prefix}.hyper.*`.
    pub fn new(
        init: &mut Init,
        prefix: &str,
        dims: (usize, usize),
        phi_dim: usize,
        e: usize,
        bias: bool,
        w0_std: f32,
    ) -> TemporalLinear {
        let (d_in, d_out) = dims;
        let hyper = HyperNet::new(init, prefix, phi_dim, e);
        let name = format!("{prefix}.weight");
        let w_k = Tensor::randn(
            &[e, d_in, d_out],
            0.0,
            INIT_STD,
            DType::F32,
            &mut init.stream(&name),
        );
        // W0 draws from its own stream, so the W_k are the same whatever its std
        let w0 = if w0_std > 0.0 {
            let stream = &mut init.stream(&format!("{name}.w0"));
            Tensor::randn(&[1, d_in, d_out], 0.0, w0_std, DType::F32, stream)
        } else {
            Tensor::zeros(&[1, d_in, d_out], DType::F32)
        };
        let stacked = Tensor::cat(&[w0, w_k], 0).expect("same trailing dims");
        let weight = init.value(&name, stacked);
        let bias = bias.then(|| init.normal(&format!("{prefix}.bias"), &[e, d_out], BIAS_INIT_STD));
        TemporalLinear {
            hyper,
            weight,
            bias,
        }
    }

    /// W(t_j) and b(t_j) at every time of `phi`, as one product each (see the module docs).
    ///
    /// Shapes: phi [N, 2S+1] -> N x (w [d_in, d_out], b [d_out])
    pub fn at(&self, tape: &Tape, phi: &Var) -> Result<Vec<Linear>> {
        let n = phi.shape()[0];
        let (e1, d_in, d_out) = dims3(&self.weight);
        let h = self.hyper.forward(tape, phi)?; // [N, E]
        let ones = Tensor::ones(&[n, 1], DType::F32).to_device(h.value().device())?;
        let ones = tape.constant_cast(ones)?;
        let rows = Var::cat(&[&ones, &h], 1)?; // [N, E+1]: [1, h(t_j)]
        debug_assert_eq!(rows.shape(), &[n, e1]);
        let ws = Var::generate(&rows, &tape.param_cast(&self.weight)?)?; // N x [d_in, d_out]
        debug_assert_eq!(ws[0].shape(), &[d_in, d_out]);
        let bs = match &self.bias {
            Some(b) => Var::generate(&h, &tape.param_cast(b)?)?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; n],
        };
        let linear = |(w, b)| Linear { w, b };
        Ok(ws.into_iter().zip(bs).map(linear).collect())
    }
}

/// A LayerNorm or RMSNorm whose scale and shift are functions of t.
pub struct TemporalNorm {
    kind: NormKind,
    eps: f32,
    hyper: HyperNet,
    /// G: [E, D]
    gain: Param,
    /// Bn: [E, D]
    shift: Param,
}

impl TemporalNorm {
    /// G = Bn = 0, so the norm starts as the plain affine-free one (MODEL.md section 4), under
    /// `{prefix}.gain`, `{prefix}.shift` and `{prefix}.hyper.*`.
    pub fn new(
        init: &mut Init,
        prefix: &str,
        kind: NormKind,
        eps: f32,
        d: usize,
        phi_dim: usize,
        e: usize,
    ) -> TemporalNorm {
        TemporalNorm {
            kind,
            eps,
            hyper: HyperNet::new(init, prefix, phi_dim, e),
            gain: init.zeros(&format!("{prefix}.gain"), &[e, d]),
            shift: init.zeros(&format!("{prefix}.shift"), &[e, d]),
        }
    }

    /// The norm at every time of `phi`: weight 1 + h(t_j) G and bias h(t_j) Bn.
    ///
    /// Shapes: phi [N, 2S+1] -> N x (weight [D], bias [D])
    pub fn at(&self, tape: &Tape, phi: &Var) -> Result<Vec<Norm>> {
        let h = self.hyper.forward(tape, phi)?; // [N, E]
        let gains = Var::generate(&h, &tape.param_cast(&self.gain)?)?;
        let weights = gains
            .iter()
            .map(|g| g.add_scalar(1.0))
            .collect::<Result<Vec<_>>>()?;
        let biases = Var::generate(&h, &tape.param_cast(&self.shift)?)?;
        let norm = |(w, b)| Norm {
            kind: self.kind,
            eps: self.eps,
            weight: Some(w),
            bias: Some(b),
        };
        Ok(weights.into_iter().zip(biases).map(norm).collect())
    }
}

fn dims3(p: &Param) -> (usize, usize, usize) {
    let s = p.shape();
    (s[0], s[1], s[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::phi_rows;
    use odeflow_runtime::Rng;

    /// A module with every parameter random (W0, G and Bn are zero at initialisation).
    fn randomized(params: Vec<Param>) {
        let mut rng = Rng::new(9);
        for p in params {
            p.set_value(Tensor::randn(&p.shape(), 0.0, 0.5, DType::F32, &mut rng))
                .unwrap();
        }
    }

    /// h(t_j) as f64 rows, from the hypernetwork's own forward.
    fn h_rows(tape: &Tape, hyper: &HyperNet, phi: &Var) -> Vec<Vec<f64>> {
        let h = hyper.forward(tape, phi).unwrap();
        let e = h.shape()[1];
        let v = h.value().to_vec::<f32>().unwrap();
        v.chunks(e)
            .map(|r| r.iter().map(|&x| x as f64).collect())
            .collect()
    }

    #[test]
    fn the_batched_product_equals_w0_plus_sum_of_h_k_w_k_at_each_step() {
        let (e, d_in, d_out, s) = (3, 4, 5, 2);
        let mut init = Init::new(1);
        let lin = TemporalLinear::new(&mut init, "m", (d_in, d_out), 2 * s + 1, e, true, 0.0);
        randomized(init.finish());
        let tape = Tape::new();
        let phi = tape.constant(phi_rows(&[0.25, 0.5, 0.75, 1.0], s));
        let steps = lin.at(&tape, &phi).unwrap();
        let f = lin.weight.value().to_vec::<f32>().unwrap(); // [E+1, d_in, d_out]
        let b = lin.bias.as_ref().unwrap().value().to_vec::<f32>().unwrap(); // [E, d_out]
        for (j, h) in h_rows(&tape, &lin.hyper, &phi).iter().enumerate() {
            let w = steps[j].w.value().to_vec::<f32>().unwrap();
            for (i, &got) in w.iter().enumerate() {
                // W(t_j) = W0 + sum_k h_k(t_j) W_k
                let want = f[i] as f64
                    + (0..e)
                        .map(|k| h[k] * f[(k + 1) * d_in * d_out + i] as f64)
                        .sum::<f64>();
                assert!((got as f64 - want).abs() < 1e-5, "W step {j} entry {i}");
            }
            let bias = steps[j]
                .b
                .as_ref()
                .unwrap()
                .value()
                .to_vec::<f32>()
                .unwrap();
            for (o, &got) in bias.iter().enumerate() {
                // b(t_j) = sum_k h_k(t_j) B_k
                let want: f64 = (0..e).map(|k| h[k] * b[k * d_out + o] as f64).sum();
                assert!((got as f64 - want).abs() < 1e-5, "b step {j} entry {o}");
            }
        }
    }

    #[test]
    fn the_norm_coefficients_are_one_plus_h_g_and_h_bn() {
        let (e, d, s) = (2, 3, 2);
        let mut init = Init::new(2);
        let norm = TemporalNorm::new(&mut init, "n", NormKind::Layer, 1e-5, d, 2 * s + 1, e);
        randomized(init.finish());
        let tape = Tape::new();
        let phi = tape.constant(phi_rows(&[0.5, 1.0], s));
        let steps = norm.at(&tape, &phi).unwrap();
        let g = norm.gain.value().to_vec::<f32>().unwrap();
        let bn = norm.shift.value().to_vec::<f32>().unwrap();
        for (j, h) in h_rows(&tape, &norm.hyper, &phi).iter().enumerate() {
            let w = steps[j]
                .weight
                .as_ref()
                .unwrap()
                .value()
                .to_vec::<f32>()
                .unwrap();
            let b = steps[j]
                .bias
                .as_ref()
                .unwrap()
                .value()
                .to_vec::<f32>()
                .unwrap();
            for c in 0..d {
                let hg: f64 = (0..e).map(|k| h[k] * g[k * d + c] as f64).sum();
                let hb: f64 = (0..e).map(|k| h[k] * bn[k * d + c] as f64).sum();
                assert!((w[c] as f64 - (1.0 + hg)).abs() < 1e-5);
                assert!((b[c] as f64 - hb).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn initialisation_follows_model_md() {
        let mut init = Init::new(3);
        let lin = TemporalLinear::new(&mut init, "m", (8, 16), 9, 4, true, 0.0);
        let f = lin.weight.value().to_vec::<f32>().unwrap();
        let (w0, w_k) = f.split_at(8 * 16);
        assert!(w0.iter().all(|&x| x == 0.0), "W0 starts at 0");
        let std = (w_k.iter().map(|x| x * x).sum::<f32>() / w_k.len() as f32).sqrt();
        assert!((std - INIT_STD).abs() < 0.003, "W_k std {std}");
        let b = lin.bias.unwrap().value().to_vec::<f32>().unwrap();
        assert!(b.iter().all(|x| x.abs() < 6.0 * BIAS_INIT_STD) && b.iter().any(|&x| x != 0.0));
    }
}
