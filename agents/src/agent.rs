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
        self.vae.encode(&x)
    }

    /// Size of C's input [z, h].
    pub fn feature_size(&self) -> usize {
        self.vae.config().z_size + self.mdn.config().hidden
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
    let dev = wm.mdn.device().clone();
    let (mut obs, _) = env.reset(Some(seed), &Info::new())?;
    let (mut h, mut c) = wm.mdn.initial_state(1)?;
    let (mut ret, mut steps) = (0.0, 0);
    while steps < max_steps {
        let (mu, _) = wm.encode_frames(frame_of(&obs)?, 1)?;
        let mut x: Vec<f32> = mu.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        x.extend(h.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
        let action = controller.act(&x);
        let a = Tensor::from_slice(
            action.as_f32().expect("controller gives floats"),
            (1, controller_outputs(&action)),
            &Device::Cpu,
        )?
        .to_device(&dev)?;
        let (_, hn, cn) = wm.mdn.step(&mu.to_device(&dev)?, &a, &h, &c)?;
        (h, c) = (hn, cn);
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

fn controller_outputs(a: &Value) -> usize {
    a.as_f32().map(|v| v.len()).unwrap_or(0)
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
