//! Gradient checkpointing: trade compute for memory by recomputing a segment in backward.
//!
//! `Tape::checkpoint(inputs, f)` runs `f` with recording off, so none of its intermediates are
//! kept, and records a single node that holds only `f` and its inputs. When the backward walk
//! reaches that node, it runs `f` again on a fresh tape (recording), backpropagates the
//! segment's output gradient through it, and hands the inputs' gradients back to the outer walk.
//! Parameters that `f` lifts with `tape.param` receive their gradients directly, from the inner
//! walk.
//!
//! Memory: the outer tape keeps the segment's inputs and output; the segment's intermediates
//! exist only briefly, once in the forward and once during its own backward. For an ODE solve
//! with one segment per step, that is the L step inputs plus one step's activations, instead of
//! all L steps' activations. Cost: each segment's forward runs twice.

use crate::tape::Tape;
use crate::{Result, Var};
use odeflow_runtime::Tensor;
use std::rc::Rc;

/// The body of a checkpointed segment: the tape to record on, and the segment's inputs.
pub type SegmentFn = dyn Fn(&Tape, &[Var]) -> Result<Var>;

/// What the outer tape keeps for a segment: its body and its input values.
pub(crate) struct Checkpointed {
    f: Rc<SegmentFn>,
    inputs: Vec<Tensor>,
    needs_grad: Vec<bool>,
    /// The outer tape's compute dtype, so the recomputation casts as the forward did.
    compute: Option<odeflow_runtime::DType>,
}

impl Tape {
    /// Runs `f(tape, inputs)` without keeping its intermediates, and recomputes it in backward.
    ///
    /// Rules for `f`, which runs twice:
    /// - Every `Var` it uses must come from `inputs` or from `tape` (`tape.param`,
    ///   `tape.constant`). A `Var` captured from outside belongs to the outer tape, and using it
    ///   is an error (`Error::ForeignVar`): pass it through `inputs` instead.
    /// - It must compute the same thing both times: draw any randomness (dropout masks) from a
    ///   seed the closure owns, not from a shared generator.
    ///
    /// With recording off (inside `no_grad`), this is just `f(self, inputs)`.
    pub fn checkpoint<F>(&self, inputs: &[&Var], f: F) -> Result<Var>
    where
        F: Fn(&Tape, &[Var]) -> Result<Var> + 'static,
    {
        self.check_inputs("checkpoint", inputs)?;
        let args: Vec<Var> = inputs.iter().map(|&x| x.clone()).collect();
        if !self.is_recording() {
            return f(self, &args);
        }
        let y = self.no_grad(|| f(self, &args))?;
        let segment = Checkpointed {
            f: Rc::new(f),
            inputs: args.iter().map(|x| x.value().clone()).collect(),
            needs_grad: args.iter().map(Var::requires_grad).collect(),
            compute: self.compute(),
        };
        // always recorded, even if no input needs a gradient: `f` may use parameters
        let op = crate::op::Op::Checkpoint(segment);
        let y = self.push(op, inputs, vec![y.value().clone()]);
        Ok(y.into_iter().next().expect("one output"))
    }
}

/// The backward rule of a segment: recompute, then backpropagate `dy` through the recording.
pub(crate) fn backward(segment: Checkpointed, dy: Tensor) -> Result<Vec<Option<Tensor>>> {
    let tape = Tape::with_compute(segment.compute);
    let inputs: Vec<Var> = segment
        .inputs
        .into_iter()
        .zip(&segment.needs_grad)
        .map(|(x, &needs)| {
            if needs {
                tape.leaf(x)
            } else {
                tape.constant(x)
            }
        })
        .collect();
    let y = (segment.f)(&tape, &inputs)?;
    if !y.requires_grad() {
        return Ok(vec![None; inputs.len()]); // the segment used neither inputs nor parameters
    }
    let grads = tape.backward_with(&y, dy)?;
    Ok(inputs.iter().map(|x| grads.get(x).cloned()).collect())
}
