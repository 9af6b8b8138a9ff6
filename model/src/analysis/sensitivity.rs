//! Token sensitivity by Lyapunov exponents (MODEL.md section 11): how strongly the output
//! token's dynamics stretch perturbations of each prompt token.
//!
//! Along the trajectory X(t) of a prompt, for the output position j (the last prompt token) and
//! each source token k <= j:
//!
//! ```text
//! J_k(t) = dF_j(X(t), t) / dX_k                    [D, D], J_k[c][e] = dF_j[c] / dX_k[e]
//! Q_k <- M_k Q_k,  Q_k, R_k = qr(Q_k),  s_k += log |diag R_k|       per step (`lyapunov.rs`)
//! ```
//!
//! with M_k = I + dt J_k(X_i, t_i) for Euler (MODEL.md's Q_k <- Q_k + dt J_k Q_k), the tableau's
//! linearised step for the other solvers. The trajectory is the forward pass's own: the same
//! tableau, the same stage times (t_i = (i + 1) dt for Euler: the reference's analysis uses
//! i dt, one step off, MODEL.md section 12), the same `rk_step`, so the final state is the one
//! the model's solve reaches. A vanilla GPT-2 has no field; its layer x -> g(x) is read as an
//! Euler step of F(x) = L (g(x) - x), so M_k = dg_j/dX_k + (I if k != j): the layer's own
//! Jacobian for the output token, and the same I + dt J form as the ODE for the others.
//!
//! The Jacobians come from the autodiff tape, all D rows in one backward pass: the state is
//! copied into a batch of n rows, and row r's output is seeded with the unit vector of component
//! c0 + r of token j. Batch rows do not interact (attention stays within a sequence), so the
//! gradient reaching row r of the input is row c0 + r of every J_k at once. D rows cost
//! ceil(D / n) forward and backward passes of a batch of n (`Options::jacobian_batch`).
//!
//! Cost: T Jacobians of D x D in f64 per stage (T D^2 8 bytes: 4 MB for the tiny model's
//! 64 x 128, 300 MB at 64 tokens of D = 768), and per step T QR factorisations of D x m.
//!
//! Reference tests: `model/tests/analysis_sensitivity.rs` (the Jacobians against finite
//! differences, a linear field's exponents against its eigenvalues, the trajectory against the
//! solver's).

use super::linalg::Matrix;
use super::lyapunov::{kaplan_yorke, tangent_map, QrIteration};
use crate::block::{self, BlockWeights};
use crate::layers::Dropout;
use crate::model::{Forward, Model};
use crate::ode::field_fn;
use crate::solver::tableau::rk_step;
use crate::{Error, Result, Solver};
use odeflow_autodiff::{Error as TapeError, Tape, Var};
use odeflow_runtime::{Device, Error as RuntimeError, Tensor};
use std::rc::Rc;

/// F(x; w) for a batch of copies of one state.
///
/// Shapes: x [n, T, D], w the weights of one evaluation -> [n, T, D]
pub type BatchField = dyn Fn(&Var, &[Var]) -> odeflow_autodiff::Result<Var>;

/// A trajectory the analysis can follow: where it starts, the field, and its weights at every
/// time the solver evaluates.
pub struct Dynamics {
    /// X_0 of the prompt: [T, D] (f32, CPU)
    pub x0: Tensor,
    pub field: Rc<BatchField>,
    pub solver: Solver,
    pub steps: usize,
    /// The distinct stage times, increasing (`Solver::eval_times`).
    pub times: Vec<f64>,
    /// The weights at each of `times`, as `BlockWeights::vars` lists them.
    pub weights: Vec<Vec<Tensor>>,
}

impl Dynamics {
    /// The dynamics of `model` on the prompt `ids`, solved with `solver` in `steps` steps (a
    /// GPT-2 or re-discretised model: Euler at its own depth).
    pub fn of_model(model: &Model, ids: &[u32], solver: Solver, steps: usize) -> Result<Dynamics> {
        model.check_forward(&Forward {
            steps: Some(steps),
            solver,
            ..Forward::eval()
        })?;
        let cfg = model.config();
        if ids.is_empty() || ids.len() > cfg.seq_len {
            let msg = format!(
                "a prompt of {} tokens: give 1 to {} tokens, the model's context",
                ids.len(),
                cfg.seq_len
            );
            return Err(Error::Input { msg });
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            let msg = format!(
                "token {bad} is not in the model's vocabulary of {} tokens",
                cfg.vocab_size
            );
            return Err(Error::Input { msg });
        }
        let tape = Tape::new();
        let prompt = Tensor::from_vec(ids.to_vec(), &[1, ids.len()])?;
        let times = solver.eval_times(steps);
        let (x0, weights, field) = tape.no_grad(|| -> Result<_> {
            let n_heads = cfg.n_heads;
            Ok(match model {
                Model::Ode(m) => {
                    let f = field_fn(cfg);
                    let field: Rc<BatchField> = Rc::new(move |x, w| f(x, w, None));
                    (
                        m.embed(&tape, &prompt)?,
                        m.weights_at(&tape, &times)?,
                        field,
                    )
                }
                Model::Discrete(m) => {
                    let f = field_fn(cfg);
                    let field: Rc<BatchField> = Rc::new(move |x, w| f(x, w, None));
                    (m.embed(&tape, &prompt)?, m.layer_weights(&tape)?, field)
                }
                Model::Gpt2(m) => {
                    let layers = steps as f32;
                    let field: Rc<BatchField> = Rc::new(move |x, w| {
                        let w = BlockWeights::from_vars(block::BlockKind::Gpt, w);
                        let g = block::sequential_block(x, &w, n_heads, &mut Dropout::off())?;
                        // the layer as an Euler step: F = L (g(x) - x)
                        g.sub(x)?.scale(layers)
                    });
                    (m.embed(&tape, &prompt)?, m.layer_weights(&tape)?, field)
                }
            })
        })?;
        let x0 = x0.value().to_device(Device::Cpu)?;
        let x0 = Tensor::from_vec(x0.to_f32_vec()?, &[ids.len(), cfg.d_model])?;
        let weights = weights
            .iter()
            .map(|w| w.vars().iter().map(|v| cpu_copy(v.value())).collect())
            .collect::<Result<Vec<Vec<Tensor>>>>()?;
        Ok(Dynamics {
            x0,
            field,
            solver,
            steps,
            times,
            weights,
        })
    }

    /// The weights at stage time `t` (one of `times`).
    fn weights_at(&self, t: f64) -> &[Tensor] {
        let i = self.times.partition_point(|&u| u < t);
        &self.weights[i.min(self.weights.len() - 1)]
    }
}

/// A contiguous f32 copy on the CPU.
fn cpu_copy(t: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(t.to_f32_vec()?, t.shape())?)
}

/// F(x) and the Jacobian blocks J_k = dF_j / dX_k for k = 0 ..= j, at the state `x`, with the
/// weights `w`, from ceil(D / batch) backward passes (see the module docs).
///
/// Shapes: x [T, D] -> (F(x) [T, D], (j + 1) x [D, D])
pub fn token_jacobians(
    field: &BatchField,
    x: &Tensor,
    w: &[Tensor],
    j: usize,
    batch: usize,
) -> odeflow_autodiff::Result<(Tensor, Vec<Matrix>)> {
    let (t, d) = (x.shape()[0], x.shape()[1]);
    if j >= t || batch == 0 {
        let msg = format!("output position {j} of {t} tokens, in batches of {batch}");
        let op = "token_jacobians";
        return Err(RuntimeError::InvalidArgument { op, msg }.into());
    }
    let mut jac = vec![Matrix::zeros(d, d); j + 1];
    let mut fx = None;
    for c0 in (0..d).step_by(batch) {
        let n = batch.min(d - c0);
        let tape = Tape::new();
        let xb = tape.leaf(x.unsqueeze(0)?.broadcast_to(&[n, t, d])?.contiguous()?);
        let w: Vec<Var> = w.iter().map(|w| tape.constant(w.clone())).collect();
        let y = field(&xb, &w)?; // [n, T, D]
        if fx.is_none() {
            let first = y.value().narrow(0, 0, 1)?.to_f32_vec()?;
            fx = Some(Tensor::from_vec(first, &[t, d])?);
        }
        // row r asks for component c0 + r of the output token j
        let mut seed = vec![0.0f32; n * t * d];
        for r in 0..n {
            seed[(r * t + j) * d + c0 + r] = 1.0;
        }
        let grads = match tape.backward_with(&y, Tensor::from_vec(seed, &[n, t, d])?) {
            Ok(grads) => grads,
            // a field that does not depend on x (a constant): every J_k is zero
            Err(TapeError::NothingToDifferentiate) => continue,
            Err(e) => return Err(e),
        };
        let Some(g) = grads.get(&xb) else { continue };
        let g = g.to_f32_vec()?; // [n, T, D]
        for (k, jac_k) in jac.iter_mut().enumerate() {
            for r in 0..n {
                let row = &g[(r * t + k) * d..(r * t + k + 1) * d];
                for (e, &v) in row.iter().enumerate() {
                    jac_k[(c0 + r, e)] = v as f64;
                }
            }
        }
    }
    Ok((fx.expect("D >= 1 gives one pass"), jac))
}

/// How the sensitivity analysis runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The output position j (the last prompt token, T - 1, in the paper's analysis).
    pub output: usize,
    /// Directions tracked per token, m in 1 ..= D (all D gives the whole spectrum; fewer, the
    /// growth of the first m coordinate directions, which only over long flows settles on the
    /// m largest exponents).
    pub exponents: usize,
    /// Jacobian rows per backward pass.
    pub jacobian_batch: usize,
}

/// The exponents of every source token.
#[derive(Clone, Debug)]
pub struct Sensitivity {
    pub output: usize,
    /// The stage times in the order the solver evaluated them, step after step.
    pub stage_times: Vec<f64>,
    /// Per source token k = 0 ..= output: its Lyapunov exponents, largest first.
    pub exponents: Vec<Vec<f64>>,
    /// Per source token: the Kaplan-Yorke dimension of its exponents.
    pub kaplan_yorke: Vec<f64>,
    /// X(1) of the trajectory the Jacobians were taken along: [T, D].
    pub final_state: Tensor,
}

impl Sensitivity {
    /// The largest exponent of each source token.
    pub fn max_exponents(&self) -> Vec<f64> {
        self.exponents.iter().map(|e| e[0]).collect()
    }
}

/// Runs the QR iteration of every source token along `dynamics`; `progress(done, steps)` after
/// each solver step.
pub fn token_sensitivity(
    dynamics: &Dynamics,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sensitivity> {
    let (t, d) = (dynamics.x0.shape()[0], dynamics.x0.shape()[1]);
    let j = opts.output;
    if j >= t || opts.exponents == 0 || opts.exponents > d || opts.jacobian_batch == 0 {
        let msg = format!(
            "output position {j} must be below the prompt's {t} tokens, the exponents per token \
             in 1..={d}, and the Jacobian batch at least 1 (got {} and {})",
            opts.exponents, opts.jacobian_batch
        );
        return Err(Error::Input { msg });
    }
    let (solver, n) = (dynamics.solver, dynamics.steps);
    let tab = solver.tableau();
    let dt = 1.0 / n as f32;
    let mut qr: Vec<QrIteration> = (0..=j)
        .map(|_| QrIteration::new(d, opts.exponents))
        .collect();
    let mut stage_times = Vec::with_capacity(n * tab.stages());
    let mut x = dynamics.x0.clone();
    for i in 0..n {
        // per stage, per source token: J_k at the stage's state and time
        let mut stage_jacobians: Vec<Vec<Matrix>> = Vec::with_capacity(tab.stages());
        x = rk_step(tab, &x, dt, |s, xs| {
            let ts = solver.stage_time(i, s, n);
            stage_times.push(ts);
            let w = dynamics.weights_at(ts);
            let (fx, jac) = token_jacobians(&*dynamics.field, xs, w, j, opts.jacobian_batch)?;
            stage_jacobians.push(jac);
            Ok(fx)
        })?;
        for (k, qr_k) in qr.iter_mut().enumerate() {
            let per_stage: Vec<Matrix> = stage_jacobians.iter().map(|js| js[k].clone()).collect();
            qr_k.step(&tangent_map(tab, dt as f64, &per_stage), dt as f64);
        }
        progress(i + 1, n);
    }
    let exponents: Vec<Vec<f64>> = qr.iter().map(QrIteration::exponents).collect();
    let kaplan_yorke = exponents.iter().map(|e| kaplan_yorke(e)).collect();
    Ok(Sensitivity {
        output: j,
        stage_times,
        exponents,
        kaplan_yorke,
        final_state: x,
    })
}
