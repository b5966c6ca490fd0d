//! Stage 1: V learns to reconstruct every recorded frame.

use candle_core::{Device, Tensor};
use dreamgym_base::derive_seed;
use dreamgym_nn::{Adam, AdamConfig, sorted_vars};
use dreamgym_world_model::Vae;
use dreamgym_world_model::mdn::standard_normal;
use dreamgym_world_model::vae::frames_to_tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::agent::check_pixels;
use super::data::PixelData;
use super::{TrainSummary, WorldModelsConfig, resume, stop_if_interrupted};
use crate::{MetricsLog, Progress, RunDir};

/// Trains V on every frame of the dataset, checkpointing (weights and Adam's moments) after
/// every epoch; resumes from `vae.*` when it holds the same architecture. Returns the trained
/// V.
pub fn train_vae(
    cfg: &WorldModelsConfig,
    data: &PixelData,
    run: &RunDir,
    progress: &dyn Progress,
) -> anyhow::Result<(Vae, TrainSummary)> {
    let device = dreamgym_nn::device(&cfg.device)?;
    let stage = &cfg.vae;
    let vae = Vae::new(
        stage.model.clone(),
        &device,
        derive_seed(cfg.seed, "vae.init", 0),
    )?;
    check_pixels(&data.meta.observation_space, &vae)?;
    let stem = run.checkpoint("vae");
    let mut opt = Adam::new(
        sorted_vars(vae.varmap()),
        AdamConfig {
            lr: stage.lr,
            ..Default::default()
        },
    )?;
    let trained_on = serde_json::json!({ "dataset": data.fingerprint });
    let settings = serde_json::json!({
        "seed": cfg.seed,
        "batch_size": stage.batch_size,
        "lr": stage.lr,
    });
    let point = resume(
        &stem,
        "vae",
        &stage.model,
        &settings,
        stage.epochs,
        &trained_on,
        vae.varmap(),
        &mut opt,
        progress,
    )?;
    let start = point.epochs.min(stage.epochs);
    if start > 0 && start < stage.epochs {
        progress.note(&format!("V: resuming after epoch {start}"));
    }
    let c = vae.config().clone();
    let frame_len = c.image_size * c.image_size * c.channels;
    let index: Vec<(usize, usize)> = data
        .episodes
        .iter()
        .enumerate()
        .flat_map(|(e, ep)| (0..ep.frames.len()).map(move |i| (e, i)))
        .collect();
    let mut metrics = MetricsLog::open(
        run,
        "vae",
        &["epoch", "step", "loss", "reconstruction", "kl"],
        Some(start as f64),
    )?;
    let batches = index.len().div_ceil(stage.batch_size);
    progress.begin("train V", ((stage.epochs - start) * batches) as u64);
    let t0 = std::time::Instant::now();
    let (mut steps, mut total_steps, mut last_mean) = (0usize, point.steps, point.loss);
    for epoch in start..stage.epochs {
        let mut order = index.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            cfg.seed,
            "vae.shuffle",
            epoch as u64,
        )));
        let mut noise = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "vae.noise", epoch as u64));
        let mut sum = 0.0;
        for (b, chunk) in order.chunks(stage.batch_size).enumerate() {
            stop_if_interrupted(progress, "train V", "V", epoch)?;
            let mut frames = Vec::with_capacity(chunk.len() * frame_len);
            for &(e, i) in chunk {
                data.episodes[e].frames.decode_into(i..i + 1, &mut frames)?;
            }
            let x = frames_to_tensor(&frames, chunk.len(), c.image_size, c.channels, &device)?;
            let eps: Vec<f32> = (0..chunk.len() * c.z_size)
                .map(|_| standard_normal(&mut noise))
                .collect();
            let eps =
                Tensor::from_vec(eps, (chunk.len(), c.z_size), &Device::Cpu)?.to_device(&device)?;
            // On rayon's workers: see `dreamgym_nn::on_workers`.
            let (l, r, k) = dreamgym_nn::on_workers(|| -> anyhow::Result<(f32, f32, f32)> {
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
                Ok((l, r, k))
            })?;
            metrics.push(&[
                epoch as f64,
                total_steps as f64,
                l as f64,
                r as f64,
                k as f64,
            ])?;
            sum += l as f64;
            steps += 1;
            total_steps += 1;
            progress.status(&format!("loss {l:.1}"));
            progress.advance(1);
        }
        last_mean = sum / batches as f64;
        // Metrics first: a checkpoint never claims an epoch whose rows are not on disk.
        metrics.commit()?;
        dreamgym_nn::save_checkpoint(
            &stem,
            "vae",
            &stage.model,
            vae.varmap(),
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
    let seconds = t0.elapsed().as_secs_f64();
    Ok((
        vae,
        TrainSummary {
            epochs: stage.epochs.max(point.epochs),
            resumed_from: point.epochs,
            steps,
            final_loss: last_mean,
            throughput: ((stage.epochs - start) * index.len()) as f64 / seconds.max(1e-9),
            seconds,
        },
    ))
}
