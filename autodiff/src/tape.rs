//! The tape: the list of ops a forward pass ran, walked backwards to get gradients.
//!
//! Recording: every op on `Var`s computes its value with the runtime, then (if the tape is
//! recording and some input needs a gradient) appends a `Node`: the op, with whatever its
//! backward needs, and the ids of its inputs. Inputs are always recorded before the ops that use
//! them, so node ids are already a topological order.
//!
//! The backward walk: seed the output's gradient, then visit the nodes from last to first. A
//! node whose outputs received no gradient is skipped (it does not lead to the output). Otherwise
//! its backward rule (`Op::backward`) turns the gradients of its outputs into gradients of its
//! inputs, which are *accumulated* (`+=`) into the inputs' slots: a value used twice gets the sum.
//! Leaves hand their gradient to the caller (`Grads`); parameters add it into their own buffer.
//! The walk takes the nodes out of the tape and drops each one once it is done, so the saved
//! activations are freed as the walk goes and the tape is empty afterwards.

use crate::op::Op;
use crate::{Error, Param, Result, Var};
use odeflow_runtime::{DType, Error as RuntimeError, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Which recorded value a `Var` is: output `output` of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct VarId {
    pub(crate) node: usize,
    pub(crate) output: usize,
}

/// One recorded op.
pub(crate) struct Node {
    pub(crate) op: Op,
    /// The input values, `None` where an input is a constant (it gets no gradient).
    pub(crate) inputs: Vec<Option<VarId>>,
    /// How many values the op produced (1 for all but `split`).
    pub(crate) outputs: usize,
}

struct State {
    nodes: Vec<Node>,
    recording: bool,
    /// Mixed precision: the dtype `param_cast` and `constant_cast` hand out floats in (`None`:
    /// as stored).
    compute: Option<DType>,
    /// Bumped each time `backward` frees the nodes, so `Var`s of a consumed pass are caught.
    generation: u64,
}

/// A recording of one forward pass. Cloning gives another handle to the same tape.
#[derive(Clone)]
pub struct Tape {
    state: Rc<RefCell<State>>,
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        let mode = if state.recording {
            "recording"
        } else {
            "paused"
        };
        write!(f, "Tape({} nodes, {mode})", state.nodes.len())
    }
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// An empty tape that records.
    pub fn new() -> Tape {
        Tape::with_compute(None)
    }

    /// An empty tape whose `param_cast` and `constant_cast` give floats in `compute` (bf16 for
    /// mixed-precision training: the parameters stay f32 masters, each pass computes in bf16,
    /// and each parameter's gradient is cast back to f32 by the cast's backward).
    pub fn with_compute(compute: Option<DType>) -> Tape {
        let state = State {
            nodes: Vec::new(),
            recording: true,
            compute,
            generation: 0,
        };
        Tape {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// The dtype this tape computes floats in, if it casts them (`with_compute`).
    pub fn compute(&self) -> Option<DType> {
        self.state.borrow().compute
    }

    /// Whether ops on this tape's `Var`s are being recorded (false inside `no_grad`).
    pub fn is_recording(&self) -> bool {
        self.state.borrow().recording
    }

    /// How many nodes are recorded now (0 after `backward`).
    pub fn len(&self) -> usize {
        self.state.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An input whose gradient `backward` should return (see `Grads::get`).
    pub fn leaf(&self, value: Tensor) -> Var {
        self.push_leaf(Op::Leaf, value)
    }

    /// A parameter's current value, recorded so that backward adds into its gradient buffer;
    /// a frozen one (`Param::set_frozen`) is a constant instead, and gets no gradient.
    pub fn param(&self, param: &Param) -> Var {
        if param.is_frozen() {
            return self.constant(param.value());
        }
        self.push_leaf(Op::Param(param.clone()), param.value())
    }

    /// A value that needs no gradient (token ids, masks, targets, data).
    pub fn constant(&self, value: Tensor) -> Var {
        Var::new(value, None, self.clone(), self.generation())
    }

    /// `param`, cast to the tape's compute dtype when it has one (a recorded cast, so the
    /// gradient reaching the parameter is cast back to its own dtype).
    pub fn param_cast(&self, param: &Param) -> Result<Var> {
        let x = self.param(param);
        match self.compute() {
            Some(dt) if x.dtype().is_float() && x.dtype() != dt => x.to_dtype(dt),
            _ => Ok(x),
        }
    }

    /// `constant`, a float one cast to the tape's compute dtype when it has one (time rows,
    /// rotation tables: whatever meets the activations in an op).
    pub fn constant_cast(&self, value: Tensor) -> Result<Var> {
        let value = match self.compute() {
            Some(dt) if value.dtype().is_float() && value.dtype() != dt => value.to_dtype(dt)?,
            _ => value,
        };
        Ok(self.constant(value))
    }

    /// Runs `f` with recording switched off: every op inside gives a constant, and nothing is
    /// saved for backward. Recording resumes afterwards, even if `f` panics.
    pub fn no_grad<R>(&self, f: impl FnOnce() -> R) -> R {
        let _resume = Resume {
            tape: self,
            recording: std::mem::replace(&mut self.state.borrow_mut().recording, false),
        };
        f()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    pub(crate) fn same_tape(&self, other: &Tape) -> bool {
        Rc::ptr_eq(&self.state, &other.state)
    }

    fn push_leaf(&self, op: Op, value: Tensor) -> Var {
        if !self.is_recording() {
            return self.constant(value);
        }
        self.push(op, &[], vec![value])
            .pop()
            .expect("a leaf has one output")
    }

    /// Checks that every input lives on this tape, in its current pass.
    pub(crate) fn check_inputs(&self, op: &'static str, inputs: &[&Var]) -> Result<()> {
        let generation = self.generation();
        for x in inputs {
            if !self.same_tape(x.tape()) {
                return Err(Error::ForeignVar { op });
            }
            if x.generation() != generation {
                return Err(Error::StaleVar { op });
            }
        }
        Ok(())
    }

    /// Records `op` with its output values, if any input needs a gradient; otherwise the outputs
    /// are constants and `op` (with the tensors it saved) is dropped at once.
    pub(crate) fn record(
        &self,
        name: &'static str,
        inputs: &[&Var],
        op: Op,
        outputs: Vec<Tensor>,
    ) -> Result<Vec<Var>> {
        self.check_inputs(name, inputs)?;
        if self.is_recording() && inputs.iter().any(|x| x.requires_grad()) {
            Ok(self.push(op, inputs, outputs))
        } else {
            Ok(outputs.into_iter().map(|y| self.constant(y)).collect())
        }
    }

    /// `record` for the ops with one output.
    pub(crate) fn record1(
        &self,
        name: &'static str,
        inputs: &[&Var],
        op: Op,
        y: Tensor,
    ) -> Result<Var> {
        let mut outputs = self.record(name, inputs, op, vec![y])?;
        Ok(outputs.pop().expect("one output"))
    }

    /// Appends a node unconditionally and returns its outputs as `Var`s.
    pub(crate) fn push(&self, op: Op, inputs: &[&Var], outputs: Vec<Tensor>) -> Vec<Var> {
        let mut state = self.state.borrow_mut();
        let node = state.nodes.len();
        state.nodes.push(Node {
            op,
            inputs: inputs.iter().map(|x| x.id()).collect(),
            outputs: outputs.len(),
        });
        let generation = state.generation;
        drop(state);
        let var = |(output, y)| Var::new(y, Some(VarId { node, output }), self.clone(), generation);
        outputs.into_iter().enumerate().map(var).collect()
    }

    /// Empties the tape (its nodes are returned to the caller) and starts a new generation.
    fn take_nodes(&self) -> (Vec<Node>, u64) {
        let mut state = self.state.borrow_mut();
        let generation = state.generation;
        state.generation += 1;
        (std::mem::take(&mut state.nodes), generation)
    }
}

/// Restores the recording flag when a `no_grad` scope ends.
struct Resume<'a> {
    tape: &'a Tape,
    recording: bool,
}

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.tape.state.borrow_mut().recording = self.recording;
    }
}

// the backward walk
impl Tape {
    /// Backpropagates from a scalar `loss` (its gradient seeded with 1), frees the tape, and
    /// returns the gradients of the leaves. Parameters' gradients are added into their buffers.
    pub fn backward(&self, loss: &Var) -> Result<Grads> {
        if loss.value().numel() != 1 {
            let shape = loss.shape().to_vec();
            return Err(Error::NonScalarLoss { shape });
        }
        let seed = Tensor::ones(loss.shape(), loss.value().dtype());
        self.backward_with(loss, seed)
    }

    /// Backpropagates from `y` with `dy` as its gradient (a vector-Jacobian product), frees the
    /// tape, and returns the gradients of the leaves.
    ///
    /// Shapes: dy [y's shape], y's dtype.
    ///
    /// If a rule fails midway, the tape is still freed and parameters may hold part of this
    /// pass's gradient: call `zero_grad` before trying again.
    pub fn backward_with(&self, y: &Var, dy: Tensor) -> Result<Grads> {
        self.backward_many(vec![(y, dy)])
    }

    /// Backpropagates from several outputs at once, each with its own gradient (the sum of
    /// their vector-Jacobian products), frees the tape, and returns the gradients of the leaves.
    ///
    /// Shapes: each dy [its y's shape], its y's dtype.
    pub fn backward_many(&self, seeds: Vec<(&Var, Tensor)>) -> Result<Grads> {
        let mut roots = Vec::with_capacity(seeds.len());
        for (y, dy) in &seeds {
            self.check_inputs("backward", &[y])?;
            check_seed(y, dy)?;
            roots.push(y.id().ok_or(Error::NothingToDifferentiate)?);
        }
        let last = roots.iter().map(|r| r.node).max();
        let last = last.ok_or(Error::NothingToDifferentiate)?;
        let (mut nodes, generation) = self.take_nodes();
        nodes.truncate(last + 1);
        let mut grads: Vec<Vec<Option<Tensor>>> =
            nodes.iter().map(|n| vec![None; n.outputs]).collect();
        for (root, (_, dy)) in roots.iter().zip(seeds) {
            accumulate(&mut grads[root.node][root.output], dy)?;
        }
        let mut leaves = HashMap::new();

        // nodes.pop() visits them last to first; each node is dropped after its turn
        while let Some(node) = nodes.pop() {
            let id = nodes.len();
            let dys = std::mem::take(&mut grads[id]);
            if dys.iter().all(Option::is_none) {
                continue; // the output does not depend on this node
            }
            // weights generated from a stacked parameter: its gradient goes straight into the
            // parameter's buffer, summed in the product's own pass, rather than through the
            // parameter's node (a dF written, then read back and added)
            if let (Op::Generate { h, f }, Some(param)) = (&node.op, stacked_param(&nodes, &node)) {
                let dh = param.accumulate_generated(&crate::op::step_grads(dys, f)?, h, f)?;
                if let Some(h_input) = node.inputs[0] {
                    accumulate(&mut grads[h_input.node][h_input.output], dh)?;
                }
                continue;
            }
            match node.op {
                Op::Leaf => {
                    leaves.insert(id, dys.into_iter().flatten().next().expect("checked above"));
                }
                Op::Param(param) => {
                    let dvalue = dys.into_iter().flatten().next().expect("checked above");
                    param.accumulate_grad(&dvalue)?;
                }
                op => {
                    let dxs = op.backward(dys)?;
                    for (input, dx) in node.inputs.iter().zip(dxs) {
                        if let (Some(input), Some(dx)) = (input, dx) {
                            accumulate(&mut grads[input.node][input.output], dx)?;
                        }
                    }
                }
            }
        }
        let tape = self.clone();
        Ok(Grads {
            tape,
            leaves,
            generation,
        })
    }
}

/// For a `Generate` node, the parameter whose value is its F input (the second): recorded
/// directly, or through the cast of `param_cast`. `None` for any other node or F (a leaf, a
/// product).
fn stacked_param(nodes: &[Node], node: &Node) -> Option<Param> {
    if !matches!(node.op, Op::Generate { .. }) {
        return None;
    }
    let f = nodes.get(node.inputs.get(1).copied().flatten()?.node)?;
    let f = match f.op {
        Op::ToDType { .. } => nodes.get(f.inputs.first().copied().flatten()?.node)?,
        _ => f,
    };
    match &f.op {
        Op::Param(param) => Some(param.clone()),
        _ => None,
    }
}

/// slot += dx (the slot takes dx itself when empty).
fn accumulate(slot: &mut Option<Tensor>, dx: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => dx,
        Some(sum) => sum.add(&dx)?,
    });
    Ok(())
}

fn check_seed(y: &Var, dy: &Tensor) -> Result<()> {
    if dy.shape() != y.shape() {
        return Err(RuntimeError::ShapeMismatch {
            op: "backward_with",
            lhs: y.shape().to_vec(),
            rhs: dy.shape().to_vec(),
        }
        .into());
    }
    if dy.dtype() != y.value().dtype() {
        return Err(RuntimeError::DTypeMismatch {
            op: "backward_with",
            lhs: y.value().dtype(),
            rhs: dy.dtype(),
        }
        .into());
    }
    Ok(())
}

/// The gradients of a backward pass's leaves, looked up by the leaf's `Var`.
pub struct Grads {
    tape: Tape,
    leaves: HashMap<usize, Tensor>,
    generation: u64,
}

impl std::fmt::Debug for Grads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grads({} leaves)", self.leaves.len())
    }
}

impl Grads {
    /// d(output)/d(x), or `None` if `x` is not a leaf of this pass or the output does not depend
    /// on it.
    pub fn get(&self, x: &Var) -> Option<&Tensor> {
        let id = x.id()?;
        if !self.tape.same_tape(x.tape()) || x.generation() != self.generation {
            return None;
        }
        self.leaves.get(&id.node)
    }
}
