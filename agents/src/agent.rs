//! The World Models agent: V encodes each frame to z, M's LSTM carries h, C acts on [z, h].

use std::sync::Arc;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_envs::{Env, Info, Space, Value};
use dreamgym_policies::LinearController;
use dreamgym_world_model::vae::frames_to_tensor;
use dreamgym_world_model::{MdnRnn, Vae};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// V and M, shared read-only between worker threads.
#[derive(Clone)]
pub struct WorldModel {
    /// V.
    pub vae: Arc<Vae>,
    /// M.
    pub mdn: Arc<MdnRnn>,
}

/// The frame inside an observation: a u8 image, or the `pixels` entry of a Dict.
pub fn frame_of(obs: &Value) -> anyhow::Result<&[u8]> {
    match obs {
        Value::U8(v) => Ok(v),
        Value::Dict(d) => match d.get("pixels") {
            Some(Value::U8(v)) => Ok(v),
            _ => anyhow::bail!("the observation has no `pixels` image"),
        },
        other => anyhow::bail!(
            "World Models needs pixel observations (obs = \"pixels\"), got {}",
            other.describe()
        ),
    }
}

/// Whether an env's observations are images V can read.
pub fn check_pixels(space: &Space, vae: &Vae) -> anyhow::Result<()> {
    let b = match space {
        Space::Box(b) => b,
        Space::Dict(d) => d
            .spaces
            .get("pixels")
            .and_then(|s| s.as_box())
            .context("the observation has no `pixels` image (set obs = \"pixels\")")?,
        _ => anyhow::bail!("World Models needs pixel observations (set obs = \"pixels\")"),
    };
    let c = vae.config();
    anyhow::ensure!(
        b.shape == [c.image_size, c.image_size, c.channels],
        "observations are {:?} but V expects [{s}, {s}, {}] (set the env's width/height or vae.model.image_size)",
        b.shape,
        c.channels,
        s = c.image_size
    );
    Ok(())
}

impl WorldModel {
    /// μ of each frame (`frames` concatenated u8 HWC) as `[N, z]`.
    pub fn encode_frames(&self, frames: &[u8], n: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let c = self.vae.config();
        let x = frames_to_tensor(frames, n, c.image_size, c.channels, self.vae.device())?;
        // Detached: an inference result must not keep its forward graph (and every
        // intermediate buffer) alive.
        let (mu, logvar) = self.vae.encode(&x)?;
        Ok((mu.detach(), logvar.detach()))
    }

    /// Size of C's input [z, h].
    pub fn feature_size(&self) -> usize {
        self.vae.config().z_size + self.mdn.config().hidden
    }
}

/// V, M and C acting together in a real env, one frame at a time: V encodes the frame to μ,
/// C acts on [μ, h], and M's LSTM takes [μ, a] to the next h.
pub struct WorldModelPolicy {
    wm: WorldModel,
    controller: LinearController,
    h: Tensor,
    c: Tensor,
}

impl WorldModelPolicy {
    /// A policy at the start of an episode (V and M are shared, C is copied: 867 floats at
    /// the paper's sizes).
    pub fn new(wm: &WorldModel, controller: &LinearController) -> anyhow::Result<Self> {
        let (h, c) = wm.mdn.initial_state(1)?;
        Ok(Self {
            wm: wm.clone(),
            controller: controller.clone(),
            h,
            c,
        })
    }

    /// Forgets the episode (h = c = 0).
    pub fn reset(&mut self) -> anyhow::Result<()> {
        (self.h, self.c) = self.wm.mdn.initial_state(1)?;
        Ok(())
    }

    /// The action for observation `obs`; also returns the frame's μ (`[1, z]`).
    pub fn act(&mut self, obs: &Value) -> anyhow::Result<(Value, Tensor)> {
        let dev = self.wm.mdn.device().clone();
        let (mu, _) = self.wm.encode_frames(frame_of(obs)?, 1)?;
        let mut x: Vec<f32> = mu.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        x.extend(
            self.h
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?,
        );
        let action = self.controller.act(&x);
        let values = action.as_f32().expect("the controller gives floats");
        let a = Tensor::from_slice(values, (1, values.len()), &Device::Cpu)?.to_device(&dev)?;
        let (_, h, c) = self
            .wm
            .mdn
            .step(&mu.to_device(&dev)?, &a, &self.h, &self.c)?;
        // Detached, or every step's graph would stay reachable from h.
        (self.h, self.c) = (h.detach(), c.detach());
        Ok((action, mu))
    }
}

impl WorldModel {
    /// V's reconstruction of a frame (through μ), as u8 HWC.
    pub fn reconstruct(&self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (mu, _) = self.encode_frames(frame, 1)?;
        Ok(dreamgym_world_model::vae::tensor_to_frames(
            &self.vae.decode(&mu)?.detach(),
        )?)
    }

    /// V's decoding of a latent `z`, as u8 HWC.
    pub fn decode_latent(&self, z: &[f32]) -> anyhow::Result<Vec<u8>> {
        let t = Tensor::from_slice(z, (1, z.len()), &Device::Cpu)?.to_device(self.vae.device())?;
        Ok(dreamgym_world_model::vae::tensor_to_frames(
            &self.vae.decode(&t)?.detach(),
        )?)
    }
}

/// Runs one real episode with C acting on [μ(frame), h]; returns (return, steps).
pub fn real_episode(
    env: &mut dyn Env,
    wm: &WorldModel,
    controller: &LinearController,
    seed: u64,
    max_steps: u64,
) -> anyhow::Result<(f64, u64)> {
    let mut policy = WorldModelPolicy::new(wm, controller)?;
    let (mut obs, _) = env.reset(Some(seed), &Info::new())?;
    let (mut ret, mut steps) = (0.0, 0);
    while steps < max_steps {
        let (action, _) = policy.act(&obs)?;
        let s = env.step(&action)?;
        ret += s.reward;
        steps += 1;
        let done = s.done();
        obs = s.obs;
        if done {
            break;
        }
    }
    Ok((ret, steps))
}

/// Runs one episode of any env whose observations are already C's features (the dream).
pub fn feature_episode(
    env: &mut dyn Env,
    controller: &LinearController,
    seed: u64,
    max_steps: u64,
) -> anyhow::Result<(f64, u64)> {
    let (mut obs, _) = env.reset(Some(seed), &Info::new())?;
    let (mut ret, mut steps) = (0.0, 0);
    while steps < max_steps {
        let x = obs
            .as_f32()
            .context("feature observations must be floats")?;
        let s = env.step(&controller.act(x))?;
        ret += s.reward;
        steps += 1;
        let done = s.done();
        obs = s.obs;
        if done {
            break;
        }
    }
    Ok((ret, steps))
}

/// Runs one episode with uniformly random actions (the baseline); returns (return, steps).
pub fn random_episode(env: &mut dyn Env, seed: u64, max_steps: u64) -> anyhow::Result<(f64, u64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    env.reset(Some(seed), &Info::new())?;
    let space = env.action_space().clone();
    let (mut ret, mut steps) = (0.0, 0);
    while steps < max_steps {
        let s = env.step(&space.sample(&mut rng))?;
        ret += s.reward;
        steps += 1;
        if s.done() {
            break;
        }
    }
    Ok((ret, steps))
}
