//! `dreamgym-envs`: environments with Gymnasium 1.x semantics on the dreamgym world.
//!
//! - [`Env`], [`Space`] and [`Value`]: the seam every environment implements.
//! - [`wrappers`]: `TimeLimit`, `RecordEpisodeStatistics`, `RescaleAction`, `ClipAction`,
//!   `NormalizeObservation`, `FrameStack`.
//! - [`vector`]: [`SyncVecEnv`] and [`ThreadedVecEnv`] (identical results, any worker count),
//!   NEXT_STEP autoreset by default.
//! - [`Registry`]: env ids (`Name-vN`) with typed configs; built-ins and user envs alike.
//! - [`check_env`]: the conformance checker.
//! - [`builtin`]: `CartPole-v0`, `Reacher-v0`, `Racer-v0`.
//! - [`recording`]: episodes on disk (chunked safetensors with checksums) and their reader.
//!
//! ```
//! use dreamgym_envs::{Env, Info, Registry, Value};
//!
//! let registry = Registry::with_builtins();
//! let mut env = registry.make("CartPole-v0", None).unwrap();
//! let (obs, _info) = env.reset(Some(0), &Info::new()).unwrap();
//! assert!(env.observation_space().contains(&obs));
//! let step = env.step(&Value::Int(1)).unwrap();
//! assert_eq!(step.reward, 1.0);
//! ```

pub mod builtin;
mod checker;
mod env;
pub mod recording;
mod registry;
mod seeding;
mod space;
pub mod vector;
pub mod wrappers;

pub use checker::{CheckError, CheckOptions, check_env, check_env_with};
pub use env::{Env, EnvError, EpisodeState, Info, Motion, Step};
pub use registry::{ConfigError, EnvConfig, EnvSpec, Registry, parse_overrides};
pub use seeding::{EnvRng, EpisodeSeeder, entropy_seed};
pub use space::{
    BoxSpace, DictSpace, Discrete, Dtype, MultiDiscrete, Space, SpaceError, TextSpace, Value,
};
pub use vector::{AutoresetMode, SyncVecEnv, ThreadedVecEnv, VecEnv, VecStep};

/// The types most users need.
pub mod prelude {
    pub use crate::{
        AutoresetMode, BoxSpace, Discrete, Env, EnvError, Info, Registry, Space, Step, SyncVecEnv,
        ThreadedVecEnv, Value, VecEnv, check_env,
    };
}
