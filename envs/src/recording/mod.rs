//! Recorded observation streams: episodes on disk in a versioned, chunked format.
//!
//! A dataset is a folder:
//!
//! - `dataset.json`: `{"format": "dreamgym-episodes", "version": 1, "env_id", "env_config",
//!   "observation_space", "action_space", ...}`.
//! - `chunk-000000.safetensors`, `chunk-000001.safetensors`, ...: whole episodes, each chunk
//!   written to a temporary file and renamed into place, so a killed process loses at most
//!   the episodes not yet flushed. Tensors (rows of all episodes in the chunk, in order):
//!   - `obs` (or `obs.<key>` for a Dict space): one row per observation, `T + 1` per episode
//!     (the first observation and one after each step); f32, u8 (images) or i64 (discrete);
//!   - `action` (or `action.<key>`): one row per step, `T` per episode;
//!   - `reward` (f64), `terminated` and `truncated` (u8): one per step;
//!   - `episode_length` (i64) and `episode_seed` (u64): one per episode.
//!
//!   Image columns (u8 observations such as pixels) are zlib-compressed: instead of `obs`
//!   (or `obs.<key>`) the chunk holds a 1-D u8 tensor `obs.zlib` (or `obs.<key>.zlib`) whose
//!   bytes `zlib.decompress` turns back into the raw `[rows, height, width, 3]` array. Frames
//!   of these scenes compress about tenfold.
//!
//!   The safetensors metadata holds `format`, `version` and `crc32`: the CRC-32 (IEEE, as
//!   Python's `zlib.crc32`) of the data section (every byte after the JSON header).
//!
//! Python reads it with `safetensors.numpy.load_file` or with numpy alone (8-byte little-endian
//! header length, JSON header, raw little-endian arrays), plus the standard `zlib` module for
//! image columns; `np.cumsum(episode_length)` splits the rows into episodes.
//!
//! Version 1 (no compressed columns) is still read.

mod reader;
mod writer;

pub use reader::{Dataset, LoadReport, Window, WindowSampler};
pub use writer::{EpisodeWriter, WriterOptions, mark_complete, rename_policy};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Space, Value};

/// The value of `format` in `dataset.json` and in every chunk.
pub const FORMAT: &str = "dreamgym-episodes";
/// The format version this code writes (it also reads [`OLDEST_READABLE`] and later).
pub const VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_READABLE: u32 = 1;

/// One recorded episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The seed that reproduces the episode's start (`reset(Some(seed))`).
    pub seed: u64,
    /// `T + 1` observations: the reset observation, then one after each step.
    pub observations: Vec<Value>,
    /// `T` actions.
    pub actions: Vec<Value>,
    /// `T` rewards.
    pub rewards: Vec<f64>,
    /// `T` flags: whether step `t` terminated the episode.
    pub terminated: Vec<bool>,
    /// `T` flags: whether step `t` truncated the episode.
    pub truncated: Vec<bool>,
}

impl Episode {
    /// An episode starting from `obs`.
    pub fn new(seed: u64, obs: Value) -> Self {
        Self {
            seed,
            observations: vec![obs],
            actions: Vec::new(),
            rewards: Vec::new(),
            terminated: Vec::new(),
            truncated: Vec::new(),
        }
    }

    /// Appends one step.
    pub fn push(
        &mut self,
        action: Value,
        obs: Value,
        reward: f64,
        terminated: bool,
        truncated: bool,
    ) {
        self.actions.push(action);
        self.observations.push(obs);
        self.rewards.push(reward);
        self.terminated.push(terminated);
        self.truncated.push(truncated);
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether the episode has no steps.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Sum of rewards.
    pub fn total_reward(&self) -> f64 {
        self.rewards.iter().sum()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `dataset.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`VERSION`] for data this code writes.
    pub version: u32,
    /// The env id the episodes come from.
    pub env_id: String,
    /// The env's full config.
    pub env_config: serde_json::Value,
    /// The observation space.
    pub observation_space: Space,
    /// The action space.
    pub action_space: Space,
    /// What chose the actions (for instance `random`).
    pub policy: String,
    /// The seed the collection started from, if any.
    pub seed: Option<u64>,
    /// Every collection that added episodes, in order, and whether it finished (absent in
    /// datasets from before this was recorded, which count as complete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<Collection>,
}

/// One collection (a `dreamgym rollout` or an experiment's `[rollout]`) that added episodes
/// to a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// What chose the actions.
    pub policy: String,
    /// The seed it was given.
    pub seed: u64,
    /// The seed its episodes were reset from (episode `k` from `env_seed + k`; in datasets
    /// recorded before December 2026 only the first `num_envs` episodes, the later ones from
    /// their env's own seed stream): `seed` for the first collection of a dataset, a seed
    /// derived from it and the collection's index for later ones, so that appended episodes
    /// are new ones.
    pub env_seed: u64,
    /// Environments stepped together.
    pub num_envs: usize,
    /// The index of its first episode within the rollout: episode `k` starts from
    /// `reset(Some(env_seed + k))`. Non-zero for a shard of a rollout split across processes
    /// or machines (`dreamgym rollout --first-episode`), which `dreamgym merge` joins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_episode: u64,
    /// Episodes it was asked to record.
    pub episodes: usize,
    /// Episodes it wrote (known once it ended; 0 while it runs or if it was killed).
    pub written: usize,
    /// Whether it recorded every episode it was asked for. False while it runs, and after an
    /// interruption, a failure or a kill: such a dataset is resumed, not trained on.
    pub complete: bool,
    /// For a collection that did not finish but was resumed: the index of the collection that
    /// recorded the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_by: Option<usize>,
}

impl DatasetMeta {
    /// Metadata for a new dataset.
    pub fn new(
        env_id: &str,
        env_config: serde_json::Value,
        observation_space: Space,
        action_space: Space,
        policy: &str,
        seed: Option<u64>,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            env_id: env_id.into(),
            env_config,
            observation_space,
            action_space,
            policy: policy.into(),
            seed,
            collections: Vec::new(),
        }
    }

    /// Whether every collection finished (or was resumed to the end). Datasets from before
    /// collections were recorded count as complete.
    pub fn is_complete(&self) -> bool {
        self.collections.iter().all(|c| c.complete)
    }

    /// Episodes the finished collections wrote. Of the episodes on disk, the rest belong to the
    /// unfinished ones (whose `written` is not kept up to date while they record).
    pub fn finished_episodes(&self) -> usize {
        self.collections
            .iter()
            .filter(|c| c.complete)
            .map(|c| c.written)
            .sum()
    }
}

/// What can go wrong reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file operation failed.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What was being done (`"cannot create directory"`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The system error.
        error: std::io::Error,
    },
    /// A chunk is damaged (bad checksum, truncated, malformed).
    #[error("chunk {} is damaged: {reason}", path.display())]
    Corrupt {
        /// The chunk file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder is not a dataset this code can read, or not one it may write into.
    #[error("{0}")]
    Format(String),
    /// An episode does not fit the dataset's spaces.
    #[error("episode does not match the dataset: {0}")]
    Mismatch(String),
    /// Another process is writing the folder.
    #[error(transparent)]
    Locked(#[from] dreamgym_base::LockError),
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> RecordError {
    let path = path.to_path_buf();
    move |error| RecordError::Io {
        action,
        path,
        error,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    dreamgym_base::write_atomic(path, bytes).map_err(|e| RecordError::Io {
        action: e.what,
        path: e.path,
        error: e.error,
    })
}

/// One column of a chunk: a tensor name, its element type and per-row shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leaf {
    pub name: String,
    pub kind: LeafKind,
    pub row_shape: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LeafKind {
    F32,
    U8,
    I64,
    /// UTF-8 strings: the bytes of every row end to end in a 1-D u8 tensor named after the
    /// leaf, and `rows + 1` i64 offsets (starting at 0) in `<name>.offsets`.
    Text,
}

/// The name of a text column's offsets tensor.
pub(crate) fn offsets_name(leaf: &str) -> String {
    format!("{leaf}.offsets")
}

/// The columns a space is stored in, named `prefix` or `prefix.key`.
pub(crate) fn leaves(space: &Space, prefix: &str) -> Vec<Leaf> {
    match space {
        Space::Box(b) => vec![Leaf {
            name: prefix.into(),
            kind: match b.dtype {
                crate::Dtype::F32 => LeafKind::F32,
                crate::Dtype::U8 => LeafKind::U8,
            },
            row_shape: b.shape.clone(),
        }],
        Space::Discrete(_) => vec![Leaf {
            name: prefix.into(),
            kind: LeafKind::I64,
            row_shape: vec![],
        }],
        Space::MultiDiscrete(m) => vec![Leaf {
            name: prefix.into(),
            kind: LeafKind::I64,
            row_shape: vec![m.nvec.len()],
        }],
        Space::Dict(d) => d
            .spaces
            .iter()
            .flat_map(|(k, s)| leaves(s, &format!("{prefix}.{k}")))
            .collect(),
        Space::Text(_) => vec![Leaf {
            name: prefix.into(),
            kind: LeafKind::Text,
            row_shape: vec![],
        }],
    }
}
