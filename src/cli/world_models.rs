//! The World Models stages as commands: `train-vae`, `train-mdnrnn`, `train-controller`, `eval`
//! (each reads the same experiment config as `dreamgym run` and works in its run folder).

use std::path::PathBuf;

use dreamgym_agents::world_models::{Stage, run_world_models};
use dreamgym_agents::{config_to_save, prepare_run};
use dreamgym_envs::Registry;

use super::experiment::load;
use super::progress::CliProgress;

/// Arguments of each stage command.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// Experiment config (TOML) with a `[world_models]` section; without one, the embedded
    /// default.
    config: Option<PathBuf>,
    /// The run folder (default: the config's `out`, else `runs/<name>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compute device: `cpu`, `cuda`, `cuda:N` (overrides `world_models.device`).
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    on_change: super::experiment::OnChangeArgs,
}

pub fn stage(which: Stage, args: StageArgs, registry: &Registry) -> anyhow::Result<()> {
    let (exp, _) = load(args.config.as_deref(), args.out, args.device)?;
    let wm = exp.world_models()?.clone();
    exp.validate(registry)?;
    let run = exp.run_dir()?;
    let progress = CliProgress::new();
    let _lock = run.lock()?;
    // A folder without experiment.toml (accepted by --resume) gets one only once the stage's
    // own checks have agreed with the config.
    let had_config = run.experiment().exists();
    prepare_run(&exp, &run, args.on_change.get(), &progress)?;
    let saved = config_to_save(&exp, &run);
    let save = || -> anyhow::Result<()> {
        dreamgym_base::write_atomic(
            &run.experiment(),
            toml::to_string_pretty(&saved)?.as_bytes(),
        )
        .map_err(Into::into)
    };
    if had_config {
        save()?;
    }
    run_world_models(&wm, &run, registry, which, &progress, None)?;
    if !had_config && run.data().join("dataset.json").exists() {
        save()?;
    }
    Ok(())
}
