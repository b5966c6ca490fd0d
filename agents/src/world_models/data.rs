//! The World Models stages' inputs: the recorded pixel dataset (decoded once per process) and
//! the encoded series V writes for M.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_envs::recording::{Dataset, DatasetMeta};
use dreamgym_envs::{Env, Registry, Value};
use dreamgym_world_model::dream::StartLatent;

use super::agent::frame_of;
use crate::Progress;

/// An episode's frames (u8 HWC), each kept LZ4-compressed on its own: a decoded dataset
/// held in memory costs a fraction of its raw size (the paper's 10,000 episodes of up to
/// 1,000 64×64 frames are 74-123 GB raw), and any one frame decompresses in microseconds,
/// so V's shuffled batches still reach every frame directly.
#[derive(Debug, Clone)]
pub struct Frames {
    frame_len: usize,
    /// Where each compressed frame ends in `bytes`.
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl Frames {
    /// No frames yet.
    pub fn new() -> Self {
        Self {
            frame_len: 0,
            ends: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// Appends a frame (the first fixes every frame's size).
    pub fn push(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if self.is_empty() {
            self.frame_len = frame.len();
        }
        anyhow::ensure!(
            frame.len() == self.frame_len,
            "a frame of {} bytes among frames of {}",
            frame.len(),
            self.frame_len
        );
        self.bytes
            .extend_from_slice(&lz4_flex::block::compress(frame));
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of one frame, decoded (0 before the first).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Bytes held (compressed).
    pub fn compressed_len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends frames `range` to `out`, decoded.
    pub fn decode_into(
        &self,
        range: std::ops::Range<usize>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            range.end <= self.len(),
            "frames {range:?} of an episode of {}",
            self.len()
        );
        for i in range {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            let at = out.len();
            out.resize(at + self.frame_len, 0);
            let n =
                lz4_flex::block::decompress_into(&self.bytes[start..self.ends[i]], &mut out[at..])
                    .map_err(|e| anyhow::anyhow!("frame {i} does not decompress: {e}"))?;
            anyhow::ensure!(
                n == self.frame_len,
                "frame {i} decompresses to {n} bytes, not {}",
                self.frame_len
            );
        }
        Ok(())
    }
}

/// One recorded episode, flattened for training.
pub struct EpisodeFrames {
    /// `T + 1` frames.
    pub frames: Frames,
    /// `T` actions, each `action_size` floats, concatenated.
    pub actions: Vec<f32>,
    /// `T` rewards.
    pub rewards: Vec<f32>,
    /// `T` terminated flags.
    pub dones: Vec<f32>,
}

/// A pixel dataset, decoded.
pub struct PixelData {
    /// The dataset's description (env, config, spaces).
    pub meta: DatasetMeta,
    /// Every undamaged episode.
    pub episodes: Vec<EpisodeFrames>,
    /// The dataset's fingerprint ([`Dataset::fingerprint`]): what V records it was trained on.
    pub fingerprint: String,
}

impl PixelData {
    /// Loads every episode of a pixel dataset; damaged chunks are skipped and reported through
    /// `progress`.
    pub fn load(dir: &Path, progress: &dyn Progress) -> anyhow::Result<Self> {
        let ds =
            Dataset::open(dir).with_context(|| format!("cannot open dataset {}", dir.display()))?;
        let meta = ds.meta();
        if !meta.is_complete() {
            let written = ds.stored_episodes();
            anyhow::bail!(
                "{} holds a collection that did not finish ({written} episodes in the folder): \
                 run the experiment again to record the rest; it is not trained on",
                dir.display()
            );
        }
        let fingerprint = ds.fingerprint();
        let meta = ds.meta().clone();
        // One chunk decoded at a time, its episodes flattened before the next is read: the
        // decoded dataset is held once, never twice.
        let mut episodes = Vec::new();
        for chunk in crate::collect::readable_chunks(&ds, progress) {
            for ep in chunk {
                let mut frames = Frames::new();
                for o in &ep.observations {
                    frames.push(frame_of(o)?)?;
                }
                let mut actions = Vec::new();
                for a in &ep.actions {
                    match a {
                        Value::F32(v) => actions.extend_from_slice(v),
                        other => anyhow::bail!(
                            "World Models needs Box actions, got {}",
                            other.describe()
                        ),
                    }
                }
                episodes.push(EpisodeFrames {
                    frames,
                    actions,
                    rewards: ep.rewards.iter().map(|r| *r as f32).collect(),
                    dones: ep.terminated.iter().map(|d| *d as u8 as f32).collect(),
                });
            }
        }
        anyhow::ensure!(
            !episodes.is_empty(),
            "dataset {} has no episodes",
            dir.display()
        );
        Ok(Self {
            meta,
            episodes,
            fingerprint,
        })
    }

    /// Values per action.
    pub fn action_size(&self) -> anyhow::Result<usize> {
        action_size(&self.meta)
    }
}

/// Values per action of a dataset's Box action space.
pub fn action_size(meta: &DatasetMeta) -> anyhow::Result<usize> {
    meta.action_space
        .as_box()
        .map(|b| b.len())
        .context("World Models needs a Box action space")
}

/// The dataset's description alone (no episodes decoded).
pub fn dataset_meta(dir: &Path) -> anyhow::Result<DatasetMeta> {
    Ok(Dataset::open(dir)
        .with_context(|| format!("cannot open dataset {}", dir.display()))?
        .meta()
        .clone())
}

/// Builds an env from a dataset's recorded id and resolved config.
pub fn make_env(registry: &Registry, meta: &DatasetMeta) -> anyhow::Result<Box<dyn Env>> {
    registry
        .make(&meta.env_id, Some(&meta.env_config))
        .with_context(|| format!("cannot build {}", meta.env_id))
}

/// One encoded episode.
pub struct Series {
    /// `[T+1, z]`
    pub mu: Tensor,
    /// `[T+1, z]`
    pub logvar: Tensor,
    /// `[T, A]`
    pub actions: Tensor,
    /// `[T]`
    pub rewards: Tensor,
    /// `[T]`
    pub dones: Tensor,
}

/// Writes the series as `series.safetensors` (per episode `ep{i}.mu`, `.logvar`, `.actions`,
/// `.rewards`, `.dones`), atomically and byte-stable.
pub fn save_series(path: &Path, series: &[Series]) -> anyhow::Result<()> {
    let mut tensors = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        for (k, t) in [
            ("mu", &s.mu),
            ("logvar", &s.logvar),
            ("actions", &s.actions),
            ("rewards", &s.rewards),
            ("dones", &s.dones),
        ] {
            tensors.insert(format!("ep{i}.{k}"), t.clone());
        }
    }
    dreamgym_base::write_atomic(path, &dreamgym_nn::tensors_bytes(&tensors)?)?;
    Ok(())
}

/// Reads `series.safetensors`.
pub fn load_series(path: &Path) -> anyhow::Result<Vec<Series>> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| {
        format!(
            "cannot read {} (run the encode stage first)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for i in 0.. {
        let Some(mu) = t.remove(&format!("ep{i}.mu")) else {
            break;
        };
        let mut take = |k: &str| {
            t.remove(&format!("ep{i}.{k}"))
                .with_context(|| format!("{}: ep{i}.{k} missing", path.display()))
        };
        out.push(Series {
            mu,
            logvar: take("logvar")?,
            actions: take("actions")?,
            rewards: take("rewards")?,
            dones: take("dones")?,
        });
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no episodes", path.display());
    Ok(out)
}

/// The starting latents of the dream: every episode's first frame.
pub fn start_latents(series: &[Series]) -> anyhow::Result<Vec<StartLatent>> {
    series
        .iter()
        .map(|s| {
            Ok(StartLatent {
                mu: s.mu.get(0)?.to_vec1()?,
                logvar: s.logvar.get(0)?.to_vec1()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_to_what_was_pushed_and_refuse_what_does_not_fit() {
        // A flat field with a stripe, as track frames are, and noise, which does not compress.
        let flat: Vec<u8> = (0..48 * 3)
            .map(|i| if i % 48 < 6 { 200 } else { 30 })
            .collect();
        let noise: Vec<u8> = (0..48 * 3u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut frames = Frames::new();
        assert_eq!(frames.frame_len(), 0);
        for f in [&flat, &noise, &flat] {
            frames.push(f).unwrap();
        }
        assert_eq!((frames.len(), frames.frame_len()), (3, flat.len()));
        assert!(frames.compressed_len() < 3 * flat.len());
        let mut out = vec![1, 2];
        frames.decode_into(1..3, &mut out).unwrap();
        assert_eq!(out, [&[1, 2][..], &noise, &flat].concat());
        let mut all = Vec::new();
        frames.decode_into(0..3, &mut all).unwrap();
        assert_eq!(all, [&flat[..], &noise, &flat].concat());
        // Frames of another size, and frames past the end, are errors, not panics.
        assert!(frames.push(&flat[1..]).is_err());
        assert_eq!(frames.len(), 3);
        assert!(frames.decode_into(2..4, &mut Vec::new()).is_err());
    }
}
