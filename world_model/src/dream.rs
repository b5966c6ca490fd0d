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
use crate::mdn::{MdnOutput, MdnRnn, disagreement, sample_mixture, standard_normal};

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
    /// Each episode's next latents, rewards and ends come from one member of the halting
    /// ensemble (M included), drawn at reset, instead of always from M (ME-TRPO's ensemble of
    /// dynamics, Kurutach et al. 2018): a controller that profits from one M's error loses it
    /// in the others' episodes. C still reads M's `h`, run on whatever latents the episode's
    /// member produces, as it runs on the real env's frames.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ensemble_dynamics: bool,
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
            ensemble_dynamics: false,
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
    /// Which model makes this episode's latents, rewards and ends: 0 for M, k for the k-th
    /// member of `halting` (`ensemble_dynamics`).
    dynamics: usize,
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
            dynamics: 0,
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

    /// A step's reward and whether it ends the episode (and whether by the halt), from the
    /// heads of the episode's model (`predicted` reward, `done_logit`) and the ensemble's
    /// `spread`; a sampled end draws from `rng`.
    fn outcome(
        &self,
        predicted: Option<f32>,
        done_logit: Option<f32>,
        spread: Option<f64>,
        rng: &mut dreamgym_envs::EnvRng,
    ) -> (f64, bool, bool) {
        if let (Some(halt), Some(u)) = (&self.halting, spread)
            && u > halt.threshold
        {
            return (halt.reward, true, true);
        }
        let reward = predicted.map_or(0.0, |r| self.calibration.reward(r as f64));
        let terminated = match done_logit {
            Some(d) => {
                let p = self.calibration.done_probability(d as f64) as f32;
                if self.config.sample_done {
                    rng.random::<f32>() < p
                } else {
                    p > self.config.done_threshold
                }
            }
            None => false,
        };
        (reward, terminated, false)
    }

    /// The model an episode's dynamics come from (drawn after its first latent).
    fn draw_dynamics(&self, rng: &mut dreamgym_envs::EnvRng) -> usize {
        match &self.halting {
            Some(halt) if self.config.ensemble_dynamics => rng.random_range(0..=halt.members.len()),
            _ => 0,
        }
    }
}

/// What [`DreamEnv::run_batch`] acts with: `(episode, observation [z, h], action out)`.
pub type BatchPolicy<'a> = dyn FnMut(usize, &[f32], &mut [f32]) + 'a;

/// One model's heads for a batch of rows, read back from the tensors.
struct Heads {
    log_pi: Vec<f32>,
    mu: Vec<f32>,
    log_sigma: Vec<f32>,
    reward: Option<Vec<f32>>,
    done: Option<Vec<f32>>,
}

/// How one episode of [`DreamEnv::run_batch`] went.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DreamEpisode {
    /// Sum of the rewards.
    pub total_return: f64,
    /// Steps taken.
    pub steps: u64,
    /// Whether M ended it (its done head, or the ensemble's halt), as opposed to the step limit.
    pub terminated: bool,
    /// Whether the ensemble's disagreement ended it.
    pub halted: bool,
}

impl DreamEnv {
    /// Runs one dream episode per seed, all stepped together as one batch through M (and the
    /// halting ensemble): the episodes `reset(Some(seed))` and `step` would give one at a
    /// time, up to float rounding (a product over many rows rounds differently from one over
    /// one row, so a sampled draw near its edge can go the other way), at a fraction of the
    /// cost: one matrix product per layer and step for the whole batch instead of one per
    /// episode. The result depends only on the seeds, the policy and which seeds share the
    /// batch. `policy(i, obs, action)` writes episode `i`'s action for its observation
    /// `[z, h]`. Episodes end as in [`Env::step`] or after `max_steps` steps. This env's own
    /// episode is left as it was.
    pub fn run_batch(
        &self,
        seeds: &[u64],
        max_steps: u64,
        policy: &mut BatchPolicy<'_>,
    ) -> Result<Vec<DreamEpisode>, EnvError> {
        let cfg = self.model.config();
        let (zs, hidden, na, k) = (cfg.z_size, cfg.hidden, cfg.action_size, cfg.mixtures);
        let limit = max_steps.min(self.config.max_steps);
        let mut results = vec![DreamEpisode::default(); seeds.len()];
        if seeds.is_empty() || limit == 0 {
            return Ok(results);
        }
        let dev = self.model.device().clone();
        // Each episode's generator and first latent, drawn exactly as `reset` draws them.
        let mut rngs = Vec::with_capacity(seeds.len());
        let mut dynamics = Vec::with_capacity(seeds.len());
        let mut z = Vec::with_capacity(seeds.len() * zs);
        for &seed in seeds {
            let (_, mut rng) = EpisodeSeeder::default().next_episode(Some(seed));
            let start = &self.starts[rng.random_range(0..self.starts.len())];
            z.extend(
                start
                    .mu
                    .iter()
                    .zip(&start.logvar)
                    .map(|(m, lv)| m + (0.5 * lv).exp() * standard_normal(&mut rng)),
            );
            dynamics.push(self.draw_dynamics(&mut rng));
            rngs.push(rng);
        }
        // Rows of the batch: the episodes still running, in order.
        let mut active: Vec<usize> = (0..seeds.len()).collect();
        let (mut h, mut c) = self.model.initial_state(seeds.len()).map_err(candle_err)?;
        let mut members: Vec<(Tensor, Tensor)> = match &self.halting {
            Some(halt) => halt
                .members
                .iter()
                .map(|m| m.initial_state(seeds.len()))
                .collect::<candle_core::Result<_>>()
                .map_err(candle_err)?,
            None => Vec::new(),
        };
        let mut hv = vec![0f32; seeds.len() * hidden];
        let mut obs = vec![0f32; zs + hidden];
        let vec = |t: &Tensor| -> Result<Vec<f32>, EnvError> {
            t.flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(candle_err)
        };
        while !active.is_empty() {
            let m = active.len();
            let mut a = vec![0f32; m * na];
            for (r, &e) in active.iter().enumerate() {
                obs[..zs].copy_from_slice(&z[r * zs..(r + 1) * zs]);
                obs[zs..].copy_from_slice(&hv[r * hidden..(r + 1) * hidden]);
                let row = &mut a[r * na..(r + 1) * na];
                policy(e, &obs, row);
                if let Some(i) = row.iter().position(|x| !x.is_finite()) {
                    return Err(EnvError::InvalidAction(format!(
                        "episode {e}: element {i} is {}, not a finite number",
                        row[i]
                    )));
                }
            }
            let zt = Tensor::from_slice(&z, (m, zs), &Device::Cpu)
                .and_then(|t| t.to_device(&dev))
                .map_err(candle_err)?;
            let at = Tensor::from_vec(a, (m, na), &Device::Cpu)
                .and_then(|t| t.to_device(&dev))
                .map_err(candle_err)?;
            let (out, h2, c2) = self.model.step(&zt, &at, &h, &c).map_err(candle_err)?;
            let (outs, means) = step_ensemble(out, self.halting.as_ref(), &mut members, &zt, &at)?;
            let spreads: Vec<f64> = if means.is_empty() {
                Vec::new()
            } else {
                (0..m)
                    .map(|r| {
                        let rows: Vec<&[f32]> =
                            means.iter().map(|v| &v[r * zs..(r + 1) * zs]).collect();
                        disagreement(&rows)
                    })
                    .collect()
            };
            // The heads, as vectors, of each model some running episode takes its dynamics
            // from (only M's unless `ensemble_dynamics`).
            let heads = outs
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    if active.iter().any(|&e| dynamics[e] == i) {
                        let mixture = o.mixture().map_err(candle_err)?;
                        Ok(Some(Heads {
                            log_pi: vec(&mixture.log_pi)?,
                            mu: vec(&mixture.mu)?,
                            log_sigma: vec(&mixture.log_sigma)?,
                            reward: o.reward.as_ref().map(vec).transpose()?,
                            done: o.done_logit.as_ref().map(vec).transpose()?,
                        }))
                    } else {
                        Ok(None)
                    }
                })
                .collect::<Result<Vec<_>, EnvError>>()?;
            let block = zs * k;
            let mut keep = Vec::with_capacity(m);
            let mut next_z = Vec::with_capacity(m * zs);
            for (r, &e) in active.iter().enumerate() {
                let rng = &mut rngs[e];
                let hd = heads
                    .get(dynamics[e])
                    .and_then(|x| x.as_ref())
                    .ok_or_else(|| {
                        EnvError::Other("dream: an episode's model is missing".into())
                    })?;
                let zr = sample_mixture(
                    &hd.log_pi[r * block..(r + 1) * block],
                    &hd.mu[r * block..(r + 1) * block],
                    &hd.log_sigma[r * block..(r + 1) * block],
                    k,
                    self.config.temperature,
                    rng,
                );
                let (reward, terminated, halted) = self.outcome(
                    hd.reward.as_ref().map(|v| v[r]),
                    hd.done.as_ref().map(|v| v[r]),
                    spreads.get(r).copied(),
                    rng,
                );
                let ep = &mut results[e];
                ep.total_return += reward;
                ep.steps += 1;
                ep.terminated = terminated;
                ep.halted = halted;
                if !terminated && ep.steps < limit {
                    keep.push(r);
                    next_z.extend_from_slice(&zr);
                }
            }
            // Detached, or every step's graph would stay reachable from (h, c).
            let (mut h2, mut c2) = (h2.detach(), c2.detach());
            if keep.len() < m {
                if keep.is_empty() {
                    break;
                }
                let idx = Tensor::from_vec(
                    keep.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    keep.len(),
                    &dev,
                )
                .map_err(candle_err)?;
                let pick = |t: &Tensor| {
                    t.contiguous()
                        .and_then(|t| t.index_select(&idx, 0))
                        .map_err(candle_err)
                };
                h2 = pick(&h2)?;
                c2 = pick(&c2)?;
                for (mh, mc) in members.iter_mut() {
                    *mh = pick(mh)?;
                    *mc = pick(mc)?;
                }
                active = keep.iter().map(|&r| active[r]).collect();
            }
            h = h2;
            c = c2;
            z = next_z;
            hv = vec(&h)?;
        }
        Ok(results)
    }
}

/// Steps the members of `halting` on the same `z` and `a` as M, whose outputs are `out`,
/// each from its own (h, c) in `states`: every model's outputs (M's first) and, with a
/// halting ensemble, every model's mixture means (`[rows * z_size]` each; none without).
fn step_ensemble(
    out: MdnOutput,
    halting: Option<&Halting>,
    states: &mut [(Tensor, Tensor)],
    z: &Tensor,
    a: &Tensor,
) -> Result<(Vec<MdnOutput>, Vec<Vec<f32>>), EnvError> {
    let mean = |o: &MdnOutput| -> Result<Vec<f32>, EnvError> {
        o.mixture()
            .and_then(|x| x.mean())
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(candle_err)
    };
    let Some(halt) = halting else {
        return Ok((vec![out], Vec::new()));
    };
    let mut means = vec![mean(&out)?];
    let mut outs = vec![out];
    for (m, (h, c)) in halt.members.iter().zip(states.iter_mut()) {
        let (o, h2, c2) = m.step(z, a, h, c).map_err(candle_err)?;
        means.push(mean(&o)?);
        outs.push(o);
        // Detached, or every step's graph would stay reachable from (h, c).
        *h = h2.detach();
        *c = c2.detach();
    }
    Ok((outs, means))
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
        self.dynamics = self.draw_dynamics(&mut rng);
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
        let (outs, means) =
            step_ensemble(out, self.halting.as_ref(), &mut self.member_states, &z, &a)?;
        let spread = (!means.is_empty()).then(|| {
            let refs: Vec<&[f32]> = means.iter().map(|m| m.as_slice()).collect();
            disagreement(&refs)
        });
        // What happens next comes from the episode's model (M unless `ensemble_dynamics`).
        let out = &outs[self.dynamics.min(outs.len() - 1)];
        let mixture = out.mixture().map_err(candle_err)?;
        let (lp, mu, ls) = (
            vec(&mixture.log_pi)?,
            vec(&mixture.mu)?,
            vec(&mixture.log_sigma)?,
        );
        let head = |t: &Option<Tensor>| -> Result<Option<f32>, EnvError> {
            t.as_ref().map(|t| vec(t).map(|v| v[0])).transpose()
        };
        let (predicted, done_logit) = (head(&out.reward)?, head(&out.done_logit)?);
        let mut rng = self.rng.take().expect("reset sets the rng");
        self.z = sample_mixture(
            &lp,
            &mu,
            &ls,
            cfg.mixtures,
            self.config.temperature,
            &mut rng,
        );
        let (reward, terminated, halted) = self.outcome(predicted, done_logit, spread, &mut rng);
        self.rng = Some(rng);
        // Detached, or every dream step's graph would stay reachable from (h, c).
        self.h = h.detach();
        self.c = c.detach();
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
