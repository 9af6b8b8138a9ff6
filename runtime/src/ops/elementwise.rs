//! Elementwise ops: unary functions, binary ops with broadcasting, and scalar affine maps.
//!
//! exp, tanh, sigmoid and GELU come from `cpu::math` (straight-line f32 code the compiler
//! vectorises), not libm, whose per-element calls made GELU cost more than the matmul beside it.
//!
//! Known shortfall: every op still writes a freshly allocated buffer, and a chain of elementwise
//! ops makes one pass over memory per op (no fusion on the CPU).

use crate::cpu;
use crate::cpu::math;
use crate::{Device, Result, Tensor};

/// A function applied to every element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    /// 1 / sqrt(x)
    Rsqrt,
    Tanh,
    /// x * sigmoid(x)
    Silu,
    /// The tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in GPT-2.
    Gelu,
    /// x^p
    Powf(f32),
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Powf(_) => "powf",
        }
    }

    /// y = f(x)
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => math::exp(x),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => math::tanh(x),
            UnaryOp::Silu => x * math::sigmoid(x),
            UnaryOp::Gelu => math::gelu(x),
            UnaryOp::Powf(p) => x.powf(p),
        }
    }

    /// dy/dx, given x and the forward's y = f(x) (several derivatives are cheapest in terms of y).
    #[inline(always)]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            // d(-x) = -1
            UnaryOp::Neg => -1.0,
            // d e^x = e^x = y
            UnaryOp::Exp => y,
            // d ln x = 1/x
            UnaryOp::Log => 1.0 / x,
            // d sqrt(x) = 1 / (2 sqrt x) = 0.5 / y
            UnaryOp::Sqrt => 0.5 / y,
            // d x^(-1/2) = -1/2 x^(-3/2) = -0.5 y^3
            UnaryOp::Rsqrt => -0.5 * y * y * y,
            // d tanh x = 1 - tanh^2 x
            UnaryOp::Tanh => 1.0 - y * y,
            // d (x s(x)) = s + x s (1 - s)
            UnaryOp::Silu => {
                let s = math::sigmoid(x);
                s + x * s * (1.0 - s)
            }
            UnaryOp::Gelu => math::gelu_grad(x),
            // d x^p = p x^(p-1)
            UnaryOp::Powf(p) => p * x.powf(p - 1.0),
        }
    }
}

/// Evaluates `$body` once per op, with `$o` a compile-time constant naming that op, so that the
/// compiler specialises the loop in `$body` for each op: `OP.apply` inlines to straight-line code
/// and the loop vectorises, instead of matching on the op once per element. (`$o` must be a
/// `const`, not a `let`: a closure that captures a local reads it through a pointer the optimiser
/// cannot see through.) `Powf` carries its exponent at run time and is not specialised.
macro_rules! specialise {
    ($op:expr, |$o:ident| $body:expr) => {
        match $op {
            UnaryOp::Neg => {
                const $o: UnaryOp = UnaryOp::Neg;
                $body
            }
            UnaryOp::Exp => {
                const $o: UnaryOp = UnaryOp::Exp;
                $body
            }
            UnaryOp::Log => {
                const $o: UnaryOp = UnaryOp::Log;
                $body
            }
            UnaryOp::Sqrt => {
                const $o: UnaryOp = UnaryOp::Sqrt;
                $body
            }
            UnaryOp::Rsqrt => {
                const $o: UnaryOp = UnaryOp::Rsqrt;
                $body
            }
            UnaryOp::Tanh => {
                const $o: UnaryOp = UnaryOp::Tanh;
                $body
            }
            UnaryOp::Silu => {
                const $o: UnaryOp = UnaryOp::Silu;
                $body
            }
            UnaryOp::Gelu => {
                const $o: UnaryOp = UnaryOp::Gelu;
                $body
            }
            UnaryOp::Powf(p) => {
                #[allow(non_snake_case)]
                let $o = UnaryOp::Powf(p);
                $body
            }
        }
    };
}

/// y = f(x), elementwise.
///
/// Shapes: x [any] -> y [same]
pub fn unary_fwd(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    x.check_float(op.name())?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let xs = x.f32_data();
            let y = specialise!(op, |OP| cpu::map(&xs, |v| OP.apply(v)));
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::unary_fwd(op, x),
    }
}

/// dx = dy * f'(x), elementwise.
///
/// Shapes: dy, x, y [any, all equal] -> dx [same]
pub fn unary_bwd(op: UnaryOp, dy: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    dy.check_same_kind(op.name(), x)?;
    dy.check_same_shape(op.name(), x)?;
    dy.check_same_shape(op.name(), y)?;
    match x.device() {
        Device::Cpu => {
            let (dy, x, y) = (dy.contiguous()?, x.contiguous()?, y.contiguous()?);
            let (dys, xs, ys) = (dy.f32_data(), x.f32_data(), y.f32_data());
            let dx = specialise!(op, |OP| {
                cpu::zip3_map(&dys, &xs, &ys, |g, x, y| g * OP.derivative(x, y))
            });
            Ok(Tensor::from_f32_values(dx, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::unary_bwd(op, dy, x),
    }
}

/// A binary op with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// max(a, b); on a tie the gradient goes to `a`.
    Maximum,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
        }
    }

    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum => a.max(b),
        }
    }

    /// (dc/da, dc/db) at (a, b).
    pub fn partials(self, a: f32, b: f32) -> (f32, f32) {
        match self {
            BinaryOp::Add => (1.0, 1.0),
            BinaryOp::Sub => (1.0, -1.0),
            BinaryOp::Mul => (b, a),
            // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
            BinaryOp::Div => (1.0 / b, -a / (b * b)),
            BinaryOp::Maximum if a >= b => (1.0, 0.0),
            BinaryOp::Maximum => (0.0, 1.0),
        }
    }
}

/// c = a (op) b, broadcasting a and b to a common shape.
///
/// Shapes: a [..], b [..] (broadcastable) -> c [broadcast shape]
pub fn binary_fwd(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_float(op.name())?;
    a.check_same_kind(op.name(), b)?;
    let (a, b) = Tensor::broadcast_pair(op.name(), a, b)?;
    match a.device() {
        Device::Cpu => {
            // one specialised loop per op (see `specialise!` for why the op must be a constant)
            let c = match op {
                BinaryOp::Add => zip_broadcast(&a, &b, |x, y| BinaryOp::Add.apply(x, y)),
                BinaryOp::Sub => zip_broadcast(&a, &b, |x, y| BinaryOp::Sub.apply(x, y)),
                BinaryOp::Mul => zip_broadcast(&a, &b, |x, y| BinaryOp::Mul.apply(x, y)),
                BinaryOp::Div => zip_broadcast(&a, &b, |x, y| BinaryOp::Div.apply(x, y)),
                BinaryOp::Maximum => zip_broadcast(&a, &b, |x, y| BinaryOp::Maximum.apply(x, y)),
            };
            Ok(Tensor::from_f32_values(c, a.shape(), a.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::binary_fwd(op, &a, &b),
    }
}

/// da = sum_to(a.shape, dc * dc/da), db = sum_to(b.shape, dc * dc/db): the gradient is first
/// formed at the broadcast shape, then summed over the dims that broadcasting repeated.
///
/// Shapes: dc [broadcast shape], a [..], b [..] -> da [a's shape], db [b's shape]
pub fn binary_bwd(op: BinaryOp, dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    a.check_same_kind(op.name(), b)?;
    dc.check_same_kind(op.name(), a)?;
    let (ab, bb) = Tensor::broadcast_pair(op.name(), a, b)?;
    dc.check_same_shape(op.name(), &ab)?;
    match a.device() {
        Device::Cpu => {
            let dc = dc.contiguous()?;
            let at_broadcast =
                |v: Vec<f32>, like: &Tensor| Tensor::from_f32_values(v, ab.shape(), like.dtype());
            // add, sub and mul have partials that need no product with a ones tensor: the
            // gradient of a bias add is just dc summed over the rows (the hot case)
            let (da, db) = match op {
                BinaryOp::Add => (dc.clone(), dc.clone()),
                BinaryOp::Sub => (dc.clone(), dc.neg()?),
                BinaryOp::Mul => (
                    at_broadcast(zip_broadcast(&dc, &bb, |g, y| g * y), a),
                    at_broadcast(zip_broadcast(&dc, &ab, |g, x| g * x), b),
                ),
                BinaryOp::Div | BinaryOp::Maximum => {
                    let dcs = dc.f32_data();
                    let dab = zip_broadcast(&ab, &bb, |x, y| op.partials(x, y).0);
                    let dbb = zip_broadcast(&ab, &bb, |x, y| op.partials(x, y).1);
                    (
                        at_broadcast(cpu::zip_map(&dcs, &dab, |g, d| g * d), a),
                        at_broadcast(cpu::zip_map(&dcs, &dbb, |g, d| g * d), b),
                    )
                }
            };
            Ok((da.sum_to(a.shape())?, db.sum_to(b.shape())?))
        }
        Device::Cuda(_) => {
            // the same gradients composed from CUDA ops (a fused kernel would save passes)
            let (da, db) = match op {
                BinaryOp::Add => (dc.clone(), dc.clone()),
                BinaryOp::Sub => (dc.clone(), dc.neg()?),
                BinaryOp::Mul => (dc.mul(&bb)?, dc.mul(&ab)?),
                BinaryOp::Div | BinaryOp::Maximum => {
                    return Err(crate::cuda::unsupported("binary_bwd", a.device()))
                }
            };
            Ok((da.sum_to(a.shape())?, db.sum_to(b.shape())?))
        }
    }
}

/// f applied pairwise to two views of the same shape (strides may differ, and may be 0),
/// producing a row-major result.
fn zip_broadcast<F>(a: &Tensor, b: &Tensor, f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    if a.is_contiguous() && b.is_contiguous() {
        return cpu::zip_map(&a.f32_data(), &b.f32_data(), f);
    }
    // general case: walk both layouts row by row
    let (abuf, bbuf) = (a.f32_buffer(), b.f32_buffer());
    let (arows, brows) = (a.layout().row_starts(), b.layout().row_starts());
    let (sa, sb) = (a.layout().row_stride(), b.layout().row_stride());
    let mut out = vec![0.0; a.numel()];
    let n = a.layout().row_len();
    cpu::for_each_row(&mut out, n, |r, row| {
        let (ra, rb) = (arows[r], brows[r]);
        // the common shapes get a plain slice loop that vectorises: a bias row (both rows
        // unit-stride) or a per-row scalar (a stride of 0 along the row)
        match (sa, sb) {
            (1, 1) => {
                let (ar, br) = (&abuf[ra..ra + n], &bbuf[rb..rb + n]);
                for ((o, &x), &y) in row.iter_mut().zip(ar).zip(br) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = bbuf[rb];
                for (o, &x) in row.iter_mut().zip(&abuf[ra..ra + n]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = abuf[ra];
                for (o, &y) in row.iter_mut().zip(&bbuf[rb..rb + n]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = f(abuf[ra + j * sa], bbuf[rb + j * sb]);
                }
            }
        }
    });
    out
}

/// y = x * mul + add, elementwise with scalar constants.
///
/// Shapes: x [any] -> y [same]
pub fn affine_fwd(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    x.check_float("affine")?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let y = cpu::map(&x.f32_data(), |v| v * mul + add);
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::affine_fwd(x, mul, add),
    }
}

/// dx = dy * mul (the `add` constant has no gradient).
///
/// Shapes: dy [any] -> dx [same]
pub fn affine_bwd(dy: &Tensor, mul: f32) -> Result<Tensor> {
    affine_fwd(dy, mul, 0.0)
}

/// y = x + sum_s alpha_s k_s in one pass: what a Runge-Kutta step does to its state (and the
/// adjoint's to its augmented state) at every stage, which as a chain of `scale` and `add` read
/// and wrote the state twice per term. The terms are added in order, each product rounded to f32
/// before its sum, so in f32 the result is the chain's to the bit (in bf16 it is rounded once, at
/// the end, instead of after every op). x and every k_s have one shape, dtype and device.
///
/// Shapes: x [any], each k_s [same] -> y [same]
pub fn lincomb(x: &Tensor, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    x.check_float("lincomb")?;
    for (_, k) in terms {
        x.check_same_kind("lincomb", k)?;
        x.check_same_shape("lincomb", k)?;
    }
    match x.device() {
        Device::Cpu => {
            let mut y = x.contiguous()?.f32_data().into_owned();
            let ks: Vec<Tensor> = terms
                .iter()
                .map(|(_, k)| k.contiguous())
                .collect::<Result<_>>()?;
            let ks: Vec<_> = ks.iter().map(|k| k.f32_data()).collect();
            let alphas: Vec<f32> = terms.iter().map(|(alpha, _)| *alpha).collect();
            // chunk by chunk, every term: a chunk of y stays in L1 while all the k_s are added
            cpu::for_each_chunk(&mut y, |start, y| {
                for (alpha, k) in alphas.iter().zip(&ks) {
                    let k = &k[start..start + y.len()];
                    for (y, &k) in y.iter_mut().zip(k) {
                        *y += alpha * k;
                    }
                }
            });
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::lincomb(x, terms),
    }
}

// the method forms: `x.exp()`, `a.add(&b)`, `x.scale(0.5)`, ...
impl Tensor {
    pub fn neg(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Neg, self)
    }
    pub fn exp(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Exp, self)
    }
    pub fn log(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Log, self)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Sqrt, self)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Rsqrt, self)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Tanh, self)
    }
    pub fn silu(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Silu, self)
    }
    pub fn gelu(&self) -> Result<Tensor> {
        unary_fwd(UnaryOp::Gelu, self)
    }
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        unary_fwd(UnaryOp::Powf(p), self)
    }
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_fwd(BinaryOp::Add, self, rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_fwd(BinaryOp::Sub, self, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_fwd(BinaryOp::Mul, self, rhs)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_fwd(BinaryOp::Div, self, rhs)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_fwd(BinaryOp::Maximum, self, rhs)
    }
    /// x * mul + add
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        affine_fwd(self, mul, add)
    }
    /// x * s
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        affine_fwd(self, s, 0.0)
    }
    /// x + s
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        affine_fwd(self, 1.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Rng};

    /// In f32 the one-pass combination rounds exactly as the chain of scale and add it replaced
    /// (the same products, added in the same order): equal to the bit, here at a length that
    /// takes the parallel path with a ragged last chunk.
    #[test]
    fn lincomb_is_the_chain_of_scale_and_add_to_the_bit() {
        let mut rng = Rng::new(8);
        let n = 3 * (1 << 14) + 5;
        let x = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
        let ks: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng))
            .collect();
        let alphas = [1.0f32 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0];
        let terms: Vec<(f32, &Tensor)> = alphas.iter().copied().zip(&ks).collect();
        let fused = lincomb(&x, &terms).unwrap();
        let chain = terms
            .iter()
            .try_fold(x.clone(), |acc, (a, k)| acc.add(&k.scale(*a)?))
            .unwrap();
        assert_eq!(
            fused.to_vec::<f32>().unwrap(),
            chain.to_vec::<f32>().unwrap()
        );
        assert_eq!(lincomb(&x, &[]).unwrap().to_vec::<f32>(), x.to_vec::<f32>());
    }

    #[test]
    fn lincomb_refuses_terms_of_another_shape() {
        let x = Tensor::zeros(&[3], DType::F32);
        let k = Tensor::zeros(&[4], DType::F32);
        let err = lincomb(&x, &[(1.0, &k)]).unwrap_err().to_string();
        assert!(err.contains("lincomb"), "{err}");
    }
}
