//! The ODE solver: explicit Runge-Kutta tableaus (`tableau.rs`) driving one generic step, and
//! the ways a solve can be differentiated (`GradMode`; the adjoint lives in `adjoint.rs`).
//!
//! The solver sees the model as a `Field`: a pure function F(x; w) and a generator of the
//! weights w = W(t) at any times. Keeping F pure (it reads only its arguments) is what lets the
//! solver record it, checkpoint it per step, or re-evaluate it backwards in time for the adjoint.
//!
//! The time grid of a solve of n steps over [0, 1]: step i runs from i dt to (i + 1) dt with
//! dt = 1/n, and its stage s evaluates F at t = (i + c_s) dt. Stages of different steps that land
//! on the same time (Heun's and RK4's step ends) share one W(t), generated once.

mod adjoint;
pub mod tableau;

use odeflow_autodiff::{Result, Tape, Var};
use odeflow_runtime::rng::{mix64, GOLDEN_GAMMA};
use odeflow_runtime::{Error as RuntimeError, Tensor};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;
use tableau::{rk_step, Tableau};

/// F(x; w, dropout seed): the block's math for one evaluation.
///
/// Shapes: x [B, T, D], w the weights of one evaluation -> [B, T, D]
pub type FieldFn = dyn Fn(&Var, &[Var], Option<u64>) -> Result<Var>;

/// The weights W(t) at each of `ts`, generated on `tape` (parameters lifted with `tape.param`,
/// so a backward walk of `tape` reaches them).
///
/// Shapes: ts [N] -> N x (the weights of one evaluation)
pub type WeightsFn = dyn Fn(&Tape, &[f64]) -> Result<Vec<Vec<Var>>>;

/// The field as the solver sees it.
#[derive(Clone)]
pub struct Field {
    pub f: Rc<FieldFn>,
    pub weights: Rc<WeightsFn>,
    /// This pass's dropout seed (`None`: no dropout). The mask of an evaluation at time t is
    /// drawn from (seed, t), so F stays one function of (x, t) wherever a solver evaluates it:
    /// two stages at the same time, or the adjoint's backward solve, see the same mask.
    pub dropout_seed: Option<u64>,
}

impl Field {
    /// F(x, t) with the weights `w` = W(t).
    pub fn eval(&self, x: &Var, w: &[Var], t: f64) -> Result<Var> {
        (self.f)(x, w, self.dropout_seed.map(|s| mask_seed(s, t)))
    }
}

/// The dropout seed of an evaluation at time t.
fn mask_seed(seed: u64, t: f64) -> u64 {
    mix64(seed ^ t.to_bits().wrapping_mul(GOLDEN_GAMMA))
}

/// Which integration scheme advances the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    /// The reference's fixed-step Euler, which evaluates F at the right end of each step:
    /// X_{i+1} = X_i + dt F(X_i, t_{i+1}) (MODEL.md section 1). First order, 1 NFE per step.
    #[default]
    Euler,
    /// The explicit midpoint rule: second order, 2 NFE per step.
    Midpoint,
    /// Heun's method: second order, 2 NFE per step.
    Heun,
    /// The classic Runge-Kutta method: fourth order, 4 NFE per step.
    Rk4,
}

impl Solver {
    pub const ALL: [Solver; 4] = [Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::Rk4];

    pub fn tableau(self) -> &'static Tableau {
        match self {
            Solver::Euler => &tableau::EULER,
            Solver::Midpoint => &tableau::MIDPOINT,
            Solver::Heun => &tableau::HEUN,
            Solver::Rk4 => &tableau::RK4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::Midpoint => "midpoint",
            Solver::Heun => "heun",
            Solver::Rk4 => "rk4",
        }
    }

    /// The order p: halving dt divides a solve's error by about 2^p.
    pub fn order(self) -> u32 {
        self.tableau().order
    }

    /// Vector-field evaluations of one forward solve of `n_steps` steps (NFE).
    pub fn nfe(self, n_steps: usize) -> usize {
        self.tableau().stages() * n_steps
    }

    /// The time of stage `s` of step `i` in a solve of `n_steps` steps: (i + c_s) / n.
    pub fn stage_time(self, i: usize, s: usize, n_steps: usize) -> f64 {
        (i as f64 + self.tableau().c[s]) / n_steps as f64
    }

    /// The distinct times a forward solve of `n_steps` steps evaluates F at, in increasing order
    /// (for Euler, the reference's t_i = (i + 1) / n).
    pub fn eval_times(self, n_steps: usize) -> Vec<f64> {
        let stages = self.tableau().stages();
        let mut ts: Vec<f64> = (0..n_steps)
            .flat_map(|i| (0..stages).map(move |s| self.stage_time(i, s, n_steps)))
            .collect();
        ts.sort_by(f64::total_cmp);
        ts.dedup();
        ts
    }

    /// Integrates dX/dt = F(X, t) from X_0 = `x0` over [0, 1] in `n_steps` steps, keeping for
    /// the backward pass what `grad` says.
    ///
    /// Shapes: x0 [B, T, D] -> X(1) [B, T, D]
    pub fn solve(self, x0: &Var, field: &Field, n_steps: usize, grad: GradMode) -> Result<Var> {
        if n_steps == 0 {
            return Err(invalid("an ODE solve needs at least one step"));
        }
        match grad {
            GradMode::Backprop | GradMode::Checkpoint => {
                self.solve_recorded(x0, field, n_steps, grad == GradMode::Checkpoint)
            }
            GradMode::Adjoint => adjoint::solve(self, x0, field, n_steps, n_steps),
            GradMode::CheckpointedAdjoint(0) => Err(invalid(
                "a checkpointed adjoint needs segments of at least one step",
            )),
            GradMode::CheckpointedAdjoint(k) => adjoint::solve(self, x0, field, n_steps, k),
        }
    }

    /// X(1) from X(0) without a tape, generating W(t) per evaluation (the adjoint's forward).
    ///
    /// Shapes: x0 [B, T, D] -> [B, T, D]
    pub fn integrate(self, x0: &Tensor, field: &Field, n_steps: usize) -> Result<Tensor> {
        let mut x = x0.clone();
        for i in 0..n_steps {
            x = adjoint::forward_step(self, field, i, n_steps, &x, None)?;
        }
        Ok(x)
    }

    /// X(0) re-integrated backwards from X(1) with the same tableau, as the adjoint's backward
    /// solve does: comparing it with the true X(0) measures the adjoint's state drift.
    ///
    /// Shapes: x1 [B, T, D] -> [B, T, D]
    pub fn reintegrate(self, x1: &Tensor, field: &Field, n_steps: usize) -> Result<Tensor> {
        adjoint::reintegrate(self, field, n_steps, x1)
    }

    /// The solve as ordinary tape ops: every W(t) generated at once on `x0`'s tape, then each
    /// step recorded whole, or as one checkpointed segment (`checkpoint`).
    fn solve_recorded(self, x0: &Var, field: &Field, n: usize, checkpoint: bool) -> Result<Var> {
        let times = self.eval_times(n);
        let weights = (field.weights)(x0.tape(), &times)?;
        let dt = 1.0 / n as f32;
        let mut x = x0.clone();
        for i in 0..n {
            let stage_times: Vec<f64> = (0..self.tableau().stages())
                .map(|s| self.stage_time(i, s, n))
                .collect();
            // the step's inputs: the state, then each stage's weights (a stage time shared by
            // two stages is passed twice; the tape sums its two gradients)
            let mut inputs = vec![x];
            for t in &stage_times {
                let j = times.partition_point(|u| u < t);
                inputs.extend(weights[j].iter().cloned());
            }
            let (tab, field) = (self.tableau(), field.clone());
            let step = move |args: &[Var]| {
                let per_stage = (args.len() - 1) / stage_times.len();
                rk_step(tab, &args[0], dt, |s, xs| {
                    let w = &args[1 + s * per_stage..1 + (s + 1) * per_stage];
                    field.eval(xs, w, stage_times[s])
                })
            };
            x = run_step(checkpoint, &inputs, step)?;
        }
        Ok(x)
    }
}

impl fmt::Display for Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Solver {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Solver, String> {
        Solver::ALL
            .into_iter()
            .find(|solver| solver.name() == s)
            .ok_or_else(|| format!("unknown solver {s:?}; choose euler, midpoint, heun or rk4"))
    }
}

/// What a solve keeps for the backward pass, and so how exact its gradient is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradMode {
    /// Record every intermediate of every step (exact; memory grows with L times a step).
    Backprop,
    /// Keep only each step's input and recompute the step in backward (exact; the reference's
    /// method; memory grows with L times one state).
    #[default]
    Checkpoint,
    /// Keep only the final state, and solve the adjoint ODE backwards in time together with the
    /// state (memory independent of L; the gradient is approximate, converging as dt -> 0).
    Adjoint,
    /// The adjoint with the state saved every k steps: the backward solve restarts the state
    /// from each saved value, so its drift never spans more than k steps (memory L/k states).
    CheckpointedAdjoint(usize),
}

impl GradMode {
    /// Whether the gradient is that of the discrete solve itself, to rounding.
    pub fn is_exact(self) -> bool {
        matches!(self, GradMode::Backprop | GradMode::Checkpoint)
    }
}

impl fmt::Display for GradMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradMode::Backprop => f.write_str("backprop"),
            GradMode::Checkpoint => f.write_str("checkpoint"),
            GradMode::Adjoint => f.write_str("adjoint"),
            GradMode::CheckpointedAdjoint(k) => write!(f, "adjoint:{k}"),
        }
    }
}

impl FromStr for GradMode {
    type Err = String;

    /// `backprop`, `checkpoint`, `adjoint`, or `adjoint:K` (states saved every K steps).
    fn from_str(s: &str) -> std::result::Result<GradMode, String> {
        let bad = || {
            format!(
                "unknown gradient mode {s:?}; choose backprop, checkpoint, adjoint, or adjoint:K \
                 (the adjoint with the state saved every K >= 1 steps)"
            )
        };
        match s {
            "backprop" => Ok(GradMode::Backprop),
            "checkpoint" => Ok(GradMode::Checkpoint),
            "adjoint" => Ok(GradMode::Adjoint),
            _ => match s.strip_prefix("adjoint:").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(GradMode::CheckpointedAdjoint(k)),
                _ => Err(bad()),
            },
        }
    }
}

fn invalid(msg: &str) -> odeflow_autodiff::Error {
    RuntimeError::InvalidArgument {
        op: "solve",
        msg: msg.into(),
    }
    .into()
}

/// Runs one step `f(inputs)`, recorded whole, or checkpointed (`checkpoint`: only the inputs
/// are kept, and the step is recomputed in backward).
pub(crate) fn run_step<F>(checkpoint: bool, inputs: &[Var], f: F) -> Result<Var>
where
    F: Fn(&[Var]) -> Result<Var> + 'static,
{
    if !checkpoint {
        return f(inputs);
    }
    let refs: Vec<&Var> = inputs.iter().collect();
    inputs[0].tape().checkpoint(&refs, move |_, args| f(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dx/dt = a x, with the constant a as every W(t).
    fn growth(a: f32) -> Field {
        Field {
            f: Rc::new(|x: &Var, w: &[Var], _| x.mul(&w[0])),
            weights: Rc::new(move |tape: &Tape, ts: &[f64]| {
                Ok(ts
                    .iter()
                    .map(|_| vec![tape.constant(Tensor::scalar(a))])
                    .collect())
            }),
            dropout_seed: None,
        }
    }

    #[test]
    fn euler_on_a_linear_field_matches_its_closed_form() {
        // dx/dt = a x with the right-end Euler: x_L = x_0 (1 + a/L)^L, exactly
        let tape = Tape::new();
        let (a, n) = (0.7f32, 8);
        let x0 = tape.leaf(Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap());
        for grad in [GradMode::Backprop, GradMode::Checkpoint, GradMode::Adjoint] {
            let x = Solver::Euler.solve(&x0, &growth(a), n, grad).unwrap();
            let growth = (1.0 + a / n as f32).powi(n as i32);
            let got = x.value().to_vec::<f32>().unwrap();
            assert!((got[0] - growth).abs() < 1e-5 && (got[1] + 2.0 * growth).abs() < 1e-5);
        }
        assert_eq!(Solver::Euler.eval_times(4), vec![0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn the_backward_reintegration_of_euler_has_its_closed_form() {
        // forward x_L = x_0 (1 + a/L)^L; backwards each step subtracts dt a x: x_0 (1 - a/L)^L
        // times that, which is not x_0: the drift the adjoint's backward solve sees
        let (a, n) = (0.7f32, 8);
        let x0 = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
        let x1 = Solver::Euler.integrate(&x0, &growth(a), n).unwrap();
        let back = Solver::Euler.reintegrate(&x1, &growth(a), n).unwrap();
        let (up, down) = (
            (1.0 + a / n as f32).powi(n as i32),
            (1.0 - a / n as f32).powi(n as i32),
        );
        let (x1, back) = (x1.to_vec::<f32>().unwrap(), back.to_vec::<f32>().unwrap());
        assert!((x1[0] - up).abs() < 1e-5 && (x1[1] + 2.0 * up).abs() < 1e-5);
        assert!((back[0] - up * down).abs() < 1e-5 && (back[1] + 2.0 * up * down).abs() < 1e-5);
        // RK4 undoes itself to within its own error
        let x1 = Solver::Rk4.integrate(&x0, &growth(a), n).unwrap();
        let back = Solver::Rk4.reintegrate(&x1, &growth(a), n).unwrap();
        assert!((back.to_vec::<f32>().unwrap()[0] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn shared_stage_times_are_generated_once() {
        // RK4 on 2 steps: 0, 1/4, 1/2, 3/4, 1 (the step end is the next step's start)
        assert_eq!(Solver::Rk4.eval_times(2), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(Solver::Heun.eval_times(2), vec![0.0, 0.5, 1.0]);
        assert_eq!(Solver::Midpoint.eval_times(2), vec![0.0, 0.25, 0.5, 0.75]);
        assert_eq!(Solver::Rk4.nfe(3), 12);
    }

    #[test]
    fn names_parse_back_and_bad_ones_say_what_exists() {
        for solver in Solver::ALL {
            assert_eq!(solver.to_string().parse::<Solver>(), Ok(solver));
        }
        assert!("rk5".parse::<Solver>().unwrap_err().contains("rk4"));
        for mode in [
            GradMode::Backprop,
            GradMode::Checkpoint,
            GradMode::Adjoint,
            GradMode::CheckpointedAdjoint(4),
        ] {
            assert_eq!(mode.to_string().parse::<GradMode>(), Ok(mode));
        }
        for bad in ["adjoint:0", "adjoint:", "adjoint:x", "exact"] {
            assert!(
                bad.parse::<GradMode>().unwrap_err().contains("adjoint:K"),
                "{bad}"
            );
        }
    }

    #[test]
    fn zero_steps_is_an_error() {
        let tape = Tape::new();
        let x0 = tape.leaf(Tensor::scalar(1.0));
        let err = Solver::Rk4
            .solve(&x0, &growth(1.0), 0, GradMode::Backprop)
            .unwrap_err();
        assert!(err.to_string().contains("at least one step"));
    }
}
