//! # odeflow-autodiff: a small reverse-mode tape
//!
//! A forward pass is written with `Var`s, tensors that remember where they came from. Each op
//! runs the runtime's forward and records a node on a `Tape`; `Tape::backward` walks the nodes
//! from last to first, calling each op's backward rule (the runtime's backward companion) and
//! summing the gradients that meet at a value. Read `docs/02-autodiff.md` for a worked example.
//!
//! - `tape.rs`: the node list, `no_grad`, and the backward walk.
//! - `var.rs`: `Var` and its ops (forwards); `op.rs`: the recorded ops and their backward rules.
//! - `param.rs`: parameters, leaves whose gradients accumulate in a buffer of their own.
//! - `checkpoint.rs`: gradient checkpointing (run unrecorded, recompute in backward).
//! - `custom.rs`: nodes whose backward rule is a closure (the ODE solver's adjoint).
//! - `memory`: the runtime's storage meter, re-exported for the memory experiments.
//!
//! ```
//! use odeflow_autodiff::Tape;
//! use odeflow_runtime::Tensor;
//!
//! // y = sum(x * x), so dy/dx = 2x
//! let tape = Tape::new();
//! let x = tape.leaf(Tensor::from_vec(vec![1.0f32, -2.0, 3.0], &[3]).unwrap());
//! let y = x.mul(&x).unwrap().sum_all().unwrap();
//! let grads = tape.backward(&y).unwrap();
//! let dx = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
//! assert_eq!(dx, vec![2.0, -4.0, 6.0]);
//! ```

mod checkpoint;
mod custom;
mod error;
mod op;
mod param;
mod tape;
mod var;

pub use checkpoint::SegmentFn;
pub use custom::CustomBackward;
pub use error::{Error, Result};
pub use odeflow_runtime::memory;
pub use param::Param;
pub use tape::{Grads, Tape};
pub use var::Var;
