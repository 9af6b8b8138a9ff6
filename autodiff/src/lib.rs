//! # odeflow-autodiff: a small reverse-mode tape
//!
//! This crate will hold the tape that turns the runtime's forward/backward pairs into gradients:
//! a `Var` (a tensor plus a node id) recorded on a tape, one backward rule per op that calls the
//! runtime's backward companion, parameters as leaves with persistent gradient buffers, `no_grad`
//! scopes, gradient checkpointing (run a closure unrecorded, recompute it in the backward pass)
//! for the ODE solver, and a peak-memory counter for tensor storage. It is meant to be small
//! enough to read in one sitting; the op math itself stays in `odeflow-runtime`.
