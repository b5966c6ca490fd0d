//! Vectorized environments: N envs stepped together, synchronously or on worker threads.
//!
//! Both kinds share one per-env state machine ([`AutoresetMode`]), so a [`ThreadedVecEnv`]
//! returns exactly what a [`SyncVecEnv`] returns for the same envs, seeds and actions.
//!
//! Seeding follows Gymnasium: `reset(Some(seed))` seeds env `i` with `seed + i`.

mod sync;
mod threaded;

pub use sync::SyncVecEnv;
pub use threaded::ThreadedVecEnv;

use crate::{Env, EnvError, Info, Space, Value};

/// What a vector env does when one of its episodes ends (Gymnasium's `AutoresetMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoresetMode {
    /// Gymnasium's default: the step that ends an episode returns its final observation; the
    /// next `step` call resets that env (its action is ignored) and returns the reset
    /// observation with reward 0 and `terminated = truncated = false`.
    #[default]
    NextStep,
    /// The step that ends an episode resets at once: it returns the reset observation, and the
    /// final observation and info go to [`VecStep::final_obs`] and [`VecStep::final_info`].
    SameStep,
}

/// The result of stepping every env once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VecStep {
    /// Observation per env.
    pub obs: Vec<Value>,
    /// Reward per env.
    pub rewards: Vec<f64>,
    /// Whether each env's episode terminated on this step.
    pub terminated: Vec<bool>,
    /// Whether each env's episode was truncated on this step.
    pub truncated: Vec<bool>,
    /// Info per env.
    pub infos: Vec<Info>,
    /// In [`AutoresetMode::SameStep`], the final observation of each episode that ended on this
    /// step. (In `NextStep` mode the final observation is `obs[i]` itself.)
    pub final_obs: Vec<Option<Value>>,
    /// In [`AutoresetMode::SameStep`], the final info of each episode that ended on this step.
    pub final_info: Vec<Option<Info>>,
    /// Whether each env was reset by this call (NEXT_STEP autoreset), so its action was ignored.
    pub autoreset: Vec<bool>,
}

/// One env's result within a [`VecStep`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlotStep {
    pub obs: Value,
    pub reward: f64,
    pub terminated: bool,
    pub truncated: bool,
    pub info: Info,
    pub final_obs: Option<Value>,
    pub final_info: Option<Info>,
    pub autoreset: bool,
}

impl VecStep {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            obs: Vec::with_capacity(n),
            rewards: Vec::with_capacity(n),
            terminated: Vec::with_capacity(n),
            truncated: Vec::with_capacity(n),
            infos: Vec::with_capacity(n),
            final_obs: Vec::with_capacity(n),
            final_info: Vec::with_capacity(n),
            autoreset: Vec::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, s: SlotStep) {
        self.obs.push(s.obs);
        self.rewards.push(s.reward);
        self.terminated.push(s.terminated);
        self.truncated.push(s.truncated);
        self.infos.push(s.info);
        self.final_obs.push(s.final_obs);
        self.final_info.push(s.final_info);
        self.autoreset.push(s.autoreset);
    }
}

/// N environments stepped together.
pub trait VecEnv {
    /// Number of envs.
    fn num_envs(&self) -> usize;
    /// The observation space of one env.
    fn single_observation_space(&self) -> &Space;
    /// The action space of one env.
    fn single_action_space(&self) -> &Space;
    /// The autoreset mode.
    fn autoreset_mode(&self) -> AutoresetMode;
    /// Resets every env; env `i` gets `seed + i` when a seed is given.
    fn reset(
        &mut self,
        seed: Option<u64>,
        options: &Info,
    ) -> Result<(Vec<Value>, Vec<Info>), EnvError>;
    /// Steps every env with its action (`actions.len() == num_envs()`).
    fn step(&mut self, actions: &[Value]) -> Result<VecStep, EnvError>;
    /// Closes every env.
    fn close(&mut self);
}

/// One env inside a vector env, with its autoreset state.
pub(crate) struct Slot {
    pub env: Box<dyn Env>,
    pub mode: AutoresetMode,
    pub needs_reset: bool,
}

impl Slot {
    pub fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let out = self.env.reset(seed, options)?;
        self.needs_reset = false;
        Ok(out)
    }

    pub fn step(&mut self, action: &Value) -> Result<SlotStep, EnvError> {
        if self.needs_reset {
            let (obs, info) = self.reset(None, &Info::new())?;
            return Ok(SlotStep {
                obs,
                reward: 0.0,
                terminated: false,
                truncated: false,
                info,
                final_obs: None,
                final_info: None,
                autoreset: true,
            });
        }
        let step = self.env.step(action)?;
        let done = step.done();
        match (self.mode, done) {
            (AutoresetMode::SameStep, true) => {
                let (obs, info) = self.env.reset(None, &Info::new())?;
                Ok(SlotStep {
                    obs,
                    reward: step.reward,
                    terminated: step.terminated,
                    truncated: step.truncated,
                    info,
                    final_obs: Some(step.obs),
                    final_info: Some(step.info),
                    autoreset: false,
                })
            }
            _ => {
                self.needs_reset = done;
                Ok(SlotStep {
                    obs: step.obs,
                    reward: step.reward,
                    terminated: step.terminated,
                    truncated: step.truncated,
                    info: step.info,
                    final_obs: None,
                    final_info: None,
                    autoreset: false,
                })
            }
        }
    }
}

/// Checks that all envs share spaces, returning them.
pub(crate) fn common_spaces(envs: &[Box<dyn Env>]) -> Result<(Space, Space), EnvError> {
    let first = envs
        .first()
        .ok_or_else(|| EnvError::Other("a vector env needs at least one env".into()))?;
    let (obs, act) = (
        first.observation_space().clone(),
        first.action_space().clone(),
    );
    for (i, e) in envs.iter().enumerate() {
        if *e.observation_space() != obs || *e.action_space() != act {
            return Err(EnvError::Other(format!(
                "env {i} has different spaces from env 0; a vector env needs identical envs"
            )));
        }
    }
    Ok((obs, act))
}

/// The seed for env `i` given the vector reset seed.
pub(crate) fn env_seed(seed: Option<u64>, i: usize) -> Option<u64> {
    seed.map(|s| s.wrapping_add(i as u64))
}

/// Checks a batch of actions before any env moves: one per env, each acceptable to the action
/// space, so that a bad batch changes nothing.
pub(crate) fn check_batch(
    space: &Space,
    num_envs: usize,
    actions: &[Value],
) -> Result<(), EnvError> {
    if actions.len() != num_envs {
        return Err(EnvError::InvalidAction(format!(
            "expected {num_envs} actions (one per env), got {}",
            actions.len()
        )));
    }
    for (i, a) in actions.iter().enumerate() {
        space
            .check_action(a)
            .map_err(|e| EnvError::InvalidAction(format!("env {i}: {e}")))?;
    }
    Ok(())
}
