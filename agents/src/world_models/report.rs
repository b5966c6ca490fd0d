//! Stage 6: `report.md` with figures: originals beside V's reconstructions, a dream decoded to
//! images, learning curves with labelled axes, and the evaluation table.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dreamgym_envs::Env;
use dreamgym_policies::{LinearController, Policy, RandomPolicy};
use dreamgym_world_model::DreamEnv;
use dreamgym_world_model::dream::StartLatent;
use dreamgym_world_model::vae::{frames_to_tensor, tensor_to_frames};

use super::WorldModelsConfig;
use super::agent::WorldModel;
use super::data::PixelData;
use super::evaluate::EvalSummary;
use crate::figures::{LineChart, image_grid_png, line_chart_png};
use crate::metrics::read_csv;
use crate::{RunDir, mean_std};

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

fn column(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h == name)
}

/// Writes `report.md` and `figures/*.png` from what the run holds.
#[allow(clippy::too_many_arguments)]
pub fn report(
    cfg: &WorldModelsConfig,
    data: &PixelData,
    wm: &WorldModel,
    controller: Option<&LinearController>,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    wall_seconds: Option<f64>,
) -> anyhow::Result<PathBuf> {
    let figs = run.figures();
    let vae = &wm.vae;
    let vc = vae.config().clone();
    let device = vae.device().clone();
    let flen = vc.image_size * vc.image_size * vc.channels;
    let write = |name: &str, png: Vec<u8>| dreamgym_base::write_atomic(&figs.join(name), &png);
    let mut md = String::new();
    md.push_str(&format!("# World Models on {}\n\n", data.meta.env_id));
    if let Some(s) = wall_seconds {
        md.push_str(&format!("Wall time of the whole run: {s:.0} s.\n\n"));
    }
    // Originals (top row) and reconstructions (bottom row) from several episodes.
    let mut originals = Vec::new();
    for (i, ep) in data.episodes.iter().enumerate().take(8) {
        let n = ep.frames.len();
        let k = (n / 2 + i * 7) % n;
        let mut frame = Vec::with_capacity(flen);
        ep.frames.decode_into(k..k + 1, &mut frame)?;
        originals.push(frame);
    }
    let x = frames_to_tensor(
        &originals.concat(),
        originals.len(),
        vc.image_size,
        vc.channels,
        &device,
    )?;
    let (mu, _) = vae.encode(&x)?;
    let recon = tensor_to_frames(&vae.decode(&mu)?.detach())?;
    let mut grid = originals.clone();
    grid.extend(recon.chunks(flen).map(|c| c.to_vec()));
    write(
        "reconstructions.png",
        image_grid_png(&grid, vc.image_size, originals.len(), 2, "")?,
    )?;
    md.push_str("## V: originals (top) and reconstructions from μ (bottom)\n\n![](figures/reconstructions.png)\n\n");
    // Learning curves.
    for (name, title, y) in [
        (
            "vae",
            "V: loss per step",
            "loss (squared error + KL, per frame)",
        ),
        (
            "mdnrnn",
            "M: negative log-likelihood of the next z",
            "loss (nats per latent dimension)",
        ),
    ] {
        let (header, rows) = read_csv(&run.metrics(name));
        let (Some(step), Some(loss)) = (column(&header, "step"), column(&header, "loss")) else {
            continue;
        };
        if rows.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r[step], r[loss])).collect();
        let chart = LineChart::new(title, "optimiser step", y)
            .series("loss (5-step moving mean)", smooth(pts, 5));
        write(&format!("{name}_loss.png"), line_chart_png(&chart)?)?;
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        md.push_str(&format!(
            "## {title}\n\n![](figures/{name}_loss.png)\n\nFirst {:.3}, last {:.3}.\n\n",
            first[loss], last[loss]
        ));
        if let (Some(r), Some(d)) = (column(&header, "reward"), column(&header, "done")) {
            md.push_str(&format!(
                "Reward head (squared error): first {:.3}, last {:.3}. Done head (logistic loss): first {:.3}, last {:.3}.\n\n",
                first[r], last[r], first[d], last[d]
            ));
        }
    }
    if let Some(c) = std::fs::read(run.file(super::calibrate::CALIBRATION))
        .ok()
        .and_then(|b| serde_json::from_slice::<super::CalibrationFile>(&b).ok())
    {
        let k = &c.calibration;
        md.push_str(&format!(
            "## M's reward and done heads on {} held-out episodes ({} steps)\n\n\
             | heads | reward RMSE per step | return error per episode | done cross-entropy | \
             mean done probability |\n|---|---|---|---|---|\n\
             | as trained | {:.3} | {:.1} | {:.4} | {:.4} |\n\
             | calibrated | {:.3} | {:.1} | {:.4} | {:.4} |\n\n\
             Calibration (fitted on the same episodes): reward × {:.3} {:+.3}; done logit × \
             {:.3} {:+.3}{}.\n\n",
            c.episodes,
            c.steps,
            c.raw.reward_rmse,
            c.raw.return_error,
            c.raw.done_bce,
            c.raw.done_rate,
            c.calibrated.reward_rmse,
            c.calibrated.return_error,
            c.calibrated.done_bce,
            c.calibrated.done_rate,
            k.reward_scale,
            k.reward_offset,
            k.done_scale,
            k.done_offset,
            if cfg.controller.dream.calibrated {
                "; the dream reads the heads through it"
            } else {
                "; the dream reads the heads as trained"
            }
        ));
    }
    let (_, rows) = read_csv(&run.metrics("controller"));
    if !rows.is_empty() && rows[0].len() >= 3 {
        let chart = LineChart::new(
            format!(
                "C: CMA-ES fitness per generation ({})",
                if cfg.controller.in_dream {
                    "in the dream"
                } else {
                    "in the real env"
                }
            ),
            "generation",
            "mean return over the rollouts",
        )
        .series(
            "population mean",
            rows.iter().map(|r| (r[0], r[1])).collect(),
        )
        .series(
            "best candidate",
            rows.iter().map(|r| (r[0], r[2])).collect(),
        );
        write("controller.png", line_chart_png(&chart)?)?;
        let last = &rows[rows.len() - 1];
        md.push_str(&format!(
            "## C: CMA-ES fitness per generation\n\n![](figures/controller.png)\n\nLast generation: mean {:.1}, best {:.1}.\n\n",
            last[1], last[2]
        ));
    }
    // A dream decoded to images, driven by C when there is one, else by random actions.
    if !starts.is_empty() {
        let mut env = DreamEnv::new(
            wm.mdn.clone(),
            starts.clone(),
            data.meta.action_space.clone(),
            cfg.controller.dream.clone(),
        )?;
        let seed = dreamgym_base::derive_seed(cfg.seed, "report.dream", 0);
        let mut policy: Box<dyn Policy> = match controller {
            Some(c) => Box::new(c.clone()),
            None => Box::new(RandomPolicy::new(data.meta.action_space.clone(), seed)),
        };
        let (mut obs, _) = env.reset(Some(seed), &Default::default())?;
        policy.reset(seed)?;
        let mut latents = vec![env.latent().to_vec()];
        for _ in 0..31 {
            let s = env.step(&policy.act(&obs)?)?;
            latents.push(env.latent().to_vec());
            let done = s.done();
            obs = s.obs;
            if done {
                break;
            }
        }
        let z = Tensor::from_vec(latents.concat(), (latents.len(), vc.z_size), &Device::Cpu)?
            .to_device(&device)?;
        let frames = tensor_to_frames(&vae.decode(&z)?.detach())?;
        let imgs: Vec<Vec<u8>> = frames.chunks(flen).map(|c| c.to_vec()).collect();
        write("dream.png", image_grid_png(&imgs, vc.image_size, 8, 2, "")?)?;
        md.push_str(&format!(
            "## A dream: {} of M's imagined steps decoded by V (τ = {})\n\n![](figures/dream.png)\n\n",
            imgs.len(),
            cfg.controller.dream.temperature
        ));
    }
    if let Ok(bytes) = std::fs::read(run.file("eval.json")) {
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
    md.push_str("Every curve is also in `metrics/*.csv` and, for TensorBoard, in `tb/` (`tensorboard --logdir runs/`).\n");
    let path = run.file("report.md");
    dreamgym_base::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}
