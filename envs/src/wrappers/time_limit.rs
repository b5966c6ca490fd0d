//! `TimeLimit`: truncates episodes after a fixed number of steps.

use crate::{Env, EnvError, Info, Space, Step, Value};

/// Sets `truncated = true` on the `max_episode_steps`-th step of an episode (unless the episode
/// terminated on that same step: termination wins, as in Gymnasium).
pub struct TimeLimit<E> {
    env: E,
    max_episode_steps: u64,
    elapsed: u64,
}

impl<E: Env> TimeLimit<E> {
    /// Wraps `env`.
    pub fn new(env: E, max_episode_steps: u64) -> Self {
        Self {
            env,
            max_episode_steps,
            elapsed: 0,
        }
    }

    /// The wrapped env.
    pub fn inner(&self) -> &E {
        &self.env
    }
}

impl<E: Env> Env for TimeLimit<E> {
    fn observation_space(&self) -> &Space {
        self.env.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let out = self.env.reset(seed, options)?;
        self.elapsed = 0;
        Ok(out)
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        if self.elapsed >= self.max_episode_steps {
            return Err(EnvError::ResetNeeded(format!(
                "the episode was truncated after {} steps; call reset",
                self.max_episode_steps
            )));
        }
        let mut step = self.env.step(action)?;
        self.elapsed += 1;
        if self.elapsed >= self.max_episode_steps && !step.terminated {
            step.truncated = true;
        }
        Ok(step)
    }
    fn close(&mut self) {
        self.env.close()
    }
    fn scene(&self) -> Option<(&dreamgym_sim::World, &dreamgym_sim::Scene)> {
        self.env.scene()
    }
    fn camera(&self) -> Option<dreamgym_sim::Camera> {
        self.env.camera()
    }
    fn keep_motion(&mut self, every: usize) -> bool {
        self.env.keep_motion(every)
    }
    fn motion(&self) -> &[crate::Motion] {
        self.env.motion()
    }
}
