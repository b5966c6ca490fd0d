//! `dreamgym run`: an experiment described by one TOML file (see `dreamgym_agents::Experiment`).

use std::path::PathBuf;

use dreamgym_agents::{Experiment, OnChange, load_experiment, run_experiment};
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
    /// Compute device of the trained stages (World Models, Decision Transformer): `cpu`,
    /// `cuda`, `cuda:N` (a `--features cuda` build).
    #[arg(long)]
    device: Option<String>,
    /// How progress is shown: `bars` (a terminal's progress bars, or a plain line every 10 s
    /// without a terminal) or `json` (one JSON object per line on stdout, for programs that
    /// drive dreamgym, such as the Python package's `dreamgym.run`).
    #[arg(long, value_enum, default_value_t = ProgressKind::Bars)]
    progress: ProgressKind,
    #[command(flatten)]
    on_change: OnChangeArgs,
}

/// How `dreamgym run` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressKind {
    /// Progress bars on a terminal, plain lines otherwise.
    Bars,
    /// JSON lines on stdout.
    Json,
}

/// What to do when the run folder was made with another config.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OnChangeArgs {
    /// Continue a run whose config changed, when every change only adds work (more episodes,
    /// epochs or generations; other eval settings).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Discard the first stage whose config changed and every stage after it, then redo them.
    #[arg(long)]
    force: bool,
}

impl OnChangeArgs {
    /// The library's setting.
    pub fn get(self) -> OnChange {
        match (self.resume, self.force) {
            (true, _) => OnChange::Resume,
            (_, true) => OnChange::Force,
            _ => OnChange::Ask,
        }
    }
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
    if let Some(d) = device {
        if let Some(wm) = exp.world_models.as_mut() {
            wm.device = d.clone();
        }
        if let Some(dt) = exp.decision_transformer.as_mut() {
            dt.device = d;
        }
    }
    Ok((exp, origin))
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let (exp, origin) = load(args.config.as_deref(), args.out, args.device)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&exp)?);
        return Ok(());
    }
    if exp.requires.is_empty() {
        // Early, before anything prints; with `requires`, the policy it names may only exist
        // once the required experiments ran (`run_experiment` validates then).
        exp.validate(registry)?;
    }
    let run = exp.run_dir()?;
    eprintln!(
        "experiment `{}` ({origin}) in {}",
        exp.name,
        run.root().display()
    );
    let progress: Box<dyn dreamgym_agents::Progress> = match args.progress {
        ProgressKind::Bars => Box::new(CliProgress::new()),
        ProgressKind::Json => {
            super::progress::json_line(serde_json::json!({
                "event": "run", "name": exp.name, "dir": run.root(), "config": origin
            }));
            Box::new(super::progress::JsonProgress::new())
        }
    };
    run_experiment(&exp, registry, args.on_change.get(), progress.as_ref())?;
    if exp.collects() {
        super::inspect::print_summary(&run.data())?;
    }
    if exp.language_dpo.is_some() {
        println!(
            "report: {}",
            run.file(dreamgym_agents::language_dpo::DPO_REPORT)
                .display()
        );
    }
    Ok(())
}
