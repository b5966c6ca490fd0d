//! Collection: step N envs on worker threads with a policy and record every episode.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use dreamgym_envs::recording::{Collection, DatasetMeta, Episode, EpisodeWriter, WriterOptions};
use dreamgym_envs::{AutoresetMode, Env, Info, Registry, ThreadedVecEnv, Value, VecEnv};
use dreamgym_policies::PolicyBatch;
use serde::{Deserialize, Serialize};

use crate::{Progress, check_policy_spec, load_policy};

/// Settings of a rollout: which env, which policy, how many episodes (the `[rollout]` section
/// of an experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectConfig {
    /// Environment id.
    pub env: String,
    /// Overrides of the env's default config.
    pub env_config: toml::Table,
    /// The policy that acts: `random`, a run folder or a controller file (`dreamgym policies`).
    pub policy: String,
    /// Episodes to record.
    pub episodes: usize,
    /// Environments stepped together (the data do not depend on `workers`).
    pub num_envs: usize,
    /// Worker threads.
    pub workers: usize,
    /// Seed of the first env (env `i` gets `seed + i`) and of the policy.
    pub seed: u64,
    /// Deprecated: the dataset folder. Experiments now record into `<run>/data`; when given,
    /// this must be that folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Add to an existing dataset of the same env instead of refusing.
    pub append: bool,
    /// Set by a run that records the rest of an unfinished collection: when this one
    /// finishes, the unfinished ones before it count as complete.
    #[serde(skip)]
    pub resume_unfinished: bool,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            env: "CartPole-v0".into(),
            env_config: toml::Table::new(),
            policy: "random".into(),
            episodes: 100,
            num_envs: 8,
            workers: 2,
            seed: 0,
            out: None,
            append: false,
            resume_unfinished: false,
        }
    }
}

impl CollectConfig {
    /// Checks the ranges, naming the first bad field.
    pub fn validate(&self, registry: &Registry) -> anyhow::Result<()> {
        registry.spec(&self.env)?;
        anyhow::ensure!(self.episodes >= 1, "rollout.episodes must be at least 1");
        anyhow::ensure!(
            (1..=4096).contains(&self.num_envs),
            "rollout.num_envs must be in 1..=4096, got {}",
            self.num_envs
        );
        anyhow::ensure!(
            (1..=256).contains(&self.workers),
            "rollout.workers must be in 1..=256, got {}",
            self.workers
        );
        check_policy_spec(&self.policy, &self.env).context("rollout.policy")?;
        Ok(())
    }

    /// The env-config overrides as JSON.
    pub fn env_overrides(&self) -> anyhow::Result<Option<serde_json::Value>> {
        if self.env_config.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::to_value(&self.env_config).context("env_config is not representable")?,
        ))
    }
}

/// What a rollout did.
#[derive(Debug, Clone)]
pub struct CollectSummary {
    /// Episodes written.
    pub episodes: usize,
    /// Steps written.
    pub steps: usize,
    /// Mean episode return.
    pub mean_return: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Whether the user stopped it early.
    pub interrupted: bool,
    /// Where the data went.
    pub out: PathBuf,
}

impl std::fmt::Display for CollectSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}wrote {} episodes ({} steps, mean return {:.2}) to {} in {:.1} s ({:.0} steps/s)",
            if self.interrupted {
                "interrupted: "
            } else {
                ""
            },
            self.episodes,
            self.steps,
            self.mean_return,
            self.out.display(),
            self.seconds,
            self.steps as f64 / self.seconds.max(1e-9)
        )
    }
}

/// The seed an env reported for its new episode, or (for an env that reports none) a seed of
/// the rollout's own: episode `n` of the rollout gets `derive_seed(seed, "collect.episode", n)`,
/// so no two episodes share a policy's random stream.
fn episode_seed(info: &Info, seed: u64, started: &mut u64) -> u64 {
    let n = *started;
    *started += 1;
    info.get("episode_seed")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| dreamgym_base::derive_seed(seed, "collect.episode", n))
}

/// Collects `config.episodes` episodes with `config.policy` and records them under `out`.
///
/// The data are a function of the env, its config, `num_envs`, the seed and the policy only:
/// any number of workers records the same bytes. When `progress` reports an interruption,
/// collection stops and every episode already finished is written.
pub fn collect(
    registry: &Registry,
    config: &CollectConfig,
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<CollectSummary> {
    config.validate(registry)?;
    let overrides = config.env_overrides()?;
    let resolved = registry.resolve_config(&config.env, overrides.as_ref())?;
    let envs = (0..config.num_envs)
        .map(|_| registry.make(&config.env, overrides.as_ref()))
        .collect::<Result<Vec<Box<dyn Env>>, _>>()
        .with_context(|| format!("cannot build {}", config.env))?;
    let observation_space = envs[0].observation_space().clone();
    let action_space = envs[0].action_space().clone();
    let policy = load_policy(
        &config.policy,
        &config.env,
        &observation_space,
        &action_space,
        config.seed,
    )
    .with_context(|| format!("cannot use policy `{}` on {}", config.policy, config.env))?;
    let mut policies = PolicyBatch::new(policy.as_ref(), config.num_envs);
    let meta = DatasetMeta::new(
        &config.env,
        resolved,
        observation_space,
        action_space,
        &config.policy,
        Some(config.seed),
    );
    let mut writer = EpisodeWriter::create(
        out,
        meta,
        WriterOptions {
            append: config.append,
            ..WriterOptions::default()
        },
    )
    .context("cannot record the rollout")?;
    // Collection k of a dataset resets its envs from a seed of its own, so that appended
    // episodes are new ones, never repeats of those already recorded.
    let index = if writer.appends() {
        writer.meta().collections.len().max(1)
    } else {
        0
    };
    let env_seed = if index == 0 {
        config.seed
    } else {
        dreamgym_base::derive_seed(config.seed, "rollout.collection", index as u64)
    };
    if index > 0 {
        progress.note(&format!(
            "appending {} episode{} to the dataset in {} as collection {index}: its envs start \
             from seed {env_seed} (derived from seed {} and {index}), so no episode repeats",
            config.episodes,
            if config.episodes == 1 { "" } else { "s" },
            out.display(),
            config.seed
        ));
    }
    if config.resume_unfinished {
        writer.resumes_unfinished();
    }
    writer
        .begin_collection(Collection {
            policy: config.policy.clone(),
            seed: config.seed,
            env_seed,
            num_envs: config.num_envs,
            episodes: config.episodes,
            written: 0,
            complete: false,
            resumed_by: None,
        })
        .context("cannot record the rollout")?;
    // Encoding and writing chunks happens on its own thread, so stepping goes on meanwhile.
    let (episodes_tx, episodes_rx) = crossbeam_channel::bounded::<Episode>(256);
    let target = config.episodes;
    let writer_thread = std::thread::Builder::new()
        .name("dreamgym-writer".into())
        .spawn(
            move || -> Result<(usize, usize), dreamgym_envs::recording::RecordError> {
                let mut writer = writer;
                let mut received = 0;
                for episode in episodes_rx {
                    writer.push(episode)?;
                    received += 1;
                }
                if received == target {
                    writer.finish()
                } else {
                    writer.finish_incomplete()
                }
            },
        )
        .context("cannot start the writer thread")?;
    let mut venv = ThreadedVecEnv::new(envs, config.workers, AutoresetMode::NextStep)?;
    progress.begin("collect", config.episodes as u64);
    let started = Instant::now();
    let (obs, infos) = venv.reset(Some(env_seed), &Info::new())?;
    let mut started_episodes = 0u64;
    let mut current = Vec::with_capacity(config.num_envs);
    let (mut finished, mut steps, mut total_return) = (0usize, 0usize, 0.0f64);
    let mut interrupted = false;
    // A failure inside the loop stops stepping; what was finished is still written below.
    let mut failure: Option<anyhow::Error> = None;
    for (i, (o, info)) in obs.into_iter().zip(&infos).enumerate() {
        let seed = episode_seed(info, env_seed, &mut started_episodes);
        if let Err(e) = policies.reset(i, seed) {
            failure = Some(e.into());
        }
        current.push(Episode::new(seed, o));
    }
    while finished < config.episodes && failure.is_none() {
        if progress.interrupted() {
            interrupted = true;
            break;
        }
        // Every episode holds at least its first observation.
        let last: Vec<&Value> = current
            .iter()
            .filter_map(|e| e.observations.last())
            .collect();
        let actions = match policies.act(&last) {
            Ok(a) => a,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        let step = match venv.step(&actions) {
            Ok(s) => s,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        let results = actions
            .into_iter()
            .zip(step.obs)
            .zip(step.infos)
            .enumerate();
        for (i, ((action, obs), info)) in results {
            if step.autoreset[i] {
                let seed = episode_seed(&info, env_seed, &mut started_episodes);
                if let Err(e) = policies.reset(i, seed) {
                    failure = Some(e.into());
                }
                current[i] = Episode::new(seed, obs);
                continue;
            }
            policies.reward(i, step.rewards[i]);
            let (terminated, truncated) = (step.terminated[i], step.truncated[i]);
            current[i].push(action, obs, step.rewards[i], terminated, truncated);
            if (terminated || truncated) && finished < config.episodes {
                // The next step resets this env (NEXT_STEP) and replaces the placeholder.
                let last_obs = current[i]
                    .observations
                    .last()
                    .cloned()
                    .unwrap_or(Value::Int(0));
                let episode = std::mem::replace(&mut current[i], Episode::new(0, last_obs));
                steps += episode.len();
                total_return += episode.total_reward();
                finished += 1;
                if episodes_tx.send(episode).is_err() {
                    // The writer stopped: its error is reported below.
                    break;
                }
                progress.status(&format!(
                    "mean return {:.1}",
                    total_return / finished as f64
                ));
                progress.advance(1);
            }
        }
        if writer_thread.is_finished() {
            break;
        }
    }
    venv.close();
    drop(episodes_tx);
    let (episodes, _) = writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .with_context(|| format!("recording to {}", out.display()))?;
    progress.end();
    if let Some(e) = failure {
        return Err(e.context(format!(
            "rolling out policy `{}` on {} failed after {episodes} episodes were written",
            config.policy, config.env
        )));
    }
    Ok(CollectSummary {
        episodes,
        steps,
        mean_return: total_return / finished.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
        out: out.to_path_buf(),
    })
}
