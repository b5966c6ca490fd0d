//! `dreamgym run`: an experiment described by one TOML file (see `dreamgym_agents::Experiment`).

use std::path::PathBuf;

use dreamgym_agents::{Experiment, load_experiment, run_experiment};
use dreamgym_envs::Registry;

use super::progress::CliProgress;

/// Arguments of `dreamgym run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment config (TOML). Without one, the embedded default runs
    /// (`experiments/world-models-racer.toml`).
    config: Option<PathBuf>,
    /// The run folder (default: the config's `out`, else `runs/<name>`); the dataset goes in
    /// `<out>/data`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
    /// Compute device of the World Models stages: `cpu`, `cuda`, `cuda:N`.
    #[arg(long)]
    device: Option<String>,
}

/// Reads the experiment and applies `--out` and `--device`.
pub fn load(
    config: Option<&std::path::Path>,
    out: Option<PathBuf>,
    device: Option<String>,
) -> anyhow::Result<(Experiment, String)> {
    let (mut exp, origin) = load_experiment(config)?;
    if let Some(out) = out {
        exp.out = Some(out);
        // The dataset follows the run folder.
        exp.rollout.out = None;
    }
    if let (Some(d), Some(wm)) = (device, exp.world_models.as_mut()) {
        wm.device = d;
    }
    Ok((exp, origin))
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let (exp, origin) = load(args.config.as_deref(), args.out, args.device)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&exp)?);
        return Ok(());
    }
    exp.validate(registry)?;
    let run = exp.run_dir()?;
    eprintln!(
        "experiment `{}` ({origin}) in {}",
        exp.name,
        run.root().display()
    );
    let progress = CliProgress::new();
    run_experiment(&exp, registry, &progress)?;
    super::inspect::print_summary(&run.data())
}
