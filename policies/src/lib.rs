//! The [`Policy`] seam and its implementations.
//!
//! A policy takes an observation and returns an action, forgets its recurrent state at the
//! start of each episode, and can be forked into independent copies, one per env of a vector
//! env ([`PolicyBatch`]). The CLI, the experiment library and the viewer drive envs only
//! through it. This crate holds the policies that need no world model: [`RandomPolicy`] and
//! the [`LinearController`] (World Models' C) with [`CmaEs`] to train it; the World Models
//! agent (V + M + C) lives in `dreamgym-agents`, which can load any of them from a spec.

mod cmaes;
mod decision_transformer;
mod error;
pub mod language;
mod linear;
mod policy;
mod random;
mod scripted;

pub use cmaes::{CmaEs, CmaEsConfig, CmaEsState};
pub use decision_transformer::{
    CHECKPOINT_KIND as DT_CHECKPOINT_KIND, ConvEncoderConfig, DecisionTransformer,
    DecisionTransformerConfig, DtAction, DtBatch, DtCheckpointConfig, DtPolicy, DtSpec,
    scale_pixels,
};
pub use error::PolicyError;
pub use language::{LanguageModel, LanguagePolicy, LlamaSize, Sampling, Stop, TextTokenizer};
pub use linear::LinearController;
pub use policy::{Policy, PolicyBatch};
pub use random::{BrownianPolicy, RandomPolicy};
pub use scripted::{
    CartPoleExpert, EXPERTS, MixturePolicy, NoisyPolicy, ReacherExpert, TabletopPlanner, expert_for,
};
