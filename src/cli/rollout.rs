//! `dreamgym rollout`: collect episodes with a policy on worker threads and record them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use dreamgym_envs::recording::{DatasetMeta, Episode, EpisodeWriter, WriterOptions};
use dreamgym_envs::{AutoresetMode, Env, Info, Registry, ThreadedVecEnv, Value, VecEnv};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::RolloutConfig;

/// Policies `rollout` knows.
pub const POLICIES: &[&str] = &["random"];

/// Arguments of `dreamgym rollout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Environment id (see `dreamgym envs`).
    #[arg(long)]
    env: String,
    /// Env config overrides, `key=value` (repeatable), for example `--set force_mag=5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// What to record: `state`, `pixels` (64×64 RGB from the env's camera) or `both`
    /// (shorthand for `--set obs=...`).
    #[arg(long)]
    obs: Option<String>,
    /// Action policy.
    #[arg(long, default_value = "random")]
    policy: String,
    /// Episodes to record.
    #[arg(long, default_value_t = 100)]
    episodes: usize,
    /// Environments stepped together; the recorded data depend on this, not on `--workers`.
    #[arg(long, default_value_t = 8)]
    num_envs: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seed (env `i` starts from `seed + i`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (must be new or empty, unless `--append`).
    #[arg(long)]
    out: PathBuf,
    /// Add episodes to an existing dataset of the same env.
    #[arg(long)]
    append: bool,
}

/// What a rollout did.
#[derive(Debug, Clone)]
pub struct RolloutSummary {
    /// Episodes written.
    pub episodes: usize,
    /// Steps written.
    pub steps: usize,
    /// Mean episode return.
    pub mean_return: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Whether Ctrl-C stopped it early.
    pub interrupted: bool,
    /// Where the data went.
    pub out: PathBuf,
}

impl std::fmt::Display for RolloutSummary {
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

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let mut overrides = super::parse_overrides(&args.set)?;
    if let Some(obs) = &args.obs {
        overrides.get_or_insert_with(|| serde_json::json!({}))["obs"] = obs.as_str().into();
    }
    let env_config = match overrides {
        Some(v) => toml::Table::try_from(v).context("--set values must form a table")?,
        None => toml::Table::new(),
    };
    let config = RolloutConfig {
        env: args.env,
        env_config,
        policy: args.policy,
        episodes: args.episodes,
        num_envs: args.num_envs,
        workers: args.workers,
        seed: args.seed,
        out: args.out,
        append: args.append,
    };
    config.validate(registry)?;
    let summary = collect(registry, &config, true)?;
    println!("{summary}");
    Ok(())
}

/// Collects `config.episodes` episodes and records them under `config.out`.
///
/// The data are a function of the env, its config, `num_envs`, the seed and the policy only:
/// any number of workers records the same bytes. Ctrl-C stops collection early; every episode
/// already finished is written.
pub fn collect(
    registry: &Registry,
    config: &RolloutConfig,
    show_progress: bool,
) -> anyhow::Result<RolloutSummary> {
    config.validate(registry)?;
    let overrides = config.env_overrides()?;
    let resolved = registry.resolve_config(&config.env, overrides.as_ref())?;
    let envs = (0..config.num_envs)
        .map(|_| registry.make(&config.env, overrides.as_ref()))
        .collect::<Result<Vec<Box<dyn Env>>, _>>()
        .with_context(|| format!("cannot build {}", config.env))?;
    let observation_space = envs[0].observation_space().clone();
    let action_space = envs[0].action_space().clone();
    let meta = DatasetMeta::new(
        &config.env,
        resolved,
        observation_space,
        action_space.clone(),
        &config.policy,
        Some(config.seed),
    );
    let writer = EpisodeWriter::create(
        &config.out,
        meta,
        WriterOptions {
            append: config.append,
            ..WriterOptions::default()
        },
    )
    .with_context(|| format!("cannot record to {}", config.out.display()))?;
    // Encoding and writing chunks happens on its own thread, so stepping goes on meanwhile.
    let (episodes_tx, episodes_rx) = crossbeam_channel::bounded::<Episode>(256);
    let writer_thread = std::thread::Builder::new()
        .name("dreamgym-writer".into())
        .spawn(
            move || -> Result<(usize, usize), dreamgym_envs::recording::RecordError> {
                let mut writer = writer;
                for episode in episodes_rx {
                    writer.push(episode)?;
                }
                writer.finish()
            },
        )
        .context("cannot start the writer thread")?;
    let mut venv = ThreadedVecEnv::new(envs, config.workers, AutoresetMode::NextStep)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only the first handler in a process can be installed; a second collect() in the
        // same process keeps the first (which sets a flag it no longer reads) — harmless.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let pb = if show_progress {
        super::progress_bar(config.episodes as u64, "episodes")
    } else {
        indicatif::ProgressBar::hidden()
    };

    let started = Instant::now();
    let (obs, infos) = venv.reset(Some(config.seed), &Info::new())?;
    let mut current: Vec<Episode> = obs
        .into_iter()
        .zip(&infos)
        .map(|(o, info)| Episode::new(episode_seed(info), o))
        .collect();
    let mut rngs: Vec<ChaCha8Rng> = (0..config.num_envs)
        .map(|i| {
            ChaCha8Rng::seed_from_u64(
                config.seed ^ (0xD1B5_4A32_D192_ED03u64.wrapping_mul(i as u64 + 1)),
            )
        })
        .collect();
    let (mut finished, mut steps, mut total_return) = (0usize, 0usize, 0.0f64);
    while finished < config.episodes {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let actions: Vec<_> = rngs.iter_mut().map(|r| action_space.sample(r)).collect();
        let step = venv.step(&actions)?;
        let results = actions
            .into_iter()
            .zip(step.obs)
            .zip(step.infos)
            .enumerate();
        for (i, ((action, obs), info)) in results {
            if step.autoreset[i] {
                current[i] = Episode::new(episode_seed(&info), obs);
                continue;
            }
            let (terminated, truncated) = (step.terminated[i], step.truncated[i]);
            current[i].push(action, obs, step.rewards[i], terminated, truncated);
            if (terminated || truncated) && finished < config.episodes {
                // The next step resets this env (NEXT_STEP) and replaces the placeholder.
                let episode = std::mem::replace(&mut current[i], Episode::new(0, Value::Int(0)));
                steps += episode.len();
                total_return += episode.total_reward();
                finished += 1;
                if episodes_tx.send(episode).is_err() {
                    // The writer stopped: its error is reported below.
                    break;
                }
                pb.inc(1);
            }
        }
        if writer_thread.is_finished() {
            break;
        }
    }
    venv.close();
    drop(episodes_tx);
    let (episodes, written_steps) = writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .with_context(|| format!("recording to {}", config.out.display()))?;
    pb.finish_and_clear();
    debug_assert_eq!(written_steps, steps);
    Ok(RolloutSummary {
        episodes,
        steps,
        mean_return: total_return / finished.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: interrupted.load(Ordering::SeqCst),
        out: config.out.clone(),
    })
}

fn episode_seed(info: &Info) -> u64 {
    info.get("episode_seed")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}
