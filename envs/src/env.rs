//! The `Env` trait, with Gymnasium 1.x semantics, and what its methods return.

use serde_json::Value as Json;

use crate::{Space, Value};

/// Extra information returned by `reset` and `step` (Gymnasium's `info` dict), and the
/// `options` passed to `reset`.
pub type Info = serde_json::Map<String, Json>;

/// The result of one [`Env::step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Observation after the action.
    pub obs: Value,
    /// Reward for the transition.
    pub reward: f64,
    /// The task ended (a terminal state of the MDP: the pole fell, the track is done).
    pub terminated: bool,
    /// The episode was cut off from outside the task (a time limit).
    pub truncated: bool,
    /// Extra information.
    pub info: Info,
}

impl Step {
    /// Whether the episode is over (terminated or truncated).
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// What can go wrong in an environment. None of these leave the environment corrupted: after
/// an error from `step`, the state is as it was before the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    /// The action is not acceptable (wrong kind or shape, NaN, or a discrete value outside its
    /// space). Out-of-range continuous actions are not errors: built-in envs clip them and set
    /// `info["action_clipped"] = true`.
    #[error("invalid action: {0}")]
    InvalidAction(String),
    /// `step` was called before `reset`, or after the episode ended without a `reset`.
    #[error("reset needed: {0}")]
    ResetNeeded(String),
    /// An option passed to `reset` is not understood or has a bad value.
    #[error("invalid reset option: {0}")]
    InvalidOption(String),
    /// A configuration value is out of range or unknown.
    #[error("invalid config for {env}: {message}")]
    InvalidConfig {
        /// The env id (or type) the config was for.
        env: String,
        /// What is wrong with it.
        message: String,
    },
    /// No environment is registered under this id.
    #[error("unknown env id `{id}`; registered ids: {}", known.join(", "))]
    UnknownEnv {
        /// The id asked for.
        id: String,
        /// The ids that are registered.
        known: Vec<String>,
    },
    /// An env id that does not look like `Name-vN`.
    #[error("bad env id `{0}`: ids look like `Name-vN` (for example `CartPole-v0`)")]
    BadId(String),
    /// The same id registered twice.
    #[error("env id `{0}` is already registered")]
    DuplicateId(String),
    /// The physics world failed (for instance, it blew up); the episode cannot continue.
    #[error("simulation error: {0}")]
    Sim(#[from] dreamgym_sim::SimError),
    /// A vectorized env's worker thread died.
    #[error("vector env worker failed: {0}")]
    Worker(String),
    /// Anything else an environment needs to report.
    #[error("{0}")]
    Other(String),
}

/// An action outside its space is an invalid action: `space.check_action(a)?` in an env's
/// `step`.
impl From<crate::space::SpaceError> for EnvError {
    fn from(e: crate::space::SpaceError) -> Self {
        EnvError::InvalidAction(e.0)
    }
}

/// A reinforcement-learning environment with Gymnasium 1.x semantics.
///
/// - `reset(seed, options)` starts an episode. With `Some(seed)`, the episode and every
///   episode after it (reset with `None`) are reproducible; with `None` on the first call the
///   env seeds itself from entropy.
/// - `step(action)` advances one step. `terminated` means the task reached a terminal state;
///   `truncated` means it was cut off from outside (a time limit). After either, `step` returns
///   [`EnvError::ResetNeeded`] until the next `reset`.
/// - Observations returned are always inside [`Env::observation_space`].
///
/// Implement it for your own world, register it in a [`Registry`](crate::Registry), and every
/// dreamgym command works with it.
pub trait Env: Send {
    /// The space every observation lies in.
    fn observation_space(&self) -> &Space;
    /// The space of valid actions.
    fn action_space(&self) -> &Space;
    /// Starts a new episode and returns its first observation.
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError>;
    /// Applies an action for one step.
    fn step(&mut self, action: &Value) -> Result<Step, EnvError>;
    /// Releases resources. Calling it twice is fine.
    fn close(&mut self) {}
    /// The physics world and what it looks like, for viewers and cameras; `None` for envs
    /// without a rapier world.
    fn scene(&self) -> Option<(&dreamgym_sim::World, &dreamgym_sim::Scene)> {
        None
    }
    /// The camera pixel observations come from (at the config's `width` and `height`), for
    /// rendering the [`scene`](Env::scene) as the agent would see it; `None` for envs without
    /// one.
    fn camera(&self) -> Option<dreamgym_sim::Camera> {
        None
    }
    /// Asks the env to keep the poses of its scene's visuals every `every` physics steps
    /// inside each `step` (0 stops it), for viewers of envs whose one step runs many physics
    /// steps (a language command carried out by skills). Returns whether the env keeps them;
    /// the default keeps none.
    fn keep_motion(&mut self, every: usize) -> bool {
        let _ = every;
        false
    }
    /// The poses kept during the last `step` (see [`keep_motion`](Env::keep_motion)), one
    /// entry per visual of [`scene`](Env::scene), oldest first.
    fn motion(&self) -> &[Motion] {
        &[]
    }
}

/// The poses of a scene's visuals at one physics step (`None` for hidden ones), as
/// [`Scene::world_poses`](dreamgym_sim::Scene::world_poses) gives them.
pub type Motion = Vec<Option<dreamgym_sim::rapier::prelude::Pose>>;

impl<E: Env + ?Sized> Env for Box<E> {
    fn observation_space(&self) -> &Space {
        (**self).observation_space()
    }
    fn action_space(&self) -> &Space {
        (**self).action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        (**self).reset(seed, options)
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        (**self).step(action)
    }
    fn close(&mut self) {
        (**self).close()
    }
    fn scene(&self) -> Option<(&dreamgym_sim::World, &dreamgym_sim::Scene)> {
        (**self).scene()
    }
    fn camera(&self) -> Option<dreamgym_sim::Camera> {
        (**self).camera()
    }
    fn keep_motion(&mut self, every: usize) -> bool {
        (**self).keep_motion(every)
    }
    fn motion(&self) -> &[Motion] {
        (**self).motion()
    }
}

/// Bookkeeping every built-in env shares: whether `step` may be called, and how many steps the
/// episode has taken.
#[derive(Debug, Clone, Default)]
pub struct EpisodeState {
    /// Whether an episode is running (reset called, not yet ended).
    pub running: bool,
    /// Steps taken in the current episode.
    pub steps: u64,
}

impl EpisodeState {
    /// Errors unless an episode is running.
    pub fn check_running(&self, env: &str) -> Result<(), EnvError> {
        if self.running {
            Ok(())
        } else if self.steps == 0 {
            Err(EnvError::ResetNeeded(format!(
                "{env}: call reset before the first step"
            )))
        } else {
            Err(EnvError::ResetNeeded(format!(
                "{env}: the episode ended after {} steps; call reset",
                self.steps
            )))
        }
    }

    /// Records a step and whether it ended the episode.
    pub fn record(&mut self, done: bool) {
        self.steps += 1;
        if done {
            self.running = false;
        }
    }

    /// Marks the start of an episode.
    pub fn start(&mut self) {
        self.running = true;
        self.steps = 0;
    }
}
