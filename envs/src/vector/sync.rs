//! `SyncVecEnv`: N envs stepped one after another on the calling thread.

use super::{AutoresetMode, Slot, VecEnv, VecStep, check_batch, common_spaces, env_seed};
use crate::{Env, EnvError, Info, Space, Value};

/// Steps its envs in order on the calling thread.
pub struct SyncVecEnv {
    slots: Vec<Slot>,
    observation_space: Space,
    action_space: Space,
    mode: AutoresetMode,
}

impl SyncVecEnv {
    /// A vector env over `envs`, which must share their spaces.
    pub fn new(envs: Vec<Box<dyn Env>>, mode: AutoresetMode) -> Result<Self, EnvError> {
        let (observation_space, action_space) = common_spaces(&envs)?;
        Ok(Self {
            slots: envs
                .into_iter()
                .map(|env| Slot {
                    env,
                    mode,
                    needs_reset: false,
                })
                .collect(),
            observation_space,
            action_space,
            mode,
        })
    }
}

impl VecEnv for SyncVecEnv {
    fn num_envs(&self) -> usize {
        self.slots.len()
    }
    fn single_observation_space(&self) -> &Space {
        &self.observation_space
    }
    fn single_action_space(&self) -> &Space {
        &self.action_space
    }
    fn autoreset_mode(&self) -> AutoresetMode {
        self.mode
    }
    fn reset(
        &mut self,
        seed: Option<u64>,
        options: &Info,
    ) -> Result<(Vec<Value>, Vec<Info>), EnvError> {
        let mut obs = Vec::with_capacity(self.slots.len());
        let mut infos = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let (o, info) = slot.reset(env_seed(seed, i), options)?;
            obs.push(o);
            infos.push(info);
        }
        Ok((obs, infos))
    }
    fn step(&mut self, actions: &[Value]) -> Result<VecStep, EnvError> {
        check_batch(&self.action_space, self.slots.len(), actions)?;
        let mut out = VecStep::with_capacity(self.slots.len());
        for (i, (slot, action)) in self.slots.iter_mut().zip(actions).enumerate() {
            out.push(slot.step(action).map_err(|e| prefix(i, e))?);
        }
        Ok(out)
    }
    fn close(&mut self) {
        for slot in &mut self.slots {
            slot.env.close();
        }
    }
}

/// Names the env an error came from, keeping the error's kind.
pub(crate) fn prefix(i: usize, e: EnvError) -> EnvError {
    match e {
        EnvError::InvalidAction(m) => EnvError::InvalidAction(format!("env {i}: {m}")),
        EnvError::ResetNeeded(m) => EnvError::ResetNeeded(format!("env {i}: {m}")),
        EnvError::InvalidOption(m) => EnvError::InvalidOption(format!("env {i}: {m}")),
        other => other,
    }
}
