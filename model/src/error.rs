//! The model crate's errors: bad configs, bad checkpoints, and everything the layers below raise.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op or the tape failed (shapes, dtypes, a stale pass): the autodiff error, unchanged.
    #[error(transparent)]
    Autodiff(#[from] odeflow_autodiff::Error),

    #[error("config: {msg}")]
    Config { msg: String },

    #[error("config file {path}: {msg}")]
    ConfigFile { path: PathBuf, msg: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint that cannot be read, or that does not fit the model it is loaded into.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// Tensors that do not fit the parameters of the model they are loaded into: every missing,
    /// unexpected and misshapen name at once (`checkpoint::load_params`).
    #[error(
        "the tensors do not fit this model's parameters: {0}; build the model from the config \
         they were saved with (`checkpoint::read` returns it)"
    )]
    ParamMismatch(crate::checkpoint::Mismatch),

    /// A loss or gradient that is NaN or infinite: training cannot go on from here.
    #[error(
        "non-finite value: {what}; lower the learning rate or resume from the last checkpoint"
    )]
    NonFinite { what: String },

    #[error("input: {msg}")]
    Input { msg: String },

    /// A step of the dynamics analysis that cannot go on (`analysis`): an eigen-decomposition
    /// that did not converge, weights that hold NaN.
    #[error("analysis: {msg}")]
    Analysis { msg: String },
}

impl From<odeflow_runtime::Error> for Error {
    fn from(e: odeflow_runtime::Error) -> Error {
        Error::Autodiff(e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
