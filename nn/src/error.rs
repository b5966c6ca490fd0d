//! The one error type of the network crates.

use std::path::Path;

/// Errors of models, optimisers and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A configuration that cannot build a model.
    #[error("{0}")]
    Config(String),
    /// A checkpoint that is missing, damaged or does not match the model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] dreamgym_base::IoError),
    /// An error inside candle.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl NnError {
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        NnError::Io(dreamgym_base::IoError::new(what, path, source))
    }
}
