//! `NormalizeObservation`: standardizes observations with running mean and variance.

use super::require_box;
use crate::{BoxSpace, Env, EnvError, Info, Space, Step, Value};

/// Returns `(obs - mean) / sqrt(var + epsilon)` with the running statistics of every
/// observation seen so far (Welford's algorithm in f64), as Gymnasium's wrapper does. Call
/// [`NormalizeObservation::set_update`] with `false` to freeze the statistics for evaluation.
pub struct NormalizeObservation<E> {
    env: E,
    space: Space,
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    epsilon: f64,
    update: bool,
}

impl<E: Env> NormalizeObservation<E> {
    /// Wraps `env`, whose observation space must be an f32 Box.
    pub fn new(env: E) -> Result<Self, EnvError> {
        let b = require_box(
            env.observation_space(),
            "NormalizeObservation",
            "observation",
        )?;
        let n = b.len();
        let space = Space::Box(BoxSpace {
            low: vec![f32::NEG_INFINITY; n],
            high: vec![f32::INFINITY; n],
            ..b.clone()
        });
        Ok(Self {
            env,
            space,
            count: 0.0,
            mean: vec![0.0; n],
            m2: vec![0.0; n],
            epsilon: 1e-8,
            update: true,
        })
    }

    /// Whether new observations update the statistics.
    pub fn set_update(&mut self, update: bool) {
        self.update = update;
    }

    /// The running mean and variance.
    pub fn statistics(&self) -> (Vec<f64>, Vec<f64>) {
        let var = self
            .m2
            .iter()
            .map(|m| {
                if self.count > 0.0 {
                    m / self.count
                } else {
                    1.0
                }
            })
            .collect();
        (self.mean.clone(), var)
    }

    fn normalize(&mut self, obs: Value) -> Result<Value, EnvError> {
        let Value::F32(mut v) = obs else {
            return Err(EnvError::Other(
                "NormalizeObservation got a non-f32 observation".into(),
            ));
        };
        if self.update {
            self.count += 1.0;
            for (i, &x) in v.iter().enumerate() {
                let delta = x as f64 - self.mean[i];
                self.mean[i] += delta / self.count;
                self.m2[i] += delta * (x as f64 - self.mean[i]);
            }
        }
        for (i, x) in v.iter_mut().enumerate() {
            let var = if self.count > 0.0 {
                self.m2[i] / self.count
            } else {
                1.0
            };
            *x = ((*x as f64 - self.mean[i]) / (var + self.epsilon).sqrt()) as f32;
        }
        Ok(Value::F32(v))
    }
}

impl<E: Env> Env for NormalizeObservation<E> {
    fn observation_space(&self) -> &Space {
        &self.space
    }
    fn action_space(&self) -> &Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let (obs, info) = self.env.reset(seed, options)?;
        Ok((self.normalize(obs)?, info))
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        let mut step = self.env.step(action)?;
        step.obs = self.normalize(step.obs)?;
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
