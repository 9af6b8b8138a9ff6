//! The gradient-check harness shared by the tape's tests.
//!
//! `check_grads` runs a function of some leaves on a tape, backpropagates the non-trivial loss
//! `sum(f(x) * r)` (r random, so every output element gets its own weight), and compares each
//! leaf's gradient with central finite differences of an f64 reference of the same function.
//! The reference never touches the tape, so a wrong rule, a swapped argument, or a lost `+=`
//! shows up as a mismatch.

#![allow(dead_code)]

use odeflow_autodiff::{Result, Tape, Var};
use odeflow_runtime::reference::{numerical_grad, Array64};
use odeflow_runtime::testing::{make, Layout, LAYOUTS};
use odeflow_runtime::{DType, Rng, Tensor};
use proptest::prelude::*;

/// 32 cases per property; `PROPTEST_CASES=1000` runs a deeper sweep.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok();
    ProptestConfig {
        cases: cases.and_then(|v| v.parse().ok()).unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Shapes of rank `min..=max` with dims 1 to 4 (size-1 dims included on purpose).
pub fn shapes(min: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, min..=max)
}

pub fn layouts() -> impl Strategy<Value = Layout> {
    prop::sample::select(LAYOUTS.to_vec())
}

/// An f32 input of `shape` with values in [lo, hi), stored with `layout`.
pub fn input(shape: &[usize], layout: Layout, seed: u64, lo: f32, hi: f32) -> Tensor {
    make(shape, layout, DType::F32, seed, lo, hi)
}

pub fn arr(t: &Tensor) -> Array64 {
    Array64::from_tensor(t).unwrap()
}

/// Relative tolerance for an f32 forward/backward against f64: the ops here are short sums,
/// whose f32 error stays near 1e-6 of the largest magnitude involved.
pub const F32_TOL: f64 = 2e-4;

/// Asserts |got - want| <= tol * max(1, max|want|) elementwise (a scale-aware bound: gradients
/// of softmax-like ops have tiny entries next to large ones).
pub fn assert_close(what: &str, got: &Tensor, want: &Array64, tol: f64) {
    assert_eq!(got.shape(), &want.shape[..], "{what}: shape");
    let scale = want.data.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    let got = got.to_f32_vec().unwrap();
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * scale,
            "{what}: element {i}: got {g}, want {w} (err {err:.2e} > {:.2e})",
            tol * scale
        );
    }
}

/// Checks the value and every leaf gradient of `f` against the f64 `reference`.
pub fn check_grads(
    what: &str,
    inputs: &[Tensor],
    f: impl Fn(&[Var]) -> Result<Var>,
    reference: impl Fn(&[Array64]) -> Array64,
    tol: f64,
) {
    let tape = Tape::new();
    let xs: Vec<Var> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let y = f(&xs).unwrap();
    let arrays: Vec<Array64> = inputs.iter().map(arr).collect();
    assert_close(
        &format!("{what}: forward"),
        y.value(),
        &reference(&arrays),
        tol,
    );

    // loss = sum(y * r)
    let mut rng = Rng::new(inputs.len() as u64 + 7);
    let r = Tensor::rand_uniform(y.shape(), -1.0, 1.0, y.dtype(), &mut rng);
    let loss = y.mul(&tape.constant(r.clone())).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    for (i, x) in xs.iter().enumerate() {
        let want = numerical_grad(&reference, &arrays, &arr(&r), i);
        let got = grads
            .get(x)
            .unwrap_or_else(|| panic!("{what}: input {i} got no gradient"));
        assert_close(&format!("{what}: d input {i}"), got, &want, tol);
    }
}

/// A miniature of the neural ODE transformer's solve, for the checkpointing and memory tests:
/// per-step weights W_i = (H F)[i] from one batched product (MODEL.md section 3), then L Euler
/// steps x <- x + dt * dropout(tanh(LN_g(x) W_i)), then sum(x * r).
pub struct MiniOde {
    pub h: odeflow_autodiff::Param, // [L, E+1]: the rows [1, h(t_i)]
    pub f: odeflow_autodiff::Param, // [E+1, D*D]: W0 and the W_k, flattened
    pub g: odeflow_autodiff::Param, // [D]: a norm weight, used inside every step
    pub steps: usize,
    pub d: usize,
    pub dropout: f32,
}

impl MiniOde {
    pub fn new(steps: usize, e: usize, d: usize, dropout: f32, seed: u64) -> MiniOde {
        use odeflow_autodiff::Param;
        let mut rng = Rng::new(seed);
        let mut normal =
            |shape: &[usize], std| Tensor::randn(shape, 0.0, std, DType::F32, &mut rng);
        MiniOde {
            h: Param::new("h", normal(&[steps, e + 1], 1.0)),
            f: Param::new("f", normal(&[e + 1, d * d], 0.3)),
            g: Param::new("g", normal(&[d], 1.0)),
            steps,
            d,
            dropout,
        }
    }

    pub fn params(&self) -> [&odeflow_autodiff::Param; 3] {
        [&self.h, &self.f, &self.g]
    }

    /// One Euler step. It only uses its arguments and the tape, so it can be checkpointed.
    fn step(
        tape: &Tape,
        x: &Var,
        w: &Var,
        g: &odeflow_autodiff::Param,
        dt: f32,
        p: f32,
        seed: u64,
    ) -> Result<Var> {
        let normed = x.layer_norm(Some(&tape.param(g)), None, 1e-5)?;
        let update = normed.matmul(w)?.tanh()?.dropout(p, &mut Rng::new(seed))?;
        x.add(&update.scale(dt)?)
    }

    /// The loss sum(x_L * r) for the initial state `x0` [T, D].
    pub fn loss(&self, tape: &Tape, x0: &Var, r: &Tensor, checkpoint: bool) -> Result<Var> {
        let (l, d) = (self.steps, self.d);
        let dt = 1.0 / l as f32;
        let weights = tape.param(&self.h).matmul(&tape.param(&self.f))?; // [L, D*D]
        let weights = weights.split(&vec![1; l], 0)?;
        let mut x = x0.clone();
        for (i, w) in weights.iter().enumerate() {
            let w = w.reshape(&[d, d])?;
            let (g, p, seed) = (self.g.clone(), self.dropout, 1000 + i as u64);
            x = if checkpoint {
                tape.checkpoint(&[&x, &w], move |tape, v| {
                    Self::step(tape, &v[0], &v[1], &g, dt, p, seed)
                })?
            } else {
                Self::step(tape, &x, &w, &g, dt, p, seed)?
            };
        }
        x.mul(&tape.constant(r.clone()))?.sum_all()
    }

    pub fn zero_grad(&self) {
        self.params().iter().for_each(|p| p.zero_grad());
    }
}
