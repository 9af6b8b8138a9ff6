//! The ODE solver behind a small interface: the solvers-and-adjoint work adds tableaus and
//! gradient modes here without touching the model.
//!
//! The solver sees the model as a `Field`: a pure function F(x; w) plus the weights w_j at each
//! evaluation time the solver asked for (`Solver::eval_times`). Keeping F pure (it reads only its
//! arguments) is what lets the solver record it, checkpoint it per step, or later differentiate
//! it on a fresh tape for the adjoint.

use odeflow_autodiff::{Result, Var};
use std::rc::Rc;

/// F(x; w, dropout seed): the block's math for one evaluation.
///
/// Shapes: x [B, T, D], w the weights of one evaluation -> [B, T, D]
pub type FieldFn = dyn Fn(&Var, &[Var], Option<u64>) -> Result<Var>;

/// The field as the solver sees it.
pub struct Field {
    pub f: Rc<FieldFn>,
    /// The weights of evaluation j, for each time of `Solver::eval_times`.
    pub weights: Vec<Vec<Var>>,
    /// The dropout seed of evaluation j (`None`: no dropout).
    pub seeds: Vec<Option<u64>>,
}

/// Which integration scheme advances the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Solver {
    /// The reference's fixed-step Euler, which evaluates F at the right end of each step:
    /// t_i = (i + 1) dt, X_{i+1} = X_i + dt F(X_i, t_i) (MODEL.md section 1).
    #[default]
    Euler,
}

/// What a solve keeps for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradMode {
    /// Record every intermediate of every step (exact; memory grows with L times a step).
    Backprop,
    /// Keep only each step's input and recompute the step in backward (exact; the reference's
    /// method; memory grows with L times one state).
    #[default]
    Checkpoint,
}

impl Solver {
    /// The times at which a solve of `n_steps` steps over [0, 1] evaluates the field.
    pub fn eval_times(self, n_steps: usize) -> Vec<f64> {
        match self {
            Solver::Euler => (0..n_steps)
                .map(|i| (i + 1) as f64 / n_steps as f64)
                .collect(),
        }
    }

    /// Vector-field evaluations per forward solve (NFE).
    pub fn nfe(self, n_steps: usize) -> usize {
        self.eval_times(n_steps).len()
    }

    /// Integrates dX/dt = F(X, t) from X_0 = `x0` over [0, 1] in `n_steps` steps.
    ///
    /// Shapes: x0 [B, T, D] -> X(1) [B, T, D]
    pub fn solve(self, x0: &Var, field: &Field, n_steps: usize, grad: GradMode) -> Result<Var> {
        let dt = 1.0 / n_steps as f32;
        let mut x = x0.clone();
        match self {
            Solver::Euler => {
                for (w, &seed) in field.weights.iter().zip(&field.seeds) {
                    let f = field.f.clone();
                    // X_{i+1} = X_i + dt F(X_i, t_i)
                    let euler = move |args: &[Var]| {
                        let x = &args[0];
                        x.add(&f(x, &args[1..], seed)?.scale(dt)?)
                    };
                    let inputs: Vec<Var> = std::iter::once(x).chain(w.iter().cloned()).collect();
                    x = run_step(grad, &inputs, euler)?;
                }
            }
        }
        Ok(x)
    }
}

/// Runs one step `f(inputs)`, recorded whole (`Backprop`) or checkpointed (`Checkpoint`).
pub(crate) fn run_step<F>(grad: GradMode, inputs: &[Var], f: F) -> Result<Var>
where
    F: Fn(&[Var]) -> Result<Var> + 'static,
{
    match grad {
        GradMode::Backprop => f(inputs),
        GradMode::Checkpoint => {
            let refs: Vec<&Var> = inputs.iter().collect();
            inputs[0].tape().checkpoint(&refs, move |_, args| f(args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odeflow_autodiff::Tape;
    use odeflow_runtime::Tensor;

    #[test]
    fn euler_on_a_linear_field_matches_its_closed_form() {
        // dx/dt = a x with the right-end Euler: x_L = x_0 (1 + a/L)^L, exactly
        let tape = Tape::new();
        let (a, n) = (0.7f32, 8);
        let field = Field {
            f: Rc::new(|x: &Var, w: &[Var], _| x.mul(&w[0])),
            weights: (0..n)
                .map(|_| vec![tape.constant(Tensor::scalar(a))])
                .collect(),
            seeds: vec![None; n],
        };
        let x0 = tape.leaf(Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap());
        for grad in [GradMode::Backprop, GradMode::Checkpoint] {
            let x = Solver::Euler.solve(&x0, &field, n, grad).unwrap();
            let growth = (1.0 + a / n as f32).powi(n as i32);
            let got = x.value().to_vec::<f32>().unwrap();
            assert!((got[0] - growth).abs() < 1e-5 && (got[1] + 2.0 * growth).abs() < 1e-5);
        }
        assert_eq!(Solver::Euler.eval_times(4), vec![0.25, 0.5, 0.75, 1.0]);
    }
}
