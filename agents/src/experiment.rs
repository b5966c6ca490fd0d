//! Experiments: one TOML file describes a run, a section per pipeline. `[rollout]` collects
//! episodes with a policy; `[world_models]`, when present, trains World Models on them. The
//! run folder is `out` (default `runs/<name>`), with the dataset in `<run>/data`; the resolved
//! config is kept as `<run>/experiment.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dreamgym_envs::Registry;
use serde::{Deserialize, Serialize};

use crate::decision_transformer::{
    DecisionTransformerStage, DtEvalSummary, DtTrainSummary, run_decision_transformer,
};
use crate::language::{LanguageSftStage, SftEvalSummary, SftTrainSummary, run_language_sft};
use crate::language_dpo::{LanguageDpoStage, LanguageDpoSummary, run_language_dpo};
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
    /// Experiments this one builds on (their config files, or `default` for the embedded
    /// default), run first in order: each is "already done" when its run is complete, and
    /// refuses to go on when its run folder was made with another config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Collection.
    pub rollout: CollectConfig,
    /// World Models (absent: collection only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub world_models: Option<WorldModelsConfig>,
    /// A Decision Transformer trained on the collected episodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_transformer: Option<DecisionTransformerStage>,
    /// A language controller fine-tuned on the collected language episodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_sft: Option<LanguageSftStage>,
    /// Preference fine-tuning of a language controller in rounds, with RLHF beside it (reads
    /// no dataset: its pairs are sampled from the model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_dpo: Option<LanguageDpoStage>,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "default".into(),
            out: None,
            requires: Vec::new(),
            rollout: CollectConfig::default(),
            world_models: None,
            decision_transformer: None,
            language_sft: None,
            language_dpo: None,
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
        if let Some(dt) = &self.decision_transformer {
            dt.validate().context("invalid [decision_transformer]")?;
        }
        if let Some(dpo) = &self.language_dpo {
            dpo.validate().context("invalid [language_dpo]")?;
        }
        Ok(())
    }

    /// Whether the run records episodes into `<run>/data`: every pipeline but `[language_dpo]`
    /// trains on them, and an experiment with no pipeline is a collection.
    pub fn collects(&self) -> bool {
        self.language_dpo.is_none()
            || self.world_models.is_some()
            || self.decision_transformer.is_some()
            || self.language_sft.is_some()
    }

    /// The `[world_models]` section, or an error saying the config has none.
    pub fn world_models(&self) -> anyhow::Result<&WorldModelsConfig> {
        self.world_models.as_ref().context(
            "this experiment has no [world_models] section (see experiments/world-models-racer.toml)",
        )
    }
}

/// What `run` does when the run folder was made with another config than the one given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnChange {
    /// Refuse, say what differs and offer `--resume`, `--force` or another folder.
    #[default]
    Ask,
    /// Continue when every change only extends the work done (more episodes, epochs or
    /// generations, other eval settings); refuse changes that make finished work stale.
    Resume,
    /// Discard the earliest stage whose settings changed and every stage after it, then redo
    /// them.
    Force,
}

/// The parts of a run, in the order they are made: each one is made from the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The dataset in `<run>/data`.
    Data,
    /// V.
    Vae,
    /// The encoded series and M.
    Mdn,
    /// C.
    Controller,
    /// The evaluation and the report.
    Eval,
    /// The rounds of the iterative procedure (each made from the last C).
    Rounds,
    /// The Decision Transformer (made from the dataset alone).
    Dt,
    /// The fine-tuned language model (made from the dataset alone).
    Sft,
    /// The preference rounds and RLHF (made from a model, not the dataset).
    Dpo,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Data => "the dataset",
            Part::Vae => "V",
            Part::Mdn => "M",
            Part::Controller => "C",
            Part::Eval => "the evaluation",
            Part::Rounds => "the rounds",
            Part::Dt => "the Decision Transformer",
            Part::Sft => "the language model",
            Part::Dpo => "the preference rounds",
        }
    }

    /// The files and folders of the run that hold this part.
    fn files(self) -> &'static [&'static str] {
        match self {
            Part::Data => &["data"],
            Part::Vae => &[
                "vae.safetensors",
                "vae.optimizer.safetensors",
                "vae.json",
                "series.safetensors",
                "metrics/vae.csv",
                "tb/vae",
            ],
            Part::Mdn => &[
                "mdnrnn.safetensors",
                "mdnrnn.optimizer.safetensors",
                "mdnrnn.json",
                "metrics/mdnrnn.csv",
                "tb/mdnrnn",
            ],
            Part::Controller => &[
                "controller.json",
                "controller.state.json",
                "metrics/controller.csv",
                "tb/controller",
            ],
            Part::Eval => &["eval.json", "report.md", "figures"],
            Part::Rounds => &["rounds", "rounds.json", "rounds.md", "figures/rounds.png"],
            Part::Dt => &[
                "dt.safetensors",
                "dt.optimizer.safetensors",
                "dt.json",
                "dt_eval.json",
                "dt_report.md",
                "dt_bc.safetensors",
                "dt_bc.optimizer.safetensors",
                "dt_bc.json",
                "dt_bc_top10.safetensors",
                "dt_bc_top10.optimizer.safetensors",
                "dt_bc_top10.json",
                "metrics/dt_bc.csv",
                "metrics/dt_bc_top10.csv",
                "tb/dt_bc",
                "tb/dt_bc_top10",
                "figures/dt_targets.png",
                "figures/dt_loss.png",
                "metrics/dt.csv",
                "tb/dt",
            ],
            Part::Sft => &[
                "lm.safetensors",
                "lm.optimizer.safetensors",
                "lm.json",
                "lm.tokenizer.json",
                "lm_eval.json",
                "lm_zero_shot.json",
                "lm_report.md",
                "metrics/lm.csv",
                "tb/lm",
            ],
            Part::Dpo => &[
                "language_dpo.json",
                "baselines.json",
                "pairs",
                "dpo",
                "rlhf",
                "dpo_report.md",
                "figures/dpo_label_efficiency.png",
                "figures/dpo_loss.png",
                "figures/dpo_margins.png",
            ],
        }
    }

    /// Whether this part is made (directly or not) from `other`, or is it.
    fn follows(self, other: Part) -> bool {
        if self == other {
            return true;
        }
        match (self, other) {
            // Made from a model, not from the dataset.
            (Part::Dpo, _) | (_, Part::Dpo) => false,
            (_, Part::Data) => true,
            // Made from the dataset alone.
            (Part::Dt | Part::Sft, _) | (_, Part::Dt | Part::Sft) => false,
            (s, o) => s >= o,
        }
    }

    const ALL: [Part; 9] = [
        Part::Data,
        Part::Vae,
        Part::Mdn,
        Part::Controller,
        Part::Eval,
        Part::Rounds,
        Part::Dt,
        Part::Sft,
        Part::Dpo,
    ];
}

/// What a changed config field does to a run made with the old value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing recorded or trained depends on it.
    Free,
    /// The part can continue from what it holds (more of the same work).
    Extends(Part),
    /// Only an evaluation runs again; nothing trained is affected.
    Rerun(Part),
    /// The part, and everything after it, no longer match the config.
    Stale(Part),
}

/// Flattens JSON into dotted keys and leaf values (arrays are leaves).
pub(crate) fn flatten(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

fn effect(key: &str, old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> Effect {
    let more = matches!(
        (old.and_then(|v| v.as_u64()), new.and_then(|v| v.as_u64())),
        (Some(a), Some(b)) if b > a
    );
    match key {
        "name" | "out" | "rollout.out" | "rollout.workers" | "rollout.append" => Effect::Free,
        k if k == "requires" || k.starts_with("requires.") => Effect::Free,
        "world_models.device" | "world_models.controller.workers" => Effect::Free,
        "rollout.episodes" if more => Effect::Extends(Part::Data),
        "world_models.vae.epochs" if more => Effect::Extends(Part::Vae),
        "world_models.mdnrnn.epochs" if more => Effect::Extends(Part::Mdn),
        "world_models.controller.generations" if more => Effect::Extends(Part::Controller),
        "world_models.iterate.rounds" if more => Effect::Extends(Part::Rounds),
        // Only the last C's measurement and the choice are added (or left out).
        "world_models.iterate.choose_best" => Effect::Extends(Part::Rounds),
        k if k.starts_with("world_models.iterate.") => Effect::Stale(Part::Rounds),
        "decision_transformer.steps" if more => Effect::Extends(Part::Dt),
        "decision_transformer.baselines" => Effect::Extends(Part::Dt),
        "decision_transformer.device" | "decision_transformer.eval.workers" => Effect::Free,
        "decision_transformer.checkpoint_every" => Effect::Free,
        k if k.starts_with("decision_transformer.eval.") => Effect::Rerun(Part::Dt),
        k if k.starts_with("decision_transformer.") => Effect::Stale(Part::Dt),
        "language_sft.device" | "language_sft.checkpoint_every" => Effect::Free,
        k if k.starts_with("language_sft.eval.") => Effect::Rerun(Part::Sft),
        k if k.starts_with("language_sft.") => Effect::Stale(Part::Sft),
        "language_dpo.dpo.checkpoint_every" => Effect::Free,
        k if k.starts_with("language_dpo.eval.") => Effect::Rerun(Part::Dpo),
        k if k.starts_with("language_dpo.") => Effect::Stale(Part::Dpo),
        k if k.starts_with("world_models.eval.") => Effect::Rerun(Part::Eval),
        k if k.starts_with("world_models.vae.") || k == "world_models.seed" => {
            Effect::Stale(Part::Vae)
        }
        k if k.starts_with("world_models.mdnrnn.") => Effect::Stale(Part::Mdn),
        k if k.starts_with("world_models.controller.") => Effect::Stale(Part::Controller),
        _ => Effect::Stale(Part::Data),
    }
}

/// One field whose value differs between the run's saved config and the one given.
struct Change {
    key: String,
    old: String,
    new: String,
    effect: Effect,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  {}: {} → {}", self.key, self.old, self.new)?;
        match self.effect {
            Effect::Free => Ok(()),
            Effect::Extends(p) => write!(f, " (more work for {}: --resume continues)", p.name()),
            Effect::Rerun(p) => write!(
                f,
                " ({}'s evaluation runs again: --resume continues)",
                p.name()
            ),
            Effect::Stale(p) => write!(
                f,
                " (makes {} and what follows stale: --force redoes them)",
                p.name()
            ),
        }
    }
}

fn changes(old: &Experiment, new: &Experiment, run: &RunDir) -> anyhow::Result<Vec<Change>> {
    let (a, b) = (
        flatten(&serde_json::to_value(old)?),
        flatten(&serde_json::to_value(new)?),
    );
    // A run that had no [world_models] has trained nothing that a new section could change.
    let sections = (old.world_models.is_some(), new.world_models.is_some());
    let dt_sections = (
        old.decision_transformer.is_some(),
        new.decision_transformer.is_some(),
    );
    let dpo_sections = (old.language_dpo.is_some(), new.language_dpo.is_some());
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".into(), |v| v.to_string());
    // A section the saved config lacks, while the folder holds what it makes (the saved config
    // was replaced by hand, or came from an older dreamgym): what made those is unknown.
    let mut unknown = Vec::new();
    for (missing, part, name) in [
        (
            new.world_models.is_some() && old.world_models.is_none(),
            Part::Vae,
            "world_models",
        ),
        (
            new.decision_transformer.is_some() && old.decision_transformer.is_none(),
            Part::Dt,
            "decision_transformer",
        ),
    ] {
        if missing && holds(run, part) {
            unknown.push(Change {
                key: format!("[{name}]"),
                old: "(not in experiment.toml, but the folder holds its output)".into(),
                new: "(this config)".into(),
                effect: Effect::Stale(part),
            });
        }
    }
    Ok(unknown
        .into_iter()
        .chain(
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let (o, n) = (a.get(k), b.get(k));
                    let effect = if (k.starts_with("world_models") && sections != (true, true))
                        || (k.starts_with("decision_transformer") && dt_sections != (true, true))
                        || (k.starts_with("language_dpo") && dpo_sections != (true, true))
                    {
                        Effect::Free
                    } else {
                        match effect(k, o, n) {
                            // No round made yet: nothing to be stale.
                            Effect::Stale(Part::Rounds) if !holds(run, Part::Rounds) => {
                                Effect::Free
                            }
                            e => e,
                        }
                    };
                    Change {
                        key: k.clone(),
                        old: show(o),
                        new: show(n),
                        effect,
                    }
                }),
        )
        .collect())
}

/// Removes every part made from one of `stale` (the Decision Transformer is made from the
/// dataset alone, so a new V leaves it); returns what was removed.
fn discard(run: &RunDir, stale: &[Part]) -> anyhow::Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    let doomed = |p: &Part| stale.iter().any(|s| p.follows(*s));
    for p in Part::ALL.into_iter().filter(doomed) {
        for f in p.files() {
            let path = run.file(f);
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => removed.push(*f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove {}: {e}", path.display()),
            }
        }
    }
    Ok(removed)
}

/// Whether the run folder holds any file of `part` (or of the parts made from it).
fn holds(run: &RunDir, part: Part) -> bool {
    Part::ALL
        .into_iter()
        .filter(|p| *p != Part::Data && p.follows(part))
        .flat_map(|p| p.files().iter())
        .any(|f| run.file(f).exists())
}

/// The config to save as the run's `experiment.toml`: `exp`, keeping the sections of the
/// saved one that `exp` lacks (their output stays in the folder, and stays described).
pub fn config_to_save(exp: &Experiment, run: &RunDir) -> Experiment {
    let mut out = exp.clone();
    if let Some(old) = std::fs::read_to_string(run.experiment())
        .ok()
        .and_then(|t| parse_experiment(&t, "experiment.toml").ok())
    {
        if out.world_models.is_none() {
            out.world_models = old.world_models;
        }
        if out.decision_transformer.is_none() {
            out.decision_transformer = old.decision_transformer;
        }
    }
    out
}

/// Compares `exp` with the config the run folder was made with (`experiment.toml`) and acts
/// on the difference as `on_change` says: nothing stale is kept, nothing is discarded without
/// `--force`. Returns the part discarded, if any.
pub fn prepare_run(
    exp: &Experiment,
    run: &RunDir,
    on_change: OnChange,
    progress: &dyn Progress,
) -> anyhow::Result<Option<Part>> {
    let path = run.experiment();
    if !path.exists() {
        // Nothing says what made what the folder holds (the dataset checks itself).
        if !holds(run, Part::Vae) && !holds(run, Part::Dt) {
            return Ok(None);
        }
        return match on_change {
            OnChange::Ask => anyhow::bail!(
                "{} holds trained models but no experiment.toml, so what made them cannot be \
                 checked: run with --resume to keep them (each stage still checks its own \
                 inputs), --force to discard them and train again (the dataset is kept and \
                 checked), or use another --out",
                run.root().display()
            ),
            OnChange::Resume => Ok(None),
            OnChange::Force => {
                let removed = discard(run, &[Part::Vae, Part::Dt])?;
                progress.note(&format!(
                    "--force: {} had no experiment.toml; discarded {}",
                    run.root().display(),
                    removed.join(", ")
                ));
                Ok(Some(Part::Vae))
            }
        };
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let origin = path.display().to_string();
    let changes = match parse_experiment(&text, &origin) {
        Ok(old) => changes(&old, exp, run)?,
        Err(e) if on_change == OnChange::Force => {
            progress.note(&format!("{e:#}: discarding the whole run"));
            vec![Change {
                key: "experiment.toml".into(),
                old: "(unreadable)".into(),
                new: "(this config)".into(),
                effect: Effect::Stale(Part::Data),
            }]
        }
        Err(e) => {
            return Err(e.context(format!(
                "{} cannot be compared with this config: delete the run folder, use \
                 another --out, or pass --force to discard and redo the whole run",
                run.root().display()
            )));
        }
    };
    let list = |pick: &dyn Fn(&Change) -> bool| {
        changes
            .iter()
            .filter(|c| pick(c))
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    if changes.iter().all(|c| c.effect == Effect::Free) {
        return Ok(None);
    }
    let stale_parts: Vec<Part> = changes
        .iter()
        .filter_map(|c| match c.effect {
            Effect::Stale(p) => Some(p),
            _ => None,
        })
        .collect();
    let stale = stale_parts.iter().copied().min();
    match on_change {
        OnChange::Ask => anyhow::bail!(
            "{} was made with another config; what differs:\n{}\nRun again with --resume \
             (continue, if every change only adds work), --force (discard the first stage \
             that changed and every stage after it, then redo them) or another --out",
            run.root().display(),
            list(&|c| c.effect != Effect::Free)
        ),
        OnChange::Resume => {
            if let Some(part) = stale {
                anyhow::bail!(
                    "--resume cannot continue {}: these changes make {} stale:\n{}\nUse \
                     --force to discard it and every stage after it, or another --out",
                    run.root().display(),
                    part.name(),
                    list(&|c| matches!(c.effect, Effect::Stale(_)))
                );
            }
            progress.note(&format!(
                "resuming {} with:\n{}",
                run.root().display(),
                list(&|c| c.effect != Effect::Free)
            ));
            Ok(None)
        }
        OnChange::Force => {
            let Some(part) = stale else {
                progress.note(&format!(
                    "continuing {} with:\n{}",
                    run.root().display(),
                    list(&|c| c.effect != Effect::Free)
                ));
                return Ok(None);
            };
            let removed = discard(run, &stale_parts)?;
            progress.note(&format!(
                "--force: {} changed:\n{}\ndiscarded {} and every stage after it ({})",
                run.root().display(),
                list(&|c| c.effect != Effect::Free),
                part.name(),
                if removed.is_empty() {
                    "nothing was on disk yet".to_string()
                } else {
                    removed.join(", ")
                }
            ));
            Ok(Some(part))
        }
    }
}

/// What a run does about its dataset folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataPlan {
    /// Nothing recorded yet: collect every episode.
    Collect,
    /// The folder holds every episode asked for, from a finished collection.
    Reuse(usize),
    /// The folder holds fewer than asked (an interrupted collection, or more episodes asked
    /// for since): record the rest.
    TopUp(usize),
}

/// Checks that the dataset already in `data` is the one `rollout` would record (the same env,
/// resolved config, policy and seed, no damaged chunk) and says what to do with it.
pub(crate) fn plan_collection(
    rollout: &CollectConfig,
    registry: &Registry,
    data: &Path,
) -> anyhow::Result<DataPlan> {
    if !data.join("dataset.json").exists() {
        return Ok(DataPlan::Collect);
    }
    let ds = dreamgym_envs::recording::Dataset::open(data)
        .with_context(|| format!("cannot reuse the dataset in {}", data.display()))?;
    if ds.chunk_paths().is_empty() {
        // Its first collection died before writing a chunk: nothing to keep.
        return Ok(DataPlan::Collect);
    }
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
         experiment another `name` or `out`, or run with --force to discard them",
        data.display()
    );
    if let Some(missing) = ds.missing_chunks().first() {
        anyhow::bail!(
            "{} is missing {} (deleted?): its episodes are lost; delete the folder to collect \
             from scratch, or run with --force",
            data.display(),
            missing.display()
        );
    }
    // Every chunk is checked (format, checksum, episode index), one at a time and without
    // decoding it: a dataset of any size is planned in the time it takes to read it, and a
    // damaged chunk stops the run.
    let mut n = 0;
    for path in ds.chunk_paths() {
        match ds.check_chunk(path) {
            Ok(episodes) => n += episodes,
            Err(e) => anyhow::bail!(
                "{} has a damaged chunk ({e}); delete that chunk to record its episodes again, \
                 or delete the folder to collect from scratch",
                data.display()
            ),
        }
    }
    if n >= rollout.episodes && !meta.is_complete() {
        // Every episode is on disk; only the last update of dataset.json was lost (a full
        // disk, a kill at the very end).
        dreamgym_envs::recording::mark_complete(data)
            .with_context(|| format!("cannot update {}", data.display()))?;
    }
    Ok(if n >= rollout.episodes {
        DataPlan::Reuse(n)
    } else {
        DataPlan::TopUp(n)
    })
}

/// Records `rollout` into `data` as far as the folder does not hold it yet: nothing when it
/// holds every episode ("already done"), the rest when it holds part (an interrupted
/// collection, or more episodes asked for since). Returns what was recorded; an interruption
/// is an [`Interrupted`] error that keeps every finished episode.
pub(crate) fn record_dataset(
    rollout: &CollectConfig,
    registry: &Registry,
    data: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<Option<CollectSummary>> {
    if let Ok(_data_lock) = dreamgym_base::FolderLock::acquire(data) {
        dreamgym_base::remove_stale_temporaries(data);
    }
    let plan = if rollout.append {
        DataPlan::Collect
    } else {
        plan_collection(rollout, registry, data)?
    };
    let rollout = match plan {
        DataPlan::Reuse(n) => {
            progress.done(&format!(
                "collect: already done ({n} episodes in {})",
                data.display()
            ));
            return Ok(None);
        }
        DataPlan::Collect => rollout.clone(),
        DataPlan::TopUp(n) => {
            progress.note(&format!(
                "collect: {} holds {n} of the {} episodes asked for; recording the other {}",
                data.display(),
                rollout.episodes,
                rollout.episodes - n
            ));
            CollectConfig {
                episodes: rollout.episodes - n,
                append: true,
                resume_unfinished: true,
                ..rollout.clone()
            }
        }
    };
    let summary = collect(registry, &rollout, data, progress)?;
    progress.done(&summary.to_string());
    if summary.interrupted {
        return Err(Interrupted {
            stage: "collect".into(),
            saved: format!(
                "the finished episodes are in {}; run again to record the rest",
                data.display()
            ),
        }
        .into());
    }
    Ok(Some(summary))
}

/// The files and folders a run writes at the top of its folder: those of every part.
fn run_outputs() -> std::collections::BTreeSet<&'static str> {
    Part::ALL
        .iter()
        .flat_map(|p| p.files())
        .filter_map(|f| f.split('/').next())
        .collect()
}

/// Refuses a folder that holds files a run would overwrite but is not a run (no
/// `experiment.toml`, no dataset): they belong to something else.
fn check_run_folder(run: &RunDir) -> anyhow::Result<()> {
    let is_run = run.experiment().exists() || run.data().join("dataset.json").exists();
    // A folder counts only with something visible in it (a lock file is not a run's output).
    let holds = |p: &Path| match std::fs::read_dir(p) {
        Ok(entries) => entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.')),
        Err(_) => p.exists(),
    };
    if let Some(clash) = run_outputs().into_iter().find(|f| holds(&run.file(f)))
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
    /// The Decision Transformer's training and evaluation.
    pub decision_transformer: Option<(DtTrainSummary, DtEvalSummary)>,
    /// The language model's fine-tuning and evaluation.
    pub language_sft: Option<(SftTrainSummary, SftEvalSummary)>,
    /// The preference rounds and RLHF.
    pub language_dpo: Option<LanguageDpoSummary>,
}

/// Runs the experiments `exp` builds on (`requires`), depth first.
fn run_required(
    exp: &Experiment,
    registry: &Registry,
    progress: &dyn Progress,
    depth: usize,
) -> anyhow::Result<()> {
    for req in &exp.requires {
        anyhow::ensure!(
            depth < 8,
            "`requires` goes more than 8 experiments deep (a cycle?) at {req}"
        );
        let path = (req != "default").then(|| Path::new(req.as_str()));
        let (required, origin) = load_experiment(path)
            .with_context(|| format!("experiment `{}` requires {req}", exp.name))?;
        run_required(&required, registry, progress, depth + 1)?;
        progress.note(&format!(
            "experiment `{}` builds on `{}` ({origin}) in {}",
            exp.name,
            required.name,
            required.run_dir()?.root().display()
        ));
        run_experiment_only(&required, registry, OnChange::Ask, progress)
            .with_context(|| format!("the required experiment {origin}"))?;
    }
    Ok(())
}

/// Runs an experiment: first the experiments it `requires`, then collection and every
/// pipeline section it has, in the run folder.
///
/// The run folder is locked for the whole run (a second `run` into it is refused). When the
/// folder was made with another config, `on_change` says what to do ([`prepare_run`]); the
/// required experiments always refuse such a change. An interrupted or short collection is
/// resumed, never trained on.
pub fn run_experiment(
    exp: &Experiment,
    registry: &Registry,
    on_change: OnChange,
    progress: &dyn Progress,
) -> anyhow::Result<ExperimentOutcome> {
    run_required(exp, registry, progress, 0)?;
    run_experiment_only(exp, registry, on_change, progress)
}

fn run_experiment_only(
    exp: &Experiment,
    registry: &Registry,
    on_change: OnChange,
    progress: &dyn Progress,
) -> anyhow::Result<ExperimentOutcome> {
    let started = std::time::Instant::now();
    exp.validate(registry)?;
    let run = exp.run_dir()?;
    let data = run.data();
    check_run_folder(&run)?;
    let _lock = run.lock()?;
    // Without experiment.toml beside trained models (accepted by --resume), the stages'
    // own checks decide: the config is saved only once they have agreed.
    let unvouched = !run.experiment().exists()
        && (holds(&run, Part::Vae) || holds(&run, Part::Dt) || holds(&run, Part::Sft));
    prepare_run(exp, &run, on_change, progress)?;
    let saved = config_to_save(exp, &run);
    let save = || -> anyhow::Result<()> {
        dreamgym_base::write_atomic(
            &run.experiment(),
            toml::to_string_pretty(&saved)?.as_bytes(),
        )?;
        Ok(())
    };
    // Otherwise saved first: an interrupted run is continued by running the same config again.
    if !unvouched {
        save()?;
    }
    let mut outcome = ExperimentOutcome::default();
    if exp.collects() {
        outcome.collect = record_dataset(&exp.rollout, registry, &data, progress)?;
    }
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
    if let Some(dt) = &exp.decision_transformer {
        outcome.decision_transformer =
            Some(run_decision_transformer(dt, &run, registry, progress)?);
    }
    if let Some(sft) = &exp.language_sft {
        outcome.language_sft = Some(run_language_sft(sft, &run, registry, progress)?);
    }
    if let Some(dpo) = &exp.language_dpo {
        outcome.language_dpo = Some(run_language_dpo(dpo, &run, registry, progress)?);
    }
    if unvouched {
        save()?;
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
    fn the_shipped_decision_transformer_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../experiments/decision-transformer-cartpole.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let exp = parse_experiment(&text, "dt").unwrap();
        exp.validate(&Registry::with_builtins()).unwrap();
        assert!(exp.decision_transformer.is_some());
    }

    #[test]
    fn the_shipped_language_dpo_config_validates_and_records_no_dataset() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/language-dpo.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let exp = parse_experiment(&text, "dpo").unwrap();
        exp.validate(&Registry::with_builtins()).unwrap();
        assert!(exp.language_dpo.is_some() && !exp.collects());
        assert_eq!(exp.requires, ["experiments/language-sft.toml"]);
        // Its output is made from a model: a new dataset leaves it, and it leaves the rest.
        assert!(!Part::Dpo.follows(Part::Data) && !Part::Vae.follows(Part::Dpo));
        assert!(Part::Dt.follows(Part::Data) && Part::Sft.follows(Part::Data));
        // (A stale Decision Transformer once took V, M and C with it.)
        assert!(!Part::Vae.follows(Part::Dt) && !Part::Eval.follows(Part::Sft));
        assert!(Part::Controller.follows(Part::Vae) && !Part::Vae.follows(Part::Mdn));
        assert!(Experiment::default().collects());
    }

    #[test]
    fn every_shipped_experiment_parses_validates_and_requires_shipped_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        for entry in std::fs::read_dir(root.join("experiments")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_stem().unwrap().to_str().unwrap();
            let exp = parse_experiment(&text, name)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            // The runs that the experiments it requires make.
            let mut made = Vec::new();
            for required in &exp.requires {
                let text = std::fs::read_to_string(root.join(required))
                    .unwrap_or_else(|e| panic!("{name} requires {required}: {e}"));
                made.push(format!(
                    "runs/{}",
                    parse_experiment(&text, "r").unwrap().name
                ));
            }
            if let Err(e) = exp.validate(&Registry::with_builtins()) {
                // Refused only for what this checkout lacks: a CUDA build
                // (world-models-paper.toml) or a run a required experiment makes.
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("this build has no CUDA support")
                        || made.iter().any(|run| msg.contains(&format!("`{run}`"))),
                    "{}: {msg}",
                    path.display()
                );
            }
            seen += 1;
        }
        assert!(seen >= 12, "{seen} experiments");
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
        assert_eq!(
            plan_collection(&exp(""), &registry, &data).unwrap(),
            DataPlan::Reuse(4)
        );
        // More episodes asked for than recorded: the rest are recorded, not trained without.
        let mut more = exp("");
        more.episodes = 8;
        assert_eq!(
            plan_collection(&more, &registry, &data).unwrap(),
            DataPlan::TopUp(4)
        );
        let err = format!(
            "{:#}",
            plan_collection(&exp("seed = 1\n"), &registry, &data).unwrap_err()
        );
        assert!(err.contains("seed Some(1)"), "{err}");
        let mut cartpole = exp("");
        cartpole.env = "CartPole-v0".into();
        cartpole.env_config = toml::Table::new();
        let err = format!(
            "{:#}",
            plan_collection(&cartpole, &registry, &data).unwrap_err()
        );
        assert!(
            err.contains("CartPole-v0") && err.contains("Racer-v0"),
            "{err}"
        );
        // A chunk whose bytes changed stops the plan, naming the damage.
        let chunk = data.join("chunk-000000.safetensors");
        let mut bytes = std::fs::read(&chunk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&chunk, bytes).unwrap();
        let err = format!(
            "{:#}",
            plan_collection(&exp(""), &registry, &data).unwrap_err()
        );
        assert!(
            err.contains("damaged chunk") && err.contains("checksum"),
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

    #[test]
    fn required_experiments_run_first_once_and_cycles_are_refused() {
        let registry = Registry::with_builtins();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        std::fs::write(
            &base,
            format!(
                "name = \"base\"\nout = {:?}\n[rollout]\nenv = \"CartPole-v0\"\nepisodes = 3\nnum_envs = 1\n",
                dir.path().join("base")
            ),
        )
        .unwrap();
        let mut exp = parse_experiment(
            "name = \"top\"\n[rollout]\nenv = \"CartPole-v0\"\nepisodes = 2\nnum_envs = 1\n",
            "x",
        )
        .unwrap();
        exp.requires = vec![base.display().to_string()];
        exp.out = Some(dir.path().join("top"));
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
        let n = |run: &str| {
            dreamgym_envs::recording::Dataset::open(dir.path().join(run).join("data"))
                .unwrap()
                .stored_episodes()
        };
        assert_eq!((n("base"), n("top")), (3, 2));
        // Again: the required run is already done, not collected twice.
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
        assert_eq!(n("base"), 3);
        // A required run made with another config is not changed behind the user's back.
        std::fs::write(
            &base,
            format!(
                "name = \"base\"\nout = {:?}\n[rollout]\nenv = \"CartPole-v0\"\nepisodes = 3\nnum_envs = 1\nseed = 9\n",
                dir.path().join("base")
            ),
        )
        .unwrap();
        let err = format!(
            "{:#}",
            run_experiment(&exp, &registry, OnChange::Force, &()).unwrap_err()
        );
        assert!(err.contains("base.toml") && err.contains("seed"), "{err}");
        // A cycle ends with a message instead of recursing forever.
        let me = dir.path().join("me.toml");
        std::fs::write(&me, format!("name = \"me\"\nrequires = [{:?}]\n", me)).unwrap();
        let (cyclic, _) = load_experiment(Some(&me)).unwrap();
        let err = format!(
            "{:#}",
            run_experiment(&cyclic, &registry, OnChange::Ask, &()).unwrap_err()
        );
        assert!(err.contains("more than 8"), "{err}");
        // A missing file is named.
        exp.requires = vec!["no/such.toml".into()];
        let err = format!(
            "{:#}",
            run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap_err()
        );
        assert!(err.contains("no/such.toml"), "{err}");
    }
}
