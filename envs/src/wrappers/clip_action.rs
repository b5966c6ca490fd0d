//! `ClipAction`: accepts any finite action and clips it into the env's Box.

use super::require_box;
use crate::{BoxSpace, Env, EnvError, Info, Space, Step, Value};

/// Clips actions element-wise to the env's bounds; the exposed action space is unbounded.
pub struct ClipAction<E> {
    env: E,
    inner: BoxSpace,
    space: Space,
}

impl<E: Env> ClipAction<E> {
    /// Wraps `env`, whose action space must be an f32 Box.
    pub fn new(env: E) -> Result<Self, EnvError> {
        let inner = require_box(env.action_space(), "ClipAction", "action")?.clone();
        let space = Space::Box(BoxSpace {
            low: vec![f32::NEG_INFINITY; inner.len()],
            high: vec![f32::INFINITY; inner.len()],
            ..inner.clone()
        });
        Ok(Self { env, inner, space })
    }
}

impl<E: Env> Env for ClipAction<E> {
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
        let mut out = vec![0.0; self.inner.len()];
        self.inner
            .clip_into(action, &mut out)
            .map_err(|e| EnvError::InvalidAction(e.0))?;
        self.env.step(&Value::F32(out))
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
