//! `dreamgym inspect`: what a recorded dataset holds, and which chunks are damaged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dreamgym_envs::recording::Dataset;

/// `println!` that drops what a closed pipe (`| head`) cannot take, instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Arguments of `dreamgym inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folder (written by `dreamgym rollout`).
    dir: PathBuf,
    /// Exit 0 even when some chunks are damaged (their episodes are still left out).
    #[arg(long)]
    allow_damaged: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let damaged = print_summary(&args.dir)?;
    anyhow::ensure!(
        damaged == 0 || args.allow_damaged,
        "{} has {damaged} damaged or missing chunk(s) (listed above); their episodes are left \
         out of every use of the dataset (pass --allow-damaged to accept that)",
        args.dir.display()
    );
    Ok(())
}

/// Statistics of a list of numbers.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (mean, std, min, max)
}

/// Prints the summary of the dataset in `dir`; returns how many chunks are damaged.
pub fn print_summary(dir: &Path) -> anyhow::Result<usize> {
    anyhow::ensure!(dir.exists(), "{} does not exist", dir.display());
    let dataset =
        Dataset::open(dir).with_context(|| format!("cannot open dataset {}", dir.display()))?;
    // A writer still at work holds the folder's lock.
    let running = match dreamgym_base::FolderLock::acquire(dir) {
        Err(dreamgym_base::LockError::Busy { holder, .. }) => Some(holder),
        _ => None,
    };
    let missing = dataset.missing_chunks();
    let meta = dataset.meta();
    // One chunk decoded at a time: a dataset larger than memory is summarized too.
    let (mut returns, mut lengths) = (Vec::new(), Vec::new());
    let (mut steps, mut terminated, mut truncated) = (0usize, 0usize, 0usize);
    let mut damaged = Vec::new();
    for path in dataset.chunk_paths() {
        match dataset.read_chunk(path) {
            Ok(episodes) => {
                for e in &episodes {
                    returns.push(e.total_reward());
                    lengths.push(e.len() as f64);
                    steps += e.len();
                    terminated += usize::from(e.terminated.last() == Some(&true));
                    truncated += usize::from(e.truncated.last() == Some(&true));
                }
            }
            Err(e) => damaged.push(e),
        }
    }
    out!("dataset      {}", dir.display());
    out!("format       {} v{}", meta.format, meta.version);
    out!("env          {}  {}", meta.env_id, meta.env_config);
    out!(
        "policy       {}{}",
        meta.policy,
        meta.seed
            .map(|s| format!(" (seed {s})"))
            .unwrap_or_default()
    );
    out!("observation  {}", meta.observation_space);
    out!("action       {}", meta.action_space);
    out!(
        "chunks       {} ({} readable, {} damaged{})",
        dataset.chunk_paths().len(),
        dataset.chunk_paths().len() - damaged.len(),
        damaged.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(", {} missing", missing.len())
        }
    );
    out!(
        "episodes     {} ({} terminated, {} truncated)",
        returns.len(),
        terminated,
        truncated
    );
    out!("steps        {steps}");
    if returns.is_empty() {
        out!("return       (no episodes)");
    } else {
        let (m, s, lo, hi) = stats(&returns);
        out!("return       mean {m:.3} ± {s:.3} (min {lo:.3}, max {hi:.3})");
        let (m, s, lo, hi) = stats(&lengths);
        out!("length       mean {m:.1} ± {s:.1} (min {lo}, max {hi})");
    }
    let last = meta.collections.len().saturating_sub(1);
    for (i, c) in meta.collections.iter().enumerate() {
        out!(
            "collection   {i}: policy {}, seed {} (episode k from {} + k){}, {} envs, {}",
            c.policy,
            c.seed,
            c.env_seed,
            if c.first_episode > 0 {
                format!(", episodes from {}", c.first_episode)
            } else {
                String::new()
            },
            c.num_envs,
            match (c.complete, c.resumed_by, &running) {
                (true, Some(by), _) => format!(
                    "asked for {} episodes, interrupted, the rest recorded by collection {by}",
                    c.episodes
                ),
                (true, None, _) => format!("{} episodes, complete", c.written),
                (false, _, Some(holder)) if i == last => format!(
                    "asked for {} episodes, RECORDING NOW ({})",
                    c.episodes,
                    holder.map_or("another process".into(), |p| format!("pid {p}"))
                ),
                (false, _, _) => format!(
                    "asked for {} episodes, DID NOT FINISH (interrupted, failed or killed)",
                    c.episodes
                ),
            }
        );
    }
    for path in &missing {
        out!("missing      {} (its episodes are lost)", path.display());
    }
    for err in &damaged {
        out!("skipped      {err}");
    }
    Ok(damaged.len() + missing.len())
}
