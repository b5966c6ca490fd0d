//! The World Models agent: V encodes each frame to z, M's LSTM carries h, C acts on [z, h].

use std::sync::Arc;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_envs::{Space, Value};
use dreamgym_policies::{LinearController, Policy, PolicyError};
use dreamgym_world_model::vae::frames_to_tensor;
use dreamgym_world_model::{MdnRnn, Vae};

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

/// The World Models agent: V, M and C acting together in a real env, one frame at a time. V
/// encodes the frame to μ, C acts on [μ, h], and M's LSTM takes [μ, a] to the next h.
pub struct WorldModelsAgent {
    wm: WorldModel,
    controller: LinearController,
    h: Tensor,
    c: Tensor,
}

impl WorldModelsAgent {
    /// An agent at the start of an episode (V and M are shared, C is copied: 867 floats at
    /// the paper's sizes). C must take V's z and M's h.
    pub fn new(wm: &WorldModel, controller: &LinearController) -> anyhow::Result<Self> {
        anyhow::ensure!(
            controller.inputs() == wm.feature_size(),
            "the controller takes {} inputs, V and M give {}",
            controller.inputs(),
            wm.feature_size()
        );
        let (h, c) = wm.mdn.initial_state(1)?;
        Ok(Self {
            wm: wm.clone(),
            controller: controller.clone(),
            h,
            c,
        })
    }

    /// Forgets the episode (h = c = 0).
    pub fn reset_state(&mut self) -> anyhow::Result<()> {
        (self.h, self.c) = self.wm.mdn.initial_state(1)?;
        Ok(())
    }

    /// The action for observation `obs`; also returns the frame's μ (`[1, z]`).
    pub fn act_with_latent(&mut self, obs: &Value) -> anyhow::Result<(Value, Tensor)> {
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
        let values = action
            .as_f32()
            .context("the controller gives float actions")?;
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

fn policy_error(e: anyhow::Error) -> PolicyError {
    PolicyError::Incompatible(format!("{e:#}"))
}

impl Policy for WorldModelsAgent {
    fn describe(&self) -> String {
        "World Models agent (V + M + C)".into()
    }

    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        self.reset_state().map_err(policy_error)
    }

    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        self.act_with_latent(obs)
            .map(|(a, _)| a)
            .map_err(policy_error)
    }

    fn fork(&self) -> Box<dyn Policy> {
        Box::new(Self {
            wm: self.wm.clone(),
            controller: self.controller.clone(),
            h: self.h.zeros_like().unwrap_or_else(|_| self.h.clone()),
            c: self.c.zeros_like().unwrap_or_else(|_| self.c.clone()),
        })
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
