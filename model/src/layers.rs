//! The layers every model shares, written over weights that are already `Var`s.
//!
//! A layer here does not own parameters: it takes the weights of one evaluation, wherever they
//! came from. The ODE block passes W(t_i) sliced from its batched hypernetwork product, the
//! re-discretised and vanilla models pass their own parameters lifted onto the tape. So the
//! attention, MLP and norm math exists once, and `to_discrete(L)` runs literally the same code as
//! the ODE it came from.
//!
//! Convention: a weight matrix is [d_in, d_out] and y = x W + b (as GPT-2's own checkpoints
//! store it), never PyTorch's nn.Linear [d_out, d_in].

use odeflow_autodiff::{Result, Var};
use odeflow_runtime::{DType, Rng, Tensor};

/// The eps of every LayerNorm (MODEL.md section 4).
pub const LAYER_NORM_EPS: f32 = 1e-5;
/// The eps of the time-dependent RMSNorms of the Llama variant (MODEL.md section 6).
pub const TEMPORAL_RMS_EPS: f32 = 1e-6;
/// The eps of the Llama variant's final, plain RMSNorm.
pub const FINAL_RMS_EPS: f32 = 1e-5;
/// The base of the rotary position embedding's frequencies.
pub const ROPE_BASE: f64 = 10000.0;

/// y = x W + b.
#[derive(Clone, Debug)]
pub struct Linear {
    /// [d_in, d_out]
    pub w: Var,
    /// [d_out]
    pub b: Option<Var>,
}

impl Linear {
    /// Shapes: x [.., d_in] -> [.., d_out]
    pub fn forward(&self, x: &Var) -> Result<Var> {
        // one [N, d_in] x [d_in, d_out] product over all the leading dims, not one per batch row
        let (d_in, d_out) = (self.w.shape()[0], self.w.shape()[1]);
        let lead = &x.shape()[..x.shape().len() - 1];
        let rows: usize = lead.iter().product();
        let y = x.reshape(&[rows, d_in])?.matmul(&self.w)?;
        let y = match &self.b {
            Some(b) => y.add(b)?,
            None => y,
        };
        let out: Vec<usize> = lead.iter().copied().chain([d_out]).collect();
        y.reshape(&out)
    }

    /// The weights in a fixed order: w, then b if present.
    pub fn vars(&self) -> Vec<Var> {
        std::iter::once(self.w.clone())
            .chain(self.b.clone())
            .collect()
    }
}

/// Which normalisation a `Norm` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// (x - mean) / sqrt(var + eps)
    Layer,
    /// x / sqrt(mean(x^2) + eps)
    Rms,
}

/// y = weight * normalise(x) + bias, over the last dim.
#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub eps: f32,
    /// [D]
    pub weight: Option<Var>,
    /// [D]
    pub bias: Option<Var>,
}

impl Norm {
    /// Shapes: x [.., D] -> [.., D]
    pub fn forward(&self, x: &Var) -> Result<Var> {
        match self.kind {
            NormKind::Layer => x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps),
            NormKind::Rms => {
                // the runtime's RMSNorm has no bias; the temporal one does (h(t) Bn)
                let y = x.rms_norm(self.weight.as_ref(), self.eps)?;
                match &self.bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
        }
    }

    /// The weights in a fixed order: weight, then bias, each if present.
    pub fn vars(&self) -> Vec<Var> {
        self.weight.iter().chain(&self.bias).cloned().collect()
    }
}

/// Inverted dropout with its own random stream, or nothing (evaluation).
///
/// A checkpointed step builds its `Dropout` from a seed inside the step, so that the recomputed
/// forward of the backward pass draws exactly the masks of the first forward.
pub struct Dropout {
    p: f32,
    rng: Option<Rng>,
}

impl Dropout {
    /// Drops with probability `p` using the stream of `seed`; `None` (evaluation) never drops.
    pub fn new(p: f32, seed: Option<u64>) -> Dropout {
        Dropout {
            p,
            rng: seed.map(Rng::new),
        }
    }

    pub fn off() -> Dropout {
        Dropout::new(0.0, None)
    }

    pub fn forward(&mut self, x: &Var) -> Result<Var> {
        match &mut self.rng {
            Some(rng) if self.p > 0.0 => x.dropout(self.p, rng),
            _ => Ok(x.clone()),
        }
    }
}

/// [B, T, D] -> [B, H, T, hd]
fn split_heads(x: &Var, n_heads: usize) -> Result<Var> {
    let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    x.reshape(&[b, t, n_heads, d / n_heads])?
        .permute(&[0, 2, 1, 3])
}

/// [B, H, T, hd] -> [B, T, D]
fn merge_heads(y: &Var) -> Result<Var> {
    let (b, h, t, hd) = (y.shape()[0], y.shape()[1], y.shape()[2], y.shape()[3]);
    y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h * hd])
}

/// The fused projection split as [3, H, hd]: q, k and v, each by head.
///
/// Shapes: qkv [B, T, 3D] -> q, k, v [B, H, T, hd]
fn split_fused_qkv(qkv: &Var, n_heads: usize) -> Result<[Var; 3]> {
    let d = qkv.shape()[2] / 3;
    let qkv = qkv.split(&[d, d, d], 2)?;
    Ok([
        split_heads(&qkv[0], n_heads)?,
        split_heads(&qkv[1], n_heads)?,
        split_heads(&qkv[2], n_heads)?,
    ])
}

/// Causal softmax attention of the fused projection: qkv split as [3, H, hd], scores scaled by
/// 1/sqrt(hd), no attention dropout (MODEL.md section 5).
///
/// Shapes: qkv [B, T, 3D] -> [B, T, D]
pub fn fused_qkv_attention(qkv: &Var, n_heads: usize) -> Result<Var> {
    let [q, k, v] = split_fused_qkv(qkv, n_heads)?;
    merge_heads(&Var::attention(&q, &k, &v)?)
}

/// The GPT-2 attention branch: c_proj(attn(c_attn(x))).
///
/// Shapes: x [B, T, D] (already normalised) -> [B, T, D]
pub fn gpt_attention(x: &Var, c_attn: &Linear, c_proj: &Linear, n_heads: usize) -> Result<Var> {
    c_proj.forward(&fused_qkv_attention(&c_attn.forward(x)?, n_heads)?)
}

/// The GPT-2 MLP branch: c_proj(gelu_tanh(c_fc(x))).
///
/// Shapes: x [B, T, D] -> [B, T, D] (hidden [B, T, d_ff])
pub fn gpt_mlp(x: &Var, c_fc: &Linear, c_proj: &Linear) -> Result<Var> {
    c_proj.forward(&c_fc.forward(x)?.gelu()?)
}

/// The rotary embedding tables for positions 0..T: cos and sin of t theta_k, with
/// theta_k = base^(-2k/hd), each frequency repeated for both halves of the head (the
/// "rotate half" layout of GPT-NeoX and Llama's Hugging Face port).
///
/// Shapes: -> cos, sin [T, hd]
pub fn rope_tables(t: usize, hd: usize) -> (Tensor, Tensor) {
    rope_tables_from(0, t, hd)
}

/// The rotary tables of positions start..start + T: the rows of `rope_tables` a decoder needs
/// for new positions after `start` cached ones.
///
/// Shapes: -> cos, sin [T, hd]
pub fn rope_tables_from(start: usize, t: usize, hd: usize) -> (Tensor, Tensor) {
    let half = hd / 2;
    let angle = |pos: usize, j: usize| {
        let k = j % half;
        pos as f64 * ROPE_BASE.powf(-2.0 * k as f64 / hd as f64)
    };
    let table = |f: fn(f64) -> f64| {
        let v: Vec<f32> = (start..start + t)
            .flat_map(|pos| (0..hd).map(move |j| f(angle(pos, j)) as f32))
            .collect();
        Tensor::from_f32(v, &[t, hd], DType::F32).expect("sizes agree")
    };
    (table(f64::cos), table(f64::sin))
}

/// RoPE: x cos + rotate_half(x) sin, with rotate_half([x1, x2]) = [-x2, x1] over the head dim.
///
/// Shapes: x [B, H, T, hd], cos, sin [T, hd] (constants) -> [B, H, T, hd]
pub fn rope(x: &Var, cos: &Var, sin: &Var) -> Result<Var> {
    let half = x.shape()[3] / 2;
    let halves = x.split(&[half, half], 3)?;
    let rotated = Var::cat(&[&halves[1].neg()?, &halves[0]], 3)?;
    x.mul(cos)?.add(&rotated.mul(sin)?)
}

/// The Llama attention branch: o(attn(rope(q x), rope(k x), v x)).
///
/// Shapes: x [B, T, D] (already normalised) -> [B, T, D]
pub fn llama_attention(x: &Var, qkvo: [&Linear; 4], n_heads: usize) -> Result<Var> {
    let [q, k, v, o] = qkvo;
    let [q, k, v] = llama_qkv(x, [q, k, v], n_heads, 0)?;
    o.forward(&merge_heads(&Var::attention(&q, &k, &v)?)?)
}

/// The Llama branch's q, k (both rotated) and v of positions start..start + T.
///
/// Shapes: x [B, T, D] -> q, k, v [B, H, T, hd]
fn llama_qkv(x: &Var, qkv: [&Linear; 3], n_heads: usize, start: usize) -> Result<[Var; 3]> {
    let [q, k, v] = qkv;
    let (t, hd) = (x.shape()[1], x.shape()[2] / n_heads);
    let (cos, sin) = rope_tables_from(start, t, hd);
    let device = x.value().device();
    let (cos, sin) = (cos.to_device(device)?, sin.to_device(device)?);
    let (cos, sin) = (x.tape().constant_cast(cos)?, x.tape().constant_cast(sin)?);
    let q = rope(&split_heads(&q.forward(x)?, n_heads)?, &cos, &sin)?;
    let k = rope(&split_heads(&k.forward(x)?, n_heads)?, &cos, &sin)?;
    let v = split_heads(&v.forward(x)?, n_heads)?;
    Ok([q, k, v])
}

/// The keys and values of every position one attention evaluation has seen, so that a decoder
/// computes only the new positions' (`decode.rs`; `docs/12-generation.md`). Each new position's
/// query attends over the cached keys and its own; the earlier positions are never recomputed.
///
/// The entries are plain tensors, not tape ops: decoding runs with recording off, and a cache
/// built from recorded ops would keep the whole history alive for a backward nobody runs.
/// Appending copies the cache (a `cat`): n hd numbers per head for a cache of n positions, the
/// same order as the attention's own reads of it.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// k, v [B, H, n, hd] (k already rotated, for the Llama branch)
    kv: Option<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// n: the positions held.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.shape()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position (a decoder starting a new window).
    pub fn clear(&mut self) {
        self.kv = None;
    }

    /// Appends the new positions' keys and values, and returns those of every position so far.
    ///
    /// Shapes: k, v [B, H, m, hd] -> k, v [B, H, n + m, hd]
    fn append(&mut self, k: &Var, v: &Var) -> Result<(Var, Var)> {
        let tape = k.tape();
        let (k, v) = match self.kv.take() {
            // a copy of its own: the views of a fused projection would keep all of it alive
            None => (k.value().contiguous()?, v.value().contiguous()?),
            Some((old_k, old_v)) => (
                Tensor::cat(&[old_k, k.value().clone()], 2)?,
                Tensor::cat(&[old_v, v.value().clone()], 2)?,
            ),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((tape.constant(k), tape.constant(v)))
    }
}

/// Causal attention of the m newest positions over all n of a cache (their own included): the
/// query of new position i (0-based among the m) sits at position n - m + i, and sees the keys
/// up to it. With nothing cached before (m = n) it is `Var::attention` itself, the op of the
/// full forward; otherwise the scores are formed whole, [m, n] per head, which is small for the
/// one position of a decoding step.
///
/// Shapes: q [B, H, m, hd], k, v [B, H, n, hd] (m <= n) -> [B, H, m, hd]
pub fn attention_over_cache(q: &Var, k: &Var, v: &Var) -> Result<Var> {
    let (m, n, hd) = (q.shape()[2], k.shape()[2], q.shape()[3]);
    if m == n {
        return Var::attention(q, k, v);
    }
    let scores = q.matmul(&k.t()?)?.scale(1.0 / (hd as f32).sqrt())?; // [B, H, m, n]
    let scores = if m == 1 {
        scores // the newest position sees every key: nothing to mask
    } else {
        scores.add(&offset_causal_mask(q, m, n)?)?
    };
    scores.softmax()?.matmul(v)
}

/// 0 where new position i may see key j (j <= n - m + i), -inf after: the causal mask of m
/// queries that follow n - m cached positions. Key 0 is never hidden, so no row is all -inf.
///
/// Shapes: -> [m, n] (a constant on q's tape and device)
fn offset_causal_mask(q: &Var, m: usize, n: usize) -> Result<Var> {
    let mut mask = vec![0.0f32; m * n];
    for (i, row) in mask.chunks_mut(n).enumerate() {
        // new position i sits at n - m + i: the keys after it are hidden
        row[n - m + i + 1..].fill(f32::NEG_INFINITY);
    }
    let mask = Tensor::from_vec(mask, &[m, n])?.to_device(q.value().device())?;
    q.tape().constant_cast(mask)
}

/// `gpt_attention` for the m newest positions of a sequence whose earlier positions' keys and
/// values are in `cache`; appends the new ones to it. The same projections and split as the full
/// branch, so the two differ only in the order of the attention's additions.
///
/// Shapes: x [B, m, D] (already normalised) -> [B, m, D]; cache [B, H, n, hd] -> [B, H, n + m, hd]
pub fn gpt_attention_cached(
    x: &Var,
    c_attn: &Linear,
    c_proj: &Linear,
    n_heads: usize,
    cache: &mut KvCache,
) -> Result<Var> {
    let [q, k, v] = split_fused_qkv(&c_attn.forward(x)?, n_heads)?;
    let (k, v) = cache.append(&k, &v)?;
    c_proj.forward(&merge_heads(&attention_over_cache(&q, &k, &v)?)?)
}

/// `llama_attention` for the m newest positions, with the earlier positions' keys (already
/// rotated) and values in `cache`: the new positions are rotated by their own positions,
/// n..n + m, so a cached key never needs rotating again.
///
/// Shapes: x [B, m, D] (already normalised) -> [B, m, D]; cache [B, H, n, hd] -> [B, H, n + m, hd]
pub fn llama_attention_cached(
    x: &Var,
    qkvo: [&Linear; 4],
    n_heads: usize,
    cache: &mut KvCache,
) -> Result<Var> {
    let [q, k, v, o] = qkvo;
    let [q, k, v] = llama_qkv(x, [q, k, v], n_heads, cache.len())?;
    let (k, v) = cache.append(&k, &v)?;
    o.forward(&merge_heads(&attention_over_cache(&q, &k, &v)?)?)
}

/// The SwiGLU MLP: down(silu(gate x) * up x).
///
/// Shapes: x [B, T, D] -> [B, T, D] (hidden [B, T, d_ff])
pub fn swiglu(x: &Var, gate: &Linear, up: &Linear, down: &Linear) -> Result<Var> {
    down.forward(&gate.forward(x)?.silu()?.mul(&up.forward(x)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use odeflow_autodiff::Tape;

    #[test]
    fn rope_rotates_each_pair_by_its_angle() {
        // hd = 2: one frequency (theta = 1); position p rotates (x1, x2) by p radians
        let tape = Tape::new();
        let x = Tensor::from_vec(vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 2.0], &[1, 1, 3, 2]).unwrap();
        let (cos, sin) = rope_tables(3, 2);
        let y = rope(&tape.constant(x), &tape.constant(cos), &tape.constant(sin)).unwrap();
        let y = y.value().to_vec::<f32>().unwrap();
        // p=0: unchanged; p=1: (cos 1, sin 1); p=2: (0, 2) -> (-2 sin 2, 2 cos 2)
        let want = [
            1.0,
            0.0,
            1f32.cos(),
            1f32.sin(),
            -2.0 * 2f32.sin(),
            2.0 * 2f32.cos(),
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn linear_applies_to_every_leading_index() {
        let tape = Tape::new();
        let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![0.5f32, 0.0, -0.5], &[3]).unwrap();
        let lin = Linear {
            w: tape.constant(w),
            b: Some(tape.constant(b)),
        };
        let x = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], &[2, 1, 2]).unwrap();
        let y = lin.forward(&tape.constant(x)).unwrap();
        assert_eq!(y.shape(), &[2, 1, 3]);
        let want = vec![1.5, 2.0, 2.5, 4.5, 5.0, 5.5];
        assert_eq!(y.value().to_vec::<f32>().unwrap(), want);
    }
}
