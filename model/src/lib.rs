//! # odeflow-model: the neural ODE transformer and its relatives
//!
//! The models of `MODEL.md`, each equation in one place:
//!
//! | MODEL.md | equation | file |
//! |---|---|---|
//! | 1 | dX/dt = F(X, t), Euler on t_i = (i+1)/L; Runge-Kutta tableaus | `solver/tableau.rs` |
//! | - | gradient modes; the continuous adjoint | `solver/mod.rs`, `solver/adjoint.rs` |
//! | 2 | phi(t) | `time.rs` |
//! | 3 | h(t), W(t) = W0 + sum h_k W_k, b(t), the batched product | `temporal.rs` |
//! | 4 | LN_t(x) = (1 + h G) * xhat + h Bn | `temporal.rs` |
//! | 5, 6 | the GPT-2 and Llama fields; attention, RoPE, GELU, SwiGLU | `block.rs`, `layers.rs` |
//! | 1, 6, 7 | embeddings, final norm, tied / untied head | `stem.rs` |
//! | 7 | the vanilla GPT-2 | `gpt2.rs` |
//! | 8 | configurations and parameter counts | `config.rs` |
//! | 9 | AdamW, clipping, weight-decay masks, warmup + cosine | `optim.rs` |
//! | 10 | re-discretisation (`to_discrete`) | `ode.rs`, `discrete.rs` |
//! | 10 | LoRA: W + (alpha / r) A B, frozen base, merging | `lora.rs`, `block.rs` |
//! | - | safetensors checkpoints (the file format: `docs/checkpoint.md`) | `checkpoint.rs` |
//! | - | text generation; the KV cache, per solver step and stage | `sample.rs`, `decode.rs` |
//! | 11 | spectra of the weights, token sensitivity by Lyapunov exponents | `analysis/` |
//!
//! `Model` (in `model.rs`) wraps every kind for the binaries; `checkpoint` reads and writes
//! safetensors files. Read `docs/04-model.md` for the walk-through.

pub mod analysis;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod discrete;
mod error;
pub mod gpt2;
pub mod init;
pub mod layers;
pub mod lora;
pub mod model;
pub mod ode;
pub mod optim;
pub mod plot;
pub mod sample;
pub mod solver;
pub mod stem;
pub mod temporal;
pub mod time;
pub mod train;

pub use config::{Config, LlamaNorm, ModelKind};
pub use error::{Error, Result};
pub use model::{Forward, Model};
pub use solver::{GradMode, Solver};
