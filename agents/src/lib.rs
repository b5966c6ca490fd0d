//! Experiments as a library: everything between "a config file" and "a report", with no
//! printing (work reports through [`Progress`]).
//!
//! - [`Experiment`]: one config with a section per pipeline; [`run_experiment`] runs it in a
//!   [`RunDir`] (`runs/<name>/`, dataset in `runs/<name>/data/`).
//! - [`collect`]: N envs on worker threads, driven by any policy, recorded to disk.
//! - [`run_episode`] and [`run_jobs`]: the one episode loop, and parallel evaluation with
//!   every policy on the same seeds.
//! - [`load_policy`]: policies from specs (`random`, a run folder, a controller file).
//! - [`world_models`]: V, M and C trained, evaluated and reported.
//! - [`MetricsLog`], [`figures`], [`tensorboard`]: metrics as CSV and TensorBoard event files,
//!   figures with labelled axes.
//! - [`labels`]: preference labels (the fsynced log, undo, agreement, the synthetic labeler);
//!   [`label_session`]: one labeler going through a pairs folder (order, sides, undo, resume);
//!   [`rlhf`]: a reward model trained on the labels and RLOO against it;
//!   [`preference`]: pairs of sampled episodes, TRL's preference format, DPO training.

mod collect;
pub mod decision_transformer;
mod episode;
mod evaluate;
mod experiment;
pub mod figures;
pub mod label_session;
pub mod labels;
pub mod language;
pub mod language_dpo;
mod metrics;
mod policy_spec;
pub mod preference;
mod progress;
pub mod rlhf;
mod run_dir;
pub mod tensorboard;
pub mod testing;
pub mod world_models;

pub use collect::{CollectConfig, CollectSummary, MergeSummary, collect, merge};
pub use episode::{EpisodeStats, run_episode};
pub use evaluate::{mean_std, run_jobs};
pub use experiment::{
    DEFAULT_EXPERIMENT, Experiment, ExperimentOutcome, OnChange, Part, config_to_save,
    load_experiment, parse_experiment, prepare_run, run_experiment,
};
pub use metrics::{MetricsLog, read_csv, warmup_cosine};
pub use policy_spec::{POLICY_KINDS, PolicyKind, check_policy_spec, load_policy};
pub use progress::{Interrupted, Progress, StopFlag};
pub use run_dir::RunDir;
pub use world_models::WorldModelsConfig;
