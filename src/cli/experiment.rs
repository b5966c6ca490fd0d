//! `dreamgym run`: an experiment described by one TOML file.
//!
//! An experiment is a rollout stage (collect and record episodes), then, when the config has a
//! `[world_models]` section, the World Models pipeline on the recorded pixels: train V, encode,
//! train M, train C (real env or dream), evaluate, report. The run folder is the parent of
//! `rollout.out`. Every field has a default, so a config names only what it changes. The
//! config is written beside the data as `experiment.toml`.

use std::path::PathBuf;

use anyhow::Context;
use dreamgym_envs::Registry;
use serde::{Deserialize, Serialize};

/// The embedded default experiment, used when `dreamgym run` gets no file.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../../experiments/world-models-racer.toml");

/// Arguments of `dreamgym run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment config (TOML). Without one, the embedded default runs
    /// (`experiments/world-models-racer.toml`).
    config: Option<PathBuf>,
    /// Override the output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    print_config: bool,
    /// Compute device of the World Models stages: `cpu`, `cuda`, `cuda:N`.
    #[arg(long)]
    device: Option<String>,
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    /// A name for the run; output goes to `out` if set, else `runs/<name>`.
    pub name: String,
    /// The collection stage.
    pub rollout: RolloutConfig,
    /// The World Models stages (absent: collection only).
    pub world_models: Option<dreamgym_agents::WorldModelsConfig>,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "default".into(),
            rollout: RolloutConfig::default(),
            world_models: None,
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

impl Experiment {
    /// The run folder of the World Models stages: the parent of `rollout.out`.
    pub fn run_dir(&self) -> PathBuf {
        match self.rollout.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Checks every section.
    pub fn validate(&self, registry: &Registry) -> anyhow::Result<()> {
        self.rollout.validate(registry)?;
        if let Some(wm) = &self.world_models {
            wm.validate().context("invalid [world_models]")?;
        }
        Ok(())
    }

    /// The `[world_models]` section, or an error saying the config has none.
    pub fn world_models(&self) -> anyhow::Result<&dreamgym_agents::WorldModelsConfig> {
        self.world_models
            .as_ref()
            .context("this experiment has no [world_models] section (see experiments/world-models-racer.toml)")
    }
}

/// Reads an experiment file (or the embedded default) and applies `--out`.
pub fn load(
    config: Option<&std::path::Path>,
    out: Option<PathBuf>,
) -> anyhow::Result<(Experiment, String)> {
    let (text, origin) = match config {
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
    if let Some(out) = out {
        exp.rollout.out = out;
    }
    Ok((exp, origin))
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (mut exp, origin) = load(args.config.as_deref(), args.out)?;
    if let (Some(d), Some(wm)) = (args.device, exp.world_models.as_mut()) {
        wm.device = d;
    }
    if args.print_config {
        print!("{}", toml::to_string_pretty(&exp)?);
        return Ok(());
    }
    exp.validate(registry)?;
    eprintln!("experiment `{}` ({origin})", exp.name);
    let data = &exp.rollout.out;
    if exp.world_models.is_some() && data.join("dataset.json").exists() && !exp.rollout.append {
        eprintln!(
            "collect: {} already holds a dataset; reusing it",
            data.display()
        );
    } else {
        let summary = super::rollout::collect(registry, &exp.rollout, true)?;
        println!("{summary}");
    }
    let config_path = data.join("experiment.toml");
    dreamgym_world_model::nn::write_atomic(&config_path, toml::to_string_pretty(&exp)?.as_bytes())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    super::inspect::print_summary(data)?;
    if let Some(wm) = &exp.world_models {
        super::world_models::pipeline(&exp, wm, registry, started)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses_and_validates() {
        let exp = parse_experiment(DEFAULT_EXPERIMENT, "default").unwrap();
        exp.validate(&Registry::with_builtins()).unwrap();
    }

    #[test]
    fn shipped_world_models_configs_parse_and_validate() {
        for name in [
            "world-models-racer.toml",
            "world-models-racer-dream.toml",
            "world-models-paper.toml",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("experiments")
                .join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let mut exp = parse_experiment(&text, name).unwrap();
            // The paper-scale config asks for CUDA, which this test build lacks.
            exp.world_models.as_mut().expect(name).device = "cpu".into();
            exp.validate(&Registry::with_builtins()).unwrap();
        }
        let bad = "[world_models.vae.model]\nimage_size = 50\n";
        let exp = parse_experiment(bad, "x").unwrap();
        let err = format!(
            "{:#}",
            exp.validate(&Registry::with_builtins()).unwrap_err()
        );
        assert!(err.contains("image_size"), "{err}");
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
