//! The policies' error type.

/// Errors of policies and their optimisers.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Bad settings or parameters.
    #[error("{0}")]
    Config(String),
    /// The policy does not fit the env's observation or action space.
    #[error("{0}")]
    Incompatible(String),
    /// A policy could not be loaded from its spec.
    #[error("{0}")]
    Load(String),
    /// A model inside the policy failed.
    #[error(transparent)]
    Model(#[from] dreamgym_nn::NnError),
}

impl From<candle_core::Error> for PolicyError {
    fn from(e: candle_core::Error) -> Self {
        PolicyError::Model(dreamgym_nn::NnError::from(e))
    }
}
