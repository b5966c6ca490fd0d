//! The World Models pipeline in order, each stage loading what it needs once: in one process
//! the dataset is decoded once and V and M are handed from stage to stage, not reloaded.

use std::path::PathBuf;
use std::sync::Arc;

use dreamgym_envs::Registry;
use dreamgym_world_model::dream::StartLatent;

use super::agent::WorldModel;
use super::data::{PixelData, Series, dataset_meta, load_series, start_latents};
use super::encode::encode;
use super::ensemble::train_ensemble;
use super::evaluate::{EvalSummary, evaluate};
use super::report::report;
use super::saved::{ControllerFile, load_vae, load_world_model};
use super::train_controller::train_controller;
use super::train_mdn::train_mdn;
use super::train_vae::train_vae;
use super::{TrainSummary, WorldModelsConfig};
use crate::{Interrupted, Progress, RunDir, mean_std};

/// Which part of the pipeline to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Train V.
    Vae,
    /// Encode the frames with V, then train M.
    Mdn,
    /// Train C.
    Controller,
    /// Evaluate C, then write the report.
    Eval,
    /// Everything, in order.
    All,
}

/// What the stages that ran did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// V's training.
    pub vae: Option<TrainSummary>,
    /// Frames encoded.
    pub encoded_frames: Option<usize>,
    /// M's training.
    pub mdn: Option<TrainSummary>,
    /// C.
    pub controller: Option<ControllerFile>,
    /// The evaluation.
    pub eval: Option<EvalSummary>,
    /// The report.
    pub report: Option<PathBuf>,
    /// The rounds of the iterative procedure, round 0 (the first C) first.
    pub rounds: Option<Vec<super::RoundSummary>>,
}

fn train_line(name: &str, s: &TrainSummary, unit: &str) -> String {
    if s.steps == 0 {
        return format!(
            "{name}: already done (epoch {}, loss {:.4})",
            s.epochs, s.final_loss
        );
    }
    let resumed = if s.resumed_from > 0 {
        format!(" (resumed after epoch {})", s.resumed_from)
    } else {
        String::new()
    };
    format!(
        "{name}: {} epochs{resumed}, {} steps, final epoch loss {:.4}, {:.1} {unit}, {:.1} s",
        s.epochs, s.steps, s.final_loss, s.throughput, s.seconds
    )
}

fn series_frames(series: &[Series]) -> usize {
    series.iter().map(|s| s.mu.dim(0).unwrap_or(0)).sum()
}

fn starts_of(run: &RunDir) -> anyhow::Result<Arc<Vec<StartLatent>>> {
    let path = run.file("series.safetensors");
    Ok(Arc::new(if path.exists() {
        start_latents(&load_series(&path)?)?
    } else {
        Vec::new()
    }))
}

/// Runs `stage` of the World Models pipeline on the run folder `run` (dataset in
/// `<run>/data`), reporting through `progress`. `started` is when the whole run began (for
/// the report's wall time).
pub fn run_world_models(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    registry: &Registry,
    stage: Stage,
    progress: &dyn Progress,
    started: Option<std::time::Instant>,
) -> anyhow::Result<Outcome> {
    cfg.validate()?;
    let device = dreamgym_nn::device(&cfg.device)?;
    let mut out = Outcome::default();
    match stage {
        Stage::Vae => {
            let data = PixelData::load(&run.data(), progress)?;
            let (_, s) = train_vae(cfg, &data, run, progress)?;
            progress.done(&train_line("V", &s, "frames/s"));
            out.vae = Some(s);
        }
        Stage::Mdn => {
            let data = PixelData::load(&run.data(), progress)?;
            let vae = load_vae(run, &device)?;
            encode_and_train_mdn(cfg, &data, &vae, run, progress, &mut out)?;
        }
        Stage::Controller => {
            let meta = dataset_meta(&run.data())?;
            let wm = load_world_model(run, &device)?;
            let starts = if cfg.controller.in_dream {
                starts_of(run)?
            } else {
                Arc::new(Vec::new())
            };
            let (c, ran) = train_controller(cfg, &meta, &wm, &starts, run, registry, progress)?;
            if ran {
                progress.done(&controller_line(&c));
            }
            out.controller = Some(c);
        }
        Stage::Eval => {
            let data = PixelData::load(&run.data(), progress)?;
            let wm = load_world_model(run, &device)?;
            let file = ControllerFile::read(&run.file("controller.json"))?;
            file.check_fits(run)?;
            let c = file.controller(&data.meta)?;
            let starts = starts_of(run)?;
            eval_and_report(
                cfg, &data, &wm, &file, &c, &starts, run, registry, progress, None, &mut out,
            )?;
        }
        Stage::All => {
            let data = PixelData::load(&run.data(), progress)?;
            let (vae, s) = train_vae(cfg, &data, run, progress)?;
            progress.done(&train_line("V", &s, "frames/s"));
            out.vae = Some(s);
            let (mdn, starts) = encode_and_train_mdn(cfg, &data, &vae, run, progress, &mut out)?;
            let starts = Arc::new(starts);
            let wm = WorldModel {
                vae: Arc::new(vae),
                mdn: Arc::new(mdn),
            };
            let (file, ran) =
                train_controller(cfg, &data.meta, &wm, &starts, run, registry, progress)?;
            if ran {
                progress.done(&controller_line(&file));
            }
            let c = file.controller(&data.meta)?;
            out.controller = Some(file.clone());
            let wall = started.map(|t| t.elapsed().as_secs_f64());
            eval_and_report(
                cfg, &data, &wm, &file, &c, &starts, run, registry, progress, wall, &mut out,
            )?;
            if cfg.iterate.rounds > 0 {
                drop(data);
                out.rounds = Some(super::run_rounds(cfg, run, registry, &wm, progress)?);
            }
        }
    }
    Ok(out)
}

/// Encodes the dataset with V, then trains M on the series; returns M and the dream's
/// starting latents.
fn encode_and_train_mdn(
    cfg: &WorldModelsConfig,
    data: &PixelData,
    vae: &dreamgym_world_model::Vae,
    run: &RunDir,
    progress: &dyn Progress,
    out: &mut Outcome,
) -> anyhow::Result<(dreamgym_world_model::MdnRnn, Vec<StartLatent>)> {
    let series = encode(data, vae, run, progress)?;
    progress.done(&format!("encoded {} frames", series_frames(&series)));
    out.encoded_frames = Some(series_frames(&series));
    let (mdn, s) = train_mdn(cfg, &series, run, progress)?;
    progress.done(&train_line("M", &s, "sequences/s"));
    out.mdn = Some(s);
    for (k, s) in train_ensemble(cfg, &series, run, None, progress)?
        .iter()
        .enumerate()
    {
        progress.done(&train_line(
            &format!("M's ensemble member {}", k + 1),
            s,
            "sequences/s",
        ));
    }
    Ok((mdn, start_latents(&series)?))
}

/// Evaluates C and writes the report, unless both are already done for this C (with this V
/// and M) and these eval settings.
#[allow(clippy::too_many_arguments)]
pub(super) fn eval_and_report(
    cfg: &WorldModelsConfig,
    data: &PixelData,
    wm: &WorldModel,
    file: &ControllerFile,
    c: &dreamgym_policies::LinearController,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
    wall: Option<f64>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let made_by = serde_json::json!({
        "controller": format!("{:08x}", crc32fast::hash(&serde_json::to_vec(&file.params)?)),
        "trained_with": file.trained_with,
        "in_dream": file.in_dream,
        "seed": cfg.seed,
        "eval": cfg.eval,
    });
    let report_path = run.file("report.md");
    let saved = std::fs::read(run.file("eval.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<EvalSummary>(&b).ok())
        .filter(|e| e.made_by.as_ref() == Some(&made_by) && report_is_whole(&report_path));
    if let Some(e) = saved {
        progress.done(&format!("{} (already done)", eval_line(&e)));
        out.eval = Some(e);
        out.report = Some(report_path);
        return Ok(());
    }
    let mut e = evaluate(
        cfg,
        &data.meta,
        wm,
        c,
        file.in_dream,
        starts,
        run,
        registry,
        progress,
    )
    .map_err(|e| {
        if e.is::<Interrupted>() {
            Interrupted {
                stage: "evaluate".into(),
                saved: "V, M and C are saved; the evaluation is not kept in part, so running \
                        again evaluates from its first episode"
                    .into(),
            }
            .into()
        } else {
            e
        }
    })?;
    e.made_by = Some(made_by);
    dreamgym_base::write_atomic(&run.file("eval.json"), &serde_json::to_vec_pretty(&e)?)?;
    progress.done(&eval_line(&e));
    out.eval = Some(e);
    let r = report(cfg, data, wm, Some(c), starts, run, wall)?;
    progress.done(&format!(
        "report: {}{}",
        r.display(),
        wall.map(|w| format!(" ({w:.0} s in all)"))
            .unwrap_or_default()
    ));
    out.report = Some(r);
    Ok(())
}

/// Whether the report exists with every figure it shows.
fn report_is_whole(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .all(|link| dir.join(link).exists())
}

fn controller_line(c: &ControllerFile) -> String {
    format!(
        "C: {} generations {}, {}",
        c.generations,
        if c.in_dream {
            "in the dream"
        } else {
            "in the real env"
        },
        c.score_line()
    )
}

fn eval_line(e: &EvalSummary) -> String {
    let (cm, cs) = mean_std(&e.controller);
    let (rm, rs) = mean_std(&e.random);
    let mut line = format!(
        "eval on {} seeds of {}: C {cm:.1} ± {cs:.1}, random {rm:.1} ± {rs:.1}",
        e.controller.len(),
        e.env
    );
    if let Some(d) = &e.dream {
        let (dm, ds) = mean_std(d);
        line.push_str(&format!(
            "; C in the dream (M's predicted reward): {dm:.1} ± {ds:.1}"
        ));
    }
    line
}
