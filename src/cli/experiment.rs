//! `dreamgym run`: an experiment described by one TOML file.
//!
//! Today an experiment is a rollout stage (collect and record episodes) followed by a summary
//! of the recorded dataset; the world-model and policy stages join it as they land. Every field
//! has a default, so a config names only what it changes. The config is written beside the
//! data as `experiment.toml`.

use std::path::PathBuf;

use anyhow::Context;
use dreamgym_envs::Registry;
use serde::{Deserialize, Serialize};

/// The embedded default experiment, used when `dreamgym run` gets no file.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../../experiments/default.toml");

/// Arguments of `dreamgym run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment config (TOML). Without one, the embedded default runs
    /// (`experiments/default.toml`).
    config: Option<PathBuf>,
    /// Override the output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    /// A name for the run; output goes to `out` if set, else `runs/<name>`.
    pub name: String,
    /// The collection stage.
    pub rollout: RolloutConfig,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "default".into(),
            rollout: RolloutConfig::default(),
        }
    }
}

/// Settings of a rollout: which env, which policy, how many episodes, where to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Environment id.
    pub env: String,
    /// Overrides of the env's default config.
    pub env_config: toml::Table,
    /// Action policy: `random` (uniform samples of the action space).
    pub policy: String,
    /// Episodes to record.
    pub episodes: usize,
    /// Environments stepped together (the data do not depend on `workers`).
    pub num_envs: usize,
    /// Worker threads.
    pub workers: usize,
    /// Seed of the first env (env `i` gets `seed + i`) and of the policy.
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Add to an existing dataset of the same env instead of refusing.
    pub append: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            env: "CartPole-v0".into(),
            env_config: toml::Table::new(),
            policy: "random".into(),
            episodes: 100,
            num_envs: 8,
            workers: 2,
            seed: 0,
            out: PathBuf::from("data/rollout"),
            append: false,
        }
    }
}

impl RolloutConfig {
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
        anyhow::ensure!(
            super::rollout::POLICIES.contains(&self.policy.as_str()),
            "unknown policy `{}`; known: {}",
            self.policy,
            super::rollout::POLICIES.join(", ")
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

/// Parses an experiment from TOML text.
pub fn parse_experiment(text: &str, origin: &str) -> anyhow::Result<Experiment> {
    toml::from_str(text).with_context(|| format!("{origin} is not a valid experiment config"))
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let (text, origin) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read experiment config {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            DEFAULT_EXPERIMENT.to_string(),
            "the embedded default experiment".into(),
        ),
    };
    let mut exp = parse_experiment(&text, &origin)?;
    if let Some(out) = args.out {
        exp.rollout.out = out;
    }
    if args.print_config {
        print!("{}", toml::to_string_pretty(&exp)?);
        return Ok(());
    }
    exp.rollout.validate(registry)?;
    eprintln!("experiment `{}` ({origin})", exp.name);
    let summary = super::rollout::collect(registry, &exp.rollout, true)?;
    let config_path = exp.rollout.out.join("experiment.toml");
    std::fs::write(&config_path, toml::to_string_pretty(&exp)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("{summary}");
    super::inspect::print_summary(&exp.rollout.out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses_and_validates() {
        let exp = parse_experiment(DEFAULT_EXPERIMENT, "default").unwrap();
        exp.rollout.validate(&Registry::with_builtins()).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(parse_experiment("[rollout]\nepisodez = 3\n", "x").is_err());
        let exp = parse_experiment("[rollout]\nepisodes = 0\n", "x").unwrap();
        assert!(exp.rollout.validate(&Registry::with_builtins()).is_err());
        let exp = parse_experiment("[rollout]\nenv = \"Nope-v0\"\n", "x").unwrap();
        let err = exp
            .rollout
            .validate(&Registry::with_builtins())
            .unwrap_err();
        assert!(format!("{err:#}").contains("CartPole-v0"));
        let exp = parse_experiment("[rollout]\npolicy = \"genius\"\n", "x").unwrap();
        assert!(exp.rollout.validate(&Registry::with_builtins()).is_err());
    }
}
