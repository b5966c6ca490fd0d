//! The `[decision_transformer]` section of an experiment: train a Decision Transformer offline
//! on the run's recorded episodes (state observations), then evaluate it in the real env at
//! several target returns beside a random policy, and write `dt_eval.json` and `dt_report.md`.
//!
//! As in the authors' Gym code: windows of `K` steps sampled uniformly over every step of every
//! long-enough episode, returns-to-go per episode divided by `return_scale`, observations
//! normalised by the dataset's mean and standard deviation, AdamW (weight decay on every
//! parameter) with a linear warm-up, here followed by a cosine decay to a tenth of `lr`, and
//! the gradient norm clipped. Training checkpoints (weights, AdamW's moments, the step) every
//! `checkpoint_every` steps and resumes exactly; every random draw comes from the seed by name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_base::derive_seed;
use dreamgym_envs::Registry;
use dreamgym_envs::recording::{Dataset, DatasetMeta};
use dreamgym_nn::{Adam, AdamConfig, sorted_vars};
use dreamgym_policies::{
    DecisionTransformer, DecisionTransformerConfig, DtAction, DtBatch, DtCheckpointConfig,
    DtPolicy, DtSpec, Policy, PolicyError, RandomPolicy, scale_pixels,
};
use dreamgym_world_model::Vae;
use dreamgym_world_model::vae::frames_to_tensor;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::world_models::make_env;
use crate::{Interrupted, MetricsLog, Progress, RunDir, mean_std, run_jobs};

/// Training and evaluation settings of the Decision Transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionTransformerStage {
    /// `cpu`, or `cuda` / `cuda:N` with the `cuda` feature.
    pub device: String,
    /// For pixel observations: the World Models run folder whose V encodes every frame to
    /// its μ, which the transformer reads instead of pixels. Empty: float observations, or
    /// pixels through the model's own conv encoder (`model.conv`).
    pub encoder: String,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// The model (the paper's Gym size by default).
    pub model: DecisionTransformerConfig,
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW's weight decay.
    pub weight_decay: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Largest gradient norm.
    pub grad_clip: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Evaluation.
    pub eval: DtEvalStage,
    /// Also train the paper's baselines with the same network and steps, without returns:
    /// behaviour cloning on every episode, and on the best 10% of episodes.
    pub baselines: bool,
}

/// What is trained: the Decision Transformer or one of its baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtVariant {
    /// Conditioned on the return-to-go, on every episode.
    Dt,
    /// Behaviour cloning (no returns) on every episode.
    Bc,
    /// Behaviour cloning on the episodes with the best 10% of returns.
    BcTop10,
}

impl DtVariant {
    /// Checkpoint stem in the run folder.
    pub fn stem(self) -> &'static str {
        match self {
            DtVariant::Dt => DT_CHECKPOINT,
            DtVariant::Bc => "dt_bc",
            DtVariant::BcTop10 => "dt_bc_top10",
        }
    }

    /// The row in reports.
    pub fn label(self) -> &'static str {
        match self {
            DtVariant::Dt => "DT",
            DtVariant::Bc => "behaviour cloning",
            DtVariant::BcTop10 => "behaviour cloning, best 10%",
        }
    }

    fn model(self, stage: &DecisionTransformerStage) -> DecisionTransformerConfig {
        DecisionTransformerConfig {
            condition_on_return: self == DtVariant::Dt,
            ..stage.model.clone()
        }
    }
}

impl Default for DecisionTransformerStage {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            encoder: String::new(),
            seed: 0,
            model: DecisionTransformerConfig::default(),
            steps: 2000,
            batch_size: 64,
            lr: 1e-4,
            weight_decay: 1e-4,
            warmup_steps: 200,
            grad_clip: 0.25,
            checkpoint_every: 250,
            eval: DtEvalStage::default(),
            baselines: false,
        }
    }
}

/// The evaluation sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtEvalStage {
    /// Episodes per target (seeds `seed .. seed + episodes`).
    pub episodes: usize,
    /// First evaluation seed.
    pub seed: u64,
    /// Steps per episode at most.
    pub max_steps: u64,
    /// Target returns; empty: the dataset's median, 90th-percentile and best episode returns.
    pub targets: Vec<f64>,
    /// A policy spec evaluated on the same seeds as the reference the DT is measured against
    /// (`expert`, a run folder, ...): the report gives every row as a normalised score,
    /// `100 · (R − R_random) / (R_reference − R_random)`, as D4RL does. Empty: none.
    pub reference: String,
    /// Worker threads.
    pub workers: usize,
}

impl Default for DtEvalStage {
    fn default() -> Self {
        Self {
            episodes: 10,
            seed: 1000,
            max_steps: 1000,
            targets: Vec::new(),
            reference: String::new(),
            workers: 2,
        }
    }
}

impl DecisionTransformerStage {
    /// Checks every field before any work, naming the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.model
            .validate()
            .context("invalid [decision_transformer.model]")?;
        anyhow::ensure!(
            self.encoder.is_empty() || self.model.conv.is_none(),
            "decision_transformer: choose one way to read pixels, V (encoder = {:?}) or the conv \
             encoder trained with the transformer (model.conv), not both",
            self.encoder
        );
        dreamgym_nn::device(&self.device)?;
        let ensure = |ok: bool, what: &str| -> anyhow::Result<()> {
            anyhow::ensure!(ok, "decision_transformer.{what}");
            Ok(())
        };
        ensure(
            (1..=10_000_000).contains(&self.steps),
            "steps must be in 1..=10000000",
        )?;
        ensure(
            (1..=65_536).contains(&self.batch_size),
            "batch_size must be in 1..=65536",
        )?;
        ensure(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be a positive number",
        )?;
        ensure(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay must be a number >= 0",
        )?;
        ensure(
            self.grad_clip.is_finite() && self.grad_clip > 0.0,
            "grad_clip must be a positive number",
        )?;
        ensure(
            self.checkpoint_every >= 1,
            "checkpoint_every must be at least 1",
        )?;
        ensure(
            (1..=100_000).contains(&self.eval.episodes),
            "eval.episodes must be in 1..=100000",
        )?;
        ensure(
            self.eval.max_steps >= 1,
            "eval.max_steps must be at least 1",
        )?;
        ensure(
            (1..=256).contains(&self.eval.workers),
            "eval.workers must be in 1..=256",
        )?;
        ensure(
            self.eval.targets.iter().all(|t| t.is_finite()),
            "eval.targets must be finite numbers",
        )?;
        Ok(())
    }

    /// The learning rate at `step`: linear warm-up, then cosine decay to `lr / 10`.
    pub fn lr_at(&self, step: usize) -> f64 {
        crate::warmup_cosine(self.lr, self.warmup_steps, self.steps, step)
    }
}

/// An episode's observations, `T × obs_dim` values.
enum EpisodeObs {
    /// Normalised floats (state, or V's latents).
    Floats(Vec<f32>),
    /// Raw pixels for the conv encoder, kept as bytes (a quarter of the memory) and scaled to
    /// `[0, 1]` a batch at a time.
    Pixels(Vec<u8>),
}

/// One episode as the model reads it.
struct DtEpisode {
    obs: EpisodeObs,
    /// `T × width`, in the model's values.
    actions: Vec<f32>,
    /// `T` returns-to-go, scaled.
    to_go: Vec<f32>,
    /// The episode's return.
    ret: f64,
}

/// A dataset prepared for the Decision Transformer.
pub struct DtData {
    episodes: Vec<DtEpisode>,
    /// Observation statistics and the action space.
    pub spec: DtSpec,
    /// The dataset's description.
    pub meta: DatasetMeta,
    /// Every episode's return, in order.
    pub returns: Vec<f64>,
    /// The dataset's fingerprint.
    pub fingerprint: String,
    /// `(episode, start)` of every window of `K` steps.
    windows: Vec<(usize, usize)>,
    /// V, when the observations are pixels.
    pub encoder: Option<LatentEncoder>,
}

/// V of a World Models run: the Decision Transformer's eyes on pixel observations. Each frame
/// becomes V's μ (`z_size` floats), as World Models' C sees it.
#[derive(Clone)]
pub struct LatentEncoder {
    /// The World Models run folder.
    pub run: PathBuf,
    vae: Arc<Vae>,
    /// CRC-32 of V's weights: a DT trained on another V's latents is stale.
    pub crc32: u32,
}

impl LatentEncoder {
    /// V of the World Models run in `run`, on the CPU.
    pub fn load(run: &Path) -> anyhow::Result<Self> {
        let dir = RunDir::new(run);
        let vae = crate::world_models::load_vae(&dir, &Device::Cpu).with_context(|| {
            format!(
                "{}: no trained V to encode pixel observations with",
                run.display()
            )
        })?;
        let crc32 = dreamgym_nn::weights_crc32(&dir.checkpoint("vae"))?;
        Ok(Self {
            run: run.to_path_buf(),
            vae: Arc::new(vae),
            crc32,
        })
    }

    /// Floats per encoded frame.
    pub fn z_size(&self) -> usize {
        self.vae.config().z_size
    }

    /// Whether V reads these observations (images of its size, or a Dict with one).
    pub fn check(&self, space: &dreamgym_envs::Space) -> anyhow::Result<()> {
        crate::world_models::check_pixels(space, &self.vae)
    }

    /// μ of `n` frames (u8 HWC, concatenated): `n × z_size` floats.
    pub fn encode(&self, frames: &[u8], n: usize) -> anyhow::Result<Vec<f32>> {
        let c = self.vae.config();
        let x = frames_to_tensor(frames, n, c.image_size, c.channels, &Device::Cpu)?;
        let (mu, _) = self.vae.encode(&x)?;
        Ok(mu.detach().flatten_all()?.to_vec1()?)
    }
}

/// A policy on V's latents that sees pixels: V encodes each frame, the inner policy (a
/// Decision Transformer) acts on μ.
pub struct LatentPolicy {
    encoder: LatentEncoder,
    inner: Box<dyn Policy>,
}

impl LatentPolicy {
    /// `inner` acting on `encoder`'s latents.
    pub fn new(encoder: LatentEncoder, inner: Box<dyn Policy>) -> Self {
        Self { encoder, inner }
    }
}

impl Policy for LatentPolicy {
    fn describe(&self) -> String {
        format!("{} on V's z", self.inner.describe())
    }
    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.inner.reset(episode_seed)
    }
    fn act(&mut self, obs: &dreamgym_envs::Value) -> Result<dreamgym_envs::Value, PolicyError> {
        let frame = crate::world_models::frame_of(obs)
            .map_err(|e| PolicyError::Incompatible(format!("{e:#}")))?;
        let z = self
            .encoder
            .encode(frame, 1)
            .map_err(|e| PolicyError::Incompatible(format!("{e:#}")))?;
        self.inner.act(&dreamgym_envs::Value::F32(z))
    }
    fn reward(&mut self, reward: f64) {
        self.inner.reward(reward);
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(Self {
            encoder: self.encoder.clone(),
            inner: self.inner.fork(),
        })
    }
}

/// The Decision Transformer `model` aiming at `target`, behind V when it reads pixels.
pub fn dt_policy(
    model: Arc<DecisionTransformer>,
    target: f64,
    encoder: Option<&LatentEncoder>,
) -> anyhow::Result<Box<dyn Policy>> {
    let p: Box<dyn Policy> = Box::new(DtPolicy::new(model, target)?);
    Ok(match encoder {
        Some(e) => Box::new(LatentPolicy::new(e.clone(), p)),
        None => p,
    })
}

impl DtData {
    /// Loads a finished dataset: 1-D float observations as they are, or pixel observations
    /// through `encoder` (V's μ of every frame, encoded a chunk at a time so the frames are
    /// never all in memory). Episodes shorter than `config.context` give no window (said
    /// through `progress`), and a dataset with none is an error.
    pub fn load(
        dir: &Path,
        config: &DecisionTransformerConfig,
        encoder: Option<&LatentEncoder>,
        progress: &dyn Progress,
    ) -> anyhow::Result<Self> {
        let ds =
            Dataset::open(dir).with_context(|| format!("cannot open dataset {}", dir.display()))?;
        let meta = ds.meta().clone();
        anyhow::ensure!(
            meta.is_complete(),
            "{} holds a collection that did not finish: run the experiment again to resume it",
            dir.display()
        );
        let float_obs = match meta.observation_space.as_box() {
            Some(b) if b.dtype == dreamgym_envs::Dtype::F32 && b.shape.len() == 1 => Some(b.len()),
            _ => None,
        };
        // Raw pixels for the model's own conv encoder.
        anyhow::ensure!(
            config.conv.is_none() || encoder.is_none(),
            "pixels are read either through V or through the model's conv encoder, not both"
        );
        let image = match &config.conv {
            Some(_) => Some(DtSpec::image_of(&meta.observation_space).with_context(|| {
                format!(
                    "decision_transformer.model.conv reads images (a u8 Box [height, width, \
                     channels], obs = \"pixels\"); {} records {}",
                    dir.display(),
                    meta.observation_space
                )
            })?),
            None => None,
        };
        let obs_dim = match (float_obs, encoder, image) {
            (_, _, Some([h, w, c])) => h * w * c,
            (Some(n), None, None) => n,
            (_, Some(enc), None) => {
                enc.check(&meta.observation_space).with_context(|| {
                    format!(
                        "decision_transformer.encoder = {:?} cannot read the observations in {}",
                        enc.run.display(),
                        dir.display()
                    )
                })?;
                enc.z_size()
            }
            (None, None, None) => anyhow::bail!(
                "the Decision Transformer trains on 1-D float observations, or on pixels through \
                 a World Models run's V (set decision_transformer.encoder to that run folder) or \
                 through its own conv encoder (decision_transformer.model.conv = {{}}); {} \
                 records {}",
                dir.display(),
                meta.observation_space
            ),
        };
        let action = DtAction::of(&meta.action_space)
            .with_context(|| format!("the actions recorded in {}", dir.display()))?;
        // Every episode as float vectors, a chunk at a time.
        struct Flat {
            obs: EpisodeObs,
            actions: Vec<dreamgym_envs::Value>,
            rewards: Vec<f64>,
        }
        let mut flat = Vec::new();
        if encoder.is_some() {
            progress.begin("encode frames with V", ds.stored_episodes() as u64);
        }
        for episodes in crate::collect::readable_chunks(&ds, progress) {
            for e in episodes {
                // Every path polls Ctrl-C between episodes: decoding a large pixel dataset
                // takes minutes too.
                if progress.interrupted() {
                    let stage = if encoder.is_some() {
                        progress.end();
                        "encode frames with V"
                    } else {
                        "load the dataset"
                    };
                    return Err(Interrupted {
                        stage: stage.into(),
                        saved: "loading keeps nothing; run again to load again".into(),
                    }
                    .into());
                }
                let t = e.len();
                if image.is_some() {
                    let mut pixels = Vec::with_capacity(t * obs_dim);
                    for o in &e.observations[..t] {
                        pixels.extend_from_slice(crate::world_models::frame_of(o)?);
                    }
                    flat.push(Flat {
                        obs: EpisodeObs::Pixels(pixels),
                        actions: e.actions,
                        rewards: e.rewards,
                    });
                    continue;
                }
                let mut obs = Vec::with_capacity(t * obs_dim);
                match encoder {
                    Some(enc) => {
                        for start in (0..t).step_by(256) {
                            let n = (t - start).min(256);
                            let mut frames = Vec::new();
                            for o in &e.observations[start..start + n] {
                                frames.extend_from_slice(crate::world_models::frame_of(o)?);
                            }
                            obs.extend(enc.encode(&frames, n)?);
                        }
                        progress.advance(1);
                    }
                    None => {
                        for o in &e.observations[..t] {
                            obs.extend_from_slice(
                                o.as_f32().context("an observation is not a float vector")?,
                            );
                        }
                    }
                }
                flat.push(Flat {
                    obs: EpisodeObs::Floats(obs),
                    actions: e.actions,
                    rewards: e.rewards,
                });
            }
        }
        if encoder.is_some() {
            progress.end();
        }
        let k = config.context;
        let steps: usize = flat.iter().map(|e| e.rewards.len()).sum();
        anyhow::ensure!(steps > 0, "{} holds no steps", dir.display());
        let spec = match image {
            // Pixels are scaled to [0, 1], as in the paper's Atari code.
            Some(image) => DtSpec::for_images(image, action),
            None => {
                // Observation statistics over every recorded step.
                let (mut sum, mut sq) = (vec![0f64; obs_dim], vec![0f64; obs_dim]);
                for e in &flat {
                    let EpisodeObs::Floats(obs) = &e.obs else {
                        continue;
                    };
                    for x in obs.chunks(obs_dim) {
                        for (i, v) in x.iter().enumerate() {
                            sum[i] += *v as f64;
                            sq[i] += (*v as f64).powi(2);
                        }
                    }
                }
                let n = steps as f64;
                let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
                let std: Vec<f32> = sq
                    .iter()
                    .zip(&mean)
                    .map(|(q, m)| ((q / n - (*m as f64).powi(2)).max(0.0).sqrt() as f32).max(1e-6))
                    .collect();
                DtSpec {
                    obs_mean: mean,
                    obs_std: std,
                    action,
                    image: None,
                }
            }
        };
        let scale = config.return_scale;
        let mut episodes = Vec::new();
        let mut returns = Vec::new();
        let mut windows = Vec::new();
        let mut short = 0;
        let total = flat.len();
        for e in flat {
            let ret: f64 = e.rewards.iter().sum();
            returns.push(ret);
            let t = e.rewards.len();
            if t < k {
                short += 1;
                continue;
            }
            let obs = match e.obs {
                EpisodeObs::Floats(raw) => {
                    let mut obs = Vec::with_capacity(t * obs_dim);
                    for o in raw.chunks(obs_dim) {
                        obs.extend(spec.normalize(o)?);
                    }
                    EpisodeObs::Floats(obs)
                }
                pixels => pixels,
            };
            let mut actions = Vec::with_capacity(t * spec.action.width());
            for a in &e.actions {
                actions.extend(spec.action.encode(a)?);
            }
            let mut to_go = vec![0f32; t];
            let mut acc = 0.0;
            for i in (0..t).rev() {
                acc += e.rewards[i];
                to_go[i] = (acc / scale) as f32;
            }
            let index = episodes.len();
            windows.extend((0..=t - k).map(|s| (index, s)));
            episodes.push(DtEpisode {
                obs,
                actions,
                to_go,
                ret,
            });
        }
        if short > 0 {
            progress.note(&format!(
                "decision transformer: {short} of {total} episodes are shorter than the context \
                 of {k} steps and are not trained on"
            ));
        }
        anyhow::ensure!(
            !windows.is_empty(),
            "no episode in {} has {k} steps (decision_transformer.model.context); lower the \
             context or record longer episodes",
            dir.display()
        );
        Ok(Self {
            episodes,
            spec,
            meta,
            returns,
            fingerprint: ds.fingerprint(),
            windows,
            encoder: encoder.cloned(),
        })
    }

    /// The windows `variant` trains on (the best 10% of episodes by return, at least one, for
    /// [`DtVariant::BcTop10`]).
    fn windows_of(&self, variant: DtVariant) -> Vec<(usize, usize)> {
        if variant != DtVariant::BcTop10 {
            return self.windows.clone();
        }
        let mut returns: Vec<f64> = self.episodes.iter().map(|e| e.ret).collect();
        returns.sort_by(|a, b| b.total_cmp(a));
        let keep = returns.len().div_ceil(10).max(1);
        let threshold = returns[keep - 1];
        self.windows
            .iter()
            .copied()
            .filter(|(e, _)| self.episodes[*e].ret >= threshold)
            .collect()
    }

    /// A batch of `b` windows drawn from `windows` with `rng`.
    fn batch(
        &self,
        b: usize,
        k: usize,
        windows: &[(usize, usize)],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> anyhow::Result<DtBatch> {
        let (d, w) = (self.spec.obs_dim(), self.spec.action.width());
        let (mut r, mut o, mut a, mut t) = (
            Vec::with_capacity(b * k),
            Vec::with_capacity(b * k * d),
            Vec::with_capacity(b * k * w),
            Vec::with_capacity(b * k),
        );
        for _ in 0..b {
            let (e, s) = windows[rng.random_range(0..windows.len())];
            let ep = &self.episodes[e];
            r.extend_from_slice(&ep.to_go[s..s + k]);
            match &ep.obs {
                EpisodeObs::Floats(x) => o.extend_from_slice(&x[s * d..(s + k) * d]),
                EpisodeObs::Pixels(p) => o.extend(scale_pixels(&p[s * d..(s + k) * d])),
            }
            a.extend_from_slice(&ep.actions[s * w..(s + k) * w]);
            t.extend((s..s + k).map(|i| i as u32));
        }
        Ok(DtBatch {
            returns: Tensor::from_vec(r, (b, k, 1), device)?,
            obs: Tensor::from_vec(o, (b, k, d), device)?,
            actions: Tensor::from_vec(a, (b, k, w), device)?,
            timesteps: Tensor::from_vec(t, (b, k), device)?,
        })
    }
}

/// What training did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DtTrainSummary {
    /// Steps done in all.
    pub steps: usize,
    /// Steps the checkpoint held when this call started.
    pub resumed_from: usize,
    /// Mean loss of the last 100 steps (or the saved one when nothing ran).
    pub final_loss: f64,
    /// Seconds this call took.
    pub seconds: f64,
}

/// The checkpoint stem in a run folder.
pub const DT_CHECKPOINT: &str = "dt";

/// Trains the Decision Transformer on `data`, checkpointing every `checkpoint_every` steps and
/// resuming from `<run>/dt.*` when it was made with the same model from the same dataset.
pub fn train_decision_transformer(
    stage: &DecisionTransformerStage,
    variant: DtVariant,
    data: &DtData,
    run: &RunDir,
    progress: &dyn Progress,
) -> anyhow::Result<(DecisionTransformer, DtTrainSummary)> {
    let device = dreamgym_nn::device(&stage.device)?;
    let config = variant.model(stage);
    let windows = data.windows_of(variant);
    let model = DecisionTransformer::new(
        &config,
        data.spec.clone(),
        &device,
        derive_seed(stage.seed, "dt.init", 0),
    )?;
    let mut opt = Adam::new(
        sorted_vars(model.varmap()),
        AdamConfig {
            lr: stage.lr,
            weight_decay: stage.weight_decay,
            clip_norm: Some(stage.grad_clip),
            ..Default::default()
        },
    )?;
    let stem = run.checkpoint(variant.stem());
    let trained_on = match &data.encoder {
        Some(e) => serde_json::json!({ "dataset": data.fingerprint, "encoder_crc32": e.crc32 }),
        None => serde_json::json!({ "dataset": data.fingerprint }),
    };
    let encoder = data
        .encoder
        .as_ref()
        .map(|e| serde_json::json!({ "run": e.run, "vae_crc32": e.crc32 }));
    let (start, mut last_loss) = resume(&stem, &model, &mut opt, &trained_on, stage, progress)?;
    let label = variant.label();
    anyhow::ensure!(
        start <= stage.steps,
        "{} holds a Decision Transformer trained for {start} steps, more than the {} asked for; \
         run with --force to train it again, or use another --out",
        stem.display(),
        stage.steps
    );
    if start == stage.steps {
        return Ok((
            model,
            DtTrainSummary {
                steps: start,
                resumed_from: start,
                final_loss: last_loss,
                seconds: 0.0,
            },
        ));
    }
    if start > 0 {
        progress.note(&format!(
            "decision transformer: resuming after step {start}"
        ));
    }
    let mut metrics = MetricsLog::open(
        run,
        variant.stem(),
        &["step", "loss", "lr"],
        Some(start as f64),
    )?;
    let best_return = data
        .returns
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let state = |steps_done: usize, loss: f64| {
        serde_json::json!({
            "steps_done": steps_done,
            "loss": loss,
            "settings": settings_of(stage),
            "trained_on": trained_on,
            "dataset_best_return": best_return,
            "encoder": encoder,
        })
    };
    progress.begin(&format!("train {label}"), (stage.steps - start) as u64);
    let t0 = std::time::Instant::now();
    let k = stage.model.context;
    let mut recent: Vec<f64> = Vec::new();
    for step in start..stage.steps {
        if progress.interrupted() {
            progress.end();
            // Every step before this one is whole: save them, so nothing done is lost.
            if step > start {
                metrics.commit()?;
                model.save(&stem, Some(&opt), state(step, last_loss))?;
            }
            return Err(Interrupted {
                stage: "train DT".into(),
                saved: if step == 0 {
                    "no step had finished, so nothing was saved".into()
                } else {
                    format!(
                        "the Decision Transformer is saved after step {step}; run again to resume"
                    )
                },
            }
            .into());
        }
        let mut batch_rng =
            ChaCha8Rng::seed_from_u64(derive_seed(stage.seed, "dt.batch", step as u64));
        let mut drop_rng =
            ChaCha8Rng::seed_from_u64(derive_seed(stage.seed, "dt.dropout", step as u64));
        let batch = data.batch(stage.batch_size, k, &windows, &mut batch_rng, &device)?;
        let lr = stage.lr_at(step);
        // On rayon's workers: see `dreamgym_nn::on_workers`.
        let l = dreamgym_nn::on_workers(|| -> anyhow::Result<f64> {
            let loss = model.loss(&batch, Some(&mut drop_rng))?;
            let l = loss.to_scalar::<f32>()? as f64;
            anyhow::ensure!(
                l.is_finite(),
                "decision transformer: the loss became {l} at step {step}"
            );
            opt.set_lr(lr);
            opt.step(loss.backward()?)?;
            Ok(l)
        })?;
        metrics.push(&[step as f64, l, lr])?;
        recent.push(l);
        if recent.len() > 100 {
            recent.remove(0);
        }
        last_loss = recent.iter().sum::<f64>() / recent.len() as f64;
        progress.status(&format!("loss {l:.4}"));
        progress.advance(1);
        if (step + 1) % stage.checkpoint_every == 0 || step + 1 == stage.steps {
            // Metrics first: a checkpoint never claims a step whose row is not on disk.
            metrics.commit()?;
            model.save(&stem, Some(&opt), state(step + 1, last_loss))?;
        }
    }
    progress.end();
    Ok((
        model,
        DtTrainSummary {
            steps: stage.steps,
            resumed_from: start,
            final_loss: last_loss,
            seconds: t0.elapsed().as_secs_f64(),
        },
    ))
}

/// What, besides the architecture and the step count, shapes the trained weights.
fn settings_of(stage: &DecisionTransformerStage) -> serde_json::Value {
    serde_json::json!({
        "seed": stage.seed,
        "batch_size": stage.batch_size,
        "lr": stage.lr,
        "weight_decay": stage.weight_decay,
        "warmup_steps": stage.warmup_steps,
        "grad_clip": stage.grad_clip,
    })
}

/// Restores weights, moments and the step from the checkpoint when it holds this model
/// trained on this dataset; returns `(steps done, last loss)`.
fn resume(
    stem: &Path,
    model: &DecisionTransformer,
    opt: &mut Adam,
    trained_on: &serde_json::Value,
    stage: &DecisionTransformerStage,
    progress: &dyn Progress,
) -> anyhow::Result<(usize, f64)> {
    if !dreamgym_nn::checkpoint_paths(stem).1.exists() {
        return Ok((0, f64::NAN));
    }
    let (saved, state): (DtCheckpointConfig, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(stem, dreamgym_policies::DT_CHECKPOINT_KIND)?;
    anyhow::ensure!(
        saved.model == *model.config(),
        "{} holds a Decision Transformer of another architecture than the config asks for; \
         run with --force to discard it, or use another --out",
        stem.display()
    );
    crate::world_models::check_settings(stem, "Decision Transformer", &state, &settings_of(stage))?;
    if state.get("trained_on") != Some(trained_on) || saved.spec != *model.spec() {
        progress.note("decision transformer: the dataset changed since it was trained, so it is stale; training it from scratch");
        return Ok((0, f64::NAN));
    }
    dreamgym_nn::load_weights(stem, model.varmap())?;
    dreamgym_nn::load_optimizer(stem, opt)?;
    let steps = state
        .get("steps_done")
        .and_then(|s| s.as_u64())
        .unwrap_or(0) as usize;
    let loss = state
        .get("loss")
        .and_then(|l| l.as_f64())
        .unwrap_or(f64::NAN);
    Ok((steps, loss))
}

/// Returns at each target, beside a random policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DtEvalSummary {
    /// Env id.
    pub env: String,
    /// Seeds (`seed .. seed + episodes`).
    pub seeds: (u64, u64),
    /// `(target, returns)` per target.
    pub targets: Vec<(f64, Vec<f64>)>,
    /// The baselines (behaviour cloning), when trained: `(label, returns)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<(String, Vec<f64>)>,
    /// The reference policy (`eval.reference`), when set: `(spec, returns)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<(String, Vec<f64>)>,
    /// A uniformly random policy on the same seeds.
    pub random: Vec<f64>,
    /// The recorded episodes' returns: mean, best.
    pub dataset: (f64, f64),
    /// What the numbers were made from (the weights' CRC-32 and the eval settings): the
    /// evaluation is done while these hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<serde_json::Value>,
}

/// Evaluates `model` at every target (the config's, or the dataset's best return and half of
/// it) on the same seeds as a random policy; writes `dt_eval.json` and `dt_report.md`. Returns
/// the numbers and whether they were computed now (false: already done for these weights and
/// settings).
pub fn evaluate_decision_transformer(
    stage: &DecisionTransformerStage,
    data: &DtData,
    model: DecisionTransformer,
    baselines: Vec<(DtVariant, DecisionTransformer)>,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<(DtEvalSummary, bool)> {
    let e = &stage.eval;
    let best = data
        .returns
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let targets = if e.targets.is_empty() {
        default_targets(&data.returns)
    } else {
        e.targets.clone()
    };
    let baseline_crcs = baselines
        .iter()
        .map(|(v, _)| dreamgym_nn::weights_crc32(&run.checkpoint(v.stem())))
        .collect::<Result<Vec<_>, _>>()?;
    let made_by = serde_json::json!({
        "weights_crc32": dreamgym_nn::weights_crc32(&run.checkpoint(DT_CHECKPOINT))?,
        "baselines_crc32": baseline_crcs,
        "eval": e,
        "targets": targets,
        "seed": stage.seed,
    });
    let report = run.file("dt_report.md");
    let figures_there = ["dt_targets.png", "dt_loss.png"]
        .iter()
        .all(|f| run.figures().join(f).exists());
    if let Some(done) = std::fs::read(run.file("dt_eval.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<DtEvalSummary>(&b).ok())
        .filter(|d| d.made_by.as_ref() == Some(&made_by) && report.exists() && figures_there)
    {
        return Ok((done, false));
    }
    let model = Arc::new(model);
    let encoder = data.encoder.as_ref();
    let mut policies: Vec<Box<dyn Policy>> = targets
        .iter()
        .map(|t| dt_policy(model.clone(), *t, encoder))
        .collect::<anyhow::Result<_>>()?;
    let labels: Vec<String> = baselines
        .iter()
        .map(|(v, _)| v.label().to_string())
        .collect();
    for (_, m) in baselines {
        // Without returns the target does not matter.
        policies.push(dt_policy(Arc::new(m), 0.0, encoder)?);
    }
    let has_reference = !e.reference.is_empty();
    if has_reference {
        policies.push(
            crate::load_policy(
                &e.reference,
                &data.meta.env_id,
                &data.meta.observation_space,
                &data.meta.action_space,
                derive_seed(stage.seed, "dt.eval.reference", 0),
            )
            .with_context(|| format!("decision_transformer.eval.reference = {:?}", e.reference))?,
        );
    }
    policies.push(Box::new(RandomPolicy::new(
        data.meta.action_space.clone(),
        derive_seed(stage.seed, "dt.eval.random", 0),
    )));
    let refs: Vec<&dyn Policy> = policies.iter().map(|p| p.as_ref()).collect();
    let seeds: Vec<u64> = (0..e.episodes as u64).map(|i| e.seed + i).collect();
    let jobs: Vec<(usize, u64)> = (0..refs.len())
        .flat_map(|p| seeds.iter().map(move |s| (p, *s)))
        .collect();
    let mut envs = (0..e.workers)
        .map(|_| make_env(registry, &data.meta))
        .collect::<anyhow::Result<Vec<_>>>()?;
    progress.begin("evaluate DT", jobs.len() as u64);
    let returns: Vec<f64> = run_jobs(&mut envs, &refs, &jobs, e.max_steps, progress)
        .inspect_err(|_| progress.end())?
        .iter()
        .map(|s| s.total_return)
        .collect();
    progress.end();
    let per: Vec<Vec<f64>> = returns.chunks(seeds.len()).map(|c| c.to_vec()).collect();
    let (dm, _) = mean_std(&data.returns);
    let summary = DtEvalSummary {
        env: data.meta.env_id.clone(),
        seeds: (e.seed, e.seed + e.episodes as u64),
        targets: targets.iter().cloned().zip(per.iter().cloned()).collect(),
        baselines: labels
            .iter()
            .cloned()
            .zip(per[targets.len()..].iter().cloned())
            .collect(),
        reference: has_reference.then(|| (e.reference.clone(), per[per.len() - 2].clone())),
        random: per.last().cloned().unwrap_or_default(),
        dataset: (dm, best),
        made_by: Some(made_by),
    };
    dreamgym_base::write_atomic(
        &run.file("dt_eval.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    let (m, s) = mean_std(&summary.random);
    let reference_mean = summary.reference.as_ref().map(|(_, r)| mean_std(r).0);
    // D4RL's normalised score: 0 is the random policy, 100 the reference.
    let score = |x: f64| -> String {
        match reference_mean {
            Some(r) if (r - m).abs() > 1e-12 => format!(" | {:.1}", 100.0 * (x - m) / (r - m)),
            Some(_) => " | –".into(),
            None => String::new(),
        }
    };
    let mut md = format!(
        "# Decision Transformer on {}\n\nTrained on {} recorded episodes (return: mean {:.1}, \
         best {:.1}); evaluated on seeds {}..{}.{}\n\n| policy | return (mean ± std){}\n|---|---{}\n",
        summary.env,
        data.returns.len(),
        dm,
        best,
        summary.seeds.0,
        summary.seeds.1,
        match &summary.reference {
            Some((spec, _)) => format!(
                " The score is D4RL's normalisation: 100 · (R − R_random) / (R_reference − \
                 R_random), with `{spec}` as the reference."
            ),
            None => String::new(),
        },
        if reference_mean.is_some() {
            " | score |"
        } else {
            " |"
        },
        if reference_mean.is_some() {
            "|---|"
        } else {
            "|"
        },
    );
    for (t, r) in &summary.targets {
        let (tm, ts) = mean_std(r);
        md.push_str(&format!(
            "| DT, target {t:.1} | {tm:.1} ± {ts:.1}{} |\n",
            score(tm)
        ));
    }
    for (label, r) in &summary.baselines {
        let (bm, bs) = mean_std(r);
        md.push_str(&format!("| {label} | {bm:.1} ± {bs:.1}{} |\n", score(bm)));
    }
    if let Some((spec, r)) = &summary.reference {
        let (rm, rs) = mean_std(r);
        md.push_str(&format!(
            "| reference: {spec} | {rm:.1} ± {rs:.1}{} |\n",
            score(rm)
        ));
    }
    md.push_str(&format!("| random | {m:.1} ± {s:.1}{} |\n", score(m)));
    // Achieved return against the target (the paper's figure), with the diagonal, the
    // dataset's best episode, the baselines, the reference and the random policy.
    let lo = targets.iter().cloned().fold(f64::INFINITY, f64::min).min(m);
    let hi = targets.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let achieved: Vec<(f64, f64)> = summary
        .targets
        .iter()
        .map(|(t, r)| (*t, mean_std(r).0))
        .collect();
    let flat = |y: f64| vec![(lo, y), (hi, y)];
    let mut chart = crate::figures::LineChart::new(
        format!(
            "Decision Transformer on {}: achieved against target return",
            summary.env
        ),
        "target return",
        "achieved return (mean over seeds)",
    )
    .series("DT", achieved)
    .series("target (achieved = target)", vec![(lo, lo), (hi, hi)])
    .series("best episode in the dataset", flat(best));
    for (label, r) in &summary.baselines {
        chart = chart.series(label.clone(), flat(mean_std(r).0));
    }
    if let Some((spec, r)) = &summary.reference {
        chart = chart.series(format!("reference: {spec}"), flat(mean_std(r).0));
    }
    let chart = chart.series("random policy", flat(m));
    let figures = run.figures();
    dreamgym_base::write_atomic(
        &figures.join("dt_targets.png"),
        &crate::figures::line_chart_png(&chart)?,
    )?;
    md.push_str("\n![](figures/dt_targets.png)\n");
    let (header, rows) = crate::read_csv(&run.metrics("dt"));
    if let (Some(step), Some(loss)) = (
        header.iter().position(|c| c == "step"),
        header.iter().position(|c| c == "loss"),
    ) && !rows.is_empty()
    {
        let chart = crate::figures::LineChart::new(
            "Decision Transformer: training loss",
            "optimiser step",
            "action loss",
        )
        .series("loss", rows.iter().map(|r| (r[step], r[loss])).collect());
        dreamgym_base::write_atomic(
            &figures.join("dt_loss.png"),
            &crate::figures::line_chart_png(&chart)?,
        )?;
        md.push_str("\n![](figures/dt_loss.png)\n");
    }
    dreamgym_base::write_atomic(&run.file("dt_report.md"), md.as_bytes())?;
    Ok((summary, true))
}

/// The targets swept when the config gives none: the dataset's median, 90th-percentile and
/// best episode returns (distinct values, ascending).
fn default_targets(returns: &[f64]) -> Vec<f64> {
    let mut sorted = returns.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let Some(&best) = sorted.last() else {
        return Vec::new();
    };
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mut targets = vec![at(0.5), at(0.9), best];
    targets.dedup();
    targets
}

/// Trains (or resumes) and evaluates: the whole `[decision_transformer]` section.
pub fn run_decision_transformer(
    stage: &DecisionTransformerStage,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<(DtTrainSummary, DtEvalSummary)> {
    stage.validate()?;
    let encoder = if stage.encoder.is_empty() {
        None
    } else {
        Some(
            LatentEncoder::load(Path::new(&stage.encoder))
                .context("decision_transformer.encoder")?,
        )
    };
    let data = DtData::load(&run.data(), &stage.model, encoder.as_ref(), progress)?;
    if !stage.eval.reference.is_empty() {
        // Before any training: a reference that cannot load would only fail at evaluation.
        crate::check_policy_spec(&stage.eval.reference, &data.meta.env_id)
            .context("decision_transformer.eval.reference")?;
    }
    let mut variants = vec![DtVariant::Dt];
    if stage.baselines {
        variants.extend([DtVariant::Bc, DtVariant::BcTop10]);
    }
    let mut models = Vec::new();
    let mut summary = None;
    for variant in variants {
        let (model, trained) = train_decision_transformer(stage, variant, &data, run, progress)?;
        let label = variant.label();
        if trained.seconds == 0.0 && trained.resumed_from >= stage.steps {
            progress.done(&format!(
                "{label}: already done (step {}, loss {:.4})",
                trained.steps, trained.final_loss
            ));
        } else {
            progress.done(&format!(
                "{label}: {} steps{}, loss {:.4} (mean of the last 100), {:.1} s",
                trained.steps,
                if trained.resumed_from > 0 {
                    format!(" (resumed after step {})", trained.resumed_from)
                } else {
                    String::new()
                },
                trained.final_loss,
                trained.seconds
            ));
        }
        summary.get_or_insert(trained);
        // Acting is one window at a time, faster on the CPU than through a GPU's launch
        // latency, and the same numbers whatever device trained: evaluate from the saved
        // weights on the CPU.
        let model = if model.device().is_cpu() {
            model
        } else {
            DecisionTransformer::load(&run.checkpoint(variant.stem()), &Device::Cpu)?
        };
        models.push((variant, model));
    }
    let trained = summary.ok_or_else(|| anyhow::anyhow!("nothing was trained"))?;
    let mut models = models.into_iter();
    let model = models
        .next()
        .map(|(_, m)| m)
        .ok_or_else(|| anyhow::anyhow!("no DT"))?;
    let baselines: Vec<(DtVariant, DecisionTransformer)> = models.collect();
    let (eval, ran) =
        evaluate_decision_transformer(stage, &data, model, baselines, run, registry, progress)?;
    let mut line = format!(
        "DT eval on {} seeds of {}:",
        eval.seeds.1 - eval.seeds.0,
        eval.env
    );
    for (t, r) in &eval.targets {
        let (m, s) = mean_std(r);
        line.push_str(&format!(" target {t:.1} → {m:.1} ± {s:.1};"));
    }
    for (label, r) in &eval.baselines {
        let (m, s) = mean_std(r);
        line.push_str(&format!(" {label} {m:.1} ± {s:.1};"));
    }
    if let Some((spec, r)) = &eval.reference {
        let (m, s) = mean_std(r);
        line.push_str(&format!(" {spec} {m:.1} ± {s:.1};"));
    }
    let (m, s) = mean_std(&eval.random);
    line.push_str(&format!(" random {m:.1} ± {s:.1}"));
    if !ran {
        line.push_str(" (already done)");
    }
    progress.done(&line);
    Ok((trained, eval))
}

/// The V a saved Decision Transformer reads pixels through (`None`: float observations),
/// checked to be the V it was trained with.
pub fn saved_encoder(state: &serde_json::Value) -> anyhow::Result<Option<LatentEncoder>> {
    let Some(e) = state.get("encoder").filter(|e| !e.is_null()) else {
        return Ok(None);
    };
    let run = e
        .get("run")
        .and_then(|r| r.as_str())
        .context("the checkpoint's encoder names no run folder")?;
    let encoder = LatentEncoder::load(Path::new(run))?;
    let want = e.get("vae_crc32").and_then(|c| c.as_u64());
    anyhow::ensure!(
        want == Some(encoder.crc32 as u64),
        "this Decision Transformer was trained on the latents of another V than the one now in \
         {run} (it was retrained since): train the Decision Transformer again"
    );
    Ok(Some(encoder))
}

/// Loads the Decision Transformer of a run folder as a policy aiming at `target`.
pub fn load_dt_policy(run: &RunDir, target: f64) -> anyhow::Result<Box<dyn Policy>> {
    let stem = run.checkpoint(DT_CHECKPOINT);
    let (_, state): (DtCheckpointConfig, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(&stem, dreamgym_policies::DT_CHECKPOINT_KIND)?;
    let model = DecisionTransformer::load(&stem, &Device::Cpu)?;
    dt_policy(Arc::new(model), target, saved_encoder(&state)?.as_ref())
}
