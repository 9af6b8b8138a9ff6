//! The continuous adjoint method (Chen et al., 2018), in three named phases.
//!
//! Forward: X(0) = x0, dX/dt = F(X, W(t)) up to X(1), keeping only X(1) (and, for the
//! checkpointed variant, X at the start of every segment of k steps). The loss is l(X(1)).
//!
//! Backward, for the adjoint a(t) = dl/dX(t):
//!
//! 1. **Initial adjoint state.** a(1) = dl/dX(1): the gradient the tape hands the solve's node.
//! 2. **Augmented dynamics.** Backwards in time, the state, the adjoint and the parameter
//!    gradient g obey
//!    ```text
//!    dX/dt = F(X, t),   da/dt = -aᵀ ∂F/∂X,   dg/dt = -aᵀ ∂F/∂θ,   g(1) = 0
//!    ```
//!    so that a(0) = dl/dX(0) and g(0) = dl/dθ. Each right-hand side costs one evaluation of F
//!    and one vector-Jacobian product through it (`slopes`), at any (X, a, t).
//! 3. **Backward solve.** The same tableau integrates (X, a) from t = 1 to 0 in reversed time
//!    τ = 1 - t, step by step (`reversed_stage_time` says where its stages sit); g is the
//!    quadrature sum_s b_s dt aᵀ∂F/∂θ at the stage points, added straight into the
//!    parameters' gradient buffers. a(0) is returned as x0's gradient.
//!
//! **The gradient is approximate.** It is the exact gradient of the continuous ODE, discretised;
//! not the exact gradient of the discrete forward solve (which `Backprop` and `Checkpoint`
//! give). Two errors enter: the backward solve's own truncation error, and the re-integrated
//! state drifting from the forward one (X is recomputed backwards from X(1), so the state the
//! adjoint sees at time t is not the forward X(t)). Both shrink as O(dt^p) for a solver of order
//! p, which `model/tests/adjoint.rs` checks. The checkpointed variant resets X to the saved
//! forward state at each segment end, so the drift never spans more than k steps.
//!
//! Memory: the forward keeps one state (plus L/k for the checkpointed variant); the backward
//! holds the stage slopes of one step, and one evaluation's tapes at a time. W(t) is generated
//! per evaluation from the hypernetwork's parameters and dropped, so no per-step weights are
//! kept either: nothing grows with L.

use super::tableau::{rk_step, Combine};
use super::{Field, Solver};
use odeflow_autodiff::{Result, Tape, Var};
use odeflow_runtime::{DType, Tensor};

/// Solves forward with `solver` in `n` steps keeping only the states at the segment starts
/// (every `every` steps), and records one node whose backward is the adjoint solve.
///
/// Shapes: x0 [B, T, D] -> X(1) [B, T, D]
pub(super) fn solve(
    solver: Solver,
    x0: &Var,
    field: &Field,
    n: usize,
    every: usize,
) -> Result<Var> {
    let tape = x0.tape();
    // the tapes of the solve's own evaluations compute in the outer pass's dtype
    let compute = tape.compute();
    let every = every.min(n);
    // segment starts: X at steps every, 2 every, ... (step 0's start is x0 itself)
    let mut starts: Vec<Tensor> = Vec::new();
    let mut x = x0.value().clone();
    for i in 0..n {
        if i > 0 && i % every == 0 {
            starts.push(x.clone());
        }
        x = forward_step(solver, field, i, n, &x, compute)?;
    }
    let (field, x1) = (field.clone(), x.clone());
    tape.custom("adjoint", &[x0], x, move |dy| {
        // phase 1: the initial adjoint state, a(1) = dl/dX(1)
        let mut a = dy;
        // phase 3, segment by segment from the last: X restarts from its saved value at the
        // segment's end; a carries on across segments
        let ends = starts.into_iter().chain(std::iter::once(x1));
        let segments: Vec<Tensor> = ends.collect();
        for (seg, end) in segments.into_iter().enumerate().rev() {
            let mut state = Augmented { x: end, a };
            for i in (seg * every..((seg + 1) * every).min(n)).rev() {
                state = backward_step(solver, &field, i, n, &state, compute)?;
            }
            a = state.a;
        }
        Ok(vec![Some(a)])
    })
}

/// Step i of the forward solve, unrecorded: X_{i+1} from X_i, with W(t) generated per stage.
///
/// Shapes: x [B, T, D] -> [B, T, D]
pub(super) fn forward_step(
    solver: Solver,
    field: &Field,
    i: usize,
    n: usize,
    x: &Tensor,
    compute: Option<DType>,
) -> Result<Tensor> {
    let tape = Tape::with_compute(compute);
    tape.no_grad(|| {
        let x = tape.constant(x.clone());
        let y = rk_step(solver.tableau(), &x, 1.0 / n as f32, |s, xs| {
            let t = solver.stage_time(i, s, n);
            let w = weights_at(field, &tape, t)?;
            field.eval(xs, &w, t)
        })?;
        Ok(y.value().clone())
    })
}

/// X(0) as the adjoint's backward solve re-integrates it from X(1): its distance from the
/// forward's X(0) is the drift of the doc above.
///
/// Shapes: x1 [B, T, D] -> [B, T, D]
pub(super) fn reintegrate(solver: Solver, field: &Field, n: usize, x1: &Tensor) -> Result<Tensor> {
    let (tab, dt) = (solver.tableau(), 1.0 / n as f64);
    // a state computed in bf16 is re-integrated in bf16
    let compute = (x1.dtype() != DType::F32).then_some(x1.dtype());
    let mut x = x1.clone();
    for i in (0..n).rev() {
        x = rk_step(tab, &x, dt as f32, |s, xs| {
            let t = reversed_stage_time(solver, i, s, n);
            let tape = Tape::with_compute(compute);
            tape.no_grad(|| {
                let w = weights_at(field, &tape, t)?;
                let f = field.eval(&tape.constant(xs.clone()), &w, t)?;
                Ok(f.value().scale(-1.0)?)
            })
        })?;
    }
    Ok(x)
}

/// The backward solve's state: X and a, stepped together by the same tableau.
///
/// A slope (what `slopes` returns) is an `Augmented` too, with one twist: its `x` holds
/// F(X, t) itself, not dX/dτ = -F. The minus sign is carried by the coefficients of `lincomb`
/// (x + c (-F) = x + (-c) F, the same float to the bit), which saves negating F, a pass over
/// the state, at every stage.
#[derive(Clone)]
struct Augmented {
    x: Tensor,
    a: Tensor,
}

impl Combine for Augmented {
    /// Each component in one pass: X + sum_s c_s (-F_s), a + sum_s c_s (da/dτ)_s.
    fn lincomb(&self, terms: &[(f32, &Augmented)]) -> Result<Augmented> {
        let xs: Vec<(f32, &Tensor)> = terms.iter().map(|(c, k)| (-*c, &k.x)).collect();
        let as_: Vec<(f32, &Tensor)> = terms.iter().map(|(c, k)| (*c, &k.a)).collect();
        Ok(Augmented {
            x: self.x.lincomb(&xs)?,
            a: self.a.lincomb(&as_)?,
        })
    }
}

/// Step i backwards, from (X, a) at t_{i+1} = (i + 1) dt to t_i, in reversed time τ = 1 - t:
/// stage s sits at `reversed_stage_time`, and its parameter term enters g with weight b_s dt.
fn backward_step(
    solver: Solver,
    field: &Field,
    i: usize,
    n: usize,
    z: &Augmented,
    compute: Option<DType>,
) -> Result<Augmented> {
    let (tab, dt) = (solver.tableau(), 1.0 / n as f64);
    rk_step(tab, z, dt as f32, |s, zs| {
        let t = reversed_stage_time(solver, i, s, n);
        slopes(field, zs, t, tab.b[s] * dt, compute)
    })
}

/// The time of stage s of backward step i: t_{i+1} - c_s dt, with c_s = sum_j A[s][j], the
/// stage time that makes the tableau consistent in reversed time.
///
/// That is the tableau's own c for midpoint, Heun and RK4. The reference's Euler declares
/// c = 1 (it evaluates at the step's right end); the consistent c is 0, which puts its backward
/// evaluation at t_{i+1}, the very time the forward step used. This matters for this model: a
/// trained W(t) is only known to be good at the times training evaluated, and with sin(1000 t)
/// among its inputs, W(t_i) says nothing about W(t_{i+1}). With c = 1 the backward solve would
/// evaluate a model trained at L = 4 at t = 0, where it never ran.
fn reversed_stage_time(solver: Solver, i: usize, s: usize, n: usize) -> f64 {
    let c: f64 = solver.tableau().a[s].iter().sum();
    (i as f64 + 1.0 - c) / n as f64
}

/// Phase 2, the augmented dynamics in reversed time at one point:
/// dX/dτ = -F(X, t) (returned as F, see `Augmented`), da/dτ = aᵀ ∂F/∂X, and
/// g += quad aᵀ ∂F/∂θ into the parameters' buffers.
///
/// Two small tapes: one records the hypernetwork W(t) (only when `quad` is not zero: a stage
/// with b_s = 0 adds nothing to g), the other F with X and W(t) as leaves. Backpropagating a
/// through F gives aᵀ∂F/∂X and aᵀ∂F/∂W; backpropagating quad aᵀ∂F/∂W through the
/// hypernetwork adds quad aᵀ∂F/∂θ to the parameters. That last sum is where the adjoint
/// moves the most memory: every stage adds a gradient the size of the stacked parameters,
/// (E + 1) times the block's weights. The tape does it in the generation's own backward pass
/// (`generate_bwd_acc`: the old sum read where dF would be written), not as dF then an add.
///
/// Shortfall: the scaling of each dW by quad is still a pass of its own over the block's
/// weights (1/(E + 1) of that sum's bytes).
fn slopes(
    field: &Field,
    z: &Augmented,
    t: f64,
    quad: f64,
    compute: Option<DType>,
) -> Result<Augmented> {
    let hyper = Tape::with_compute(compute);
    let w = if quad != 0.0 {
        weights_at(field, &hyper, t)?
    } else {
        hyper.no_grad(|| weights_at(field, &hyper, t))?
    };
    let tape = Tape::with_compute(compute);
    let x = tape.leaf(z.x.clone());
    let w_leaves: Vec<Var> = w.iter().map(|w| tape.leaf(w.value().clone())).collect();
    let y = field.eval(&x, &w_leaves, t)?;
    let grads = tape.backward_with(&y, z.a.clone())?;
    let dadtau = match grads.get(&x) {
        Some(ja) => ja.clone(),
        None => Tensor::zeros(z.a.shape(), z.a.dtype()), // F does not depend on X
    };
    if quad != 0.0 {
        let mut seeds = Vec::new();
        for (w, leaf) in w.iter().zip(&w_leaves) {
            if let (true, Some(dw)) = (w.requires_grad(), grads.get(leaf)) {
                seeds.push((w, dw.scale(quad as f32)?));
            }
        }
        if !seeds.is_empty() {
            hyper.backward_many(seeds)?;
        }
    }
    // x: F itself, the slope of X negated (see `Augmented`)
    Ok(Augmented {
        x: y.value().clone(),
        a: dadtau,
    })
}

/// W(t) at one time, on `tape`.
fn weights_at(field: &Field, tape: &Tape, t: f64) -> Result<Vec<Var>> {
    let mut w = (field.weights)(tape, &[t])?;
    Ok(w.pop().expect("one time asked, one set of weights"))
}
