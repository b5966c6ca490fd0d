//! `dreamgym inspect`: what a recorded dataset holds, and which chunks are damaged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dreamgym_envs::recording::Dataset;

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
        "{} has {damaged} damaged chunk(s) (listed above); their episodes are left out of \
         every use of the dataset (pass --allow-damaged to accept that)",
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
    let dataset =
        Dataset::open(dir).with_context(|| format!("cannot open dataset {}", dir.display()))?;
    let meta = dataset.meta();
    let report = dataset.load();
    let returns: Vec<f64> = report.episodes.iter().map(|e| e.total_reward()).collect();
    let lengths: Vec<f64> = report.episodes.iter().map(|e| e.len() as f64).collect();
    let steps: usize = report.episodes.iter().map(|e| e.len()).sum();
    let terminated = report
        .episodes
        .iter()
        .filter(|e| e.terminated.last() == Some(&true))
        .count();
    let truncated = report
        .episodes
        .iter()
        .filter(|e| e.truncated.last() == Some(&true))
        .count();
    println!("dataset      {}", dir.display());
    println!("format       {} v{}", meta.format, meta.version);
    println!("env          {}  {}", meta.env_id, meta.env_config);
    println!("policy       {} (seed {:?})", meta.policy, meta.seed);
    println!("observation  {}", meta.observation_space);
    println!("action       {}", meta.action_space);
    println!(
        "chunks       {} ({} readable, {} damaged)",
        dataset.chunk_paths().len(),
        dataset.chunk_paths().len() - report.damaged.len(),
        report.damaged.len()
    );
    println!(
        "episodes     {} ({} terminated, {} truncated)",
        report.episodes.len(),
        terminated,
        truncated
    );
    println!("steps        {steps}");
    let (m, s, lo, hi) = stats(&returns);
    println!("return       mean {m:.3} ± {s:.3} (min {lo:.3}, max {hi:.3})");
    let (m, s, lo, hi) = stats(&lengths);
    println!("length       mean {m:.1} ± {s:.1} (min {lo}, max {hi})");
    for (i, c) in meta.collections.iter().enumerate() {
        println!(
            "collection   {i}: policy {}, seed {} (envs from {}), {} envs, {}",
            c.policy,
            c.seed,
            c.env_seed,
            c.num_envs,
            if c.complete {
                format!("{} episodes, complete", c.written)
            } else {
                format!(
                    "asked for {} episodes, DID NOT FINISH (interrupted, failed or killed)",
                    c.episodes
                )
            }
        );
    }
    for (path, err) in &report.damaged {
        println!("skipped      {}: {err}", path.display());
    }
    Ok(report.damaged.len())
}
