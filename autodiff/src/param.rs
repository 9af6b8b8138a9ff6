//! Parameters: the leaves whose values and gradients outlive a forward pass.
//!
//! A `Param` is a shared handle (cloning it is cheap and gives the same parameter). The model
//! owns its parameters; each forward pass lifts them onto its tape with `Tape::param`, and the
//! backward walk *accumulates* (`+=`) their gradients into the parameter's own buffer, so several
//! backward passes (gradient accumulation over micro-batches) add up until `zero_grad`. The
//! optimiser reads `grad` and writes `set_value`.
//!
//! Handles use `Rc`: a model and its tapes live on one thread (the runtime parallelises inside
//! each op instead).

use crate::{Error, Result};
use odeflow_runtime::ops::hypernet;
use odeflow_runtime::Tensor;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

/// A named, trainable tensor with a persistent gradient buffer.
#[derive(Clone)]
pub struct Param {
    inner: Rc<ParamInner>,
}

struct ParamInner {
    name: String,
    value: RefCell<Tensor>,
    grad: RefCell<Option<Tensor>>,
    frozen: Cell<bool>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        let inner = ParamInner {
            name: name.into(),
            value: RefCell::new(value),
            grad: RefCell::new(None),
            frozen: Cell::new(false),
        };
        Param {
            inner: Rc::new(inner),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current value (a cheap handle to its buffer).
    pub fn value(&self) -> Tensor {
        self.inner.value.borrow().clone()
    }

    pub fn shape(&self) -> Vec<usize> {
        self.inner.value.borrow().shape().to_vec()
    }

    pub fn numel(&self) -> usize {
        self.inner.value.borrow().numel()
    }

    /// Replaces the value (an optimiser step, a loaded checkpoint). The shape and dtype must stay
    /// the same: a model's structure does not change under it.
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        self.check_like(&value)?;
        *self.inner.value.borrow_mut() = value;
        Ok(())
    }

    /// The gradient summed over every backward pass since the last `zero_grad`, or `None` if no
    /// pass has reached this parameter.
    pub fn grad(&self) -> Option<Tensor> {
        self.inner.grad.borrow().clone()
    }

    /// Forgets the accumulated gradient (and frees its buffer).
    pub fn zero_grad(&self) {
        *self.inner.grad.borrow_mut() = None;
    }

    /// Freezes the parameter (or thaws it): a frozen parameter is lifted onto a tape as a
    /// constant (`Tape::param`), so no backward pass computes its gradient, and an optimiser
    /// leaves it as it is. Fine-tuning with LoRA freezes the base weights this way.
    pub fn set_frozen(&self, frozen: bool) {
        self.inner.frozen.set(frozen);
    }

    pub fn is_frozen(&self) -> bool {
        self.inner.frozen.get()
    }

    /// Whether two handles are the same parameter.
    pub fn same(&self, other: &Param) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// grad += dvalue. The stored gradient is always a contiguous buffer of its own.
    pub(crate) fn accumulate_grad(&self, dvalue: &Tensor) -> Result<()> {
        self.check_like(dvalue)?;
        let mut grad = self.inner.grad.borrow_mut();
        let sum = match grad.as_ref() {
            None => dvalue.contiguous()?,
            Some(old) => old.add(dvalue)?,
        };
        *grad = Some(sum);
        Ok(())
    }

    /// grad += df for a parameter stacked as the F of `hypernet::generate` (`f` is its value on
    /// the tape: itself, or its cast to the compute dtype), with df = H^T dW computed and added
    /// in one pass (`generate_bwd_acc`), the running sum read where dF would have been written.
    /// Returns the generation's other gradient, dH.
    ///
    /// The sum is kept in the parameter's dtype: an f32 parameter cast to bf16 for the pass
    /// takes the bf16 product without a rounding to bf16 on the way (its first term starts
    /// from zeros, so every term is treated alike).
    ///
    /// Shapes: dws N x [..], h [N, K], f [K, ..] (this parameter's shape) -> dh [N, K]
    pub(crate) fn accumulate_generated(
        &self,
        dws: &[Tensor],
        h: &Tensor,
        f: &Tensor,
    ) -> Result<Tensor> {
        let (dtype, shape) = (self.inner.value.borrow().dtype(), self.shape());
        let old = self.grad();
        let acc = match old {
            None if f.dtype() != dtype => Some(Tensor::zeros(&shape, dtype).to_device(f.device())?),
            old => old,
        };
        let (dh, sum) = hypernet::generate_bwd_acc(dws, h, f, acc.as_ref())?;
        self.check_like(&sum)?;
        *self.inner.grad.borrow_mut() = Some(sum);
        Ok(dh)
    }

    fn check_like(&self, t: &Tensor) -> Result<()> {
        let value = self.inner.value.borrow();
        if t.shape() == value.shape() && t.dtype() == value.dtype() {
            return Ok(());
        }
        Err(Error::ParamMismatch {
            name: self.inner.name.clone(),
            want: value.shape().to_vec(),
            want_dtype: value.dtype(),
            got: t.shape().to_vec(),
            got_dtype: t.dtype(),
        })
    }
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Param({}, {:?})", self.name(), self.value())
    }
}
