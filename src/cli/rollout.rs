//! `dreamgym rollout`: collect episodes with a policy on worker threads and record them.

use std::path::PathBuf;

use anyhow::Context;
use dreamgym_agents::{CollectConfig, collect};
use dreamgym_envs::Registry;

use super::progress::CliProgress;

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
    /// The policy that acts: `random`, a World Models run folder, a Decision Transformer run
    /// folder with its target (`runs/x@200`), or a controller file (see `dreamgym policies`).
    #[arg(long, default_value = "random")]
    policy: String,
    /// Episodes to record.
    #[arg(long, default_value_t = 100)]
    episodes: usize,
    /// Environments stepped together (a policy acts on them as one batch); the data do not
    /// depend on `--workers`.
    #[arg(long, default_value_t = 8)]
    num_envs: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seed (episode `k` of the rollout starts from `reset(seed + k)`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Record episodes `K .. K + episodes` of the rollout: one shard of a rollout split
    /// across processes or machines; `dreamgym merge` joins the shards into the dataset one
    /// process would have recorded.
    #[arg(long, value_name = "K", default_value_t = 0)]
    first_episode: u64,
    /// Output folder (must be new or empty, unless `--append`).
    #[arg(long)]
    out: PathBuf,
    /// Add episodes to an existing dataset of the same env.
    #[arg(long)]
    append: bool,
    /// Record the rest of a collection that did not finish (implies `--append`): when this one
    /// finishes, the dataset counts as complete again.
    #[arg(long)]
    resume: bool,
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
    let config = CollectConfig {
        env: args.env,
        env_config,
        policy: args.policy,
        episodes: args.episodes,
        num_envs: args.num_envs,
        workers: args.workers,
        seed: args.seed,
        first_episode: args.first_episode,
        out: None,
        append: args.append || args.resume,
        resume_unfinished: args.resume,
    };
    config.validate(registry)?;
    let summary = collect(registry, &config, &args.out, &CliProgress::new())?;
    println!("{summary}");
    if summary.interrupted {
        return Err(dreamgym_agents::Interrupted {
            stage: "rollout".into(),
            saved: format!(
                "the {} finished episodes are in {} (marked as an unfinished collection); \
                 record the other {} with the same command plus `--resume --episodes {}`",
                summary.episodes,
                args.out.display(),
                config.episodes - summary.episodes,
                config.episodes - summary.episodes
            ),
        }
        .into());
    }
    Ok(())
}

/// Arguments of `dreamgym merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The shards: datasets recorded by `dreamgym rollout --first-episode K` with the same env,
    /// policy, seed and `--num-envs`, covering a range of episodes without gaps.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Output folder (must be new or empty).
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(args: MergeArgs) -> anyhow::Result<()> {
    let summary = dreamgym_agents::merge(&args.shards, &args.out)?;
    println!("{summary}");
    Ok(())
}
