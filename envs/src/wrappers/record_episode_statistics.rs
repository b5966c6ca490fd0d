//! `RecordEpisodeStatistics`: reports each finished episode's return, length and duration.

use std::time::Instant;

use crate::{Env, EnvError, Info, Space, Step, Value};

/// On the step that ends an episode, adds `info["episode"] = {"r": return, "l": length,
/// "t": seconds}` (Gymnasium's keys).
pub struct RecordEpisodeStatistics<E> {
    env: E,
    episode_return: f64,
    episode_length: u64,
    started: Instant,
}

impl<E: Env> RecordEpisodeStatistics<E> {
    /// Wraps `env`.
    pub fn new(env: E) -> Self {
        Self {
            env,
            episode_return: 0.0,
            episode_length: 0,
            started: Instant::now(),
        }
    }
}

impl<E: Env> Env for RecordEpisodeStatistics<E> {
    fn observation_space(&self) -> &Space {
        self.env.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let out = self.env.reset(seed, options)?;
        self.episode_return = 0.0;
        self.episode_length = 0;
        self.started = Instant::now();
        Ok(out)
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        let mut step = self.env.step(action)?;
        self.episode_return += step.reward;
        self.episode_length += 1;
        if step.done() {
            step.info.insert(
                "episode".into(),
                serde_json::json!({
                    "r": self.episode_return,
                    "l": self.episode_length,
                    "t": self.started.elapsed().as_secs_f64(),
                }),
            );
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
