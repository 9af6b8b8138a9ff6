//! Custom nodes: an op whose backward rule is a closure its caller supplies.
//!
//! `Tape::custom(inputs, y, backward)` records one node with output value `y`. When the walk
//! reaches it, `backward(dy)` must return one gradient per input (`None` for an input it gives
//! none). Nothing else is saved: whatever the rule needs, the closure owns. This is how the ODE
//! solver's adjoint mode works: its forward keeps only the final state, and its backward solves
//! the adjoint equation on tapes of its own, adding the parameters' gradients straight into
//! their buffers (`Tape::param` on those tapes) and returning the initial state's.

use crate::tape::Tape;
use crate::{Error, Result, Var};
use odeflow_runtime::Tensor;

/// The backward rule of a custom node: dy -> one gradient per input.
pub type CustomBackward = dyn FnOnce(Tensor) -> Result<Vec<Option<Tensor>>>;

impl Tape {
    /// Records `y` as a function of `inputs` whose vector-Jacobian product is `backward`.
    ///
    /// The node is recorded even if no input needs a gradient (like a checkpointed segment, the
    /// closure may reach parameters directly). With recording off, `y` is just a constant.
    ///
    /// Shapes: backward's dy [y's shape] -> one [input's shape] per input.
    pub fn custom<F>(
        &self,
        name: &'static str,
        inputs: &[&Var],
        y: Tensor,
        backward: F,
    ) -> Result<Var>
    where
        F: FnOnce(Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    {
        self.check_inputs(name, inputs)?;
        if !self.is_recording() {
            return Ok(self.constant(y));
        }
        let op = crate::op::Op::Custom {
            name,
            n_inputs: inputs.len(),
            backward: Box::new(backward),
        };
        Ok(self.push(op, inputs, vec![y]).pop().expect("one output"))
    }
}

/// Runs a custom rule and checks it kept its promise of one gradient per input.
pub(crate) fn backward(
    name: &'static str,
    n_inputs: usize,
    rule: Box<CustomBackward>,
    dy: Tensor,
) -> Result<Vec<Option<Tensor>>> {
    let grads = rule(dy)?;
    if grads.len() != n_inputs {
        let msg = format!("returned {} gradients for {n_inputs} inputs", grads.len());
        return Err(Error::Custom { name, msg });
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_node_passes_its_rules_gradient_to_its_input() {
        // y = 3x by hand, dy/dx = 3; loss = sum(y * y) so dloss/dx = 18x
        let tape = Tape::new();
        let x = tape.leaf(Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap());
        let y = x.value().scale(3.0).unwrap();
        let y = tape
            .custom("triple", &[&x], y, |dy| Ok(vec![Some(dy.scale(3.0)?)]))
            .unwrap();
        let loss = y.mul(&y).unwrap().sum_all().unwrap();
        let dx = tape
            .backward(&loss)
            .unwrap()
            .get(&x)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(dx, vec![18.0, -36.0]);
    }

    #[test]
    fn a_rule_with_the_wrong_gradient_count_is_an_error() {
        let tape = Tape::new();
        let x = tape.leaf(Tensor::scalar(1.0f32));
        let y = tape
            .custom("bad", &[&x], Tensor::scalar(1.0f32), |_| Ok(vec![]))
            .unwrap();
        let err = tape.backward(&y).unwrap_err().to_string();
        assert!(
            err.contains("bad") && err.contains("0 gradients for 1"),
            "{err}"
        );
    }
}
