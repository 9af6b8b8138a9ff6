//! `Var`: a tensor plus its place on a tape, and the differentiable ops on it.
//!
//! Every op here has the same three lines: check nothing (the runtime checks), run the runtime's
//! forward, record the `Op` that holds what the backward needs. The gradients live in `op.rs`.
//! Ops return a constant (a `Var` with no node) when no input needs a gradient or the tape is not
//! recording, so inference under `no_grad` keeps nothing.

use crate::op::Op;
use crate::tape::{Tape, VarId};
use crate::Result;
use odeflow_runtime::ops::reduce::{reduce_fwd, ReduceOp};
use odeflow_runtime::ops::{
    attention, elementwise, embedding, hypernet, loss, matmul, norm, shape, softmax, BinaryOp,
    UnaryOp,
};
use odeflow_runtime::{DType, Rng, Tensor};
use std::fmt;

/// A value computed during a forward pass, and where the tape recorded it.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    id: Option<VarId>,
    tape: Tape,
    generation: u64,
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grad = if self.requires_grad() {
            "grad"
        } else {
            "const"
        };
        write!(f, "Var({:?}, {grad})", self.value)
    }
}

// identity
impl Var {
    pub(crate) fn new(value: Tensor, id: Option<VarId>, tape: Tape, generation: u64) -> Var {
        Var {
            value,
            id,
            tape,
            generation,
        }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }

    pub fn tape(&self) -> &Tape {
        &self.tape
    }

    /// Whether a gradient can flow back through this value (it was recorded on the tape).
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    /// The same value as a constant: gradients stop here.
    pub fn detach(&self) -> Var {
        self.tape.constant(self.value.clone())
    }

    pub(crate) fn id(&self) -> Option<VarId> {
        self.id
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

// elementwise
impl Var {
    fn unary(&self, op: UnaryOp) -> Result<Var> {
        let y = elementwise::unary_fwd(op, &self.value)?;
        let saved = Op::Unary {
            op,
            x: self.value.clone(),
            y: y.clone(),
        };
        self.tape.record1(op.name(), &[self], saved, y)
    }

    pub fn neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }

    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }

    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }

    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }

    pub fn rsqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Rsqrt)
    }

    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }

    pub fn silu(&self) -> Result<Var> {
        self.unary(UnaryOp::Silu)
    }

    /// GELU, tanh approximation (MODEL.md section 5).
    pub fn gelu(&self) -> Result<Var> {
        self.unary(UnaryOp::Gelu)
    }

    pub fn powf(&self, p: f32) -> Result<Var> {
        self.unary(UnaryOp::Powf(p))
    }

    fn binary(&self, op: BinaryOp, rhs: &Var) -> Result<Var> {
        let y = elementwise::binary_fwd(op, &self.value, &rhs.value)?;
        let saved = Op::Binary {
            op,
            a: self.value.clone(),
            b: rhs.value.clone(),
        };
        self.tape.record1(op.name(), &[self, rhs], saved, y)
    }

    /// self + rhs, with broadcasting (as are `sub`, `mul`, `div`, `maximum`).
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        self.binary(BinaryOp::Add, rhs)
    }

    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        self.binary(BinaryOp::Sub, rhs)
    }

    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        self.binary(BinaryOp::Mul, rhs)
    }

    pub fn div(&self, rhs: &Var) -> Result<Var> {
        self.binary(BinaryOp::Div, rhs)
    }

    pub fn maximum(&self, rhs: &Var) -> Result<Var> {
        self.binary(BinaryOp::Maximum, rhs)
    }

    /// mul * self + add.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Var> {
        let y = elementwise::affine_fwd(&self.value, mul, add)?;
        self.tape.record1("affine", &[self], Op::Affine { mul }, y)
    }

    pub fn scale(&self, s: f32) -> Result<Var> {
        self.affine(s, 0.0)
    }

    /// self + sum_s alpha_s k_s, one node and one pass (`elementwise::lincomb`): a Runge-Kutta
    /// stage or step combination.
    ///
    /// Shapes: self [any], each k_s [same] -> [same]
    pub fn lincomb(&self, terms: &[(f32, &Var)]) -> Result<Var> {
        let values: Vec<(f32, &Tensor)> = terms.iter().map(|(a, k)| (*a, &k.value)).collect();
        let y = elementwise::lincomb(&self.value, &values)?;
        let mut inputs = vec![self];
        inputs.extend(terms.iter().map(|(_, k)| *k));
        let alphas = terms.iter().map(|(a, _)| *a).collect();
        self.tape
            .record1("lincomb", &inputs, Op::Lincomb { alphas }, y)
    }

    pub fn add_scalar(&self, s: f32) -> Result<Var> {
        self.affine(1.0, s)
    }

    /// Inverted dropout: each element is zeroed with probability `p` and the survivors are
    /// scaled by 1 / (1 - p), so the expectation is unchanged. The mask is a constant drawn from
    /// `rng`; `p = 0` returns `self` untouched.
    pub fn dropout(&self, p: f32, rng: &mut Rng) -> Result<Var> {
        if p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 - p;
        let mask: Vec<f32> = (0..self.value.numel())
            .map(|_| {
                if rng.uniform() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        // drawn on the host from the pass's generator, then moved beside x (a device-side
        // generator would save the upload; the masks must match the CPU's draw either way)
        let mask = Tensor::from_f32(mask, self.shape(), self.dtype())?;
        let mask = mask.to_device(self.value.device())?;
        self.mul(&self.tape.constant(mask))
    }
}

// products and reductions
impl Var {
    /// The batched matrix product (batch dims broadcast). Transposed operands are views:
    /// `x.matmul(&w.t()?)` costs no copy.
    ///
    /// Shapes: self [.., M, K], rhs [.., K, N] -> [.., M, N]
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let y = matmul::matmul(&self.value, &rhs.value)?;
        let saved = Op::Matmul {
            a: self.value.clone(),
            b: rhs.value.clone(),
        };
        self.tape.record1("matmul", &[self, rhs], saved, y)
    }

    fn sum_or_mean(&self, op: ReduceOp, dim: usize, keepdim: bool) -> Result<Var> {
        let y = reduce_fwd(op, &self.value, dim, keepdim)?;
        let saved = Op::SumMean {
            op,
            x_shape: self.shape().to_vec(),
            dim,
        };
        self.tape.record1("sum/mean", &[self], saved, y)
    }

    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Var> {
        self.sum_or_mean(ReduceOp::Sum, dim, keepdim)
    }

    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Var> {
        self.sum_or_mean(ReduceOp::Mean, dim, keepdim)
    }

    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Var> {
        let y = reduce_fwd(ReduceOp::Max, &self.value, dim, keepdim)?;
        let saved = Op::Max {
            x: self.value.clone(),
            dim,
        };
        self.tape.record1("max", &[self], saved, y)
    }

    /// The sum of every element, as a scalar.
    pub fn sum_all(&self) -> Result<Var> {
        let y = self.value.sum_all()?;
        let saved = Op::SumAll {
            x_shape: self.shape().to_vec(),
        };
        self.tape.record1("sum_all", &[self], saved, y)
    }

    /// The mean of every element, as a scalar.
    pub fn mean_all(&self) -> Result<Var> {
        self.sum_all()?.scale(1.0 / self.value.numel() as f32)
    }
}

// softmax, norms, embedding, loss, attention
impl Var {
    /// Softmax over the last dim.
    pub fn softmax(&self) -> Result<Var> {
        let y = softmax::softmax_fwd(&self.value)?;
        self.tape
            .record1("softmax", &[self], Op::Softmax { y: y.clone() }, y)
    }

    /// Log-softmax over the last dim.
    pub fn log_softmax(&self) -> Result<Var> {
        let y = softmax::log_softmax_fwd(&self.value)?;
        self.tape
            .record1("log_softmax", &[self], Op::LogSoftmax { y: y.clone() }, y)
    }

    /// LayerNorm over the last dim, with optional weight and bias (MODEL.md section 4 passes the
    /// time-dependent ones).
    ///
    /// Shapes: self [.., D], weight [D], bias [D] -> [.., D]
    pub fn layer_norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
        let (w, b) = (weight.map(Var::value), bias.map(Var::value));
        let (y, mean, rstd) = norm::layer_norm_fwd(&self.value, w, b, eps)?;
        let saved = Op::LayerNorm {
            x: self.value.clone(),
            weight: w.cloned(),
            has_bias: b.is_some(),
            mean,
            rstd,
        };
        let inputs: Vec<&Var> = [Some(self), weight, bias].into_iter().flatten().collect();
        self.tape.record1("layer_norm", &inputs, saved, y)
    }

    /// RMSNorm over the last dim, with an optional weight.
    ///
    /// Shapes: self [.., D], weight [D] -> [.., D]
    pub fn rms_norm(&self, weight: Option<&Var>, eps: f32) -> Result<Var> {
        let w = weight.map(Var::value);
        let (y, rstd) = norm::rms_norm_fwd(&self.value, w, eps)?;
        let saved = Op::RmsNorm {
            x: self.value.clone(),
            weight: w.cloned(),
            rstd,
        };
        let inputs: Vec<&Var> = [Some(self), weight].into_iter().flatten().collect();
        self.tape.record1("rms_norm", &inputs, saved, y)
    }

    /// Rows of this table picked by `ids` (a u32 tensor of any shape).
    ///
    /// Shapes: self [V, D], ids [..] -> [.., D]
    pub fn embedding(&self, ids: &Tensor) -> Result<Var> {
        let y = embedding::embedding_fwd(&self.value, ids)?;
        let saved = Op::Embedding {
            ids: ids.clone(),
            vocab: self.shape()[0],
        };
        self.tape.record1("embedding", &[self], saved, y)
    }

    /// Fused softmax cross-entropy: the mean over non-ignored rows of -log softmax(self)[target].
    ///
    /// Shapes: self [N, V] (logits), targets [N] (u32) -> [] (f32)
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<u32>) -> Result<Var> {
        let (loss, lse) = loss::cross_entropy_fwd(&self.value, targets, ignore_index)?;
        let saved = Op::CrossEntropy {
            logits: self.value.clone(),
            targets: targets.clone(),
            lse,
            ignore_index,
        };
        self.tape.record1("cross_entropy", &[self], saved, loss)
    }

    /// The hypernetwork's weight generation: step i's weights sum_k h[i, k] f[k], one output
    /// per step (views of one buffer). The backward reads the steps' gradients as they are,
    /// never joined (`ops::hypernet`); it is `h.matmul(f as [K, P])` split into rows otherwise.
    ///
    /// Shapes: h [N, K], f [K, ..] -> N x [..]
    pub fn generate(h: &Var, f: &Var) -> Result<Vec<Var>> {
        let w = hypernet::generate(&h.value, &f.value)?;
        let n = h.shape()[0];
        let steps = w
            .split(&vec![1; n], 0)?
            .into_iter()
            .map(|w_i| w_i.reshape(&f.shape()[1..]))
            .collect::<odeflow_runtime::Result<Vec<Tensor>>>()?;
        let saved = Op::Generate {
            h: h.value.clone(),
            f: f.value.clone(),
        };
        h.tape.record("generate", &[h, f], saved, steps)
    }

    /// Causal self-attention, tiled ("flash"): it saves out and one log-sum-exp per query, so
    /// its memory is linear in T, and its backward recomputes the probabilities tile by tile.
    /// Where the runtime has no tiled kernel for q (a CUDA dtype or head dim the kernel lacks,
    /// `attention::flash_supported`) it is `attention_materialised`, the same numbers.
    ///
    /// Shapes: q, k, v [B, H, T, hd] -> [B, H, T, hd]
    pub fn attention(q: &Var, k: &Var, v: &Var) -> Result<Var> {
        if !attention::flash_supported(&q.value) {
            return Var::attention_materialised(q, k, v);
        }
        let (out, lse) = attention::flash_attention_fwd(&q.value, &k.value, &v.value)?;
        let saved = Op::FlashAttention {
            q: q.value.clone(),
            k: k.value.clone(),
            v: v.value.clone(),
            out: out.clone(),
            lse,
        };
        q.tape.record1("attention", &[q, k, v], saved, out)
    }

    /// Causal self-attention, materialised: the runtime's reference, which saves the [B, H, T,
    /// T] probabilities. The tests hold `attention` to it.
    ///
    /// Shapes: q, k, v [B, H, T, hd] -> [B, H, T, hd]
    pub fn attention_materialised(q: &Var, k: &Var, v: &Var) -> Result<Var> {
        let (out, probs) = attention::attention_fwd(&q.value, &k.value, &v.value)?;
        let saved = Op::Attention {
            q: q.value.clone(),
            k: k.value.clone(),
            v: v.value.clone(),
            probs,
        };
        q.tape.record1("attention", &[q, k, v], saved, out)
    }

    /// Sets the strictly-upper triangle of the last two dims to `value` (-inf before a softmax).
    ///
    /// Shapes: self [.., T, T] -> [.., T, T]
    pub fn causal_mask_fill(&self, value: f32) -> Result<Var> {
        let y = attention::causal_mask_fill(&self.value, value)?;
        self.tape
            .record1("causal_mask_fill", &[self], Op::CausalMask, y)
    }
}

// views and shape changes
impl Var {
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let y = self.value.reshape(shape)?;
        let saved = Op::Reshape {
            x_shape: self.shape().to_vec(),
        };
        self.tape.record1("reshape", &[self], saved, y)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let y = self.value.permute(perm)?;
        let saved = Op::Permute {
            perm: perm.to_vec(),
        };
        self.tape.record1("permute", &[self], saved, y)
    }

    /// Swaps dims `d0` and `d1` (a permute).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Var> {
        let y = self.value.transpose(d0, d1)?; // checks both dims
        let mut perm: Vec<usize> = (0..y.rank()).collect();
        perm.swap(d0, d1);
        self.tape
            .record1("transpose", &[self], Op::Permute { perm }, y)
    }

    /// Swaps the last two dims (the matrix transpose of each matrix in a batch).
    pub fn t(&self) -> Result<Var> {
        let y = self.value.t()?; // checks rank >= 2
        let rank = y.rank();
        self.transpose(rank - 2, rank - 1)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let y = self.value.narrow(dim, start, len)?;
        let saved = Op::Narrow {
            x_shape: self.shape().to_vec(),
            dim,
            start,
        };
        self.tape.record1("narrow", &[self], saved, y)
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        let y = self.value.broadcast_to(shape)?;
        let saved = Op::Broadcast {
            x_shape: self.shape().to_vec(),
        };
        self.tape.record1("broadcast_to", &[self], saved, y)
    }

    /// Inserts a size-1 dim at `dim` (a view; its backward is a reshape back).
    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let y = self.value.unsqueeze(dim)?;
        let saved = Op::Reshape {
            x_shape: self.shape().to_vec(),
        };
        self.tape.record1("unsqueeze", &[self], saved, y)
    }

    /// A row-major copy (or `self`'s buffer, if already row-major).
    pub fn contiguous(&self) -> Result<Var> {
        let y = self.value.contiguous()?;
        self.tape.record1("contiguous", &[self], Op::Contiguous, y)
    }

    /// A cast; the gradient is cast back (f32 master weights, bf16 compute).
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let y = self.value.to_dtype(dtype)?;
        let saved = Op::ToDType { from: self.dtype() };
        self.tape.record1("to_dtype", &[self], saved, y)
    }

    /// Joins `xs` along `dim`.
    pub fn cat(xs: &[&Var], dim: usize) -> Result<Var> {
        let values: Vec<Tensor> = xs.iter().map(|x| x.value.clone()).collect();
        let y = shape::cat(&values, dim)?; // fails on an empty list, so xs[0] exists below
        let saved = Op::Cat {
            sizes: values.iter().map(|v| v.shape()[dim]).collect(),
            dim,
        };
        xs[0].tape.record1("cat", xs, saved, y)
    }

    /// Splits along `dim` into pieces of the given sizes (views). One node records all pieces,
    /// so the backward joins their gradients with one copy instead of one per piece.
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Var>> {
        let pieces = shape::split(&self.value, sizes, dim)?;
        let saved = Op::Split {
            dim,
            shapes: pieces.iter().map(|p| p.shape().to_vec()).collect(),
            dtype: self.dtype(),
        };
        self.tape.record("split", &[self], saved, pieces)
    }
}
