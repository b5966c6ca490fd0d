//! World Models' V (a convolutional VAE) and M (an MDN-RNN) on candle, and the dream
//! environment in which a controller can be trained on M's imagined rollouts.
//!
//! Images are NHWC f32 in [0, 1] throughout; parameter names and layouts follow PyTorch so a
//! checkpoint loads into the same architecture there (`bench/world_model_parity.py`).

//! Generic layers, optimisers and checkpoints live in `dreamgym-nn`; this crate holds only what is
//! World Models' own.

pub mod calibration;
pub mod dream;
pub mod mdn;
pub mod vae;

pub use calibration::Calibration;
pub use dream::{DreamConfig, DreamEnv};
pub use dreamgym_nn::device;
pub use mdn::{MdnRnn, MdnRnnConfig};
pub use vae::{Vae, VaeConfig};

/// Errors of the world-model crate: the network crate's error type.
pub type WmError = dreamgym_nn::NnError;
