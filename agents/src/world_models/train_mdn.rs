//! Stage 3: M learns to predict the next latent (and reward and done) from the series.

use candle_core::{Device, Tensor};
use dreamgym_base::derive_seed;
use dreamgym_nn::{Adam, AdamConfig, sorted_vars};
use dreamgym_world_model::mdn::{SeqBatch, standard_normal};
use dreamgym_world_model::{MdnRnn, MdnRnnConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::calibrate::{calibrate, is_held_out};
use super::data::Series;
use super::{TrainSummary, WorldModelsConfig, resume, stop_if_interrupted};
use crate::{MetricsLog, Progress, RunDir};

/// M's config as trained: the stage's with V's `z_size` and the env's action size.
pub fn mdn_config(cfg: &WorldModelsConfig, series: &[Series]) -> anyhow::Result<MdnRnnConfig> {
    let first = series
        .first()
        .ok_or_else(|| anyhow::anyhow!("no encoded episodes"))?;
    let mut m = cfg.mdnrnn.model.clone();
    m.z_size = first.mu.dim(1)?;
    m.action_size = first.actions.dim(1)?;
    Ok(m)
}

/// Trains M on windows of `seq_len + 1` latents, z sampled from each frame's (μ, σ) afresh
/// every epoch, checkpointing after every epoch; resumes from `mdnrnn.*` when it holds the
/// same architecture and was trained on the same V (the run's `vae` checkpoint). Returns the
/// trained M.
pub fn train_mdn(
    cfg: &WorldModelsConfig,
    series: &[Series],
    run: &RunDir,
    progress: &dyn Progress,
) -> anyhow::Result<(MdnRnn, TrainSummary)> {
    train_mdn_from(cfg, series, run, None, progress)
}

/// Where a round's M starts (the iterative procedure): the last round's M, and what else it
/// is trained on (recorded, so that a change retrains it).
pub(crate) struct MdnStart<'a> {
    /// The checkpoint stem of the M whose weights it starts from.
    pub init: &'a std::path::Path,
    /// What the round trains on besides V: the datasets' fingerprints, the starting M.
    pub trained_on: serde_json::Value,
}

/// [`train_mdn`], starting from `start`'s weights when given and there is nothing to resume.
pub(crate) fn train_mdn_from(
    cfg: &WorldModelsConfig,
    series: &[Series],
    run: &RunDir,
    start: Option<MdnStart<'_>>,
    progress: &dyn Progress,
) -> anyhow::Result<(MdnRnn, TrainSummary)> {
    train_mdn_in(cfg, series, run, run, start, progress)
}

/// [`train_mdn_from`] writing M's checkpoint and metrics into `out` (an ensemble member's
/// folder) while V is `run`'s; M's heads are calibrated only when `out` is `run` itself.
pub(crate) fn train_mdn_in(
    cfg: &WorldModelsConfig,
    series: &[Series],
    run: &RunDir,
    out: &RunDir,
    start: Option<MdnStart<'_>>,
    progress: &dyn Progress,
) -> anyhow::Result<(MdnRnn, TrainSummary)> {
    let mut trained_on = serde_json::json!({
        "vae_crc32": dreamgym_nn::weights_crc32(&run.checkpoint("vae"))?
    });
    if let Some(s) = &start {
        trained_on["round"] = s.trained_on.clone();
    }
    let device = dreamgym_nn::device(&cfg.device)?;
    let stage = &cfg.mdnrnn;
    let mcfg = mdn_config(cfg, series)?;
    let m = MdnRnn::new(
        mcfg.clone(),
        &device,
        derive_seed(cfg.seed, "mdnrnn.init", 0),
    )?;
    let stem = out.checkpoint("mdnrnn");
    let mut opt = Adam::new(
        sorted_vars(m.varmap()),
        AdamConfig {
            lr: stage.lr,
            clip_value: Some(stage.grad_clip),
            ..Default::default()
        },
    )?;
    let mut settings = serde_json::json!({
        "seed": cfg.seed,
        "batch_size": stage.batch_size,
        "seq_len": stage.seq_len,
        "lr": stage.lr,
        "grad_clip": stage.grad_clip,
    });
    // Recorded only when set, so that checkpoints from before it existed still resume.
    if stage.held_out > 0.0 {
        settings["held_out"] = stage.held_out.into();
    }
    let point = resume(
        &stem,
        "mdnrnn",
        &mcfg,
        &settings,
        stage.epochs,
        &trained_on,
        m.varmap(),
        &mut opt,
        progress,
    )?;
    if point.epochs == 0
        && let Some(s) = &start
    {
        dreamgym_nn::load_weights(s.init, m.varmap()).map_err(|e| {
            anyhow::anyhow!(
                "cannot start M from {}: {e}",
                s.init.with_extension("safetensors").display()
            )
        })?;
    }
    let start = point.epochs.min(stage.epochs);
    if start > 0 && start < stage.epochs {
        progress.note(&format!("M: resuming after epoch {start}"));
    }
    let t = stage.seq_len;
    // Non-overlapping windows of every long-enough episode not held out.
    let windows: Vec<(usize, usize)> = series
        .iter()
        .enumerate()
        .filter(|(e, _)| !is_held_out(*e, stage.held_out))
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
    let mut metrics = MetricsLog::open(
        out,
        "mdnrnn",
        &["epoch", "step", "loss", "z_nll", "reward", "done"],
        Some(start as f64),
    )?;
    let batches = windows.len().div_ceil(stage.batch_size);
    progress.begin("train M", ((stage.epochs - start) * batches) as u64);
    let t0 = std::time::Instant::now();
    let (mut steps, mut total_steps, mut seqs, mut last_mean) =
        (0usize, point.steps, 0usize, point.loss);
    for epoch in start..stage.epochs {
        let mut order = windows.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            cfg.seed,
            "mdnrnn.shuffle",
            epoch as u64,
        )));
        let mut noise =
            ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "mdnrnn.noise", epoch as u64));
        let mut sum = 0.0;
        for chunk in order.chunks(stage.batch_size) {
            stop_if_interrupted(progress, "train M", "M", epoch)?;
            let (mut zs, mut acts, mut rews, mut dones) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &(e, s0) in chunk {
                let s = &series[e];
                let mu = s.mu.narrow(0, s0, t + 1)?;
                let sd = (s.logvar.narrow(0, s0, t + 1)? * 0.5)?.exp()?;
                let n: Vec<f32> = (0..(t + 1) * mcfg.z_size)
                    .map(|_| standard_normal(&mut noise))
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
            // On rayon's workers: see `dreamgym_nn::on_workers`.
            let vals = dreamgym_nn::on_workers(|| -> anyhow::Result<[f32; 4]> {
                let loss = m.loss(&batch)?;
                let vals = [&loss.total, &loss.z_nll, &loss.reward, &loss.done]
                    .map(|t| t.to_scalar::<f32>().unwrap_or(f32::NAN));
                anyhow::ensure!(
                    vals[0].is_finite(),
                    "mdnrnn: the loss became {} at epoch {epoch}",
                    vals[0]
                );
                opt.step(loss.total.backward()?)?;
                Ok(vals)
            })?;
            let mut row = vec![epoch as f64, total_steps as f64];
            row.extend(vals.iter().map(|v| *v as f64));
            metrics.push(&row)?;
            sum += vals[0] as f64;
            steps += 1;
            total_steps += 1;
            seqs += chunk.len();
            progress.status(&format!("loss {:.3}", vals[0]));
            progress.advance(1);
        }
        last_mean = sum / batches as f64;
        // Metrics first: a checkpoint never claims an epoch whose rows are not on disk.
        metrics.commit()?;
        dreamgym_nn::save_checkpoint(
            &stem,
            "mdnrnn",
            &mcfg,
            m.varmap(),
            Some(&opt),
            serde_json::json!({
                "epochs_done": epoch + 1,
                "steps_done": total_steps,
                "loss": last_mean,
                "settings": settings,
                "trained_on": trained_on,
            }),
        )?;
    }
    progress.end();
    let calibration = if out.root() == run.root() {
        calibrate(cfg, &m, series, run)?
    } else {
        None
    };
    if let Some(c) = calibration {
        progress.note(&format!(
            "M's heads on {} held-out episodes: reward RMSE {:.3} ({:.3} calibrated), return \
             error {:.1} ({:.1}), done cross-entropy {:.4} ({:.4})",
            c.episodes,
            c.raw.reward_rmse,
            c.calibrated.reward_rmse,
            c.raw.return_error,
            c.calibrated.return_error,
            c.raw.done_bce,
            c.calibrated.done_bce
        ));
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok((
        m,
        TrainSummary {
            epochs: stage.epochs.max(point.epochs),
            resumed_from: point.epochs,
            steps,
            final_loss: last_mean,
            throughput: seqs as f64 / seconds.max(1e-9),
            seconds,
        },
    ))
}
