//! The recorded ops and their backward rules: one enum, one `match`.
//!
//! Each variant holds what its backward needs (usually the forward's inputs, or the statistics
//! the runtime's forward saved). Each rule calls the runtime's backward companion of the forward
//! that `Var` ran (`odeflow_runtime::ops`), and its comment gives the derivative it computes.
//! Rules return one gradient per recorded input, in the forward's input order; the tape
//! accumulates them. A rule computes the gradients of every input, even a constant one the tape
//! will throw away (the runtime's backward functions return them all): that waste is small next
//! to clarity here, and the ops that matter most (matmul, norms) rarely take constants.

use crate::checkpoint::{self, Checkpointed};
use crate::custom::{self, CustomBackward};
use crate::{Param, Result};
use odeflow_runtime::ops::reduce::{max_bwd, sum_mean_bwd, ReduceOp};
use odeflow_runtime::ops::{
    attention, elementwise, embedding, hypernet, loss, matmul, norm, shape, softmax, BinaryOp,
    UnaryOp,
};
use odeflow_runtime::{DType, Tensor};

pub(crate) enum Op {
    /// An input whose gradient `backward` returns. Leaves have no inputs; the walk keeps their
    /// gradient itself.
    Leaf,
    /// A parameter: the walk adds its gradient into the parameter's buffer.
    Param(Param),
    Unary {
        op: UnaryOp,
        x: Tensor,
        y: Tensor,
    },
    Binary {
        op: BinaryOp,
        a: Tensor,
        b: Tensor,
    },
    Affine {
        mul: f32,
    },
    Lincomb {
        alphas: Vec<f32>,
    },
    Matmul {
        a: Tensor,
        b: Tensor,
    },
    SumMean {
        op: ReduceOp,
        x_shape: Vec<usize>,
        dim: usize,
    },
    Max {
        x: Tensor,
        dim: usize,
    },
    SumAll {
        x_shape: Vec<usize>,
    },
    Softmax {
        y: Tensor,
    },
    LogSoftmax {
        y: Tensor,
    },
    LayerNorm {
        x: Tensor,
        weight: Option<Tensor>,
        has_bias: bool,
        mean: Tensor,
        rstd: Tensor,
    },
    RmsNorm {
        x: Tensor,
        weight: Option<Tensor>,
        rstd: Tensor,
    },
    Embedding {
        ids: Tensor,
        vocab: usize,
    },
    CrossEntropy {
        logits: Tensor,
        targets: Tensor,
        lse: Tensor,
        ignore_index: Option<u32>,
    },
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        probs: Tensor,
    },
    FlashAttention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
    },
    CausalMask,
    Reshape {
        x_shape: Vec<usize>,
    },
    Permute {
        perm: Vec<usize>,
    },
    Narrow {
        x_shape: Vec<usize>,
        dim: usize,
        start: usize,
    },
    Broadcast {
        x_shape: Vec<usize>,
    },
    Contiguous,
    ToDType {
        from: DType,
    },
    Cat {
        sizes: Vec<usize>,
        dim: usize,
    },
    /// The hypernetwork's weight generation: one output per step (`ops::hypernet`).
    Generate {
        h: Tensor,
        f: Tensor,
    },
    /// The pieces of `split` (several outputs, like `Generate`).
    Split {
        dim: usize,
        shapes: Vec<Vec<usize>>,
        dtype: DType,
    },
    Checkpoint(Checkpointed),
    /// A node whose backward rule is its caller's closure (`Tape::custom`).
    Custom {
        name: &'static str,
        n_inputs: usize,
        backward: Box<CustomBackward>,
    },
}

impl Op {
    /// The gradients of the inputs, given those of the outputs (`None` where no gradient reached
    /// an output; at least one is `Some`).
    pub(crate) fn backward(self, dys: Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> {
        // split: pieces that received no gradient contribute zeros
        //   pieces_i = x[.., offset_i .. offset_i + N_i, ..]  ->  dx = cat_i(dpieces_i)
        if let Op::Split { dim, shapes, dtype } = &self {
            let dys: Vec<Tensor> = dys
                .into_iter()
                .zip(shapes)
                .map(|(dy, shape)| dy.unwrap_or_else(|| Tensor::zeros(shape, *dtype)))
                .collect();
            return Ok(vec![Some(shape::split_bwd(&dys, *dim)?)]);
        }
        // generate: w_i = sum_k h[i, k] f[k] -> dh, df from the steps' gradients, unjoined
        //   (a step whose weights reached no loss contributes zeros)
        if let Op::Generate { h, f } = &self {
            let (dh, df) = hypernet::generate_bwd(&step_grads(dys, f)?, h, f)?;
            return Ok(vec![Some(dh), Some(df)]);
        }
        let dy = dys
            .into_iter()
            .next()
            .flatten()
            .expect("a single-output op has a gradient");
        let dy = &dy;
        let grads = match self {
            Op::Leaf | Op::Param(_) | Op::Split { .. } | Op::Generate { .. } => Vec::new(),
            // y = f(x)  ->  dx = dy * f'(x)   (f' may read x or y: exp' = y, tanh' = 1 - y^2)
            Op::Unary { op, x, y } => vec![elementwise::unary_bwd(op, dy, &x, &y)?],
            // c = a (op) b, broadcast  ->  da = sum_to(dc * dc/da, a), db = sum_to(dc * dc/db, b)
            Op::Binary { op, a, b } => {
                let (da, db) = elementwise::binary_bwd(op, dy, &a, &b)?;
                vec![da, db]
            }
            // y = mul * x + add  ->  dx = mul * dy
            Op::Affine { mul } => vec![elementwise::affine_bwd(dy, mul)?],
            // y = x + sum_s alpha_s k_s  ->  dx = dy, dk_s = alpha_s dy
            Op::Lincomb { alphas } => std::iter::once(Ok(dy.clone()))
                .chain(
                    alphas
                        .iter()
                        .map(|&alpha| elementwise::affine_bwd(dy, alpha)),
                )
                .collect::<odeflow_runtime::Result<Vec<_>>>()?,
            // c = a b  ->  da = dc bᵀ, db = aᵀ dc   (summed over broadcast batch dims)
            Op::Matmul { a, b } => {
                let (da, db) = matmul::matmul_bwd(dy, &a, &b)?;
                vec![da, db]
            }
            // y = sum_dim x (or mean)  ->  dx = dy spread along dim (divided by N for mean)
            Op::SumMean { op, x_shape, dim } => vec![sum_mean_bwd(op, dy, &x_shape, dim)?],
            // y = max_dim x  ->  dx = dy at the (first) argmax, 0 elsewhere
            Op::Max { x, dim } => vec![max_bwd(dy, &x, dim)?],
            // y = sum of every x  ->  dx = dy everywhere
            Op::SumAll { x_shape } => {
                let ones = vec![1; x_shape.len()];
                vec![dy.reshape(&ones)?.broadcast_to(&x_shape)?.contiguous()?]
            }
            // y = softmax(x)  ->  dx = y * (dy - sum(dy * y))
            Op::Softmax { y } => vec![softmax::softmax_bwd(dy, &y)?],
            // y = x - logsumexp(x)  ->  dx = dy - exp(y) * sum(dy)
            Op::LogSoftmax { y } => vec![softmax::log_softmax_bwd(dy, &y)?],
            // y = xhat * w + b, xhat = (x - mean) * rstd
            //   ->  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w,
            //       dw = sum_rows(dy * xhat), db = sum_rows(dy)
            Op::LayerNorm {
                x,
                weight,
                has_bias,
                mean,
                rstd,
            } => {
                let (dx, dw, db) =
                    norm::layer_norm_bwd(dy, &x, weight.as_ref(), has_bias, &mean, &rstd)?;
                [Some(dx), dw, db].into_iter().flatten().collect()
            }
            // y = x * rstd * w  ->  dx = rstd * (g - xhat * mean(g * xhat)),
            //                      dw = sum_rows(dy * xhat)
            Op::RmsNorm { x, weight, rstd } => {
                let (dx, dw) = norm::rms_norm_bwd(dy, &x, weight.as_ref(), &rstd)?;
                [Some(dx), dw].into_iter().flatten().collect()
            }
            // y[i] = weight[ids[i]]  ->  dweight[v] = sum of dy[i] over the i with ids[i] = v
            Op::Embedding { ids, vocab } => vec![embedding::embedding_bwd(dy, &ids, vocab)?],
            // loss = mean_i (lse_i - z[i, t_i])  ->  dz[i] = dloss / count * (softmax(z_i) - e_t_i)
            Op::CrossEntropy {
                logits,
                targets,
                lse,
                ignore_index,
            } => vec![loss::cross_entropy_bwd(
                dy,
                &logits,
                &targets,
                &lse,
                ignore_index,
            )?],
            // out = softmax(mask(q kᵀ / sqrt(hd))) v  ->  see `attention_bwd` for dq, dk, dv
            Op::Attention { q, k, v, probs } => {
                let (dq, dk, dv) = attention::attention_bwd(dy, &q, &k, &v, &probs)?;
                vec![dq, dk, dv]
            }
            // the same rule, with P recomputed per tile from q, k and lse: `flash_attention_bwd`
            Op::FlashAttention { q, k, v, out, lse } => {
                let (dq, dk, dv) = attention::flash_attention_bwd(dy, &q, &k, &v, &out, &lse)?;
                vec![dq, dk, dv]
            }
            // y = x off the mask, a constant on it  ->  dx = dy off the mask, 0 on it
            Op::CausalMask => vec![attention::causal_mask_fill(dy, 0.0)?],
            // views move no numbers, so their gradients move dy back into the input's layout:
            // reshape -> reshape back; permute -> inverse permute
            Op::Reshape { x_shape } => vec![shape::reshape_bwd(dy, &x_shape)?],
            Op::Permute { perm } => vec![shape::permute_bwd(dy, &perm)?],
            // narrow -> dy placed at `start` in zeros (the rows the view skipped get nothing)
            Op::Narrow {
                x_shape,
                dim,
                start,
            } => vec![shape::narrow_bwd(dy, &x_shape, dim, start)?],
            // broadcast -> dy summed over the dims that were repeated
            Op::Broadcast { x_shape } => vec![shape::broadcast_bwd(dy, &x_shape)?],
            // a copy: dx = dy
            Op::Contiguous => vec![dy.clone()],
            // a cast: dx = dy, cast back to the input's dtype
            Op::ToDType { from } => vec![dy.to_dtype(from)?],
            // y = cat_i(x_i)  ->  dx_i = the slice of dy that x_i filled
            Op::Cat { sizes, dim } => shape::cat_bwd(dy, &sizes, dim)?,
            // the segment is recomputed under recording, then backpropagated
            Op::Checkpoint(segment) => return checkpoint::backward(segment, dy.clone()),
            // whatever the caller's rule says
            Op::Custom {
                name,
                n_inputs,
                backward,
            } => return custom::backward(name, n_inputs, backward, dy.clone()),
        };
        Ok(grads.into_iter().map(Some).collect())
    }
}

/// The N steps' gradients of a `Generate` node, zeros for a step whose weights reached no loss.
///
/// Shapes: dys N x (None or [..]), f [K, ..] -> N x [..]
pub(crate) fn step_grads(dys: Vec<Option<Tensor>>, f: &Tensor) -> Result<Vec<Tensor>> {
    let zeros = || Tensor::zeros(&f.shape()[1..], f.dtype()).to_device(f.device());
    let dws = dys.into_iter().map(|dw| dw.map_or_else(zeros, Ok));
    Ok(dws.collect::<odeflow_runtime::Result<Vec<Tensor>>>()?)
}
