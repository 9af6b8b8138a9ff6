//! Slow, obviously-correct f64 references for the ops, shared by the tests and the benches.
//!
//! Every function here is a direct transcription of the math in plain loops over row-major f64
//! arrays: no views, no blocking, no threads. Backward ops have no references of their own:
//! `numerical_grad` differentiates these forwards by central finite differences in f64, which is
//! accurate to about 1e-9, far below any f32 tolerance.

use crate::ops::{BinaryOp, UnaryOp};
use crate::{Result, Tensor};

/// A row-major f64 array.
#[derive(Clone, Debug, PartialEq)]
pub struct Array64 {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Array64 {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "Array64::new");
        Array64 {
            shape: shape.to_vec(),
            data,
        }
    }

    /// The tensor's values (any layout, any dtype) widened to f64.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let data = t.to_f32_vec()?.into_iter().map(f64::from).collect();
        Ok(Array64::new(t.shape(), data))
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Array64::new(shape, vec![0.0; shape.iter().product()])
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Size of the last dim (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The rows along the last dim.
    pub fn rows(&self) -> std::slice::Chunks<'_, f64> {
        self.data.chunks(self.row_len().max(1))
    }

    /// Row-major strides.
    fn strides(&self) -> Vec<usize> {
        crate::layout::contiguous_strides(&self.shape)
    }

    /// The multi-index of flat position `i`.
    fn unravel(&self, mut i: usize) -> Vec<usize> {
        let mut index = vec![0; self.shape.len()];
        for d in (0..self.shape.len()).rev() {
            index[d] = i % self.shape[d];
            i /= self.shape[d];
        }
        index
    }
}

/// f applied to every element.
pub fn unary(op: UnaryOp, x: &Array64) -> Array64 {
    let f = |v: f64| match op {
        UnaryOp::Neg => -v,
        UnaryOp::Exp => v.exp(),
        UnaryOp::Log => v.ln(),
        UnaryOp::Sqrt => v.sqrt(),
        UnaryOp::Rsqrt => 1.0 / v.sqrt(),
        UnaryOp::Tanh => v.tanh(),
        UnaryOp::Silu => v / (1.0 + (-v).exp()),
        UnaryOp::Gelu => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        }
        UnaryOp::Powf(p) => v.powf(p as f64),
    };
    Array64::new(&x.shape, x.data.iter().map(|&v| f(v)).collect())
}

/// The broadcast binary op, by mapping each output index back into both inputs.
pub fn binary(op: BinaryOp, a: &Array64, b: &Array64) -> Array64 {
    let shape = crate::layout::broadcast_shape("reference", &a.shape, &b.shape).unwrap();
    let mut out = Array64::zeros(&shape);
    for i in 0..out.numel() {
        let index = out.unravel(i);
        let (x, y) = (
            a.data[broadcast_pos(a, &index)],
            b.data[broadcast_pos(b, &index)],
        );
        out.data[i] = match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Maximum => x.max(y),
        };
    }
    out
}

/// Flat position in `a` of an index into the broadcast shape (right-aligned, size-1 dims pinned).
fn broadcast_pos(a: &Array64, index: &[usize]) -> usize {
    let lead = index.len() - a.shape.len();
    let strides = a.strides();
    (0..a.shape.len())
        .map(|d| {
            if a.shape[d] == 1 {
                0
            } else {
                index[lead + d] * strides[d]
            }
        })
        .sum()
}

/// Applies `f` to each 1-D slice along `dim`, giving the reduced array (dim removed).
pub fn reduce(x: &Array64, dim: usize, f: impl Fn(&[f64]) -> f64) -> Array64 {
    let mut shape = x.shape.clone();
    let n = shape.remove(dim);
    let mut out = Array64::zeros(&shape);
    let strides = x.strides();
    for o in 0..out.numel() {
        let mut index = out.unravel(o);
        index.insert(dim, 0);
        let base: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        let line: Vec<f64> = (0..n).map(|j| x.data[base + j * strides[dim]]).collect();
        out.data[o] = f(&line);
    }
    out
}

pub fn sum(x: &Array64, dim: usize) -> Array64 {
    reduce(x, dim, |v| v.iter().sum())
}

pub fn mean(x: &Array64, dim: usize) -> Array64 {
    reduce(x, dim, |v| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn max(x: &Array64, dim: usize) -> Array64 {
    reduce(x, dim, |v| {
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    })
}

/// Index of the first maximum along `dim`.
pub fn argmax(x: &Array64, dim: usize) -> Array64 {
    reduce(x, dim, |v| {
        let best = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        v.iter().position(|&e| e == best).unwrap() as f64
    })
}

/// Row-wise map over the last axis.
fn map_rows(x: &Array64, f: impl Fn(&[f64]) -> Vec<f64>) -> Array64 {
    Array64::new(&x.shape, x.rows().flat_map(f).collect())
}

pub fn softmax(x: &Array64) -> Array64 {
    map_rows(x, |r| {
        let total: f64 = r.iter().map(|v| v.exp()).sum();
        r.iter().map(|v| v.exp() / total).collect()
    })
}

pub fn log_softmax(x: &Array64) -> Array64 {
    map_rows(x, |r| {
        let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
        r.iter().map(|v| v - lse).collect()
    })
}

/// (x - mean) / sqrt(var + eps) * w + b over the last axis; w, b default to 1 and 0.
pub fn layer_norm(x: &Array64, w: Option<&Array64>, b: Option<&Array64>, eps: f64) -> Array64 {
    map_rows(x, |r| {
        let d = r.len() as f64;
        let mean = r.iter().sum::<f64>() / d;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
        let affine =
            |j: usize, v: f64| v * w.map_or(1.0, |w| w.data[j]) + b.map_or(0.0, |b| b.data[j]);
        let rstd = 1.0 / (var + eps).sqrt();
        r.iter()
            .enumerate()
            .map(|(j, v)| affine(j, (v - mean) * rstd))
            .collect()
    })
}

/// x / sqrt(mean(x^2) + eps) * w over the last axis.
pub fn rms_norm(x: &Array64, w: Option<&Array64>, eps: f64) -> Array64 {
    map_rows(x, |r| {
        let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
        let rstd = 1.0 / (ms + eps).sqrt();
        r.iter()
            .enumerate()
            .map(|(j, v)| v * rstd * w.map_or(1.0, |w| w.data[j]))
            .collect()
    })
}

/// Rows of `table` picked by `ids`.
pub fn embedding(table: &Array64, ids: &[u32]) -> Array64 {
    let d = table.shape[1];
    let data = ids
        .iter()
        .flat_map(|&i| table.data[i as usize * d..][..d].to_vec())
        .collect();
    Array64::new(&[ids.len(), d], data)
}

/// Mean over non-ignored rows of -log softmax(logits)[target] (0 when all are ignored).
pub fn cross_entropy(logits: &Array64, targets: &[u32], ignore: Option<u32>) -> f64 {
    let logp = log_softmax(logits);
    let v = logits.shape[1];
    let kept: Vec<f64> = targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| Some(t) != ignore)
        .map(|(i, &t)| -logp.data[i * v + t as usize])
        .collect();
    if kept.is_empty() {
        0.0
    } else {
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

/// The batched matrix product with numpy batch broadcasting.
pub fn matmul(a: &Array64, b: &Array64) -> Array64 {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = crate::layout::broadcast_shape("reference", &a.shape[..ra - 2], &b.shape[..rb - 2])
        .unwrap();
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = Array64::zeros(&shape);
    for o in 0..out.numel() {
        let index = out.unravel(o);
        let (i, j) = (index[index.len() - 2], index[index.len() - 1]);
        let mut acc = 0.0;
        for p in 0..k {
            let mut ia = index[..index.len() - 2].to_vec();
            ia.extend([i, p]);
            let mut ib = index[..index.len() - 2].to_vec();
            ib.extend([p, j]);
            acc += a.data[broadcast_pos(a, &ia)] * b.data[broadcast_pos(b, &ib)];
        }
        out.data[o] = acc;
    }
    out
}

/// Swaps the last two dims.
pub fn transpose_last(x: &Array64) -> Array64 {
    let r = x.shape.len();
    let (m, n) = (x.shape[r - 2], x.shape[r - 1]);
    let mut shape = x.shape.clone();
    shape.swap(r - 2, r - 1);
    let mut out = Array64::zeros(&shape);
    for (bi, block) in x.data.chunks(m * n).enumerate() {
        for i in 0..m {
            for j in 0..n {
                out.data[bi * m * n + j * m + i] = block[i * n + j];
            }
        }
    }
    out
}

/// Causal attention per (batch, head): softmax(q k^T / sqrt(hd), keys <= query) v.
pub fn attention(q: &Array64, k: &Array64, v: &Array64) -> Array64 {
    let (t, hd) = (q.shape[2], q.shape[3]);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = Array64::zeros(&q.shape);
    for bh in 0..q.shape[0] * q.shape[1] {
        let at = |x: &Array64, i: usize, c: usize| x.data[(bh * t + i) * hd + c];
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| (0..hd).map(|c| at(q, i, c) * at(k, j, c)).sum::<f64>() * scale)
                .collect();
            let p = softmax(&Array64::new(&[i + 1], s)).data;
            for c in 0..hd {
                out.data[(bh * t + i) * hd + c] = (0..=i).map(|j| p[j] * at(v, j, c)).sum();
            }
        }
    }
    out
}

/// Concatenation along `dim`.
pub fn cat(xs: &[Array64], dim: usize) -> Array64 {
    let mut shape = xs[0].shape.clone();
    shape[dim] = xs.iter().map(|x| x.shape[dim]).sum();
    let outer: usize = shape[..dim].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let block: usize = x.shape[dim..].iter().product();
            data.extend_from_slice(&x.data[o * block..(o + 1) * block]);
        }
    }
    Array64::new(&shape, data)
}

/// The axes reordered: out[i_0 .. i_n] = x[j] with j[perm[d]] = i_d.
pub fn permute(x: &Array64, perm: &[usize]) -> Array64 {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let strides = x.strides();
    let mut out = Array64::zeros(&shape);
    for o in 0..out.numel() {
        let index = out.unravel(o);
        let pos: usize = perm.iter().zip(&index).map(|(&p, &i)| i * strides[p]).sum();
        out.data[o] = x.data[pos];
    }
    out
}

/// The elements `start .. start + len` of `dim`.
pub fn narrow(x: &Array64, dim: usize, start: usize, len: usize) -> Array64 {
    let mut shape = x.shape.clone();
    shape[dim] = len;
    let strides = x.strides();
    let mut out = Array64::zeros(&shape);
    for o in 0..out.numel() {
        let mut index = out.unravel(o);
        index[dim] += start;
        out.data[o] = x.data[index
            .iter()
            .zip(&strides)
            .map(|(i, s)| i * s)
            .sum::<usize>()];
    }
    out
}

/// `x` repeated along its size-1 (and missing leading) dims to fill `shape`.
pub fn broadcast_to(x: &Array64, shape: &[usize]) -> Array64 {
    let mut out = Array64::zeros(shape);
    for o in 0..out.numel() {
        out.data[o] = x.data[broadcast_pos(x, &out.unravel(o))];
    }
    out
}

/// The strictly-upper triangle of the last two dims (key j > query i) set to `value`.
pub fn causal_mask_fill(x: &Array64, value: f64) -> Array64 {
    let t = x.row_len();
    let mut out = x.clone();
    for (r, row) in out.data.chunks_mut(t.max(1)).enumerate() {
        row[r % t + 1..].fill(value);
    }
    out
}

/// The sum of every element, as a scalar array.
pub fn sum_all(x: &Array64) -> Array64 {
    Array64::new(&[], vec![x.data.iter().sum()])
}

/// The gradient of `sum(f(inputs) * dy)` with respect to input `which`, by central differences:
/// (L(x + h e_i) - L(x - h e_i)) / 2h for every element i. With h = 1e-6 in f64 the truncation
/// error is ~h^2 and the rounding error ~1e-16 / h: about 1e-10 in all.
pub fn numerical_grad(
    f: impl Fn(&[Array64]) -> Array64,
    inputs: &[Array64],
    dy: &Array64,
    which: usize,
) -> Array64 {
    const H: f64 = 1e-6;
    let loss =
        |xs: &[Array64]| -> f64 { f(xs).data.iter().zip(&dy.data).map(|(y, g)| y * g).sum() };
    let mut grad = Array64::zeros(&inputs[which].shape);
    let mut xs = inputs.to_vec();
    for i in 0..grad.numel() {
        let orig = xs[which].data[i];
        xs[which].data[i] = orig + H;
        let up = loss(&xs);
        xs[which].data[i] = orig - H;
        let down = loss(&xs);
        xs[which].data[i] = orig;
        grad.data[i] = (up - down) / (2.0 * H);
    }
    grad
}
