//! Stage 2: V encodes every frame; M trains on the series.

use candle_core::{Device, Tensor};
use dreamgym_world_model::Vae;
use dreamgym_world_model::vae::frames_to_tensor;

use super::agent::check_pixels;
use super::data::{PixelData, Series, save_series};
use crate::{Progress, RunDir};

/// Encodes every frame with V (μ and log σ², 256 frames per batch) and writes
/// `series.safetensors`; returns the series.
pub fn encode(
    data: &PixelData,
    vae: &Vae,
    run: &RunDir,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Series>> {
    check_pixels(&data.meta.observation_space, vae)?;
    let a = data.action_size()?;
    let c = vae.config().clone();
    let device = vae.device().clone();
    progress.begin("encode", data.episodes.len() as u64);
    let mut out = Vec::with_capacity(data.episodes.len());
    for ep in &data.episodes {
        let n = ep.frames.len();
        let (mut mus, mut lvs) = (Vec::new(), Vec::new());
        let mut raw = Vec::new();
        for start in (0..n).step_by(256) {
            let m = (n - start).min(256);
            raw.clear();
            ep.frames.decode_into(start..start + m, &mut raw)?;
            let x = frames_to_tensor(&raw, m, c.image_size, c.channels, &device)?;
            let (mu, lv) = vae.encode(&x)?;
            // Detached: stored results must not keep the forward graph's buffers alive.
            mus.push(mu.detach().to_device(&Device::Cpu)?);
            lvs.push(lv.detach().to_device(&Device::Cpu)?);
        }
        let t = n - 1;
        out.push(Series {
            mu: Tensor::cat(&mus, 0)?,
            logvar: Tensor::cat(&lvs, 0)?,
            actions: Tensor::from_slice(&ep.actions, (t, a), &Device::Cpu)?,
            rewards: Tensor::from_slice(&ep.rewards, t, &Device::Cpu)?,
            dones: Tensor::from_slice(&ep.dones, t, &Device::Cpu)?,
        });
        progress.advance(1);
    }
    progress.end();
    save_series(&run.file("series.safetensors"), &out)?;
    Ok(out)
}
