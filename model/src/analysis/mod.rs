//! The analysis of the dynamics (MODEL.md section 11): what the weights do as functions of t,
//! and which prompt tokens the next-token prediction is most sensitive to.
//!
//! | file | what |
//! |---|---|
//! | `spectra.rs` | eigenvalues of W_Q^h W_K^hᵀ, W_V^h W_O^h (per head), W_fc W_proj, at any t |
//! | `sensitivity.rs` | a prompt's trajectory, J_k = dF_j/dX_k by the tape, per-token exponents |
//! | `lyapunov.rs` | the QR iteration, the linearised Runge-Kutta step, Kaplan-Yorke |
//! | `linalg.rs` | eigenvalues and thin QR in f64 (nalgebra) |
//! | `plots.rs` | the PNG figures |
//! | `report.rs` | the JSON, CSV and HTML files, and which file holds what |
//!
//! The `analyze` binary runs all of it on a checkpoint; `docs/10-analysis.md` shows what it
//! finds on the default training run.

pub mod linalg;
pub mod lyapunov;
pub mod plots;
pub mod report;
pub mod sensitivity;
pub mod spectra;

pub use sensitivity::{token_sensitivity, Dynamics, Options, Sensitivity};
pub use spectra::{model_spectra, Axis, MatrixKind, Points, SpectraAt};
