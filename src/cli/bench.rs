//! `dreamgym bench envs`: environment throughput, single-threaded and vectorized.

use std::time::Instant;

use anyhow::Context;
use dreamgym_envs::{AutoresetMode, Env, Info, Registry, ThreadedVecEnv, Value, VecEnv};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Steps per second of every env (or those named), on one thread and vectorized.
    Envs(EnvArgs),
}

/// Arguments of `dreamgym bench envs`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// Only these env ids (repeatable).
    #[arg(long = "env")]
    envs: Vec<String>,
    /// Env config overrides for every env, `key=value` (repeatable), e.g. `--set obs=pixels`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Steps for the single-env measurement.
    #[arg(long, default_value_t = 100_000)]
    steps: u64,
    /// Envs in the vectorized measurement (EnvPool's batch of 64 by default).
    #[arg(long, default_value_t = 64)]
    num_envs: usize,
    /// Total env steps for each vectorized measurement.
    #[arg(long, default_value_t = 320_000)]
    vec_steps: u64,
    /// Worker counts to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Also run this many vectorized steps of the first env and report peak RSS at 10% and
    /// at the end (0 to skip).
    #[arg(long, default_value_t = 0)]
    memory_steps: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command, registry: &Registry) -> anyhow::Result<()> {
    match command {
        Command::Envs(a) => bench_envs(a, registry),
    }
}

/// Actions sampled ahead of time, so the timing measures the env, not the sampler.
fn action_table(env: &dyn Env, n: usize, seed: u64) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| env.action_space().sample(&mut rng))
        .collect()
}

/// Single-thread steps per second.
fn single(
    registry: &Registry,
    id: &str,
    overrides: Option<&serde_json::Value>,
    steps: u64,
) -> anyhow::Result<f64> {
    let mut env = registry.make(id, overrides)?;
    let actions = action_table(&env, 4096, 1);
    env.reset(Some(0), &Info::new())?;
    let started = Instant::now();
    for t in 0..steps {
        let step = env.step(&actions[t as usize % actions.len()])?;
        if step.done() {
            env.reset(None, &Info::new())?;
        }
    }
    Ok(steps as f64 / started.elapsed().as_secs_f64())
}

/// Vectorized steps per second (env steps, summed over envs).
fn vectorized(
    registry: &Registry,
    id: &str,
    overrides: Option<&serde_json::Value>,
    num_envs: usize,
    workers: usize,
    total: u64,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<f64> {
    let envs = (0..num_envs)
        .map(|_| registry.make(id, overrides))
        .collect::<Result<Vec<_>, _>>()?;
    let table = action_table(&envs[0], 4096, 2);
    let mut venv = ThreadedVecEnv::new(envs, workers, AutoresetMode::NextStep)?;
    venv.reset(Some(0), &Info::new())?;
    let iters = total.div_ceil(num_envs as u64);
    let mut actions: Vec<Value> = table[..num_envs.min(table.len())].to_vec();
    actions.resize(num_envs, table[0].clone());
    let started = Instant::now();
    for it in 0..iters {
        for (i, a) in actions.iter_mut().enumerate() {
            *a = table[(it as usize * 31 + i) % table.len()].clone();
        }
        venv.step(&actions)?;
        on_progress((it + 1) * num_envs as u64);
    }
    let rate = (iters * num_envs as u64) as f64 / started.elapsed().as_secs_f64();
    venv.close();
    Ok(rate)
}

/// Peak and current resident set size in MiB (Linux; `None` elsewhere).
pub fn rss_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn bench_envs(args: EnvArgs, registry: &Registry) -> anyhow::Result<()> {
    let overrides = super::parse_overrides(&args.set)?;
    let overrides = overrides.as_ref();
    let ids = if args.envs.is_empty() {
        registry.ids()
    } else {
        args.envs.clone()
    };
    anyhow::ensure!(args.num_envs >= 1, "--num-envs must be at least 1");
    anyhow::ensure!(
        args.workers.iter().all(|&w| w >= 1),
        "--workers must be at least 1"
    );
    if !args.json {
        let cols: Vec<String> = args
            .workers
            .iter()
            .map(|w| format!("{w} worker(s)"))
            .collect();
        println!(
            "{:<14} {:>14} {:>14}  (vectorized: {} envs)",
            "env",
            "1 env steps/s",
            cols.join("  "),
            args.num_envs
        );
    }
    for id in &ids {
        let one = single(registry, id, overrides, args.steps)
            .with_context(|| format!("benchmarking {id}"))?;
        let mut vec_rates = Vec::new();
        for &w in &args.workers {
            vec_rates.push(vectorized(
                registry,
                id,
                overrides,
                args.num_envs,
                w,
                args.vec_steps,
                |_| {},
            )?);
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "env": id, "single_steps_per_s": one, "num_envs": args.num_envs,
                    "vectorized": args.workers.iter().zip(&vec_rates)
                        .map(|(w, r)| serde_json::json!({"workers": w, "steps_per_s": r}))
                        .collect::<Vec<_>>(),
                })
            );
        } else {
            let cells: Vec<String> = vec_rates.iter().map(|r| format!("{r:>12.0}")).collect();
            let scaling = if vec_rates.len() >= 2 {
                format!(
                    "  ({:.2}x from {} to {} workers)",
                    vec_rates[1] / vec_rates[0],
                    args.workers[0],
                    args.workers[1]
                )
            } else {
                String::new()
            };
            println!("{id:<14} {one:>14.0} {}{scaling}", cells.join("  "));
        }
    }
    if args.memory_steps > 0 {
        let id = &ids[0];
        let tenth = args.memory_steps / 10;
        let mut at_tenth = None;
        let workers = *args.workers.last().unwrap_or(&1);
        let rate = vectorized(
            registry,
            id,
            overrides,
            args.num_envs,
            workers,
            args.memory_steps,
            |done| {
                if at_tenth.is_none() && done >= tenth {
                    at_tenth = rss_mib();
                }
            },
        )?;
        let end = rss_mib();
        let fmt = |r: Option<(f64, f64)>| {
            r.map_or("n/a".to_string(), |(peak, now)| {
                format!("peak {peak:.1} MiB, current {now:.1} MiB")
            })
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({"env": id, "memory_steps": args.memory_steps,
                    "rss_at_tenth_mib": at_tenth.map(|r| r.0), "rss_at_end_mib": end.map(|r| r.0),
                    "steps_per_s": rate})
            );
        } else {
            println!(
                "memory {id}: after {tenth} steps {}; after {} steps {}",
                fmt(at_tenth),
                args.memory_steps,
                fmt(end)
            );
        }
    }
    Ok(())
}
