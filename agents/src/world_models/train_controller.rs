//! Stage 4: C, trained with CMA-ES in the real env (acting through V and M) or in M's dream.

use std::sync::Arc;

use dreamgym_base::derive_seed;
use dreamgym_envs::recording::DatasetMeta;
use dreamgym_envs::{Env, Registry};
use dreamgym_policies::{CmaEs, LinearController, Policy};
use dreamgym_world_model::DreamEnv;
use dreamgym_world_model::dream::StartLatent;

use super::WorldModelsConfig;
use super::agent::{WorldModel, WorldModelsAgent, check_pixels};
use super::data::{action_size, make_env};
use super::saved::{ControllerFile, TrainedWith};
use crate::progress::StopOnly;
use crate::{Interrupted, MetricsLog, Progress, RunDir, run_jobs};

/// `n` envs to run C's episodes in: the real env, or M's dream started from `starts`.
pub(crate) fn arenas(
    n: usize,
    in_dream: bool,
    cfg: &WorldModelsConfig,
    registry: &Registry,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
) -> anyhow::Result<Vec<Box<dyn Env>>> {
    (0..n)
        .map(|_| -> anyhow::Result<Box<dyn Env>> {
            if in_dream {
                Ok(Box::new(DreamEnv::new(
                    wm.mdn.clone(),
                    starts.clone(),
                    meta.action_space.clone(),
                    cfg.controller.dream.clone(),
                )?))
            } else {
                make_env(registry, meta)
            }
        })
        .collect()
}

/// C as a policy for its arena: acting through V and M in the real env, or directly on the
/// dream's `[z, h]` observations.
pub(crate) fn controller_policy(
    c: &LinearController,
    in_dream: bool,
    wm: &WorldModel,
) -> anyhow::Result<Box<dyn Policy>> {
    Ok(if in_dream {
        Box::new(c.clone())
    } else {
        Box::new(WorldModelsAgent::new(wm, c)?)
    })
}

/// Trains C with CMA-ES; fitness is the mean return over `rollouts` episodes, the same seeds
/// for every candidate of a generation. Writes `controller.json` and returns it.
#[allow(clippy::too_many_arguments)]
pub fn train_controller(
    cfg: &WorldModelsConfig,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<ControllerFile> {
    check_pixels(&meta.observation_space, &wm.vae)?;
    let stage = &cfg.controller;
    anyhow::ensure!(
        !stage.in_dream || !starts.is_empty(),
        "training in the dream needs the encoded series (run the encode stage first)"
    );
    let mut envs = arenas(
        stage.workers,
        stage.in_dream,
        cfg,
        registry,
        meta,
        wm,
        starts,
    )?;
    let inputs = wm.feature_size();
    let n = LinearController::param_count(inputs, action_size(meta)?);
    let mut es_cfg = stage.cmaes.clone();
    es_cfg.seed = derive_seed(cfg.seed, "controller.cmaes", stage.cmaes.seed);
    let mut es = CmaEs::new(&vec![0.0; n], &es_cfg)?;
    let mut metrics = MetricsLog::open(
        run,
        "controller",
        &["generation", "mean", "max", "min", "sigma"],
        None,
    )?;
    progress.begin("train C", stage.generations as u64);
    for g in 0..stage.generations {
        if progress.interrupted() {
            progress.end();
            return Err(Interrupted {
                stage: "train C".into(),
                saved: format!("nothing (CMA-ES does not resume yet; {g} generations lost)"),
            }
            .into());
        }
        let xs = es.ask();
        let policies = xs
            .iter()
            .map(|x| {
                let c = LinearController::new(
                    inputs,
                    &meta.action_space,
                    x.iter().map(|v| *v as f32).collect(),
                )?;
                controller_policy(&c, stage.in_dream, wm)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&dyn Policy> = policies.iter().map(|p| p.as_ref()).collect();
        let seeds: Vec<u64> = (0..stage.rollouts as u64)
            .map(|r| {
                derive_seed(
                    cfg.seed,
                    "controller.episodes",
                    g as u64 * stage.rollouts as u64 + r,
                )
            })
            .collect();
        let jobs: Vec<(usize, u64)> = (0..xs.len())
            .flat_map(|c| seeds.iter().map(move |s| (c, *s)))
            .collect();
        let returns: Vec<f64> = run_jobs(
            &mut envs,
            &refs,
            &jobs,
            stage.max_steps,
            &StopOnly(progress),
        )
        .map_err(|e| {
            progress.end();
            if progress.interrupted() {
                Interrupted {
                    stage: "train C".into(),
                    saved: format!("nothing (CMA-ES does not resume yet; {g} generations lost)"),
                }
                .into()
            } else {
                e
            }
        })?
        .iter()
        .map(|s| s.total_return)
        .collect();
        let fitness: Vec<f64> = returns
            .chunks(stage.rollouts)
            .map(|r| r.iter().sum::<f64>() / r.len() as f64)
            .collect();
        es.tell(&fitness)?;
        let mean = fitness.iter().sum::<f64>() / fitness.len() as f64;
        let max = fitness.iter().cloned().fold(f64::MIN, f64::max);
        let min = fitness.iter().cloned().fold(f64::MAX, f64::min);
        metrics.push(&[g as f64, mean, max, min, es.sigma()])?;
        metrics.commit()?;
        progress.status(&format!("best {max:.1} mean {mean:.1}"));
        progress.advance(1);
    }
    progress.end();
    let (best_fitness, best) = es
        .best()
        .ok_or_else(|| anyhow::anyhow!("CMA-ES told no generation"))?;
    let file = ControllerFile {
        in_dream: stage.in_dream,
        inputs,
        params: best.iter().map(|v| *v as f32).collect(),
        best_fitness,
        generations: stage.generations,
        trained_with: Some(TrainedWith::of_run(run)?),
    };
    file.write(&run.file("controller.json"))?;
    Ok(file)
}
