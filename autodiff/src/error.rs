//! The tape's error type: every runtime error, plus the ways a tape can be misused.

use odeflow_runtime::DType;

/// Errors from recording ops or walking the tape backwards.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An op failed (bad shapes, dtypes, ...): the runtime's own error, unchanged.
    #[error(transparent)]
    Runtime(#[from] odeflow_runtime::Error),

    #[error(
        "{op}: an input was recorded on another tape; inside `checkpoint`, pass outer values in \
         through `inputs` instead of capturing them in the closure"
    )]
    ForeignVar { op: &'static str },

    #[error(
        "{op}: an input belongs to a pass whose tape `backward` has already freed; record a new \
         forward pass"
    )]
    StaleVar { op: &'static str },

    #[error(
        "backward: the output has shape {shape:?}, not a single value; reduce it to a scalar \
         loss or call `backward_with` with its gradient"
    )]
    NonScalarLoss { shape: Vec<usize> },

    #[error(
        "backward: the output does not depend on any leaf or parameter (was it computed under \
         no_grad, or from constants only?)"
    )]
    NothingToDifferentiate,

    #[error("{name}: the custom backward rule {msg}")]
    Custom { name: &'static str, msg: String },

    #[error("param {name}: expected a {want:?} {want_dtype} tensor, got {got:?} {got_dtype}")]
    ParamMismatch {
        name: String,
        want: Vec<usize>,
        want_dtype: DType,
        got: Vec<usize>,
        got_dtype: DType,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
