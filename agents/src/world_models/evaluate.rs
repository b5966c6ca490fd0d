//! Stage 5: C in the real env on fixed seeds, beside a random policy on the same seeds, and in
//! the dream when M predicts rewards.

use std::sync::Arc;

use dreamgym_envs::Registry;
use dreamgym_envs::recording::DatasetMeta;
use dreamgym_policies::{LinearController, Policy, RandomPolicy};
use dreamgym_world_model::dream::StartLatent;
use serde::{Deserialize, Serialize};

use super::WorldModelsConfig;
use super::agent::WorldModel;
use super::train_controller::{DreamSetup, arenas, controller_policy, dream_setup};
use crate::{Progress, RunDir, run_jobs};

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
    /// What the numbers were made from (C's parameters, the V and M it acts through, the eval
    /// settings): an evaluation is done only while these still hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<serde_json::Value>,
}

/// Evaluates C in the real env on `eval.episodes` seeds beside a random policy (and in the
/// dream when M predicts rewards and `starts` is not empty), on `controller.workers` threads.
/// Writes `eval.json`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    cfg: &WorldModelsConfig,
    meta: &DatasetMeta,
    wm: &WorldModel,
    controller: &LinearController,
    trained_in_dream: bool,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<EvalSummary> {
    let e = &cfg.eval;
    let workers = cfg.controller.workers;
    let agent = controller_policy(controller, false, wm)?;
    let random = RandomPolicy::new(
        meta.action_space.clone(),
        dreamgym_base::derive_seed(cfg.seed, "eval.random", 0),
    );
    let policies: [&dyn Policy; 2] = [agent.as_ref(), &random];
    let seeds: Vec<u64> = (0..e.episodes as u64).map(|i| e.seed + i).collect();
    let jobs: Vec<(usize, u64)> = (0..2)
        .flat_map(|p| seeds.iter().map(move |s| (p, *s)))
        .collect();
    let dream = wm.mdn.config().reward_head && !starts.is_empty();
    progress.begin(
        "evaluate",
        (jobs.len() + if dream { seeds.len() } else { 0 }) as u64,
    );
    let mut real = arenas(
        workers,
        false,
        cfg,
        registry,
        meta,
        wm,
        starts,
        &DreamSetup::default(),
    )?;
    let returns: Vec<f64> = run_jobs(&mut real, &policies, &jobs, e.max_steps, progress)
        .inspect_err(|_| progress.end())?
        .iter()
        .map(|s| s.total_return)
        .collect();
    let (controller_returns, random_returns) = returns.split_at(seeds.len());
    let dream = if dream {
        let setup = dream_setup(cfg, run, wm)?;
        let mut envs = arenas(workers, true, cfg, registry, meta, wm, starts, &setup)?;
        let c = controller_policy(controller, true, wm)?;
        let jobs: Vec<(usize, u64)> = seeds.iter().map(|s| (0, *s)).collect();
        Some(
            run_jobs(&mut envs, &[c.as_ref()], &jobs, e.max_steps, progress)
                .inspect_err(|_| progress.end())?
                .iter()
                .map(|s| s.total_return)
                .collect(),
        )
    } else {
        None
    };
    progress.end();
    let summary = EvalSummary {
        env: meta.env_id.clone(),
        seeds: (e.seed, e.seed + e.episodes as u64),
        controller: controller_returns.to_vec(),
        random: random_returns.to_vec(),
        dream,
        trained_in_dream,
        made_by: None,
    };
    dreamgym_base::write_atomic(
        &run.file("eval.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}
