//! `RescaleAction`: exposes a Box action space as `[min, max]` and maps it affinely onto the
//! env's own bounds.

use super::require_box;
use crate::{BoxSpace, Env, EnvError, Info, Space, Step, Value};

/// Maps actions from `[min, max]` (per element) linearly onto the env's finite action bounds.
pub struct RescaleAction<E> {
    env: E,
    inner: BoxSpace,
    space: Space,
    outer: BoxSpace,
}

impl<E: Env> RescaleAction<E> {
    /// Wraps `env`, whose action space must be an f32 Box with finite bounds.
    pub fn new(env: E, min: f32, max: f32) -> Result<Self, EnvError> {
        let inner = require_box(env.action_space(), "RescaleAction", "action")?.clone();
        if !inner.is_bounded() {
            return Err(EnvError::Other(
                "RescaleAction needs finite action bounds".into(),
            ));
        }
        if !(min.is_finite() && max.is_finite() && min < max) {
            return Err(EnvError::Other(format!(
                "RescaleAction needs finite min < max, got [{min}, {max}]"
            )));
        }
        let outer = BoxSpace {
            low: vec![min; inner.len()],
            high: vec![max; inner.len()],
            ..inner.clone()
        };
        Ok(Self {
            env,
            inner,
            space: Space::Box(outer.clone()),
            outer,
        })
    }
}

impl<E: Env> Env for RescaleAction<E> {
    fn observation_space(&self) -> &Space {
        self.env.observation_space()
    }
    fn action_space(&self) -> &Space {
        &self.space
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        self.env.reset(seed, options)
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        let Value::F32(a) = action else {
            return Err(EnvError::InvalidAction(format!(
                "expected an f32 array, got {}",
                action.describe()
            )));
        };
        if a.len() != self.inner.len() {
            return Err(EnvError::InvalidAction(format!(
                "expected {} elements, got {}",
                self.inner.len(),
                a.len()
            )));
        }
        let mapped = a
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let (lo, hi) = (self.outer.low[i], self.outer.high[i]);
                let (l, h) = (self.inner.low[i], self.inner.high[i]);
                l + (h - l) * (x - lo) / (hi - lo)
            })
            .collect();
        self.env.step(&Value::F32(mapped))
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
