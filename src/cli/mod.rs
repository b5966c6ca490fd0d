//! The command-line interface: argument parsing and one module per command.

mod bench;
mod chat;
mod check;
mod dpo;
mod envs;
mod eval_language;
mod experiment;
mod images;
mod inspect;
mod labels;
mod pairs;
mod policies;
mod progress;
mod rlhf;
mod rollout;
mod world_models;

use clap::{Parser, Subcommand};
use dreamgym_agents::world_models::Stage;
use dreamgym_envs::Registry;

pub use dreamgym_agents::{CollectConfig, CollectSummary, Experiment, collect};
pub use progress::CliProgress;

/// dreamgym: simulate, record and benchmark reinforcement-learning environments headless.
#[derive(Debug, Parser)]
#[command(name = "dreamgym", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the registered environments with their observation and action spaces.
    Envs(envs::Args),
    /// Collect episodes with a policy on worker threads and record them to disk.
    Rollout(rollout::Args),
    /// Join the shards of one rollout (`rollout --first-episode`) into one dataset.
    Merge(rollout::MergeArgs),
    /// List the kinds of policy that `--policy` accepts.
    Policies(policies::Args),
    /// Summarize a recorded dataset (episodes, steps, returns, spaces, damaged chunks).
    Inspect(inspect::Args),
    /// Run the conformance checker on an environment.
    Check(check::Args),
    /// Give a language controller an instruction on Tabletop-v0 and watch it act.
    Chat(chat::Args),
    /// Evaluate a policy on Tabletop-v0's language splits with physics execution.
    EvalLanguage(eval_language::Args),
    /// Run an experiment from a TOML config (the embedded default when none is given).
    Run(experiment::Args),
    /// Sample two episodes from a language model per start state, for preference labels.
    Pairs(pairs::Args),
    /// Preference labels of a pairs folder: stats, synthetic labels, TRL export and import.
    #[command(subcommand)]
    Labels(labels::Command),
    /// Fine-tune a language model on labeled pairs (DPO, IPO, hinge, robust DPO).
    Dpo(dpo::Args),
    /// RLHF: a reward model trained on labeled pairs, then RLOO against it (KL to the start).
    Rlhf(rlhf::Args),
    /// Save what an env's camera sees (pixel observations) as a PNG.
    Render(images::RenderArgs),
    /// Turn a recorded pixel episode into an animated GIF.
    ExportGif(images::GifArgs),
    /// Watch an agent live or replay recorded episodes in a window (needs `--features viewer`).
    #[cfg(feature = "viewer")]
    View(dreamgym_viewer::ViewArgs),
    /// Watch an agent live or replay recorded episodes in a window (this build has no viewer).
    #[cfg(not(feature = "viewer"))]
    View(NoViewer),
    /// Label pairs of episodes in a window: both replay side by side, arrow keys choose, each
    /// label is saved at once (needs `--features viewer`).
    #[cfg(feature = "viewer")]
    Label(dreamgym_viewer::LabelArgs),
    /// Label pairs of episodes in a window (this build has no viewer).
    #[cfg(not(feature = "viewer"))]
    Label(NoViewer),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Command),
    /// World Models: train V (the VAE) on an experiment's recorded frames.
    TrainVae(world_models::StageArgs),
    /// World Models: encode the frames with V, then train M (the MDN-RNN).
    TrainMdnrnn(world_models::StageArgs),
    /// World Models: train C with CMA-ES in the real env or the dream.
    TrainController(world_models::StageArgs),
    /// World Models: evaluate C against a random policy, then write the report.
    Eval(world_models::StageArgs),
}

/// Parses the process arguments and runs the command with `registry`, printing errors with
/// their context. Returns the process exit code.
pub fn main_with_registry(registry: Registry) -> i32 {
    let cli = Cli::parse();
    // Listing commands end quietly when their reader goes away (`dreamgym envs | head`,
    // `dreamgym labels export ... | head`), as Unix tools do; the labels commands write every
    // label before they print. Long work keeps SIGPIPE ignored: its progress output drops
    // lines instead, and the work goes on.
    if matches!(
        cli.command,
        Command::Envs(_)
            | Command::Policies(_)
            | Command::Check(_)
            | Command::Bench(_)
            | Command::Inspect(_)
            | Command::Labels(_)
    ) {
        restore_sigpipe();
    }
    match run(cli, &registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Stopped by Ctrl-C: the shell's convention for SIGINT.
            if e.downcast_ref::<dreamgym_agents::Interrupted>().is_some() {
                130
            } else {
                1
            }
        }
    }
}

/// Puts SIGPIPE back to its default action (the Rust runtime ignores it).
fn restore_sigpipe() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: installs the default disposition for one signal; no handler code runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli, registry: &Registry) -> anyhow::Result<()> {
    match cli.command {
        Command::Envs(a) => envs::run(a, registry),
        Command::Rollout(a) => rollout::run(a, registry),
        Command::Merge(a) => rollout::merge(a),
        Command::Policies(a) => policies::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Check(a) => check::run(a, registry),
        Command::Chat(a) => chat::run(a, registry),
        Command::EvalLanguage(a) => eval_language::run(a, registry),
        Command::Run(a) => experiment::run(a, registry),
        Command::Pairs(a) => pairs::run(a, registry),
        Command::Labels(c) => labels::run(c),
        Command::Dpo(a) => dpo::run(a, registry),
        Command::Rlhf(a) => rlhf::run(a, registry),
        Command::Render(a) => images::render(a, registry),
        Command::ExportGif(a) => images::export_gif(a),
        #[cfg(feature = "viewer")]
        Command::View(a) => dreamgym_viewer::run(a, registry),
        #[cfg(not(feature = "viewer"))]
        Command::View(_) => anyhow::bail!(
            "this dreamgym was built without the viewer; build it with \
             `cargo run --release --features viewer -- view ...` (headless alternatives: \
             `dreamgym render`, `dreamgym export-gif`)"
        ),
        #[cfg(feature = "viewer")]
        Command::Label(a) => dreamgym_viewer::run_label(a, registry),
        #[cfg(not(feature = "viewer"))]
        Command::Label(_) => anyhow::bail!(
            "this dreamgym was built without the viewer; build it with \
             `cargo run --release --features viewer -- label ...` (headless alternatives: \
             `dreamgym labels synth`, `dreamgym labels import`)"
        ),
        Command::Bench(c) => bench::run(c, registry),
        Command::TrainVae(a) => world_models::stage(Stage::Vae, a, registry),
        Command::TrainMdnrnn(a) => world_models::stage(Stage::Mdn, a, registry),
        Command::TrainController(a) => world_models::stage(Stage::Controller, a, registry),
        Command::Eval(a) => world_models::stage(Stage::Eval, a, registry),
    }
}

/// Arguments accepted (and ignored) by `view` and `label` in a build without the viewer.
#[cfg(not(feature = "viewer"))]
#[derive(Debug, clap::Args)]
pub struct NoViewer {
    /// Everything after `view`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Parses `key=value` env-config overrides (see [`dreamgym_envs::parse_overrides`]).
pub(crate) fn parse_overrides(pairs: &[String]) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(dreamgym_envs::parse_overrides(pairs)?)
}

/// The env config of a command that runs an env in its language mode: the `--set` overrides
/// with `mode = "language"`. A `mode` other than that, or a key in `fixed` (with the reason
/// the command sets it itself), is refused rather than silently replaced.
pub(crate) fn language_overrides(
    set: &[String],
    command: &str,
    fixed: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let mut overrides = parse_overrides(set)?.unwrap_or_else(|| serde_json::json!({}));
    let map = overrides
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("--set must give key=value pairs"))?;
    if let Some(mode) = map.get("mode").filter(|m| m.as_str() != Some("language")) {
        anyhow::bail!(
            "--set mode={mode}: {command} always runs the env in its language mode \
             (`mode=language`)"
        );
    }
    for (key, why) in fixed {
        anyhow::ensure!(
            !map.contains_key(*key),
            "--set {key}=...: {command} sets `{key}` itself ({why})"
        );
    }
    map.insert("mode".into(), "language".into());
    Ok(overrides)
}

/// Makes `out` the folder of a run that `command` writes, refusing a folder that holds
/// anything else: `allowed` names what `command` itself may have left there (a run to resume
/// or its own partial outputs). A path that is a file, or a folder with other entries, is
/// an error that names it, before anything is written.
pub(crate) fn run_folder(
    out: &std::path::Path,
    command: &str,
    allowed: &[&str],
) -> anyhow::Result<()> {
    use anyhow::Context;
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => anyhow::bail!(
            "{} exists and is not a folder: `dreamgym {command} --out` names a folder for the run",
            out.display()
        ),
        Ok(_) => {
            let entries = std::fs::read_dir(out)
                .with_context(|| format!("cannot read the folder {}", out.display()))?;
            let mut others = Vec::new();
            for e in entries {
                let name = e
                    .with_context(|| format!("cannot read the folder {}", out.display()))?
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                // Hidden names are the atomic writer's temporaries (`.lm.json.tmp-<pid>`).
                if !name.starts_with('.') && !allowed.contains(&name.as_str()) {
                    others.push(name);
                }
            }
            others.sort();
            anyhow::ensure!(
                others.is_empty(),
                "{} already holds {} that `dreamgym {command}` did not write: choose a new \
                 folder for the run, or delete that one",
                out.display(),
                others
                    .iter()
                    .take(4)
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if others.len() > 4 { ", ..." } else { "" }
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the folder {}", out.display()))
}

/// `--pairs` folders, each once: the same folder twice (however spelled) would count its
/// preferences twice.
pub(crate) fn distinct_folders(dirs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for d in dirs {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if let Some(first) = seen.insert(key, d) {
            anyhow::bail!(
                "--pairs names the same folder twice ({} and {}): its labels would count twice",
                first.display(),
                d.display()
            );
        }
    }
    Ok(())
}
