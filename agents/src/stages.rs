//! The pipeline's stages. Each reads its inputs from, and writes its outputs to, a run folder:
//!
//! | file | written by |
//! |---|---|
//! | `vae.safetensors` + `vae.json`, `metrics/vae.csv` | [`train_vae`] |
//! | `series.safetensors` (μ, log σ², actions, rewards, dones per episode) | [`encode`] |
//! | `mdnrnn.safetensors` + `mdnrnn.json`, `metrics/mdnrnn.csv` | [`train_mdn`] |
//! | `controller.json`, `metrics/controller.csv` | [`train_controller`] |
//! | `eval.json` | [`evaluate`] |
//! | `report.md` + `figures/*.png` | [`report`] |

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_envs::recording::{Dataset, DatasetMeta};
use dreamgym_envs::{Env, Registry, Space, Value};
use dreamgym_policies::{CmaEs, LinearController};
use dreamgym_world_model::dream::StartLatent;
use dreamgym_world_model::mdn::SeqBatch;
use dreamgym_world_model::nn::{load_weights, read_checkpoint_meta, save_checkpoint, write_atomic};
use dreamgym_world_model::optim::{Adam, AdamConfig};
use dreamgym_world_model::vae::{frames_to_tensor, tensor_to_frames};
use dreamgym_world_model::{DreamEnv, MdnRnn, MdnRnnConfig, Vae, VaeConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::WorldModelsConfig;
use crate::agent::{
    WorldModel, check_pixels, feature_episode, frame_of, random_episode, real_episode,
};
use crate::plot::{image_grid, line_chart};

/// One recorded episode, flattened for training.
pub struct EpisodeFrames {
    /// `T + 1` frames, u8 HWC, concatenated.
    pub frames: Vec<u8>,
    /// `T` actions, each `action_size` floats, concatenated.
    pub actions: Vec<f32>,
    /// `T` rewards.
    pub rewards: Vec<f32>,
    /// `T` terminated flags.
    pub dones: Vec<f32>,
}

/// Loads every episode of a pixel dataset (damaged chunks are reported and skipped).
pub fn load_dataset(dir: &Path) -> anyhow::Result<(DatasetMeta, Vec<EpisodeFrames>)> {
    let ds =
        Dataset::open(dir).with_context(|| format!("cannot open dataset {}", dir.display()))?;
    let report = ds.load();
    for (path, err) in &report.damaged {
        eprintln!("warning: skipping damaged chunk {}: {err}", path.display());
    }
    let meta = ds.meta().clone();
    let mut out = Vec::new();
    for ep in report.episodes {
        let mut frames = Vec::new();
        for o in &ep.observations {
            frames.extend_from_slice(frame_of(o)?);
        }
        let mut actions = Vec::new();
        for a in &ep.actions {
            match a {
                Value::F32(v) => actions.extend_from_slice(v),
                other => anyhow::bail!("World Models needs Box actions, got {}", other.describe()),
            }
        }
        out.push(EpisodeFrames {
            frames,
            actions,
            rewards: ep.rewards.iter().map(|r| *r as f32).collect(),
            dones: ep.terminated.iter().map(|d| *d as u8 as f32).collect(),
        });
    }
    anyhow::ensure!(!out.is_empty(), "dataset {} has no episodes", dir.display());
    Ok((meta, out))
}

fn action_size(meta: &DatasetMeta) -> anyhow::Result<usize> {
    meta.action_space
        .as_box()
        .map(|b| b.len())
        .context("World Models needs a Box action space")
}

fn metrics_file(
    run: &Path,
    name: &str,
    header: &str,
    fresh: bool,
) -> anyhow::Result<std::fs::File> {
    let dir = run.join("metrics");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.csv"));
    let exists = path.exists() && !fresh;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(!fresh)
        .write(true)
        .truncate(fresh)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if !exists {
        writeln!(f, "{header}")?;
    }
    Ok(f)
}

fn progress(len: u64, what: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what:>12} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// Loads V from a run folder.
pub fn load_vae(run: &Path, device: &Device) -> anyhow::Result<Vae> {
    let stem = run.join("vae");
    let (config, _): (VaeConfig, _) = read_checkpoint_meta(&stem, "vae")?;
    let vae = Vae::new(config, device, 0)?;
    load_weights(&stem, vae.varmap())?;
    Ok(vae)
}

/// Loads M from a run folder.
pub fn load_mdn(run: &Path, device: &Device) -> anyhow::Result<MdnRnn> {
    let stem = run.join("mdnrnn");
    let (config, _): (MdnRnnConfig, _) = read_checkpoint_meta(&stem, "mdnrnn")?;
    let m = MdnRnn::new(config, device, 0)?;
    load_weights(&stem, m.varmap())?;
    Ok(m)
}

/// Loads V and M from a run folder and checks that they fit together (M reads V's z).
pub fn load_world_model(run: &Path, device: &Device) -> anyhow::Result<WorldModel> {
    let vae = load_vae(run, device).with_context(|| format!("{}: no trained V", run.display()))?;
    let mdn = load_mdn(run, device).with_context(|| format!("{}: no trained M", run.display()))?;
    anyhow::ensure!(
        vae.config().z_size == mdn.config().z_size,
        "{}: V's z_size {} does not match M's {} (were they trained in different runs?)",
        run.display(),
        vae.config().z_size,
        mdn.config().z_size
    );
    Ok(WorldModel {
        vae: Arc::new(vae),
        mdn: Arc::new(mdn),
    })
}

/// The epoch a checkpoint with the same config reached, if any.
fn resume_point<C: serde::de::DeserializeOwned + PartialEq>(
    stem: &Path,
    kind: &str,
    config: &C,
) -> Option<usize> {
    let (saved, state): (C, serde_json::Value) = read_checkpoint_meta(stem, kind).ok()?;
    if &saved != config {
        return None;
    }
    state.get("epochs_done")?.as_u64().map(|e| e as usize)
}

/// What a training stage did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Epochs done in total (including resumed ones).
    pub epochs: usize,
    /// Optimiser steps this call took.
    pub steps: usize,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Samples (frames or sequences) per second this call.
    pub throughput: f64,
    /// Seconds this call took.
    pub seconds: f64,
}

/// Trains V on every frame of the dataset; resumes from `vae.*` if it has the same config.
pub fn train_vae(
    cfg: &WorldModelsConfig,
    data: &Path,
    run: &Path,
    show: bool,
) -> anyhow::Result<TrainSummary> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let (meta, episodes) = load_dataset(data)?;
    let stage = &cfg.vae;
    let vae = Vae::new(stage.model.clone(), &device, cfg.seed)?;
    check_pixels(&meta.observation_space, &vae)?;
    let stem = run.join("vae");
    let start = resume_point(&stem, "vae", &stage.model)
        .unwrap_or(0)
        .min(stage.epochs);
    if start > 0 {
        load_weights(&stem, vae.varmap())?;
        if show {
            eprintln!("vae: resuming after epoch {start} from {}", stem.display());
        }
    }
    let c = vae.config().clone();
    let frame_len = c.image_size * c.image_size * c.channels;
    let index: Vec<(usize, usize)> = episodes
        .iter()
        .enumerate()
        .flat_map(|(e, ep)| (0..ep.frames.len() / frame_len).map(move |i| (e, i)))
        .collect();
    let mut opt = Adam::new(
        vae.varmap().all_vars(),
        AdamConfig {
            lr: stage.lr,
            ..Default::default()
        },
    )?;
    let mut metrics = metrics_file(run, "vae", "epoch,step,loss,reconstruction,kl", start == 0)?;
    let batches = index.len().div_ceil(stage.batch_size);
    let pb = progress(((stage.epochs - start) * batches) as u64, "train V", show);
    let t0 = Instant::now();
    let (mut steps, mut last_mean) = (0usize, f64::NAN);
    for epoch in start..stage.epochs {
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let mut order = index.clone();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for (b, chunk) in order.chunks(stage.batch_size).enumerate() {
            let mut frames = Vec::with_capacity(chunk.len() * frame_len);
            for &(e, i) in chunk {
                frames.extend_from_slice(&episodes[e].frames[i * frame_len..(i + 1) * frame_len]);
            }
            let x = frames_to_tensor(&frames, chunk.len(), c.image_size, c.channels, &device)?;
            let eps: Vec<f32> = (0..chunk.len() * c.z_size)
                .map(|_| dreamgym_world_model::mdn::standard_normal(&mut rng))
                .collect();
            let eps =
                Tensor::from_vec(eps, (chunk.len(), c.z_size), &Device::Cpu)?.to_device(&device)?;
            let loss = vae.loss(&x, &eps)?;
            let (l, r, k) = (
                loss.total.to_scalar::<f32>()?,
                loss.reconstruction.to_scalar::<f32>()?,
                loss.kl.to_scalar::<f32>()?,
            );
            anyhow::ensure!(
                l.is_finite(),
                "vae: the loss became {l} at epoch {epoch}, batch {b}"
            );
            opt.step(loss.total.backward()?)?;
            writeln!(metrics, "{epoch},{steps},{l},{r},{k}")?;
            sum += l as f64;
            steps += 1;
            pb.set_message(format!("loss {l:.1}"));
            pb.inc(1);
        }
        last_mean = sum / batches as f64;
        save_checkpoint(
            &stem,
            "vae",
            &stage.model,
            vae.varmap(),
            serde_json::json!({"epochs_done": epoch + 1}),
        )?;
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    Ok(TrainSummary {
        epochs: stage.epochs,
        steps,
        final_loss: last_mean,
        throughput: ((stage.epochs - start) * index.len()) as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// Encodes every frame with V into `series.safetensors`: per episode `ep{i}.mu`, `.logvar`
/// (`[T+1, z]`), `.actions` (`[T, A]`), `.rewards`, `.dones` (`[T]`).
pub fn encode(
    cfg: &WorldModelsConfig,
    data: &Path,
    run: &Path,
    show: bool,
) -> anyhow::Result<usize> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let (meta, episodes) = load_dataset(data)?;
    let vae = load_vae(run, &device)?;
    check_pixels(&meta.observation_space, &vae)?;
    let a = action_size(&meta)?;
    let wm_c = vae.config().clone();
    let frame_len = wm_c.image_size * wm_c.image_size * wm_c.channels;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let pb = progress(episodes.len() as u64, "encode", show);
    let mut frames_total = 0;
    for (i, ep) in episodes.iter().enumerate() {
        let n = ep.frames.len() / frame_len;
        let (mut mus, mut lvs) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(256) {
            let m = (n - start).min(256);
            let x = frames_to_tensor(
                &ep.frames[start * frame_len..(start + m) * frame_len],
                m,
                wm_c.image_size,
                wm_c.channels,
                &device,
            )?;
            let (mu, lv) = vae.encode(&x)?;
            // Detached: stored results must not keep the forward graph's buffers alive.
            mus.push(mu.detach().to_device(&Device::Cpu)?);
            lvs.push(lv.detach().to_device(&Device::Cpu)?);
        }
        let t = n - 1;
        tensors.insert(format!("ep{i}.mu"), Tensor::cat(&mus, 0)?);
        tensors.insert(format!("ep{i}.logvar"), Tensor::cat(&lvs, 0)?);
        tensors.insert(
            format!("ep{i}.actions"),
            Tensor::from_slice(&ep.actions, (t, a), &Device::Cpu)?,
        );
        tensors.insert(
            format!("ep{i}.rewards"),
            Tensor::from_slice(&ep.rewards, t, &Device::Cpu)?,
        );
        tensors.insert(
            format!("ep{i}.dones"),
            Tensor::from_slice(&ep.dones, t, &Device::Cpu)?,
        );
        frames_total += n;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tmp = run.join(".series.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, run.join("series.safetensors"))?;
    Ok(frames_total)
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

/// Reads `series.safetensors`.
pub fn load_series(run: &Path) -> anyhow::Result<Vec<Series>> {
    let path = run.join("series.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).with_context(|| {
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

/// M's config as trained: the stage's with V's `z_size` and the env's action size.
fn mdn_config(cfg: &WorldModelsConfig, series: &[Series]) -> anyhow::Result<MdnRnnConfig> {
    let mut m = cfg.mdnrnn.model.clone();
    m.z_size = series[0].mu.dim(1)?;
    m.action_size = series[0].actions.dim(1)?;
    Ok(m)
}

/// Trains M on windows of `seq_len + 1` latents, z sampled from each frame's (μ, σ) afresh
/// every epoch; resumes from `mdnrnn.*` if it has the same config.
pub fn train_mdn(cfg: &WorldModelsConfig, run: &Path, show: bool) -> anyhow::Result<TrainSummary> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let series = load_series(run)?;
    let stage = &cfg.mdnrnn;
    let mcfg = mdn_config(cfg, &series)?;
    let m = MdnRnn::new(mcfg.clone(), &device, cfg.seed.wrapping_add(1))?;
    let stem = run.join("mdnrnn");
    let start = resume_point(&stem, "mdnrnn", &mcfg)
        .unwrap_or(0)
        .min(stage.epochs);
    if start > 0 {
        load_weights(&stem, m.varmap())?;
    }
    let t = stage.seq_len;
    // Non-overlapping windows of every long-enough episode.
    let windows: Vec<(usize, usize)> = series
        .iter()
        .enumerate()
        .flat_map(|(e, s)| {
            let steps = s.actions.dim(0).unwrap_or(0);
            (0..steps / t).map(move |w| (e, w * t))
        })
        .collect();
    anyhow::ensure!(
        !windows.is_empty(),
        "no episode has {} steps (mdnrnn.seq_len); collect longer episodes or lower seq_len",
        t
    );
    let mut opt = Adam::new(
        m.varmap().all_vars(),
        AdamConfig {
            lr: stage.lr,
            clip_value: Some(stage.grad_clip),
            ..Default::default()
        },
    )?;
    let mut metrics = metrics_file(
        run,
        "mdnrnn",
        "epoch,step,loss,z_nll,reward,done",
        start == 0,
    )?;
    let batches = windows.len().div_ceil(stage.batch_size);
    let pb = progress(((stage.epochs - start) * batches) as u64, "train M", show);
    let t0 = Instant::now();
    let (mut steps, mut seqs, mut last_mean) = (0usize, 0usize, f64::NAN);
    for epoch in start..stage.epochs {
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xA5A5 ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let mut order = windows.clone();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(stage.batch_size) {
            let (mut zs, mut acts, mut rews, mut dones) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &(e, s0) in chunk {
                let s = &series[e];
                let mu = s.mu.narrow(0, s0, t + 1)?;
                let sd = (s.logvar.narrow(0, s0, t + 1)? * 0.5)?.exp()?;
                let n: Vec<f32> = (0..(t + 1) * mcfg.z_size)
                    .map(|_| dreamgym_world_model::mdn::standard_normal(&mut rng))
                    .collect();
                let eps = Tensor::from_vec(n, (t + 1, mcfg.z_size), &Device::Cpu)?;
                zs.push((mu + (sd * eps)?)?);
                acts.push(s.actions.narrow(0, s0, t)?);
                rews.push(s.rewards.narrow(0, s0, t)?);
                dones.push(s.dones.narrow(0, s0, t)?);
            }
            let batch = SeqBatch {
                z: Tensor::stack(&zs, 0)?.to_device(&device)?,
                actions: Tensor::stack(&acts, 0)?.to_device(&device)?,
                rewards: Tensor::stack(&rews, 0)?.to_device(&device)?,
                dones: Tensor::stack(&dones, 0)?.to_device(&device)?,
            };
            let loss = m.loss(&batch)?;
            let vals = [&loss.total, &loss.z_nll, &loss.reward, &loss.done]
                .map(|t| t.to_scalar::<f32>().unwrap_or(f32::NAN));
            anyhow::ensure!(
                vals[0].is_finite(),
                "mdnrnn: the loss became {} at epoch {epoch}",
                vals[0]
            );
            opt.step(loss.total.backward()?)?;
            writeln!(
                metrics,
                "{epoch},{steps},{},{},{},{}",
                vals[0], vals[1], vals[2], vals[3]
            )?;
            sum += vals[0] as f64;
            steps += 1;
            seqs += chunk.len();
            pb.set_message(format!("loss {:.3}", vals[0]));
            pb.inc(1);
        }
        last_mean = sum / batches as f64;
        save_checkpoint(
            &stem,
            "mdnrnn",
            &mcfg,
            m.varmap(),
            serde_json::json!({"epochs_done": epoch + 1}),
        )?;
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    Ok(TrainSummary {
        epochs: stage.epochs,
        steps,
        final_loss: last_mean,
        throughput: seqs as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// The trained controller, as saved in `controller.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerFile {
    /// Trained in the dream (true) or the real env.
    pub in_dream: bool,
    /// C's inputs (z + hidden).
    pub inputs: usize,
    /// W row-major, then b.
    pub params: Vec<f32>,
    /// The best mean training return seen (the one these parameters earned).
    pub best_fitness: f64,
    /// Generations done.
    pub generations: usize,
}

/// Builds an env from a dataset's recorded id and resolved config.
pub fn make_env(registry: &Registry, meta: &DatasetMeta) -> anyhow::Result<Box<dyn Env>> {
    registry
        .make(&meta.env_id, Some(&meta.env_config))
        .with_context(|| format!("cannot build {}", meta.env_id))
}

/// Where C's episodes run.
enum Arena {
    /// The real env, C acting through V and M.
    Real(Box<dyn Env>),
    /// M's dream, C acting on its [z, h] observations.
    Dream(Box<DreamEnv>),
    /// The real env with uniformly random actions (the baseline; C is ignored).
    Random(Box<dyn Env>),
}

impl Arena {
    fn episode(
        &mut self,
        wm: &WorldModel,
        c: &LinearController,
        seed: u64,
        max_steps: u64,
    ) -> anyhow::Result<(f64, u64)> {
        match self {
            Arena::Real(env) => real_episode(env.as_mut(), wm, c, seed, max_steps),
            Arena::Dream(env) => feature_episode(env.as_mut(), c, seed, max_steps),
            Arena::Random(env) => random_episode(env.as_mut(), seed, max_steps),
        }
    }
}

fn arenas(
    n: usize,
    in_dream: bool,
    cfg: &WorldModelsConfig,
    registry: &Registry,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
) -> anyhow::Result<Vec<Arena>> {
    (0..n)
        .map(|_| {
            if in_dream {
                let env = DreamEnv::new(
                    wm.mdn.clone(),
                    starts.clone(),
                    meta.action_space.clone(),
                    cfg.controller.dream.clone(),
                )?;
                Ok(Arena::Dream(Box::new(env)))
            } else {
                Ok(Arena::Real(make_env(registry, meta)?))
            }
        })
        .collect()
}

/// Runs `jobs` (candidate index, seed) over the arenas on one thread each; returns returns in
/// job order (deterministic whatever the thread count).
fn run_parallel(
    arenas: &mut [Arena],
    wm: &WorldModel,
    controllers: &[LinearController],
    jobs: &[(usize, u64)],
    max_steps: u64,
) -> anyhow::Result<Vec<f64>> {
    let n = arenas.len();
    let mut results = vec![0.0; jobs.len()];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = arenas
            .iter_mut()
            .enumerate()
            .map(|(w, arena)| {
                s.spawn(move || -> anyhow::Result<Vec<(usize, f64)>> {
                    let mut out = Vec::new();
                    for (j, &(cand, seed)) in jobs.iter().enumerate().skip(w).step_by(n) {
                        out.push((j, arena.episode(wm, &controllers[cand], seed, max_steps)?.0));
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            for (j, r) in h
                .join()
                .map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))??
            {
                results[j] = r;
            }
        }
        Ok(())
    })?;
    Ok(results)
}

/// Trains C with CMA-ES in the real env or the dream (`controller.in_dream`); fitness is the
/// mean return over `rollouts` episodes, the same seeds for every candidate of a generation.
pub fn train_controller(
    cfg: &WorldModelsConfig,
    data: &Path,
    run: &Path,
    registry: &Registry,
    show: bool,
) -> anyhow::Result<ControllerFile> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let meta = Dataset::open(data)?.meta().clone();
    let wm = load_world_model(run, &device)?;
    check_pixels(&meta.observation_space, &wm.vae)?;
    let stage = &cfg.controller;
    let starts = Arc::new(if stage.in_dream {
        start_latents(&load_series(run)?)?
    } else {
        Vec::new()
    });
    let mut arenas = arenas(
        stage.workers,
        stage.in_dream,
        cfg,
        registry,
        &meta,
        &wm,
        &starts,
    )?;
    let inputs = wm.feature_size();
    let n = LinearController::param_count(inputs, action_size(&meta)?);
    let mut es_cfg = stage.cmaes.clone();
    es_cfg.seed ^= cfg.seed;
    let mut es = CmaEs::new(&vec![0.0; n], &es_cfg).map_err(anyhow::Error::msg)?;
    let mut metrics = metrics_file(run, "controller", "generation,mean,max,min,sigma", true)?;
    let pb = progress(stage.generations as u64, "train C", show);
    for g in 0..stage.generations {
        let xs = es.ask();
        let controllers: Vec<LinearController> = xs
            .iter()
            .map(|x| {
                LinearController::new(
                    inputs,
                    &meta.action_space,
                    x.iter().map(|v| *v as f32).collect(),
                )
            })
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let seeds: Vec<u64> = (0..stage.rollouts as u64)
            .map(|r| cfg.seed.wrapping_mul(1_000_003) + g as u64 * 1000 + r)
            .collect();
        let jobs: Vec<(usize, u64)> = (0..xs.len())
            .flat_map(|c| seeds.iter().map(move |s| (c, *s)))
            .collect();
        let returns = run_parallel(&mut arenas, &wm, &controllers, &jobs, stage.max_steps)?;
        let fitness: Vec<f64> = returns
            .chunks(stage.rollouts)
            .map(|r| r.iter().sum::<f64>() / r.len() as f64)
            .collect();
        es.tell(&fitness).map_err(anyhow::Error::msg)?;
        let mean = fitness.iter().sum::<f64>() / fitness.len() as f64;
        let max = fitness.iter().cloned().fold(f64::MIN, f64::max);
        let min = fitness.iter().cloned().fold(f64::MAX, f64::min);
        writeln!(metrics, "{g},{mean},{max},{min},{}", es.sigma())?;
        pb.set_message(format!("best {max:.1} mean {mean:.1}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (best_fitness, best) = es.best().context("CMA-ES told no generation")?;
    let file = ControllerFile {
        in_dream: stage.in_dream,
        inputs,
        params: best.iter().map(|v| *v as f32).collect(),
        best_fitness,
        generations: stage.generations,
    };
    write_atomic(
        &run.join("controller.json"),
        &serde_json::to_vec_pretty(&file)?,
    )?;
    Ok(file)
}

/// Mean and standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64;
    (m, var.sqrt())
}

/// The evaluation's numbers (`eval.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Env id.
    pub env: String,
    /// Seeds used (`seed .. seed + episodes`).
    pub seeds: (u64, u64),
    /// The trained controller's returns in the real env.
    pub controller: Vec<f64>,
    /// A uniformly random policy's returns on the same seeds.
    pub random: Vec<f64>,
    /// The controller's returns in the dream on as many seeds (when M has a reward head).
    pub dream: Option<Vec<f64>>,
    /// Whether C was trained in the dream.
    pub trained_in_dream: bool,
}

/// Evaluates C in the real env on `eval.episodes` seeds beside a random policy (and in the
/// dream when M predicts rewards), on `controller.workers` threads.
pub fn evaluate(
    cfg: &WorldModelsConfig,
    data: &Path,
    run: &Path,
    registry: &Registry,
    show: bool,
) -> anyhow::Result<EvalSummary> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let meta = Dataset::open(data)?.meta().clone();
    let wm = load_world_model(run, &device)?;
    let path = run.join("controller.json");
    let file: ControllerFile =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (train the controller first)",
                path.display()
            )
        })?)
        .with_context(|| format!("{} is not a controller file", path.display()))?;
    let c = LinearController::new(file.inputs, &meta.action_space, file.params.clone())
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        c.inputs() == wm.feature_size(),
        "{}: controller inputs do not match V and M",
        path.display()
    );
    let e = &cfg.eval;
    let seeds: Vec<u64> = (0..e.episodes as u64).map(|i| e.seed + i).collect();
    let jobs: Vec<(usize, u64)> = seeds.iter().map(|s| (0, *s)).collect();
    let workers = cfg.controller.workers;
    let pb = progress(3, "evaluate", show);
    let mut real = arenas(
        workers,
        false,
        cfg,
        registry,
        &meta,
        &wm,
        &Arc::new(Vec::new()),
    )?;
    let controller = run_parallel(&mut real, &wm, std::slice::from_ref(&c), &jobs, e.max_steps)?;
    pb.inc(1);
    // The random baseline on the same seeds, in parallel.
    let mut baseline = (0..workers)
        .map(|_| Ok(Arena::Random(make_env(registry, &meta)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let random = run_parallel(
        &mut baseline,
        &wm,
        std::slice::from_ref(&c),
        &jobs,
        e.max_steps,
    )?;
    pb.inc(1);
    let dream = if wm.mdn.config().reward_head && run.join("series.safetensors").exists() {
        let starts = Arc::new(start_latents(&load_series(run)?)?);
        let mut d = arenas(workers, true, cfg, registry, &meta, &wm, &starts)?;
        Some(run_parallel(
            &mut d,
            &wm,
            std::slice::from_ref(&c),
            &jobs,
            e.max_steps,
        )?)
    } else {
        None
    };
    pb.finish_and_clear();
    let summary = EvalSummary {
        env: meta.env_id.clone(),
        seeds: (e.seed, e.seed + e.episodes as u64),
        controller,
        random,
        dream,
        trained_in_dream: file.in_dream,
    };
    write_atomic(
        &run.join("eval.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

fn read_csv(path: &Path) -> Vec<Vec<f64>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}

fn smooth(points: Vec<(f64, f64)>, window: usize) -> Vec<(f64, f64)> {
    if points.len() <= window {
        return points;
    }
    points
        .windows(window)
        .map(|w| {
            (
                w[w.len() - 1].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// Writes `report.md` with figures: originals beside reconstructions, a dream decoded to
/// images, learning curves and the evaluation.
pub fn report(
    cfg: &WorldModelsConfig,
    data: &Path,
    run: &Path,
    wall_seconds: Option<f64>,
) -> anyhow::Result<PathBuf> {
    let device = dreamgym_world_model::device(&cfg.device)?;
    let figs = run.join("figures");
    std::fs::create_dir_all(&figs)?;
    let (meta, episodes) = load_dataset(data)?;
    let vae = load_vae(run, &device)?;
    let vc = vae.config().clone();
    let flen = vc.image_size * vc.image_size * vc.channels;
    let mut md = String::new();
    md.push_str(&format!("# World Models on {}\n\n", meta.env_id));
    if let Some(s) = wall_seconds {
        md.push_str(&format!("Wall time of the whole run: {:.0} s.\n\n", s));
    }
    // Originals (top row) and reconstructions (bottom row) from several episodes.
    let mut originals = Vec::new();
    for (i, ep) in episodes.iter().enumerate().take(8) {
        let n = ep.frames.len() / flen;
        let k = (n / 2 + i * 7) % n;
        originals.push(ep.frames[k * flen..(k + 1) * flen].to_vec());
    }
    let x = frames_to_tensor(
        &originals.concat(),
        originals.len(),
        vc.image_size,
        vc.channels,
        &device,
    )?;
    let (mu, _) = vae.encode(&x)?;
    let recon = tensor_to_frames(&vae.decode(&mu)?)?;
    let mut grid = originals.clone();
    grid.extend(recon.chunks(flen).map(|c| c.to_vec()));
    image_grid(
        &figs.join("reconstructions.png"),
        &grid,
        vc.image_size,
        originals.len(),
        2,
    )?;
    md.push_str("## V: originals (top) and reconstructions from μ (bottom)\n\n![](figures/reconstructions.png)\n\n");
    // Learning curves.
    for (name, col, title) in [
        ("vae", 2, "V loss per step"),
        (
            "mdnrnn",
            3,
            "M: negative log-likelihood of the next z per step",
        ),
    ] {
        let rows = read_csv(&run.join("metrics").join(format!("{name}.csv")));
        if rows.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r[1], r[col])).collect();
        let ((_, x1), (y0, y1)) =
            line_chart(&figs.join(format!("{name}_loss.png")), &[smooth(pts, 5)])?;
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        md.push_str(&format!(
            "## {title}\n\n![](figures/{name}_loss.png)\n\nx: 0 to {x1:.0} steps; y: {y0:.3} to {y1:.3} (5-step moving mean). First {:.3}, last {:.3}.\n\n",
            first[col], last[col]
        ));
        if name == "mdnrnn" {
            md.push_str(&format!(
                "Reward head (squared error): first {:.3}, last {:.3}. Done head (logistic loss): first {:.3}, last {:.3}.\n\n",
                first[4], last[4], first[5], last[5]
            ));
        }
    }
    let rows = read_csv(&run.join("metrics").join("controller.csv"));
    if !rows.is_empty() {
        let mean: Vec<(f64, f64)> = rows.iter().map(|r| (r[0], r[1])).collect();
        let max: Vec<(f64, f64)> = rows.iter().map(|r| (r[0], r[2])).collect();
        let ((_, x1), (y0, y1)) = line_chart(&figs.join("controller.png"), &[mean, max])?;
        md.push_str(&format!(
            "## C: CMA-ES fitness per generation ({})\n\n![](figures/controller.png)\n\nBlue: population mean; red: best candidate. x: 0 to {x1:.0}; y: {y0:.1} to {y1:.1}. Last generation: mean {:.1}, best {:.1}.\n\n",
            if cfg.controller.in_dream { "in the dream" } else { "in the real env" },
            rows[rows.len() - 1][1],
            rows[rows.len() - 1][2]
        ));
    }
    // A dream decoded to images, driven by C when there is one, else by random actions.
    if run.join("mdnrnn.json").exists() && run.join("series.safetensors").exists() {
        let mdn = Arc::new(load_mdn(run, &device)?);
        let starts = Arc::new(start_latents(&load_series(run)?)?);
        let mut env = DreamEnv::new(
            mdn.clone(),
            starts,
            meta.action_space.clone(),
            cfg.controller.dream.clone(),
        )?;
        let controller = std::fs::read(run.join("controller.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ControllerFile>(&b).ok())
            .and_then(|f| LinearController::new(f.inputs, &meta.action_space, f.params).ok());
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let (mut obs, _) = env.reset(Some(cfg.seed), &Default::default())?;
        let mut latents = vec![env.latent().to_vec()];
        for _ in 0..31 {
            let action = match &controller {
                Some(c) => c.act(obs.as_f32().unwrap_or(&[])),
                None => meta.action_space.sample(&mut rng),
            };
            let s = env.step(&action)?;
            latents.push(env.latent().to_vec());
            let done = s.done();
            obs = s.obs;
            if done {
                break;
            }
        }
        let z = Tensor::from_vec(latents.concat(), (latents.len(), vc.z_size), &Device::Cpu)?
            .to_device(&device)?;
        let frames = tensor_to_frames(&vae.decode(&z)?)?;
        let imgs: Vec<Vec<u8>> = frames.chunks(flen).map(|c| c.to_vec()).collect();
        image_grid(&figs.join("dream.png"), &imgs, vc.image_size, 8, 2)?;
        md.push_str(&format!(
            "## A dream: {} of M's imagined steps decoded by V (τ = {})\n\n![](figures/dream.png)\n\n",
            imgs.len(),
            cfg.controller.dream.temperature
        ));
    }
    if let Ok(bytes) = std::fs::read(run.join("eval.json")) {
        let e: EvalSummary = serde_json::from_slice(&bytes)?;
        let (cm, cs) = mean_std(&e.controller);
        let (rm, rs) = mean_std(&e.random);
        md.push_str(&format!(
            "## Evaluation on {} seeds ({}..{}), real env\n\n| policy | return (mean ± std) |\n|---|---|\n| C (trained {}) | {cm:.1} ± {cs:.1} |\n| random | {rm:.1} ± {rs:.1} |\n",
            e.controller.len(),
            e.seeds.0,
            e.seeds.1,
            if e.trained_in_dream { "in the dream" } else { "in the real env" },
        ));
        if let Some(d) = &e.dream {
            let (dm, ds) = mean_std(d);
            md.push_str(&format!(
                "| C in the dream (M's predicted reward) | {dm:.1} ± {ds:.1} |\n"
            ));
        }
        md.push('\n');
    }
    let path = run.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// Checks whether an action space suits C (a bounded Box).
pub fn check_action_space(space: &Space) -> anyhow::Result<()> {
    anyhow::ensure!(
        space.as_box().is_some_and(|b| b.is_bounded()),
        "World Models' controller needs a bounded Box action space"
    );
    Ok(())
}

/// A trained run loaded for watching: V and M, C if trained, the dataset's description, and
/// the dream's starting latents if the run was encoded.
pub struct LoadedRun {
    /// V and M.
    pub wm: WorldModel,
    /// C, when `controller.json` exists.
    pub controller: Option<LinearController>,
    /// The recorded dataset's description (env id, config, spaces) from `<run>/data`.
    pub meta: DatasetMeta,
    /// Every episode's first latent (empty without `series.safetensors`).
    pub starts: Vec<StartLatent>,
}

/// Loads a run folder (`vae.*`, `mdnrnn.*`, optional `controller.json` and
/// `series.safetensors`, the dataset in `data/`) on the CPU.
pub fn load_run(run: &Path) -> anyhow::Result<LoadedRun> {
    let device = Device::Cpu;
    let data = run.join("data");
    let meta = Dataset::open(&data)
        .with_context(|| {
            format!(
                "{} has no dataset in data/ (is it a World Models run folder?)",
                run.display()
            )
        })?
        .meta()
        .clone();
    let wm = load_world_model(run, &device)?;
    let controller = match std::fs::read(run.join("controller.json")) {
        Ok(bytes) => {
            let f: ControllerFile =
                serde_json::from_slice(&bytes).context("controller.json is damaged")?;
            Some(
                LinearController::new(f.inputs, &meta.action_space, f.params)
                    .map_err(anyhow::Error::msg)?,
            )
        }
        Err(_) => None,
    };
    let starts = if run.join("series.safetensors").exists() {
        start_latents(&load_series(run)?)?
    } else {
        Vec::new()
    };
    Ok(LoadedRun {
        wm,
        controller,
        meta,
        starts,
    })
}
