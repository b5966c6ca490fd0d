//! Experiments: one TOML file describes a run, a section per pipeline. `[rollout]` collects
//! episodes with a policy; `[world_models]`, when present, trains World Models on them. The
//! run folder is `out` (default `runs/<name>`), with the dataset in `<run>/data`; the resolved
//! config is kept as `<run>/experiment.toml`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dreamgym_envs::Registry;
use serde::{Deserialize, Serialize};

use crate::world_models::{Outcome, Stage, WorldModelsConfig, run_world_models};
use crate::{CollectConfig, CollectSummary, Interrupted, Progress, RunDir, collect};

/// The embedded default experiment, run when `dreamgym run` gets no file.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../../experiments/world-models-racer.toml");

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    /// A name for the run; the run folder is `runs/<name>` unless `out` is set.
    pub name: String,
    /// The run folder (default `runs/<name>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Collection.
    pub rollout: CollectConfig,
    /// World Models (absent: collection only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub world_models: Option<WorldModelsConfig>,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "default".into(),
            out: None,
            rollout: CollectConfig::default(),
            world_models: None,
        }
    }
}

/// Parses an experiment from TOML text; `origin` names it in errors.
pub fn parse_experiment(text: &str, origin: &str) -> anyhow::Result<Experiment> {
    toml::from_str(text).with_context(|| format!("{origin} is not a valid experiment config"))
}

/// Reads an experiment file (or the embedded default when `path` is `None`); returns it with
/// a description of where it came from.
pub fn load_experiment(path: Option<&Path>) -> anyhow::Result<(Experiment, String)> {
    let (text, origin) = match path {
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
    Ok((parse_experiment(&text, &origin)?, origin))
}

impl Experiment {
    /// The run folder: `out`, else `runs/<name>`. A config from before run folders had one
    /// definition may set `rollout.out` to `<run>/data`; then the run folder is its parent.
    pub fn run_dir(&self) -> anyhow::Result<RunDir> {
        let run = match (&self.out, &self.rollout.out) {
            (Some(out), _) => RunDir::new(out),
            (None, Some(data)) => RunDir::new(data.parent().unwrap_or(Path::new(""))),
            (None, None) => RunDir::for_name(&self.name),
        };
        if let Some(data) = &self.rollout.out {
            anyhow::ensure!(
                *data == run.data(),
                "rollout.out = {:?} is not the run's dataset folder {:?}: the dataset always goes \
                 in <run>/data; set the top-level `out` to the run folder instead",
                data,
                run.data()
            );
        }
        Ok(run)
    }

    /// Checks every section, naming the first bad field.
    pub fn validate(&self, registry: &Registry) -> anyhow::Result<()> {
        self.rollout.validate(registry)?;
        self.run_dir()?;
        if let Some(wm) = &self.world_models {
            wm.validate().context("invalid [world_models]")?;
        }
        Ok(())
    }

    /// The `[world_models]` section, or an error saying the config has none.
    pub fn world_models(&self) -> anyhow::Result<&WorldModelsConfig> {
        self.world_models.as_ref().context(
            "this experiment has no [world_models] section (see experiments/world-models-racer.toml)",
        )
    }
}

/// Checks that the dataset already in `data` is the one `rollout` would record: the same env,
/// resolved config, policy and seed, and at least as many episodes. Returns how many it holds.
pub(crate) fn check_reusable(
    rollout: &CollectConfig,
    registry: &Registry,
    data: &Path,
) -> anyhow::Result<usize> {
    let ds = dreamgym_envs::recording::Dataset::open(data)
        .with_context(|| format!("cannot reuse the dataset in {}", data.display()))?;
    let meta = ds.meta();
    let overrides = rollout.env_overrides()?;
    let resolved = registry.resolve_config(&rollout.env, overrides.as_ref())?;
    let what = |env: &str, config: &serde_json::Value, policy: &str, seed: Option<u64>| {
        format!("{env} {config}, policy `{policy}`, seed {seed:?}")
    };
    let recorded = what(&meta.env_id, &meta.env_config, &meta.policy, meta.seed);
    let asked = what(&rollout.env, &resolved, &rollout.policy, Some(rollout.seed));
    anyhow::ensure!(
        recorded == asked,
        "{} holds episodes of {recorded}, but the experiment asks for {asked}: give the \
         experiment another `name` or `out`, or delete the folder to collect again",
        data.display()
    );
    // Every chunk is read and checked: damaged episodes do not count.
    let report = ds.load();
    let n = report.episodes.len();
    if let Some((path, e)) = report.damaged.first() {
        anyhow::bail!(
            "{} has a damaged chunk ({}: {e}); delete the folder to collect again",
            data.display(),
            path.display()
        );
    }
    anyhow::ensure!(
        n >= rollout.episodes,
        "{} holds {n} of the {} episodes rollout.episodes asks for (an interrupted \
         collection?): delete the folder to collect again, or lower rollout.episodes",
        data.display(),
        rollout.episodes
    );
    Ok(n)
}

/// The files and folders a run writes in its folder.
const RUN_FILES: &[&str] = &[
    "data",
    "vae.safetensors",
    "vae.json",
    "mdnrnn.safetensors",
    "mdnrnn.json",
    "series.safetensors",
    "controller.json",
    "eval.json",
    "report.md",
    "figures",
    "metrics",
    "tb",
];

/// Refuses a folder that holds files a run would overwrite but is not a run (no
/// `experiment.toml`, no dataset): they belong to something else.
fn check_run_folder(run: &RunDir) -> anyhow::Result<()> {
    let is_run = run.experiment().exists() || run.data().join("dataset.json").exists();
    if let Some(clash) = RUN_FILES.iter().find(|f| run.file(f).exists())
        && !is_run
    {
        anyhow::bail!(
            "{} is not a dreamgym run folder (no experiment.toml, no data/dataset.json) but \
             holds {clash}, which a run would overwrite; choose another `out` or `--out`",
            run.root().display()
        );
    }
    Ok(())
}

/// What an experiment did.
#[derive(Debug, Default)]
pub struct ExperimentOutcome {
    /// The collection (absent when an existing dataset was reused).
    pub collect: Option<CollectSummary>,
    /// The World Models stages.
    pub world_models: Option<Outcome>,
}

/// Runs an experiment: collection, then every pipeline section it has, in the run folder.
pub fn run_experiment(
    exp: &Experiment,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<ExperimentOutcome> {
    let started = std::time::Instant::now();
    exp.validate(registry)?;
    let run = exp.run_dir()?;
    let data = run.data();
    check_run_folder(&run)?;
    let mut outcome = ExperimentOutcome::default();
    if exp.world_models.is_some() && data.join("dataset.json").exists() && !exp.rollout.append {
        let n = check_reusable(&exp.rollout, registry, &data)?;
        progress.note(&format!(
            "collect: reusing the {n} episodes in {} (same env, config, policy and seed)",
            data.display()
        ));
    } else {
        let summary = collect(registry, &exp.rollout, &data, progress)?;
        progress.done(&summary.to_string());
        let stopped = summary.interrupted;
        outcome.collect = Some(summary);
        if stopped {
            return Err(Interrupted {
                stage: "collect".into(),
                saved: format!("the finished episodes are in {}", data.display()),
            }
            .into());
        }
    }
    dreamgym_base::write_atomic(&run.experiment(), toml::to_string_pretty(exp)?.as_bytes())?;
    if let Some(wm) = &exp.world_models {
        outcome.world_models = Some(run_world_models(
            wm,
            &run,
            registry,
            Stage::All,
            progress,
            Some(started),
        )?);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses_and_validates() {
        let exp = parse_experiment(DEFAULT_EXPERIMENT, "default").unwrap();
        exp.validate(&Registry::with_builtins()).unwrap();
        assert_eq!(
            exp.run_dir().unwrap().data(),
            Path::new("runs/world-models-racer/data")
        );
    }

    #[test]
    fn shipped_world_models_configs_parse_and_validate() {
        for name in [
            "world-models-racer.toml",
            "world-models-racer-dream.toml",
            "world-models-paper.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../experiments")
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
        // Sizes that could only end in an allocation failure, and settings that would only
        // fail after training, are refused before any work.
        for (bad, needle) in [
            (
                "[world_models.vae.model]\nz_size = 1000000000000\n",
                "65536",
            ),
            ("[world_models.mdnrnn.model]\nmixtures = 0\n", "mixtures"),
            (
                "[world_models.mdnrnn.model]\nhidden = 100000000000\n",
                "65536",
            ),
            (
                "[world_models.controller.cmaes]\npopulation = 1\n",
                "population",
            ),
            ("[world_models.controller.cmaes]\nsigma0 = -1.0\n", "sigma0"),
        ] {
            let exp = parse_experiment(bad, "x").unwrap();
            let err = format!(
                "{:#}",
                exp.validate(&Registry::with_builtins()).unwrap_err()
            );
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn a_dataset_is_reused_only_when_it_is_what_the_experiment_would_record() {
        let registry = Registry::with_builtins();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        crate::testing::record(&data, 4, 12).unwrap();
        let exp = |extra: &str| {
            let text = format!(
                "[rollout]\nenv = \"Racer-v0\"\nepisodes = 4\n\
                 env_config = {{ obs = \"pixels\", width = 16, height = 16 }}\n{extra}"
            );
            parse_experiment(&text, "x").unwrap().rollout
        };
        assert_eq!(check_reusable(&exp(""), &registry, &data).unwrap(), 4);
        let mut more = exp("");
        more.episodes = 8;
        for (r, needle) in [(exp("seed = 1\n"), "seed Some(1)"), (more, "4 of the 8")] {
            let err = format!("{:#}", check_reusable(&r, &registry, &data).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
        let mut cartpole = exp("");
        cartpole.env = "CartPole-v0".into();
        cartpole.env_config = toml::Table::new();
        let err = format!(
            "{:#}",
            check_reusable(&cartpole, &registry, &data).unwrap_err()
        );
        assert!(
            err.contains("CartPole-v0") && err.contains("Racer-v0"),
            "{err}"
        );
    }

    #[test]
    fn a_folder_with_files_a_run_would_overwrite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        // Unrelated files are fine: nothing of theirs is overwritten.
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        check_run_folder(&run).unwrap();
        std::fs::write(dir.path().join("report.md"), "mine").unwrap();
        let err = format!("{:#}", check_run_folder(&run).unwrap_err());
        assert!(err.contains("report.md"), "{err}");
        // A run's own folder is a run.
        std::fs::write(run.experiment(), "name = \"x\"\n").unwrap();
        check_run_folder(&run).unwrap();
    }

    #[test]
    fn unknown_fields_bad_values_and_a_stray_dataset_folder_are_rejected() {
        let registry = Registry::with_builtins();
        assert!(parse_experiment("[rollout]\nepisodez = 3\n", "x").is_err());
        let exp = parse_experiment("[rollout]\nepisodes = 0\n", "x").unwrap();
        assert!(exp.rollout.validate(&registry).is_err());
        let exp = parse_experiment("[rollout]\nenv = \"Nope-v0\"\n", "x").unwrap();
        let err = exp.rollout.validate(&registry).unwrap_err();
        assert!(format!("{err:#}").contains("CartPole-v0"));
        let exp = parse_experiment("[rollout]\npolicy = \"genius\"\n", "x").unwrap();
        let err = format!("{:#}", exp.rollout.validate(&registry).unwrap_err());
        assert!(err.contains("genius") && err.contains("random"), "{err}");
        let exp = parse_experiment("name = \"a\"\n[rollout]\nout = \"elsewhere\"\n", "x").unwrap();
        let err = format!("{:#}", exp.validate(&registry).unwrap_err());
        assert!(err.contains("<run>/data"), "{err}");
        let exp = parse_experiment("name = \"a\"\nout = \"r\"\n", "x").unwrap();
        assert_eq!(exp.run_dir().unwrap().data(), Path::new("r/data"));
        // A config from before run folders had one definition still loads.
        let legacy = "name = \"a\"\n[rollout]\nout = \"old/b/data\"\n";
        let exp = parse_experiment(legacy, "x").unwrap();
        assert_eq!(exp.run_dir().unwrap().root(), Path::new("old/b"));
    }
}
