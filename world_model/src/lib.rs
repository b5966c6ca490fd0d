//! World Models' V (a convolutional VAE) and M (an MDN-RNN) on candle, and the dream
//! environment in which a controller can be trained on M's imagined rollouts.
//!
//! Images are NHWC f32 in [0, 1] throughout; parameter names and layouts follow PyTorch so a
//! checkpoint loads into the same architecture there (`bench/world_model_parity.py`).

pub mod dream;
pub mod lstm;
pub mod mdn;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod vae;

pub use dream::{DreamConfig, DreamEnv};
pub use mdn::{MdnRnn, MdnRnnConfig};
pub use vae::{Vae, VaeConfig};

use std::path::Path;

/// Errors of the world-model crate.
#[derive(Debug, thiserror::Error)]
pub enum WmError {
    /// A configuration that cannot build a model.
    #[error("{0}")]
    Config(String),
    /// A checkpoint that is missing, damaged or does not match the model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// An error inside candle.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl WmError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WmError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Picks the compute device by name: `cpu`, or `cuda` / `cuda:N` when built with the `cuda`
/// feature.
pub fn device(name: &str) -> Result<candle_core::Device, WmError> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map(|s| s.parse::<usize>())
                .unwrap_or(Ok(0));
            let ordinal = ordinal.map_err(|_| WmError::Config(format!("bad device {n:?}")))?;
            if !candle_core::utils::cuda_is_available() {
                return Err(WmError::Config(format!(
                    "device {n:?}: this build has no CUDA support (rebuild with `--features cuda`)"
                )));
            }
            Ok(candle_core::Device::new_cuda(ordinal)?)
        }
        other => Err(WmError::Config(format!(
            "unknown device {other:?} (expected cpu, cuda or cuda:N)"
        ))),
    }
}
