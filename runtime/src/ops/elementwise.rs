//! Elementwise ops: unary functions, binary ops with broadcasting, and scalar affine maps.
//!
//! Known shortfall (measured in `bench/RESULTS.md`, tape overhead section): these loops are
//! scalar, call libm per element (tanh, exp), and write a freshly allocated buffer each time.
//! GELU on a [256, 1024] tensor takes about twice as long as the [256, 1024] x [1024, 256]
//! matmul beside it, and a 1 MiB add runs near 1-2 GB/s, far below memory bandwidth. A CPU
//! training step pays for it; a vectorised tanh/exp and reused buffers would fix it.

use crate::cpu;
use crate::{Device, Result, Tensor};

/// sqrt(2 / pi), the scale inside GELU's tanh approximation.
const GELU_SCALE: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation (Hendrycks and Gimpel).
const GELU_CUBIC: f32 = 0.044_715;

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

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Gelu => {
                let inner = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
                0.5 * x * (1.0 + inner.tanh())
            }
            UnaryOp::Powf(p) => x.powf(p),
        }
    }

    /// dy/dx, given x and the forward's y = f(x) (several derivatives are cheapest in terms of y).
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
                let s = sigmoid(x);
                s + x * s * (1.0 - s)
            }
            // with u = c (x + a x^3): d [0.5 x (1 + tanh u)]
            //   = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 a x^2)
            UnaryOp::Gelu => {
                let th = (GELU_SCALE * (x + GELU_CUBIC * x * x * x)).tanh();
                let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
                0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
            }
            // d x^p = p x^(p-1)
            UnaryOp::Powf(p) => p * x.powf(p - 1.0),
        }
    }
}

/// y = f(x), elementwise.
///
/// Shapes: x [any] -> y [same]
pub fn unary_fwd(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    x.check_float(op.name())?;
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let y = cpu::map(&x.f32_data(), |v| op.apply(v));
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
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
            let dx = cpu::map_rows(xs.len(), 1, |i| dys[i] * op.derivative(xs[i], ys[i]));
            Ok(Tensor::from_f32_values(dx, x.shape(), x.dtype()))
        }
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
            let c = zip_broadcast(&a, &b, |x, y| op.apply(x, y));
            Ok(Tensor::from_f32_values(c, a.shape(), a.dtype()))
        }
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
            let dcs = dc.f32_data();
            let dab = zip_broadcast(&ab, &bb, |x, y| op.partials(x, y).0);
            let dbb = zip_broadcast(&ab, &bb, |x, y| op.partials(x, y).1);
            let da = cpu::zip_map(&dcs, &dab, |g, d| g * d);
            let db = cpu::zip_map(&dcs, &dbb, |g, d| g * d);
            let da = Tensor::from_f32_values(da, ab.shape(), a.dtype());
            let db = Tensor::from_f32_values(db, bb.shape(), b.dtype());
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
    cpu::for_each_row(&mut out, a.layout().row_len(), |r, row| {
        for (j, o) in row.iter_mut().enumerate() {
            *o = f(abuf[arows[r] + j * sa], bbuf[brows[r] + j * sb]);
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
    }
}

/// dx = dy * mul (the `add` constant has no gradient).
///
/// Shapes: dy [any] -> dx [same]
pub fn affine_bwd(dy: &Tensor, mul: f32) -> Result<Tensor> {
    affine_fwd(dy, mul, 0.0)
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
