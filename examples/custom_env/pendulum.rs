//! `Pendulum-v1`: Gymnasium's inverted pendulum swing-up, written as a user's own env.
//!
//! ## Description
//! A pendulum hangs from a frictionless pivot; torque swings it up and holds it upright. The
//! dynamics are Gymnasium's closed form (no physics engine needed: any Rust code can be an
//! `Env`): `θ̈ = 3g/(2l) sin θ + 3/(m l²) u`, semi-implicit Euler with `dt = 0.05`.
//!
//! ## Action Space
//! `Box(-2, 2, (1,), f32)`: torque, N·m. Out-of-range values are clipped and flagged.
//!
//! ## Observation Space
//! `Box((3,))`: `[cos θ, sin θ, θ̇]` with θ̇ in [-8, 8] rad/s.
//!
//! ## Rewards
//! `-(θ² + 0.1 θ̇² + 0.001 u²)` with θ normalized to [-π, π].
//!
//! ## Starting State
//! θ uniform in [-π, π], θ̇ uniform in [-1, 1].
//!
//! ## Episode End
//! Never terminates; truncated after 200 steps by the registry's `TimeLimit`.

use dreamgym_envs::{
    BoxSpace, ConfigError, Env, EnvConfig, EnvError, EpisodeSeeder, EpisodeState, Info, Space,
    Step, Value,
};
use rand::RngExt;
use serde::{Deserialize, Serialize};

/// Settings of `Pendulum-v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PendulumConfig {
    /// Gravity, m/s².
    pub g: f32,
}

impl Default for PendulumConfig {
    fn default() -> Self {
        Self { g: 10.0 }
    }
}

impl EnvConfig for PendulumConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.g.is_finite() && (0.0..=100.0).contains(&self.g) {
            Ok(())
        } else {
            Err(format!("g must be in [0, 100] m/s², got {}", self.g).into())
        }
    }
}

/// The pendulum.
pub struct Pendulum {
    g: f32,
    theta: f32,
    theta_dot: f32,
    observation_space: Space,
    action_space: Space,
    action_box: BoxSpace,
    seeder: EpisodeSeeder,
    episode: EpisodeState,
}

impl Pendulum {
    /// A pendulum under gravity `config.g`.
    pub fn new(config: PendulumConfig) -> Result<Self, EnvError> {
        let action_box = BoxSpace::new(vec![-2.0], vec![2.0]);
        Ok(Self {
            g: config.g,
            theta: 0.0,
            theta_dot: 0.0,
            observation_space: Space::Box(BoxSpace::new(
                vec![-1.0, -1.0, -8.0],
                vec![1.0, 1.0, 8.0],
            )),
            action_space: Space::Box(action_box.clone()),
            action_box,
            seeder: EpisodeSeeder::default(),
            episode: EpisodeState::default(),
        })
    }

    fn obs(&self) -> Value {
        Value::F32(vec![self.theta.cos(), self.theta.sin(), self.theta_dot])
    }
}

impl Env for Pendulum {
    fn observation_space(&self) -> &Space {
        &self.observation_space
    }

    fn action_space(&self) -> &Space {
        &self.action_space
    }

    fn reset(&mut self, seed: Option<u64>, _options: &Info) -> Result<(Value, Info), EnvError> {
        let (episode_seed, mut rng) = self.seeder.next_episode(seed);
        self.theta = rng.random_range(-std::f32::consts::PI..=std::f32::consts::PI);
        self.theta_dot = rng.random_range(-1.0..=1.0);
        self.episode.start();
        let mut info = Info::new();
        info.insert("episode_seed".into(), episode_seed.into());
        Ok((self.obs(), info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running("Pendulum-v1")?;
        let mut u = [0.0f32];
        // A malformed action is an `EnvError::InvalidAction` through `?`.
        let clipped = self.action_box.clip_into(action, &mut u)?;
        let u = u[0];
        let (m, l, dt) = (1.0f32, 1.0f32, 0.05f32);
        let pi = std::f32::consts::PI;
        let norm = (self.theta + pi).rem_euclid(2.0 * pi) - pi;
        let cost = norm * norm + 0.1 * self.theta_dot * self.theta_dot + 0.001 * u * u;
        self.theta_dot = (self.theta_dot
            + (3.0 * self.g / (2.0 * l) * self.theta.sin() + 3.0 / (m * l * l) * u) * dt)
            .clamp(-8.0, 8.0);
        self.theta += self.theta_dot * dt;
        self.episode.record(false);
        let mut info = Info::new();
        if clipped {
            info.insert("action_clipped".into(), true.into());
        }
        Ok(Step {
            obs: self.obs(),
            reward: -cost as f64,
            terminated: false,
            truncated: false,
            info,
        })
    }
}
