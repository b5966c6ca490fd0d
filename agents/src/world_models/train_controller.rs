//! Stage 4: C, trained with CMA-ES in the real env (acting through V and M) or in M's dream.

use std::sync::Arc;

use dreamgym_base::derive_seed;
use dreamgym_envs::recording::DatasetMeta;
use dreamgym_envs::{Env, Registry};
use dreamgym_policies::{CmaEs, CmaEsState, LinearController, Policy};
use dreamgym_world_model::dream::{Halting, StartLatent};
use dreamgym_world_model::{Calibration, DreamEnv};
use serde::{Deserialize, Serialize};

use super::WorldModelsConfig;
use super::agent::{WorldModel, WorldModelsAgent, check_pixels};
use super::calibrate::dream_calibration;
use super::data::{action_size, make_env};
use super::ensemble::dream_halting;
use super::saved::{ControllerFile, TrainedWith};
use crate::progress::StopOnly;
use crate::{Interrupted, MetricsLog, Progress, RunDir, run_jobs};

/// What the dream reads besides M: the calibration of its heads and the ensemble that halts
/// it, when the config asks for them.
#[derive(Clone, Default)]
pub(crate) struct DreamSetup {
    pub calibration: Option<Calibration>,
    pub halting: Option<Halting>,
}

/// The dream's calibration and halting for the run's M, as `cfg` asks.
pub(crate) fn dream_setup(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    wm: &WorldModel,
) -> anyhow::Result<DreamSetup> {
    Ok(DreamSetup {
        calibration: dream_calibration(cfg, run)?,
        halting: dream_halting(cfg, run, wm.mdn.device())?,
    })
}

/// `n` envs to run C's episodes in: the real env, or M's dream started from `starts` (read
/// through `dream`'s calibration and halted by its ensemble, when given).
#[allow(clippy::too_many_arguments)]
pub(crate) fn arenas(
    n: usize,
    in_dream: bool,
    cfg: &WorldModelsConfig,
    registry: &Registry,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
    dream: &DreamSetup,
) -> anyhow::Result<Vec<Box<dyn Env>>> {
    (0..n)
        .map(|_| -> anyhow::Result<Box<dyn Env>> {
            if in_dream {
                Ok(Box::new(dream_env(cfg, meta, wm, starts, dream)?))
            } else {
                make_env(registry, meta)
            }
        })
        .collect()
}

/// M's dream started from `starts`, read through `dream`'s calibration and halted by its
/// ensemble, when given.
pub(crate) fn dream_env(
    cfg: &WorldModelsConfig,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
    dream: &DreamSetup,
) -> anyhow::Result<DreamEnv> {
    let mut env = DreamEnv::new(
        wm.mdn.clone(),
        starts.clone(),
        meta.action_space.clone(),
        cfg.controller.dream.clone(),
    )?
    .with_calibration(dream.calibration.unwrap_or(Calibration::IDENTITY));
    if let Some(h) = &dream.halting {
        env = env.with_halting(h.clone())?;
    }
    Ok(env)
}

/// Episodes that share one batch of [`DreamEnv::run_batch`]. Fixed, so that which episodes
/// share a batch (and so how their products round) does not depend on `workers`.
const DREAM_BATCH: usize = 64;

/// The returns of `jobs` (controller, seed) in `env`, run as batches of [`DREAM_BATCH`]
/// episodes spread over `workers` threads.
pub(crate) fn dream_returns(
    env: &DreamEnv,
    controllers: &[LinearController],
    jobs: &[(usize, u64)],
    max_steps: u64,
    workers: usize,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<f64>> {
    if let Some((p, _)) = jobs.iter().find(|(p, _)| *p >= controllers.len()) {
        anyhow::bail!("job names controller {p} of {}", controllers.len());
    }
    let chunks: Vec<&[(usize, u64)]> = jobs.chunks(DREAM_BATCH).collect();
    let workers = workers.clamp(1, chunks.len().max(1));
    let mut returns = vec![0.0; jobs.len()];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let chunks = &chunks;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<Vec<(usize, Vec<f64>)>> {
                    let mut out = Vec::new();
                    for (i, chunk) in chunks.iter().enumerate().skip(w).step_by(workers) {
                        if progress.interrupted() {
                            return Err(Interrupted {
                                stage: "dream episodes".into(),
                                saved: "nothing from the episodes in flight".into(),
                            }
                            .into());
                        }
                        let seeds: Vec<u64> = chunk.iter().map(|(_, s)| *s).collect();
                        let episodes = env.run_batch(&seeds, max_steps, &mut |e, obs, a| {
                            controllers[chunk[e].0].act_into(obs, a)
                        })?;
                        out.push((i, episodes.iter().map(|e| e.total_return).collect()));
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h
                .join()
                .map_err(|_| anyhow::anyhow!("a dream thread panicked"))??
            {
                returns[i * DREAM_BATCH..i * DREAM_BATCH + r.len()].copy_from_slice(&r);
            }
        }
        Ok(())
    })?;
    Ok(returns)
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
/// for every candidate of a generation. Saves CMA-ES's state after every generation (and
/// resumes from it exactly), writes `controller.json` at the end, and returns it with whether
/// any generation ran (false: it was already done with this V, M and settings).
#[allow(clippy::too_many_arguments)]
pub fn train_controller(
    cfg: &WorldModelsConfig,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<(ControllerFile, bool)> {
    train_controller_from(cfg, meta, wm, starts, run, registry, None, progress)
}

/// [`train_controller`] with CMA-ES's first mean at `init` (the last round's C) instead of 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_controller_from(
    cfg: &WorldModelsConfig,
    meta: &DatasetMeta,
    wm: &WorldModel,
    starts: &Arc<Vec<StartLatent>>,
    run: &RunDir,
    registry: &Registry,
    init: Option<&[f32]>,
    progress: &dyn Progress,
) -> anyhow::Result<(ControllerFile, bool)> {
    check_pixels(&meta.observation_space, &wm.vae)?;
    let stage = &cfg.controller;
    anyhow::ensure!(
        !stage.in_dream || !starts.is_empty(),
        "training in the dream needs the encoded series (run the encode stage first)"
    );
    let dream = if stage.in_dream {
        let d = dream_setup(cfg, run, wm)?;
        if let Some(h) = &d.halting {
            progress.note(&format!(
                "C: the dream ends where M's {} members disagree more than on {:.1}% of the \
                 held-out steps (> {:.4}), with reward {}",
                h.members.len() + 1,
                100.0 * stage.dream.halt_quantile,
                h.threshold,
                h.reward
            ));
        }
        d
    } else {
        DreamSetup::default()
    };
    // In the dream, all of a generation's episodes step as batches through one DreamEnv; in
    // the real env, one env per worker.
    let dream_env = if stage.in_dream {
        Some(dream_env(cfg, meta, wm, starts, &dream)?)
    } else {
        None
    };
    let mut envs = match dream_env {
        Some(_) => Vec::new(),
        None => arenas(
            stage.workers,
            false,
            cfg,
            registry,
            meta,
            wm,
            starts,
            &dream,
        )?,
    };
    let inputs = wm.feature_size();
    let n = LinearController::param_count(inputs, action_size(meta)?);
    let mut es_cfg = stage.cmaes.clone();
    es_cfg.seed = derive_seed(cfg.seed, "controller.cmaes", stage.cmaes.seed);
    let trained_with = TrainedWith::of_run(run)?;
    let made_by = ControllerCheckpoint::made_by(cfg, trained_with, init);
    let state_path = run.file(CHECKPOINT);
    let saved = ControllerCheckpoint::read(&state_path, &made_by, stage.generations, progress)?;
    if let Some(cp) = &saved
        && cp.generations == stage.generations
        && let Ok(file) = ControllerFile::read(&run.file("controller.json"))
        && file.trained_with == Some(trained_with)
        && file.generations == stage.generations
    {
        progress.done(&format!(
            "C: already done (generation {}, {})",
            file.generations,
            file.score_line()
        ));
        return Ok((file, false));
    }
    let mut selected = saved.as_ref().and_then(|cp| cp.selected.clone());
    let (mut es, start) = match saved {
        Some(cp) => {
            progress.note(&format!("C: resuming after generation {}", cp.generations));
            (CmaEs::restore(&es_cfg, &cp.es)?, cp.generations)
        }
        None => {
            let mean: Vec<f64> = match init {
                Some(p) => {
                    anyhow::ensure!(
                        p.len() == n,
                        "the controller to start from has {} parameters, this C has {n}",
                        p.len()
                    );
                    p.iter().map(|v| *v as f64).collect()
                }
                None => vec![0.0; n],
            };
            (CmaEs::new(&mean, &es_cfg)?, 0)
        }
    };
    let mut metrics = MetricsLog::open(
        run,
        "controller",
        &["generation", "mean", "max", "min", "sigma"],
        Some(start as f64),
    )?;
    progress.begin("train C", (stage.generations - start) as u64);
    let interrupted = |g: usize| Interrupted {
        stage: "train C".into(),
        saved: if g == 0 {
            "no generation of C had finished, so nothing was saved".into()
        } else {
            format!("C's CMA-ES state is saved after generation {g}; run again to resume")
        },
    };
    // The returns of `jobs` (controller, seed): batched in the dream, one env per worker in
    // the real env.
    let score = |controllers: &[LinearController],
                 jobs: &[(usize, u64)],
                 envs: &mut Vec<Box<dyn Env>>|
     -> anyhow::Result<Vec<f64>> {
        match &dream_env {
            Some(env) => dream_returns(
                env,
                controllers,
                jobs,
                stage.max_steps,
                stage.workers,
                progress,
            ),
            None => {
                let policies = controllers
                    .iter()
                    .map(|c| controller_policy(c, false, wm))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let refs: Vec<&dyn Policy> = policies.iter().map(|p| p.as_ref()).collect();
                let stats = run_jobs(envs, &refs, jobs, stage.max_steps, &StopOnly(progress))?;
                Ok(stats.iter().map(|s| s.total_return).collect())
            }
        }
    };
    // The selection's episodes: the same seeds every time, from a stream of their own.
    let select_jobs: Vec<(usize, u64)> = (0..stage.select_rollouts as u64)
        .map(|r| (0, derive_seed(cfg.seed, "controller.select", r)))
        .collect();
    let mut selection_log = if stage.select_every > 0 {
        Some(MetricsLog::open(
            run,
            "controller_selection",
            &["generation", "score"],
            Some(start as f64),
        )?)
    } else {
        None
    };
    for g in start..stage.generations {
        if progress.interrupted() {
            progress.end();
            return Err(interrupted(g).into());
        }
        let xs = es.ask();
        let controllers = xs
            .iter()
            .map(|x| {
                LinearController::new(
                    inputs,
                    &meta.action_space,
                    x.iter().map(|v| *v as f32).collect(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
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
        let fail = |e: anyhow::Error| -> anyhow::Error {
            progress.end();
            if progress.interrupted() {
                interrupted(g).into()
            } else {
                e
            }
        };
        let returns = score(&controllers, &jobs, &mut envs).map_err(fail)?;
        let fitness: Vec<f64> = returns
            .chunks(stage.rollouts)
            .map(|r| r.iter().sum::<f64>() / r.len() as f64)
            .collect();
        es.tell(&fitness)?;
        if let Some(log) = selection_log.as_mut()
            && ((g + 1) % stage.select_every == 0 || g + 1 == stage.generations)
        {
            let params = es.mean();
            let c = LinearController::new(
                inputs,
                &meta.action_space,
                params.iter().map(|v| *v as f32).collect(),
            )?;
            let returns = score(&[c], &select_jobs, &mut envs).map_err(fail)?;
            let value = returns.iter().sum::<f64>() / returns.len() as f64;
            log.push(&[g as f64, value])?;
            log.commit()?;
            if selected.as_ref().is_none_or(|s: &Selected| value > s.score) {
                selected = Some(Selected {
                    generation: g + 1,
                    score: value,
                    params,
                });
            }
        }
        let mean = fitness.iter().sum::<f64>() / fitness.len() as f64;
        let max = fitness.iter().cloned().fold(f64::MIN, f64::max);
        let min = fitness.iter().cloned().fold(f64::MAX, f64::min);
        metrics.push(&[g as f64, mean, max, min, es.sigma()])?;
        // Metrics first: a checkpoint never claims a generation whose row is not on disk.
        metrics.commit()?;
        ControllerCheckpoint {
            made_by: made_by.clone(),
            generations: g + 1,
            es: es.state(),
            selected: selected.clone(),
        }
        .write(&state_path)?;
        progress.status(&format!("best {max:.1} mean {mean:.1}"));
        progress.advance(1);
    }
    progress.end();
    let (best_fitness, best, selected_after) = match &selected {
        Some(s) => (s.score, s.params.as_slice(), Some(s.generation)),
        None => {
            let (f, p) = es
                .best()
                .ok_or_else(|| anyhow::anyhow!("CMA-ES told no generation"))?;
            (f, p, None)
        }
    };
    let file = ControllerFile {
        in_dream: stage.in_dream,
        inputs,
        params: best.iter().map(|v| *v as f32).collect(),
        best_fitness,
        generations: stage.generations,
        selected_after,
        trained_with: Some(trained_with),
    };
    file.write(&run.file("controller.json"))?;
    Ok((file, true))
}

/// The file C's CMA-ES state is saved in after every generation.
pub(crate) const CHECKPOINT: &str = "controller.state.json";

/// CMA-ES between generations, with what it was made from: resumed only when the same V, M
/// and settings (all but `generations` and `workers`, which do not change the result) would
/// make it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ControllerCheckpoint {
    made_by: serde_json::Value,
    generations: usize,
    es: CmaEsState,
    /// The best-scoring mean so far, with `controller.select_every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selected: Option<Selected>,
}

/// A CMA-ES mean scored on the selection episodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Selected {
    /// Generations done when it was scored.
    generation: usize,
    /// Its mean return on the selection episodes.
    score: f64,
    params: Vec<f64>,
}

impl ControllerCheckpoint {
    /// What made the checkpoint: the seed, C's settings, V and M, and the C that CMA-ES
    /// started from (named only when there is one, so checkpoints from before it still match).
    fn made_by(
        cfg: &WorldModelsConfig,
        trained_with: TrainedWith,
        init: Option<&[f32]>,
    ) -> serde_json::Value {
        let mut settings = cfg.controller.clone();
        settings.generations = 0;
        settings.workers = 0;
        let mut made_by = serde_json::json!({
            "seed": cfg.seed,
            "controller": settings,
            "trained_with": trained_with,
        });
        if let Some(p) = init {
            let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
            made_by["init_crc32"] = format!("{:08x}", crc32fast::hash(&bytes)).into();
        }
        made_by
    }

    /// The checkpoint at `path` when it was made by `made_by` and holds at most `generations`
    /// generations; `None` (saying why through `progress`) when it is stale; an error when it
    /// holds more generations than asked (it is not thrown away unasked).
    fn read(
        path: &std::path::Path,
        made_by: &serde_json::Value,
        generations: usize,
        progress: &dyn Progress,
    ) -> anyhow::Result<Option<Self>> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(None);
        };
        let why = match serde_json::from_slice::<Self>(&bytes) {
            Err(e) => format!("{} is unreadable ({e})", path.display()),
            Ok(cp) if cp.made_by.get("trained_with") != made_by.get("trained_with") => {
                "the saved CMA-ES state was made with another V or M, so it is stale".into()
            }
            Ok(cp) if cp.made_by.get("init_crc32") != made_by.get("init_crc32") => {
                "the saved CMA-ES state started from another C, so it is stale".into()
            }
            Ok(cp) if &cp.made_by != made_by => anyhow::bail!(
                "{} holds C trained with other settings ({}); run with --force to discard it, \
                 or use another --out",
                path.display(),
                super::config_diff(&cp.made_by, made_by)
            ),
            Ok(cp) if cp.generations > generations => anyhow::bail!(
                "{} holds C after {} generations, more than the {generations} asked for; run \
                 with --force to train it again, or use another --out",
                path.display(),
                cp.generations
            ),
            Ok(cp) => return Ok(Some(cp)),
        };
        progress.note(&format!("C: {why}; training C from scratch"));
        Ok(None)
    }

    fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        dreamgym_base::write_atomic(path, &serde_json::to_vec(self)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the notes a stage gives.
    #[derive(Default)]
    struct Notes(std::sync::Mutex<Vec<String>>);

    impl Progress for Notes {
        fn note(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_string());
        }
    }

    #[test]
    fn a_checkpoint_started_from_another_c_is_stale_and_one_from_before_init_was_named_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT);
        let cfg = WorldModelsConfig::default();
        let tw = TrainedWith {
            vae_crc32: 1,
            mdnrnn_crc32: 2,
        };
        let es = CmaEs::new(&[0.0; 3], &cfg.controller.cmaes).unwrap();
        let save = |made_by: serde_json::Value| {
            ControllerCheckpoint {
                made_by,
                generations: 1,
                es: es.state(),
                selected: None,
            }
            .write(&path)
            .unwrap()
        };
        let (a, b) = ([0.5f32, 0.0, 0.0], [0.0f32, 0.5, 0.0]);
        let notes = Notes::default();
        save(ControllerCheckpoint::made_by(&cfg, tw, Some(&a)));
        let read = |init: Option<&[f32]>| {
            ControllerCheckpoint::read(
                &path,
                &ControllerCheckpoint::made_by(&cfg, tw, init),
                5,
                &notes,
            )
            .unwrap()
        };
        assert!(read(Some(&a)).is_some());
        assert!(read(Some(&b)).is_none());
        assert!(read(None).is_none());
        let said = notes.0.lock().unwrap().clone();
        assert_eq!(said.len(), 2);
        assert!(
            said.iter().all(|l| l.contains("started from another C")),
            "{said:?}"
        );
        // A checkpoint without a first C (the run's own C) matches one asked without it.
        save(ControllerCheckpoint::made_by(&cfg, tw, None));
        assert!(read(None).is_some());
    }
}
