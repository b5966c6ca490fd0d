//! The dream: an [`Env`] whose state is M's (z, h, c) and whose step samples M.
//!
//! Observations are `[z, h]` (what the controller C reads); the action space is the real env's.
//! An episode starts from the (μ, σ) of a real first frame drawn from the list it was given,
//! sampled as V would encode it. Rewards and done flags come from M's heads; with no reward head
//! the reward is 0 and with no done head episodes only end at `max_steps` (truncated).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use dreamgym_envs::{
    BoxSpace, Env, EnvError, EpisodeSeeder, EpisodeState, Info, Space, Step, Value,
};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::calibration::Calibration;
use crate::mdn::{MdnRnn, disagreement, sample_mixture, standard_normal};

/// How the dream behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DreamConfig {
    /// Sampling temperature τ (the paper's CarRacing dream used 1.0, Doom 1.15).
    pub temperature: f32,
    /// Steps before the episode is truncated.
    pub max_steps: u64,
    /// A step ends the episode when M's done probability exceeds this (unless `sample_done`).
    pub done_threshold: f32,
    /// End the episode with M's done probability: a Bernoulli draw at every step, so M's
    /// dream ends where it believes episodes end, as often as they do. With a threshold, a
    /// risk M rates below it never ends an episode, which a controller learns to exploit.
    pub sample_done: bool,
    /// Read M's heads through the calibration fitted on held-out episodes
    /// (`mdnrnn.held_out`), not as they are.
    pub calibrated: bool,
    /// End the episode where an ensemble of Ms (`mdnrnn.ensemble`) disagrees about the next
    /// latent more than on this fraction of the held-out real steps (0: off), with
    /// `halt_reward`: the dream stops where M does not know what happens, instead of letting
    /// the controller profit from M's guesses there (MOReL's "halt" state).
    #[serde(skip_serializing_if = "is_zero")]
    pub halt_quantile: f64,
    /// The reward of the step that ends a dream for disagreement (e.g. the env's penalty for
    /// leaving the field).
    #[serde(skip_serializing_if = "is_zero")]
    pub halt_reward: f64,
}

// Fields added later are left out of the serialized config while unset, so that checkpoints
// recorded with the config before them still match it.
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Other Ms, trained like the dream's own but from other seeds, that step beside it: where
/// their predictions of the next latent spread more than `threshold`
/// ([`disagreement`](crate::mdn::disagreement)), the dream ends with `reward`.
#[derive(Clone)]
pub struct Halting {
    /// The other members (the dream's own M is the first member).
    pub members: Vec<Arc<MdnRnn>>,
    /// The disagreement above which the dream ends.
    pub threshold: f64,
    /// The reward of that last step.
    pub reward: f64,
}

impl Default for DreamConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            max_steps: 1000,
            done_threshold: 0.5,
            sample_done: false,
            calibrated: false,
            halt_quantile: 0.0,
            halt_reward: 0.0,
        }
    }
}

/// A starting latent: a real first frame's encoder output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartLatent {
    /// μ of the frame.
    pub mu: Vec<f32>,
    /// log σ² of the frame.
    pub logvar: Vec<f32>,
}

/// M as an environment.
pub struct DreamEnv {
    model: Arc<MdnRnn>,
    config: DreamConfig,
    calibration: Calibration,
    starts: Arc<Vec<StartLatent>>,
    halting: Option<Halting>,
    /// (h, c) of each member of `halting`.
    member_states: Vec<(Tensor, Tensor)>,
    obs_space: Space,
    action_space: Space,
    seeder: EpisodeSeeder,
    rng: Option<dreamgym_envs::EnvRng>,
    episode: EpisodeState,
    z: Vec<f32>,
    h: Tensor,
    c: Tensor,
}

impl DreamEnv {
    /// A dream of `model`, starting from `starts`, acting in `action_space` (a Box whose size is
    /// M's `action_size`).
    pub fn new(
        model: Arc<MdnRnn>,
        starts: Arc<Vec<StartLatent>>,
        action_space: Space,
        config: DreamConfig,
    ) -> Result<Self, EnvError> {
        let cfg = model.config().clone();
        let bad = |m: String| EnvError::InvalidConfig {
            env: "dream".into(),
            message: m,
        };
        match action_space.as_box() {
            Some(b) if b.len() == cfg.action_size => {}
            _ => {
                return Err(bad(format!(
                    "the action space must be a Box of {} values (M's action_size)",
                    cfg.action_size
                )));
            }
        }
        if starts.is_empty() {
            return Err(bad("no starting latents".into()));
        }
        if let Some(s) = starts
            .iter()
            .find(|s| s.mu.len() != cfg.z_size || s.logvar.len() != cfg.z_size)
        {
            return Err(bad(format!(
                "a starting latent has {} values, M's z_size is {}",
                s.mu.len(),
                cfg.z_size
            )));
        }
        if config.temperature.is_nan() || config.temperature <= 0.0 || config.max_steps == 0 {
            return Err(bad("temperature must be > 0 and max_steps >= 1".into()));
        }
        let obs_space = Space::Box(BoxSpace::uniform(
            vec![cfg.z_size + cfg.hidden],
            f32::NEG_INFINITY,
            f32::INFINITY,
        ));
        let (h, c) = model
            .initial_state(1)
            .map_err(|e| EnvError::Other(e.to_string()))?;
        Ok(Self {
            model,
            config,
            calibration: Calibration::IDENTITY,
            starts,
            halting: None,
            member_states: Vec::new(),
            obs_space,
            action_space,
            seeder: EpisodeSeeder::default(),
            rng: None,
            episode: EpisodeState::default(),
            z: Vec::new(),
            h,
            c,
        })
    }

    fn obs(&self) -> Result<Value, EnvError> {
        let h: Vec<f32> = self
            .h
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle_err)?;
        let mut v = self.z.clone();
        v.extend_from_slice(&h);
        Ok(Value::F32(v))
    }

    /// Reads M's reward and done heads through `calibration` (fitted on held-out real
    /// episodes) instead of as they are.
    pub fn with_calibration(mut self, calibration: Calibration) -> Self {
        self.calibration = calibration;
        self
    }

    /// Steps `halting`'s members beside M and ends the episode where they disagree. Errors
    /// when a member's sizes differ from M's.
    pub fn with_halting(mut self, halting: Halting) -> Result<Self, EnvError> {
        let cfg = self.model.config();
        if let Some(m) = halting.members.iter().find(|m| {
            let c = m.config();
            (c.z_size, c.action_size) != (cfg.z_size, cfg.action_size)
        }) {
            return Err(EnvError::InvalidConfig {
                env: "dream".into(),
                message: format!(
                    "an ensemble member predicts {} latents from {} actions, M {} from {}",
                    m.config().z_size,
                    m.config().action_size,
                    cfg.z_size,
                    cfg.action_size
                ),
            });
        }
        if !(halting.threshold >= 0.0 && halting.reward.is_finite()) {
            return Err(EnvError::InvalidConfig {
                env: "dream".into(),
                message: "the halting threshold must be >= 0 and its reward finite".into(),
            });
        }
        self.halting = Some(halting);
        Ok(self)
    }

    /// The current latent z (to decode into an image with V).
    pub fn latent(&self) -> &[f32] {
        &self.z
    }
}

fn candle_err(e: candle_core::Error) -> EnvError {
    EnvError::Other(format!("dream: {e}"))
}

impl Env for DreamEnv {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }

    fn action_space(&self) -> &Space {
        &self.action_space
    }

    fn reset(&mut self, seed: Option<u64>, _options: &Info) -> Result<(Value, Info), EnvError> {
        let (episode_seed, mut rng) = self.seeder.next_episode(seed);
        let start = &self.starts[rng.random_range(0..self.starts.len())];
        self.z = start
            .mu
            .iter()
            .zip(&start.logvar)
            .map(|(m, lv)| m + (0.5 * lv).exp() * standard_normal(&mut rng))
            .collect();
        let (h, c) = self.model.initial_state(1).map_err(candle_err)?;
        self.h = h;
        self.c = c;
        self.member_states = match &self.halting {
            Some(halt) => halt
                .members
                .iter()
                .map(|m| m.initial_state(1))
                .collect::<candle_core::Result<_>>()
                .map_err(candle_err)?,
            None => Vec::new(),
        };
        self.rng = Some(rng);
        self.episode = EpisodeState {
            running: true,
            steps: 0,
        };
        let mut info = Info::new();
        info.insert("episode_seed".into(), episode_seed.into());
        Ok((self.obs()?, info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running("dream")?;
        self.action_space
            .check_action(action)
            .map_err(|e| EnvError::InvalidAction(e.0))?;
        let a = action
            .as_f32()
            .ok_or_else(|| EnvError::InvalidAction("expected floats".into()))?;
        let dev = Device::Cpu;
        let cfg = self.model.config();
        let z = Tensor::from_slice(&self.z, (1, cfg.z_size), &dev).map_err(candle_err)?;
        let a = Tensor::from_slice(a, (1, cfg.action_size), &dev).map_err(candle_err)?;
        let dev_model = self.model.device().clone();
        let (z, a) = (
            z.to_device(&dev_model).map_err(candle_err)?,
            a.to_device(&dev_model).map_err(candle_err)?,
        );
        let (out, h, c) = self
            .model
            .step(&z, &a, &self.h, &self.c)
            .map_err(candle_err)?;
        let vec = |t: &Tensor| -> Result<Vec<f32>, EnvError> {
            t.flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(candle_err)
        };
        let mixture = out.mixture().map_err(candle_err)?;
        // The members see the same latent and action; their (h, c) stay their own.
        let spread = match &self.halting {
            Some(halt) => {
                let mut means = vec![vec(&mixture.mean().map_err(candle_err)?)?];
                for (m, (h, c)) in halt.members.iter().zip(self.member_states.iter_mut()) {
                    let (o, h2, c2) = m.step(&z, &a, h, c).map_err(candle_err)?;
                    means.push(vec(&o
                        .mixture()
                        .and_then(|x| x.mean())
                        .map_err(candle_err)?)?);
                    *h = h2.detach();
                    *c = c2.detach();
                }
                let refs: Vec<&[f32]> = means.iter().map(|m| m.as_slice()).collect();
                Some(disagreement(&refs))
            }
            None => None,
        };
        let (lp, mu, ls) = (
            vec(&mixture.log_pi)?,
            vec(&mixture.mu)?,
            vec(&mixture.log_sigma)?,
        );
        let rng = self.rng.as_mut().expect("reset sets the rng");
        self.z = sample_mixture(&lp, &mu, &ls, cfg.mixtures, self.config.temperature, rng);
        // Detached, or every dream step's graph would stay reachable from (h, c).
        self.h = h.detach();
        self.c = c.detach();
        let mut reward = match &out.reward {
            Some(r) => self.calibration.reward(vec(r)?[0] as f64),
            None => 0.0,
        };
        let halted = match (&self.halting, spread) {
            (Some(halt), Some(u)) if u > halt.threshold => {
                reward = halt.reward;
                true
            }
            _ => false,
        };
        let terminated = halted
            || match &out.done_logit {
                Some(d) => {
                    let p = self.calibration.done_probability(vec(d)?[0] as f64) as f32;
                    if self.config.sample_done {
                        rng.random::<f32>() < p
                    } else {
                        p > self.config.done_threshold
                    }
                }
                None => false,
            };
        self.episode.steps += 1;
        let truncated = !terminated && self.episode.steps >= self.config.max_steps;
        if terminated || truncated {
            self.episode.running = false;
        }
        let mut info = Info::new();
        if let Some(u) = spread {
            info.insert("disagreement".into(), u.into());
        }
        if halted {
            info.insert("halted".into(), true.into());
        }
        Ok(Step {
            obs: self.obs()?,
            reward,
            terminated,
            truncated,
            info,
        })
    }
}
