//! # odeflow-tests: tests that cross crate boundaries
//!
//! Each crate tests its own pieces inline. The tests in `tests/tests/` exercise several crates
//! together (runtime + autodiff + model + data), the way a user's program does: a forward pass
//! through the real model, a training step on real shards, a checkpoint round trip. The library
//! part of this crate holds only what those tests share: `gpu`, the helpers of the GPU tests.

pub mod gpu;
