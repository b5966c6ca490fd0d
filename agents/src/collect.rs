//! Collection: step N envs on worker threads with a policy and record every episode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use dreamgym_envs::recording::{Collection, DatasetMeta, Episode, EpisodeWriter, WriterOptions};
use dreamgym_envs::{
    AutoresetMode, Env, EnvError, Info, Registry, Space, Step, ThreadedVecEnv, Value, VecEnv,
};
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
    /// Environments stepped together.
    pub num_envs: usize,
    /// Worker threads.
    pub workers: usize,
    /// Seed of the rollout: episode `k` starts from `reset(Some(seed + k))`, and the policy
    /// acts in it from the same seed.
    pub seed: u64,
    /// The index of the first episode to record: a shard of a larger rollout records episodes
    /// `first_episode .. first_episode + episodes` of it, exactly as the whole rollout would,
    /// and [`merge`] joins the shards.
    pub first_episode: u64,
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
            first_episode: 0,
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
        anyhow::ensure!(
            self.first_episode
                .checked_add(self.episodes as u64)
                .is_some(),
            "rollout.first_episode + rollout.episodes overflows"
        );
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

/// An env whose next reset (the NEXT_STEP autoreset inside a vector env) takes the seed
/// that [`collect`] queued for it, so that episode `k` of a rollout starts from
/// `reset(Some(env_seed + k))` whichever env slot, worker or shard runs it.
struct QueuedSeed {
    env: Box<dyn Env>,
    next: Arc<Mutex<Option<u64>>>,
}

impl Env for QueuedSeed {
    fn observation_space(&self) -> &Space {
        self.env.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        let queued = self.next.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.env.reset(seed.or(queued), options)
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.env.step(action)
    }
    fn close(&mut self) {
        self.env.close()
    }
}

/// Episodes finished out of order wait here until every episode before them is sent, so a
/// dataset holds its episodes in index order.
struct InOrder {
    next: u64,
    waiting: BTreeMap<u64, Episode>,
}

impl InOrder {
    /// Takes episode `index`; returns those now ready, in order.
    fn push(&mut self, index: u64, episode: Episode) -> Vec<Episode> {
        self.waiting.insert(index, episode);
        let mut ready = Vec::new();
        while let Some(e) = self.waiting.remove(&self.next) {
            ready.push(e);
            self.next += 1;
        }
        ready
    }
}

/// Where the dataset's unfinished collection stopped: (its index, its env seed, the first of
/// its episodes not on disk), from the episodes `stored` in all. Its episodes on disk are
/// those the finished collections did not write (each collection writes its episodes in
/// order, and a collection that resumed it goes on with the same episodes). None when every
/// collection finished.
fn resume_point(meta: &DatasetMeta, stored: usize) -> Option<(usize, u64, u64)> {
    let (k, unfinished) = meta
        .collections
        .iter()
        .enumerate()
        .find(|(_, c)| !c.complete)?;
    let on_disk = stored.saturating_sub(meta.finished_episodes()) as u64;
    Some((k, unfinished.env_seed, unfinished.first_episode + on_disk))
}

/// The dataset's sequences of episodes: its collections, those that went on with an earlier
/// one's episodes (the same env seed) counted once.
fn sequences(meta: &DatasetMeta) -> usize {
    let mut seeds: Vec<u64> = meta.collections.iter().map(|c| c.env_seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds.len()
}

/// The episodes of each readable chunk of `ds`, a chunk at a time, in order; a damaged chunk
/// is skipped and named through `progress`. A dataset of any size is read holding one chunk.
pub(crate) fn readable_chunks<'a>(
    ds: &'a dreamgym_envs::recording::Dataset,
    progress: &'a dyn Progress,
) -> impl Iterator<Item = Vec<Episode>> + 'a {
    ds.chunk_paths()
        .iter()
        .filter_map(move |path| match ds.read_chunk(path) {
            Ok(episodes) => Some(episodes),
            Err(err) => {
                progress.note(&format!("skipping damaged chunk {}: {err}", path.display()));
                None
            }
        })
}

/// Collects `config.episodes` episodes with `config.policy` and records them under `out`.
///
/// Episode `k` (counted from 0 for the whole rollout, so from `config.first_episode` here)
/// starts from `reset(Some(env_seed + k))` and its policy from the same seed, and the dataset
/// holds the episodes in that order. The data are a function of the env, its config, the
/// seed, the policy and `num_envs` (the batch a policy acts on) only: any number of workers,
/// and any split of the rollout into shards that [`merge`] joins, records the same bytes.
/// When `progress` reports an interruption, collection stops and every episode already
/// finished is written.
pub fn collect(
    registry: &Registry,
    config: &CollectConfig,
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<CollectSummary> {
    config.validate(registry)?;
    let overrides = config.env_overrides()?;
    let resolved = registry.resolve_config(&config.env, overrides.as_ref())?;
    // One queued seed per env: the seed of the episode it starts at its next autoreset.
    let queued: Vec<Arc<Mutex<Option<u64>>>> = (0..config.num_envs)
        .map(|_| Arc::new(Mutex::new(None)))
        .collect();
    let envs = queued
        .iter()
        .map(|next| {
            registry.make(&config.env, overrides.as_ref()).map(|env| {
                Box::new(QueuedSeed {
                    env,
                    next: next.clone(),
                }) as Box<dyn Env>
            })
        })
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
    // The rest of an interrupted collection goes on with that collection's own episodes:
    // the same env seeds, from the first episode it did not record (episodes are written in
    // order), so that a collection interrupted and resumed records the episodes that one
    // which never stopped records.
    let resumed = if config.resume_unfinished && writer.appends() {
        let stored = dreamgym_envs::recording::Dataset::open(out)
            .map(|d| d.stored_episodes())
            .unwrap_or(0);
        resume_point(writer.meta(), stored)
    } else {
        None
    };
    // Any other collection k of a dataset resets its envs from a seed of its own, so that
    // appended episodes are new ones, never repeats of those already recorded.
    let (env_seed, first) = match resumed {
        Some((k, env_seed, next)) => {
            progress.note(&format!(
                "recording the rest of the dataset's unfinished collection {k}: its episodes \
                 from {next} on (env seeds from {env_seed} + {next})"
            ));
            (env_seed, next)
        }
        None => {
            let index = if writer.appends() {
                sequences(writer.meta()).max(1)
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
                    "appending {} episode{} to the dataset in {} as collection {index}: its \
                     envs start from seed {env_seed} (derived from seed {} and {index}), so no \
                     episode repeats",
                    config.episodes,
                    if config.episodes == 1 { "" } else { "s" },
                    out.display(),
                    config.seed
                ));
            }
            (env_seed, config.first_episode)
        }
    };
    if config.resume_unfinished {
        writer.resumes_unfinished();
    }
    writer
        .begin_collection(Collection {
            policy: config.policy.clone(),
            seed: config.seed,
            env_seed,
            num_envs: config.num_envs,
            first_episode: first,
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
    let end = first + config.episodes as u64;
    let seed_of = |k: u64| env_seed.wrapping_add(k);
    // Env `i` starts episode `first + i` (Gymnasium's `seed + i`); envs beyond the episodes
    // asked for run ones that are not recorded.
    let (obs, _) = venv.reset(Some(seed_of(first)), &Info::new())?;
    let mut next_index = first;
    let mut take_index = || {
        let k = next_index;
        next_index += 1;
        (k < end).then_some(k)
    };
    // The episode index each env runs (None: not recorded) and, once it ends, the next one.
    let mut running: Vec<Option<u64>> = Vec::with_capacity(config.num_envs);
    let mut after: Vec<Option<u64>> = vec![None; config.num_envs];
    let mut current = Vec::with_capacity(config.num_envs);
    let mut in_order = InOrder {
        next: first,
        waiting: BTreeMap::new(),
    };
    let (mut finished, mut steps, mut total_return) = (0usize, 0usize, 0.0f64);
    let mut interrupted = false;
    // A failure inside the loop stops stepping; what was finished is still written below.
    let mut failure: Option<anyhow::Error> = None;
    for (i, o) in obs.into_iter().enumerate() {
        let index = take_index();
        let seed = seed_of(first + i as u64);
        if let Err(e) = policies.reset(i, seed) {
            failure = Some(e.into());
        }
        running.push(index);
        current.push(Episode::new(seed, o));
    }
    let mut sent = 0usize;
    'steps: while sent < config.episodes && failure.is_none() {
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
                running[i] = after[i].take();
                // An episode that is not recorded keeps whatever seed its env drew.
                let seed = match running[i] {
                    Some(k) => seed_of(k),
                    None => info
                        .get("episode_seed")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                };
                if let Err(e) = policies.reset(i, seed) {
                    failure = Some(e.into());
                }
                current[i] = Episode::new(seed, obs);
                continue;
            }
            policies.reward(i, step.rewards[i]);
            let (terminated, truncated) = (step.terminated[i], step.truncated[i]);
            current[i].push(action, obs, step.rewards[i], terminated, truncated);
            if !(terminated || truncated) {
                continue;
            }
            // The next step resets this env (NEXT_STEP) with the next episode's seed, and
            // replaces the placeholder.
            after[i] = take_index();
            *queued[i].lock().unwrap_or_else(|e| e.into_inner()) = after[i].map(seed_of);
            let last_obs = current[i]
                .observations
                .last()
                .cloned()
                .unwrap_or(Value::Int(0));
            let episode = std::mem::replace(&mut current[i], Episode::new(0, last_obs));
            let Some(index) = running[i] else { continue };
            steps += episode.len();
            total_return += episode.total_reward();
            finished += 1;
            progress.status(&format!(
                "mean return {:.1}",
                total_return / finished as f64
            ));
            progress.advance(1);
            for ready in in_order.push(index, episode) {
                sent += 1;
                if episodes_tx.send(ready).is_err() {
                    // The writer stopped: its error is reported below.
                    break 'steps;
                }
            }
        }
        if writer_thread.is_finished() {
            break;
        }
    }
    // Stopped early: the episodes that finished after one still running are written too,
    // in order (the collection is marked unfinished).
    for (_, episode) in std::mem::take(&mut in_order.waiting) {
        if episodes_tx.send(episode).is_err() {
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

/// What [`merge`] joined.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    /// Shards joined.
    pub shards: usize,
    /// Episodes written.
    pub episodes: usize,
    /// The rollout's index of the first one.
    pub first_episode: u64,
    /// Where the data went.
    pub out: PathBuf,
}

impl std::fmt::Display for MergeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "merged {} shards: episodes {}..{} into {}",
            self.shards,
            self.first_episode,
            self.first_episode + self.episodes as u64,
            self.out.display()
        )
    }
}

/// Joins the shards of one rollout into a new dataset at `out`.
///
/// Each shard is a finished `dreamgym rollout --first-episode K` (one collection, not appended
/// to) of the same env, config, policy, seed and `num_envs`; together, in any order given,
/// they must cover a range of episodes with no gap and no overlap. The episodes are written in
/// order and chunked as [`collect`] chunks them, so the result is byte for byte the dataset
/// one process records for the whole range. Nothing is written when the shards do not fit
/// together.
pub fn merge(shards: &[PathBuf], out: &Path) -> anyhow::Result<MergeSummary> {
    use dreamgym_envs::recording::Dataset;
    anyhow::ensure!(!shards.is_empty(), "name at least one shard to merge");
    let mut parts = Vec::with_capacity(shards.len());
    for path in shards {
        let ds = Dataset::open(path).with_context(|| format!("shard {}", path.display()))?;
        let c = match ds.meta().collections.as_slice() {
            [c] => c.clone(),
            [] => anyhow::bail!(
                "shard {} records no collection (a dataset from before collections were \
                 recorded); only shards of `dreamgym rollout --first-episode` can be merged",
                path.display()
            ),
            cs => anyhow::bail!(
                "shard {} holds {} collections (it was appended to); a shard is one rollout",
                path.display(),
                cs.len()
            ),
        };
        anyhow::ensure!(
            c.complete,
            "shard {} did not finish ({} of {} episodes); finish it with `dreamgym rollout \
             ... --resume` or record it again",
            path.display(),
            c.written,
            c.episodes
        );
        let missing = ds.missing_chunks();
        anyhow::ensure!(
            missing.is_empty() && ds.stored_episodes() == c.episodes,
            "shard {} holds {} episodes where its rollout wrote {}{}",
            path.display(),
            ds.stored_episodes(),
            c.episodes,
            if missing.is_empty() {
                String::new()
            } else {
                format!(" ({} chunks missing)", missing.len())
            }
        );
        parts.push((path.clone(), ds, c));
    }
    parts.sort_by_key(|(_, _, c)| c.first_episode);
    let (first_path, first_ds, first_c) = &parts[0];
    let m0 = first_ds.meta();
    for (path, ds, c) in &parts[1..] {
        let m = ds.meta();
        let differs = [
            ("env", m.env_id != m0.env_id),
            ("env config", m.env_config != m0.env_config),
            (
                "observation space",
                m.observation_space != m0.observation_space,
            ),
            ("action space", m.action_space != m0.action_space),
            ("policy", c.policy != first_c.policy),
            (
                "seed",
                c.seed != first_c.seed || c.env_seed != first_c.env_seed,
            ),
            ("num_envs", c.num_envs != first_c.num_envs),
        ];
        if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
            anyhow::bail!(
                "shards {} and {} are not parts of one rollout: their {what} differs",
                first_path.display(),
                path.display()
            );
        }
    }
    for pair in parts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a.2.first_episode + a.2.episodes as u64;
        anyhow::ensure!(
            a_end == b.2.first_episode,
            "shards {} (episodes {}..{a_end}) and {} (from episode {}) {}",
            a.0.display(),
            a.2.first_episode,
            b.0.display(),
            b.2.first_episode,
            if a_end < b.2.first_episode {
                "leave a gap"
            } else {
                "overlap"
            }
        );
    }
    let first_episode = parts[0].2.first_episode;
    let total: usize = parts.iter().map(|(_, _, c)| c.episodes).sum();
    let meta = DatasetMeta::new(
        &m0.env_id,
        m0.env_config.clone(),
        m0.observation_space.clone(),
        m0.action_space.clone(),
        &first_c.policy,
        Some(first_c.seed),
    );
    let mut writer = EpisodeWriter::create(out, meta, WriterOptions::default())
        .with_context(|| format!("cannot write the merged dataset to {}", out.display()))?;
    writer.begin_collection(Collection {
        policy: first_c.policy.clone(),
        seed: first_c.seed,
        env_seed: first_c.env_seed,
        num_envs: first_c.num_envs,
        first_episode,
        episodes: total,
        written: 0,
        complete: false,
        resumed_by: None,
    })?;
    let mut k = first_episode;
    for (path, ds, c) in &parts {
        for chunk in ds.chunk_paths() {
            for episode in ds.read_chunk(chunk)? {
                let expected = c.env_seed.wrapping_add(k);
                anyhow::ensure!(
                    episode.seed == expected,
                    "shard {}: episode {k} was reset from seed {} where the rollout gives \
                     {expected} (recorded by an older dreamgym?); the merged dataset in {} is \
                     unfinished",
                    path.display(),
                    episode.seed,
                    out.display()
                );
                writer.push(episode)?;
                k += 1;
            }
        }
    }
    let (episodes, _) = writer.finish()?;
    Ok(MergeSummary {
        shards: parts.len(),
        episodes,
        first_episode,
        out: out.to_path_buf(),
    })
}
