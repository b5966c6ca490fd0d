//! `FrameStack`: observes the last `n` observations stacked along a new leading axis.

use std::collections::VecDeque;

use crate::{BoxSpace, Env, EnvError, Info, Space, Step, Value};

/// Stacks the last `n` Box observations into shape `[n, ...]`, oldest first. At reset the stack
/// is filled with copies of the first observation (Gymnasium's `padding_type="reset"`).
pub struct FrameStack<E> {
    env: E,
    n: usize,
    space: Space,
    frames: VecDeque<Value>,
}

impl<E: Env> FrameStack<E> {
    /// Wraps `env`, whose observation space must be a Box (f32 or u8).
    pub fn new(env: E, n: usize) -> Result<Self, EnvError> {
        let Space::Box(b) = env.observation_space() else {
            return Err(EnvError::Other(format!(
                "FrameStack needs a Box observation space, the env has {}",
                env.observation_space()
            )));
        };
        if n == 0 {
            return Err(EnvError::Other("FrameStack needs n >= 1".into()));
        }
        let mut shape = vec![n];
        shape.extend(&b.shape);
        let space = Space::Box(BoxSpace {
            shape,
            low: b.low.repeat(n),
            high: b.high.repeat(n),
            dtype: b.dtype,
        });
        Ok(Self {
            env,
            n,
            space,
            frames: VecDeque::with_capacity(n),
        })
    }

    fn stacked(&self) -> Value {
        match self.frames.front() {
            Some(Value::U8(_)) => Value::U8(
                self.frames
                    .iter()
                    .flat_map(|f| match f {
                        Value::U8(v) => v.clone(),
                        _ => Vec::new(),
                    })
                    .collect(),
            ),
            _ => Value::F32(
                self.frames
                    .iter()
                    .flat_map(|f| match f {
                        Value::F32(v) => v.clone(),
                        _ => Vec::new(),
                    })
                    .collect(),
            ),
        }
    }
}

impl<E: Env> Env for FrameStack<E> {
    fn observation_space(&self) -> &Space {
        &self.space
    }
    fn action_space(&self) -> &Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let (obs, info) = self.env.reset(seed, options)?;
        self.frames.clear();
        for _ in 0..self.n {
            self.frames.push_back(obs.clone());
        }
        Ok((self.stacked(), info))
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        let mut step = self.env.step(action)?;
        if self.frames.len() == self.n {
            self.frames.pop_front();
        }
        self.frames
            .push_back(std::mem::replace(&mut step.obs, Value::Int(0)));
        step.obs = self.stacked();
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
