//! The `[language_dpo]` section of an experiment: preference fine-tuning of a language
//! controller in rounds, as ETO does it, with RLHF beside it, every model evaluated on the same
//! held-out instructions and seeds.
//!
//! Round `r` (its label budget `labels[r]`, counted in all):
//! 1. pairs of episodes sampled from the current model (the start model in round 1, round
//!    `r − 1`'s model after it) from new env seeds, into `pairs/round<r>`;
//! 2. the synthetic labeler labels them (`labels.jsonl`, as a person's labels are stored);
//! 3. DPO from the start model, against it as the frozen reference, on the preferences of
//!    every round so far, into `dpo/round<r>` (a run folder: a policy like any other), with a
//!    checkpoint every `checkpoint_every` steps;
//! 4. that model is evaluated.
//!
//! Training each round from the start model makes round `r`'s model a function of the labels
//! gathered so far, so the rounds draw the label-efficiency curve; what the rounds add over
//! one batch of labels is that each round's pairs come from the model the previous labels
//! made. With `dpo.from = "previous"` a round trains the previous round's model instead,
//! against itself as the reference, on its own preferences (ETO's loop). Then a reward model
//! is trained on all the labels and RLOO runs against it with a KL penalty to the start model
//! (`rlhf/`). The planner and the start model are evaluated on the
//! same seeds (`baselines.json`). `dpo_report.md` has the table, the label-efficiency figure,
//! the per-family changes, DPO's metrics per round and the reward model's held-out accuracy.
//!
//! Every part is saved as it is made, and a run started again goes on from what is saved: pairs
//! and labels are appended and fsynced one by one, DPO resumes from its checkpoint, and
//! evaluations are kept while the weights and the eval settings they were made with hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use dreamgym_envs::Registry;
use dreamgym_envs::builtin::tabletop::Split;
use dreamgym_policies::language::{
    LanguageModel, LanguagePolicy, MAX_WEIGHT, PreferenceLoss, Sampling,
};
use serde::{Deserialize, Serialize};

use crate::labels::{LabelLog, SyntheticLabeler};
use crate::language::{
    LM_CHECKPOINT, SftEval, SplitResult, cached, evaluate_policy, language_model_fingerprint,
    load_language_model,
};
use crate::preference::{
    DpoCheckpoint, DpoConfig, LABELS_FILE, PairRecord, PairsConfig, TextPreference, collect_pairs,
    preferences, preferences_fingerprint, round_dir, synth_labels, tokenize_preferences, train_dpo,
};
use crate::rlhf::{
    RewardConfig, RewardModel, RlooConfig, train_reward_model, train_rloo, write_reward_metrics,
    write_rloo_metrics,
};
use crate::{Progress, RunDir};

/// The report's file name in the run folder.
pub const DPO_REPORT: &str = "dpo_report.md";

/// The `[language_dpo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanguageDpoStage {
    /// The start model, also DPO's reference and RLHF's start and reference: a fine-tuned run
    /// folder (`runs/language-sft`), a `.gguf` file or a Hugging Face folder.
    pub model: PathBuf,
    /// The env the pairs are sampled in (a language env).
    pub env: String,
    /// Its config (`mode = "language"` is always set); the evaluation sets `split` itself.
    pub env_config: serde_json::Value,
    /// Labels in all after each round, increasing: one round per entry.
    pub labels: Vec<usize>,
    /// The env seed of round 1's first pair; later rounds go on from where the previous one
    /// stopped, so no start state is labeled twice.
    pub seed: u64,
    /// How pairs are sampled.
    pub pairs: PairSettings,
    /// The synthetic labeler.
    pub labeler: SyntheticLabeler,
    /// DPO in each round.
    pub dpo: DpoSettings,
    /// The reward model and RLOO beside the rounds.
    pub rlhf: RlhfSettings,
    /// The evaluation of every model (`samples` and `zero_shot_episodes` are not used).
    pub eval: SftEval,
}

impl Default for LanguageDpoStage {
    fn default() -> Self {
        Self {
            model: PathBuf::from("runs/language-sft"),
            env: "Tabletop-v0".into(),
            env_config: serde_json::json!({ "mode": "language", "split": "train" }),
            labels: vec![100, 200, 400, 700],
            seed: 0,
            pairs: PairSettings::default(),
            labeler: SyntheticLabeler::default(),
            dpo: DpoSettings::default(),
            rlhf: RlhfSettings::default(),
            eval: SftEval {
                episodes: 100,
                samples: 0,
                ..SftEval::default()
            },
        }
    }
}

/// How pairs are sampled (see [`PairsConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairSettings {
    /// Sampling temperature of both episodes (above 0).
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Most actions per episode.
    pub max_turns: usize,
    /// Samples of episode B's first action drawn until one differs from A's.
    pub distinct_attempts: usize,
    /// Label only pairs whose first actions differ: a round samples pairs (up to
    /// [`DISTINCT_SEARCH`] times its labels) until it has as many such pairs as it has labels
    /// to spend, and the rest are kept unlabeled. A pair with the same first action twice
    /// teaches DPO nothing, so this spends every label on a possible preference.
    pub label_distinct_only: bool,
    /// Episode B's first action is A's with one decision changed, not a sample
    /// (`PairsConfig::edit`): answers the model does not sample get into the pairs.
    pub edit: bool,
    /// Both episodes sample with grammar-constrained decoding (tokens that cannot continue a
    /// valid program of the action language are masked): every sampled answer parses, so a
    /// higher temperature explores other objects, directions and distances instead of
    /// breaking the syntax. The trained model is still evaluated unconstrained.
    pub constrained: bool,
    /// Episode A is decoded greedily, as the model is evaluated, and only B samples
    /// (`PairsConfig::greedy_a`): each label compares the model's own answer with another.
    pub greedy_a: bool,
}

/// With `label_distinct_only`, the most pairs a round samples per label it spends.
pub const DISTINCT_SEARCH: usize = 20;

impl Default for PairSettings {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            max_turns: 8,
            distinct_attempts: 8,
            label_distinct_only: false,
            edit: false,
            constrained: false,
            greedy_a: false,
        }
    }
}

/// Which model a round's DPO starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoStart {
    /// The start model, against it as the reference, on the preferences of every round so
    /// far: round `r`'s model is a function of the labels gathered so far (the
    /// label-efficiency curve).
    #[default]
    Start,
    /// The previous round's model, against it as the reference, on this round's preferences
    /// only (ETO's own loop: each round improves on the last).
    Previous,
}

/// DPO in each round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSettings {
    /// The model each round starts from (and its reference).
    pub from: DpoStart,
    /// The loss and β.
    pub loss: PreferenceLoss,
    /// Passes over the round's preferences: a round trains
    /// `ceil(epochs × preferences / batch_size)` steps.
    pub epochs: f64,
    /// Pairs per step.
    pub batch_size: usize,
    /// AdamW's learning rate.
    pub lr: f64,
    /// The seed of the batch order.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
}

impl Default for DpoSettings {
    fn default() -> Self {
        Self {
            from: DpoStart::Start,
            loss: PreferenceLoss {
                beta: 0.5,
                ..PreferenceLoss::default()
            },
            epochs: 16.0,
            batch_size: 16,
            lr: 3e-5,
            seed: 0,
            checkpoint_every: 25,
        }
    }
}

impl DpoSettings {
    /// The DPO settings of a round with `preferences` preferences.
    pub fn config(&self, preferences: usize) -> DpoConfig {
        let steps = (self.epochs * preferences as f64 / self.batch_size.max(1) as f64).ceil();
        DpoConfig {
            loss: self.loss,
            steps: (steps as usize).max(1),
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
        }
    }
}

/// The reward model and RLOO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlhfSettings {
    /// Whether to run them.
    pub enabled: bool,
    /// The reward model's training.
    pub reward: RewardConfig,
    /// RLOO against it.
    pub rloo: RlooConfig,
}

impl Default for RlhfSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            reward: RewardConfig::default(),
            rloo: RlooConfig {
                lr: 1e-5,
                ..RlooConfig::default()
            },
        }
    }
}

impl LanguageDpoStage {
    /// Checks every field before any work, naming the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ensure = |ok: bool, what: &str| -> anyhow::Result<()> {
            anyhow::ensure!(ok, "language_dpo.{what}");
            Ok(())
        };
        ensure(
            !self.labels.is_empty()
                && self.labels[0] > 0
                && self.labels.windows(2).all(|w| w[0] < w[1])
                && self.labels.iter().all(|&n| n <= 1_000_000),
            "labels must be one or more increasing counts in 1..=1000000 (labels in all after \
             each round), e.g. [100, 200, 400, 700]",
        )?;
        let p = &self.pairs;
        ensure(
            p.temperature.is_finite() && p.temperature > 0.0,
            "pairs.temperature must be above 0 (greedy decoding writes the same action twice)",
        )?;
        ensure(
            p.top_p > 0.0 && p.top_p <= 1.0,
            "pairs.top_p must be in (0, 1]",
        )?;
        ensure(
            (1..=256).contains(&p.max_turns),
            "pairs.max_turns must be in 1..=256",
        )?;
        ensure(
            (1..=1000).contains(&p.distinct_attempts),
            "pairs.distinct_attempts must be in 1..=1000",
        )?;
        self.labeler
            .validate()
            .map_err(|e| anyhow::anyhow!("language_dpo.labeler: {e}"))?;
        let d = &self.dpo;
        d.loss.validate().context("language_dpo.dpo.loss")?;
        ensure(
            d.epochs.is_finite() && d.epochs > 0.0 && d.epochs <= 10_000.0,
            "dpo.epochs must be in (0, 10000]",
        )?;
        ensure(
            (1..=4096).contains(&d.batch_size),
            "dpo.batch_size must be in 1..=4096",
        )?;
        ensure(d.lr.is_finite() && d.lr > 0.0, "dpo.lr must be positive")?;
        ensure(
            d.checkpoint_every >= 1,
            "dpo.checkpoint_every must be at least 1",
        )?;
        if self.rlhf.enabled {
            let (r, l) = (&self.rlhf.reward, &self.rlhf.rloo);
            ensure(
                (1..=1_000_000).contains(&r.steps) && (1..=4096).contains(&r.batch_size),
                "rlhf.reward.steps must be in 1..=1000000 and rlhf.reward.batch_size in 1..=4096",
            )?;
            ensure(
                r.lr.is_finite() && r.lr > 0.0 && l.lr.is_finite() && l.lr > 0.0,
                "rlhf.reward.lr and rlhf.rloo.lr must be positive",
            )?;
            ensure(
                (0.0..1.0).contains(&r.holdout),
                "rlhf.reward.holdout must be in [0, 1)",
            )?;
            ensure(
                (1..=1_000_000).contains(&l.steps)
                    && (1..=4096).contains(&l.prompts)
                    && (2..=64).contains(&l.k),
                "rlhf.rloo.steps must be in 1..=1000000, prompts in 1..=4096 and k in 2..=64",
            )?;
            ensure(
                l.beta.is_finite() && (0.0..=MAX_WEIGHT).contains(&l.beta),
                "rlhf.rloo.beta must be in [0, 1000]",
            )?;
            ensure(
                l.sampling.temperature.is_finite() && l.sampling.temperature > 0.0,
                "rlhf.rloo.sampling.temperature must be above 0",
            )?;
        }
        let e = &self.eval;
        ensure(
            (1..=100_000).contains(&e.episodes),
            "eval.episodes must be in 1..=100000",
        )?;
        ensure(!e.splits.is_empty(), "eval.splits must name a split")?;
        ensure(
            (1..=4096).contains(&e.max_new_tokens),
            "eval.max_new_tokens must be in 1..=4096",
        )?;
        Ok(())
    }

    /// The env and its config, in language mode.
    fn env_spec(&self) -> (String, serde_json::Value) {
        let mut config = match &self.env_config {
            serde_json::Value::Object(_) => self.env_config.clone(),
            _ => serde_json::json!({}),
        };
        if let Some(m) = config.as_object_mut() {
            m.insert("mode".into(), "language".into());
        }
        (self.env.clone(), config)
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoRound {
    /// 1, 2, ...
    pub round: usize,
    /// Labels in all after this round.
    pub labels: usize,
    /// This round's pairs.
    pub pairs: usize,
    /// Of them, pairs whose two first actions differ.
    pub differ: usize,
    /// This round's labels per choice (`a`, `b`, `equal`, `skip`).
    pub choices: BTreeMap<String, usize>,
    /// The preferences DPO trained on (every round so far).
    pub preferences: usize,
    /// DPO's steps.
    pub steps: usize,
    /// DPO's loss and TRL's metrics, averaged over the last 20 steps: loss,
    /// rewards/accuracies, rewards/margins, logps/chosen, logps/rejected.
    pub last: [f64; 5],
    /// Seconds spent training in this run (0 when the model was already trained).
    pub seconds: f64,
    /// The model's evaluation.
    pub eval: Vec<SplitResult>,
}

/// What the RLHF run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlhfRun {
    /// What it was made from (the start model, the preferences, the settings).
    pub made_from: serde_json::Value,
    /// Preferences the reward model saw (trained on and held out).
    pub preferences: usize,
    /// The reward model's training loss, mean of the first and of the last 20 steps.
    pub reward_loss: (f64, f64),
    /// Its accuracy on held-out labels and how many there were.
    pub heldout_accuracy: Option<(f64, usize)>,
    /// RLOO's mean score over the first and the last 10 steps.
    pub score: (f64, f64),
    /// RLOO's KL to the start over the last 10 steps.
    pub kl: f64,
    /// Seconds spent training.
    pub seconds: f64,
    /// The policy's evaluation (filled in after training).
    #[serde(default)]
    pub eval: Vec<SplitResult>,
}

/// What the whole section did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageDpoSummary {
    /// The planner and the start model, on the same seeds.
    pub baselines: Vec<SplitResult>,
    /// The rounds.
    pub rounds: Vec<DpoRound>,
    /// The RLHF run, when enabled.
    pub rlhf: Option<RlhfRun>,
}

/// Runs (or continues) the whole `[language_dpo]` section in `run`.
pub fn run_language_dpo(
    stage: &LanguageDpoStage,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<LanguageDpoSummary> {
    stage.validate()?;
    let env = stage.env_spec();
    registry
        .make(&env.0, Some(&env.1))
        .with_context(|| format!("language_dpo: cannot build {}", env.0))?;
    let start_fp = language_model_fingerprint(&stage.model).with_context(|| {
        format!(
            "language_dpo.model = {:?}: train it first (`dreamgym run \
             experiments/language-sft.toml`), or name a .gguf file or a Hugging Face folder",
            stage.model
        )
    })?;
    check_start(run, &stage.model, &start_fp)?;
    let load = || load_language_model(&stage.model);
    let reference = Arc::new(load()?);
    let baselines =
        evaluate_baselines(stage, &env, &reference, &start_fp, run, registry, progress)?;

    let mut rounds = Vec::new();
    let mut all_prefs: Vec<TextPreference> = Vec::new();
    let mut current = reference.clone();
    let mut current_name = stage.model.display().to_string();
    let mut before = 0usize;
    let mut spent = 0usize;
    for (i, &labels) in stage.labels.iter().enumerate() {
        let r = i + 1;
        let dir = round_dir(run.root(), r);
        let wanted = labels - before;
        // Each round's pair seeds lie apart from every other round's.
        let (seed, search) = if stage.pairs.label_distinct_only {
            (
                stage.seed + (before * DISTINCT_SEARCH) as u64,
                DISTINCT_SEARCH,
            )
        } else {
            (stage.seed + before as u64, 1)
        };
        let differs = |p: &&PairRecord| p.first_action(false) != p.first_action(true);
        let mut count = wanted;
        let model_fingerprint = Some(language_model_fingerprint(Path::new(&current_name))?);
        let records = loop {
            let cfg = PairsConfig {
                count,
                seed,
                sampling: Sampling {
                    temperature: stage.pairs.temperature,
                    top_p: stage.pairs.top_p,
                    max_new_tokens: stage.eval.max_new_tokens,
                    constrained: stage.pairs.constrained,
                },
                max_turns: stage.pairs.max_turns,
                distinct_attempts: stage.pairs.distinct_attempts,
                edit: stage.pairs.edit,
                greedy_a: stage.pairs.greedy_a,
                model_fingerprint: model_fingerprint.clone(),
            };
            let records = collect_pairs(
                current.clone(),
                &current_name,
                registry,
                (&env.0, &env.1),
                &cfg,
                &dir,
                progress,
            )?;
            let found = records.iter().filter(differs).count();
            if search == 1 || found >= wanted || records.len() >= wanted * search {
                break records;
            }
            // Sample about as many more as the rate so far says are needed.
            let rate = (found.max(1) as f64 / records.len() as f64).max(1.0 / search as f64);
            let more = (((wanted - found) as f64 / rate).ceil() as usize).max(1);
            count = (records.len() + more).min(wanted * search);
        };
        let to_label: Vec<PairRecord> = if stage.pairs.label_distinct_only {
            records
                .iter()
                .filter(differs)
                .take(wanted)
                .cloned()
                .collect()
        } else {
            records.clone()
        };
        let mut log = LabelLog::open(&dir.join(LABELS_FILE))?;
        synth_labels(&to_label, &mut log, &stage.labeler)?;
        // Labels spent so far (fewer than planned when too few pairs differed).
        spent += log.in_effect().len();
        // This round's preferences are all_prefs[round_start..].
        let round_start = all_prefs.len();
        all_prefs.extend(preferences(&records, &log).0);
        let mut choices = BTreeMap::new();
        for label in log.in_effect().values() {
            let name = serde_json::to_value(label.choice)?
                .as_str()
                .unwrap_or("?")
                .to_string();
            *choices.entry(name).or_insert(0) += 1;
        }
        let differ = records
            .iter()
            .filter(|p| p.first_action(false) != p.first_action(true))
            .count();
        anyhow::ensure!(
            !all_prefs.is_empty(),
            "round {r}: none of the {spent} labels so far prefers one first action to another \
             (pairs with the same first action twice, or labeled equal), so DPO has nothing to \
             learn: sample pairs at a higher pairs.temperature, or label more"
        );

        let out = RunDir::new(run.file(&format!("dpo/round{r}")));
        std::fs::create_dir_all(out.root())
            .with_context(|| format!("cannot create {}", out.root().display()))?;
        // From the start model on every preference so far, or from the previous round's
        // model (its own reference) on this round's preferences.
        let (policy, round_reference, trained_on) = match stage.dpo.from {
            DpoStart::Start => (load()?, reference.clone(), &all_prefs[..]),
            DpoStart::Previous => {
                anyhow::ensure!(
                    all_prefs.len() > round_start,
                    "round {r}: none of its labels prefers one first action to another, and \
                     dpo.from = \"previous\" trains each round on its own preferences: label \
                     more, or sample pairs at a higher pairs.temperature"
                );
                let previous = if r == 1 {
                    load()?
                } else {
                    load_language_model(Path::new(&current_name))?
                };
                (previous, current.clone(), &all_prefs[round_start..])
            }
        };
        let tokens =
            tokenize_preferences(&policy, trained_on).with_context(|| format!("round {r}"))?;
        tokens.note_left_out(progress);
        let dpo = stage.dpo.config(tokens.len());
        let checkpoint = DpoCheckpoint {
            run: &out,
            every: stage.dpo.checkpoint_every,
            made_from: {
                // Every preference so far fixes the model a round starts from.
                let mut made_from = serde_json::json!({
                    "from": start_fp,
                    "preferences": preferences_fingerprint(&all_prefs),
                    "config": dpo,
                });
                if stage.dpo.from == DpoStart::Previous {
                    made_from["from_round"] = serde_json::json!(r - 1);
                }
                made_from
            },
        };
        let t0 = std::time::Instant::now();
        let trained = checkpoint.steps_done()? < dpo.steps;
        let steps = train_dpo(
            &policy,
            &round_reference,
            &tokens.pairs,
            &dpo,
            Some(&checkpoint),
            progress,
        )?;
        let seconds = if trained {
            t0.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let tail = &steps[steps.len().saturating_sub(20)..];
        let mean = |f: &dyn Fn(&(f64, dreamgym_policies::language::PreferenceMetrics)) -> f64| {
            tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
        };
        let last = [
            mean(&|x| x.0),
            mean(&|x| x.1.rewards_accuracies),
            mean(&|x| x.1.rewards_margins),
            mean(&|x| x.1.logps_chosen),
            mean(&|x| x.1.logps_rejected),
        ];
        let policy = Arc::new(policy);
        let name = format!("DPO round {r}");
        let eval = evaluate_cached(&name, policy.clone(), &out, stage, &env, registry, progress)?;
        progress.done(&format!(
            "language_dpo round {r}: {} pairs ({differ} with different first actions), {spent} \
             labels in all, {} preferences; DPO {} steps{}: loss {:.3}, rewards/accuracies \
             {:.2}, margins {:.3}; success {}",
            records.len(),
            all_prefs.len(),
            dpo.steps,
            if trained { "" } else { " (already done)" },
            last[0],
            last[1],
            last[2],
            success_line(&eval)
        ));
        rounds.push(DpoRound {
            round: r,
            labels: spent,
            pairs: records.len(),
            differ,
            choices,
            preferences: all_prefs.len(),
            steps: dpo.steps,
            last,
            seconds,
            eval,
        });
        current = policy;
        current_name = out.root().display().to_string();
        before = labels;
    }

    let rlhf = if stage.rlhf.enabled {
        Some(run_rlhf(
            stage, &env, &all_prefs, &reference, &start_fp, run, registry, progress,
        )?)
    } else {
        None
    };
    let summary = LanguageDpoSummary {
        baselines,
        rounds,
        rlhf,
    };
    write_report(stage, &start_fp, &summary, run)?;
    Ok(summary)
}

/// Refuses a run folder whose rounds were made from another start model.
fn check_start(run: &RunDir, model: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let path = run.file("language_dpo.json");
    let made = serde_json::json!({ "model": model, "fingerprint": fingerprint });
    if let Ok(text) = std::fs::read_to_string(&path) {
        let old: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        anyhow::ensure!(
            old.get("fingerprint") == made.get("fingerprint"),
            "{} was made from another start model ({} then, {} now; it was retrained?): its \
             pairs, labels and models no longer follow from it. Delete the folder or choose \
             another `out`",
            run.root().display(),
            old.get("fingerprint").unwrap_or(&serde_json::Value::Null),
            fingerprint
        );
        return Ok(());
    }
    std::fs::create_dir_all(run.root())?;
    dreamgym_base::write_atomic(&path, serde_json::to_string_pretty(&made)?.as_bytes())?;
    Ok(())
}

/// Greedy success of `model` on every eval split.
fn evaluate_model(
    name: &str,
    model: Arc<LanguageModel>,
    stage: &LanguageDpoStage,
    env: &(String, serde_json::Value),
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<SplitResult>> {
    let sampling = Sampling {
        max_new_tokens: stage.eval.max_new_tokens,
        ..Sampling::default()
    };
    let mut policy = LanguagePolicy::new(model, sampling, name);
    evaluate_splits(name, &mut policy, stage, env, registry, progress)
}

/// `policy` on every eval split.
fn evaluate_splits(
    name: &str,
    policy: &mut dyn dreamgym_policies::Policy,
    stage: &LanguageDpoStage,
    env: &(String, serde_json::Value),
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<SplitResult>> {
    stage
        .eval
        .splits
        .iter()
        .map(|&split| {
            evaluate_policy(
                name,
                policy,
                registry,
                env,
                split,
                &stage.eval,
                None,
                progress,
            )
        })
        .collect()
}

/// The evaluation of the model saved in `out`, kept in `out/eval.json` while its weights and
/// the eval settings hold.
fn evaluate_cached(
    name: &str,
    model: Arc<LanguageModel>,
    out: &RunDir,
    stage: &LanguageDpoStage,
    env: &(String, serde_json::Value),
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<SplitResult>> {
    let made_by = serde_json::json!({
        "weights_crc32": dreamgym_nn::weights_crc32(&out.checkpoint(LM_CHECKPOINT))?,
        "env": env,
        "eval": stage.eval,
    });
    cached(&out.file("eval.json"), &made_by, || {
        progress.begin(
            &format!("evaluate {name}"),
            (stage.eval.episodes * stage.eval.splits.len()) as u64,
        );
        let r = evaluate_model(name, model, stage, env, registry, progress);
        progress.end();
        r
    })
}

/// The planner and the start model on the eval seeds (`baselines.json`).
fn evaluate_baselines(
    stage: &LanguageDpoStage,
    env: &(String, serde_json::Value),
    start: &Arc<LanguageModel>,
    fingerprint: &str,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<SplitResult>> {
    let made_by = serde_json::json!({ "start": fingerprint, "env": env, "eval": stage.eval });
    cached(&run.file("baselines.json"), &made_by, || {
        progress.begin(
            "evaluate the planner and the start model",
            (2 * stage.eval.episodes * stage.eval.splits.len()) as u64,
        );
        let mut planner = dreamgym_policies::TabletopPlanner::default();
        let mut results = evaluate_splits("planner", &mut planner, stage, env, registry, progress)?;
        results.extend(evaluate_model(
            "start",
            start.clone(),
            stage,
            env,
            registry,
            progress,
        )?);
        progress.end();
        Ok(results)
    })
}

/// The reward model on every preference, then RLOO from the start model against it
/// (`rlhf/`); kept while the start model, the preferences and the settings hold.
#[allow(clippy::too_many_arguments)]
fn run_rlhf(
    stage: &LanguageDpoStage,
    env: &(String, serde_json::Value),
    prefs: &[TextPreference],
    reference: &LanguageModel,
    start_fp: &str,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<RlhfRun> {
    let out = RunDir::new(run.file("rlhf"));
    std::fs::create_dir_all(out.root())?;
    let made_from = serde_json::json!({
        "from": start_fp,
        "preferences": preferences_fingerprint(prefs),
        "settings": stage.rlhf,
    });
    let summary_path = out.file("rlhf.json");
    let kept = std::fs::read(&summary_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<RlhfRun>(&b).ok())
        .filter(|s| {
            s.made_from == made_from
                && out
                    .checkpoint(LM_CHECKPOINT)
                    .with_extension("json")
                    .exists()
        });
    let (mut summary, policy) = match kept {
        Some(s) => (
            s,
            LanguageModel::load(&out.checkpoint(LM_CHECKPOINT), &Device::Cpu)?,
        ),
        None => {
            let t0 = std::time::Instant::now();
            let rm = RewardModel::new(load_language_model(&stage.model)?)?;
            let pairs = tokenize_preferences(rm.model(), prefs)?;
            pairs.note_left_out(progress);
            let report = train_reward_model(&rm, &pairs, &stage.rlhf.reward, progress)?;
            write_reward_metrics(&out, &report)?;
            rm.save(&out.file("reward_model.safetensors"))?;
            let policy = load_language_model(&stage.model)?;
            let mut prompts: Vec<String> = prefs.iter().map(|p| policy.prompt(&p.prompt)).collect();
            prompts.sort();
            prompts.dedup();
            let steps = train_rloo(
                &policy,
                reference,
                &|seqs: &[(&[u32], &[u32])]| rm.score_values(seqs),
                &prompts,
                &stage.rlhf.rloo,
                progress,
            )?;
            write_rloo_metrics(&out, &steps)?;
            let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
            let losses: Vec<f64> = report.steps.iter().map(|s| s.0).collect();
            let scores: Vec<f64> = steps.iter().map(|s| s.score).collect();
            let kls: Vec<f64> = steps.iter().map(|s| s.kl).collect();
            let summary = RlhfRun {
                made_from,
                preferences: pairs.len(),
                reward_loss: (
                    mean(&losses[..losses.len().min(20)]),
                    mean(&losses[losses.len().saturating_sub(20)..]),
                ),
                heldout_accuracy: report.heldout_accuracy,
                score: (
                    mean(&scores[..scores.len().min(10)]),
                    mean(&scores[scores.len().saturating_sub(10)..]),
                ),
                kl: mean(&kls[kls.len().saturating_sub(10)..]),
                seconds: t0.elapsed().as_secs_f64(),
                eval: Vec::new(),
            };
            policy.save(
                &out.checkpoint(LM_CHECKPOINT),
                None,
                serde_json::json!({ "rlhf": summary.made_from }),
            )?;
            dreamgym_base::write_atomic(&summary_path, &serde_json::to_vec_pretty(&summary)?)?;
            (summary, policy)
        }
    };
    summary.eval = evaluate_cached(
        "RLHF",
        Arc::new(policy),
        &out,
        stage,
        env,
        registry,
        progress,
    )?;
    progress.done(&format!(
        "language_dpo RLHF: reward model on {} preferences, held-out accuracy {}; RLOO score \
         {:.3} -> {:.3}, KL {:.3}; success {}",
        summary.preferences,
        summary
            .heldout_accuracy
            .map_or("(none held out)".into(), |(a, n)| format!(
                "{:.0}% of {n}",
                100.0 * a
            )),
        summary.score.0,
        summary.score.1,
        summary.kl,
        success_line(&summary.eval)
    ));
    Ok(summary)
}

/// `68% / 54% / 36%` over the splits.
fn success_line(results: &[SplitResult]) -> String {
    results
        .iter()
        .map(|r| format!("{:.0}%", 100.0 * r.success()))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn split_title(s: Split) -> &'static str {
    match s {
        Split::Train => "held-out seeds",
        Split::UnseenCombinations => "unseen combinations",
        Split::UnseenPhrasings => "unseen phrasings",
        Split::All => "all",
    }
}

/// Mean success over the splits.
fn mean_success(results: &[SplitResult]) -> f64 {
    results.iter().map(|r| r.success()).sum::<f64>() / results.len().max(1) as f64
}

/// A table row's cells: each split's success and parse rate, then the mean.
fn cells(results: &[SplitResult]) -> String {
    let mut s: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{:.0}% (parse {:.0}%)",
                100.0 * r.success(),
                100.0 * r.parse_rate()
            )
        })
        .collect();
    s.push(format!("{:.1}%", 100.0 * mean_success(results)));
    s.join(" | ")
}

/// Successes and episodes per instruction family, over every split.
fn families(results: &[SplitResult]) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in results {
        for (f, (n, k)) in &r.families {
            let e = out.entry(f.clone()).or_default();
            e.0 += n;
            e.1 += k;
        }
    }
    out
}

fn write_report(
    stage: &LanguageDpoStage,
    start_fp: &str,
    summary: &LanguageDpoSummary,
    run: &RunDir,
) -> anyhow::Result<()> {
    let splits = &stage.eval.splits;
    let (planner, start): (Vec<SplitResult>, Vec<SplitResult>) = summary
        .baselines
        .iter()
        .cloned()
        .partition(|r| r.policy == "planner");
    let mut md =
        String::from("# Language controller: preference fine-tuning (DPO rounds, RLHF)\n\n");
    md.push_str(&format!(
        "Start model and reference: `{}` ({start_fp}). Pairs: {} (temperature \
         {}{}, {}) from one start \
         state of {} (`{}`), new env seeds each round from {}. Labels: the synthetic labeler \
         (Bradley–Terry over the verifier's progress, temperature {}, flip rate {}: its own \
         accuracy ceiling is {:.0}%; equal progress labeled equal). DPO each round {}: {:?} \
         loss, β {}, {} epochs of batch {}, lr {}. \
         Evaluation: greedy decoding, {} episodes per split from seed {}, with physics \
         execution.\n\n",
        stage.model.display(),
        if stage.pairs.greedy_a {
            "episode A decoded greedily, B sampled"
        } else {
            "two episodes sampled"
        },
        stage.pairs.temperature,
        if stage.pairs.constrained {
            ", grammar-constrained"
        } else {
            ""
        },
        if stage.pairs.edit {
            "B's first action A's with one decision changed where A's parses".to_string()
        } else {
            format!(
                "B's first action drawn up to {} times until it differs from A's",
                stage.pairs.distinct_attempts
            )
        },
        stage.env,
        stage.env_config,
        stage.seed,
        stage.labeler.temperature,
        stage.labeler.flip,
        100.0 * (1.0 - stage.labeler.flip),
        match stage.dpo.from {
            DpoStart::Start => "from the start model on every preference so far",
            DpoStart::Previous =>
                "from the previous round's model, against it, on the round's own preferences",
        },
        stage.dpo.loss.kind,
        stage.dpo.loss.beta,
        stage.dpo.epochs,
        stage.dpo.batch_size,
        stage.dpo.lr,
        stage.eval.episodes,
        stage.eval.seed,
    ));
    md.push_str("## Success (and parse rate) on held-out instructions and seeds\n\n");
    md.push_str("| model | labels | preferences |");
    for s in splits {
        md.push_str(&format!(" {} |", split_title(*s)));
    }
    md.push_str(" mean |\n|---|---|---|");
    md.push_str(&"---|".repeat(splits.len() + 1));
    md.push('\n');
    md.push_str(&format!(
        "| scripted planner | – | – | {} |\n",
        cells(&planner)
    ));
    md.push_str(&format!("| start (SFT) | 0 | 0 | {} |\n", cells(&start)));
    for r in &summary.rounds {
        md.push_str(&format!(
            "| DPO round {} | {} | {} | {} |\n",
            r.round,
            r.labels,
            r.preferences,
            cells(&r.eval)
        ));
    }
    if let Some(h) = &summary.rlhf {
        md.push_str(&format!(
            "| RLHF: reward model + RLOO | {} | {} | {} |\n",
            stage.labels.last().copied().unwrap_or(0),
            h.preferences,
            cells(&h.eval)
        ));
    }
    if let Some(last) = summary.rounds.last() {
        md.push_str(&format!(
            "\nDPO with {} labels against the start: {:+.1} points of mean success.\n",
            last.labels,
            100.0 * (mean_success(&last.eval) - mean_success(&start))
        ));
    }

    // The label-efficiency curve.
    let figures = run.figures();
    let mut chart = crate::figures::LineChart::new(
        "DPO: success against labels",
        "synthetic labels",
        "success (%)",
    );
    for (i, s) in splits.iter().enumerate() {
        let mut points = vec![(0.0, 100.0 * start.get(i).map_or(0.0, |r| r.success()))];
        points.extend(summary.rounds.iter().map(|r| {
            (
                r.labels as f64,
                100.0 * r.eval.get(i).map_or(0.0, |x| x.success()),
            )
        }));
        chart = chart.series(split_title(*s), points);
    }
    let mut mean = vec![(0.0, 100.0 * mean_success(&start))];
    mean.extend(
        summary
            .rounds
            .iter()
            .map(|r| (r.labels as f64, 100.0 * mean_success(&r.eval))),
    );
    chart = chart.series("mean of the splits", mean);
    dreamgym_base::write_atomic(
        &figures.join("dpo_label_efficiency.png"),
        &crate::figures::line_chart_png(&chart)?,
    )?;
    md.push_str("\n## Label efficiency\n\n![](figures/dpo_label_efficiency.png)\n");

    // Where the change comes from.
    md.push_str("\n## Per instruction family (successes over every split)\n\n");
    let fam_start = families(&start);
    let fam_last = summary.rounds.last().map(|r| families(&r.eval));
    let fam_rlhf = summary.rlhf.as_ref().map(|h| families(&h.eval));
    md.push_str("| family | start | last DPO round | RLHF |\n|---|---|---|---|\n");
    let show = |m: &Option<BTreeMap<String, (usize, usize)>>, f: &str| {
        m.as_ref()
            .and_then(|m| m.get(f))
            .map_or("–".into(), |(n, k)| format!("{k}/{n}"))
    };
    for (f, (n, k)) in &fam_start {
        md.push_str(&format!(
            "| {f} | {k}/{n} | {} | {} |\n",
            show(&fam_last, f),
            show(&fam_rlhf, f)
        ));
    }

    // The rounds.
    md.push_str(
        "\n## Rounds\n\n| round | pairs | first actions differ | A / B / equal / skip | labels \
         in all | preferences in all | DPO steps | loss | rewards/accuracies | rewards/margins \
         | logps/chosen | logps/rejected | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &summary.rounds {
        let c = |k: &str| r.choices.get(k).copied().unwrap_or(0);
        md.push_str(&format!(
            "| {} | {} | {} | {} / {} / {} / {} | {} | {} | {} | {:.3} | {:.2} | {:.3} | {:.2} | \
             {:.2} | {:.0} |\n",
            r.round,
            r.pairs,
            r.differ,
            c("a"),
            c("b"),
            c("equal"),
            c("skip"),
            r.labels,
            r.preferences,
            r.steps,
            r.last[0],
            r.last[1],
            r.last[2],
            r.last[3],
            r.last[4],
            r.seconds
        ));
    }
    md.push_str("\n(DPO's numbers are means over each round's last 20 steps.)\n");
    for (file, column, title, y) in [
        ("dpo_loss.png", 1, "DPO loss per round", "loss"),
        (
            "dpo_margins.png",
            5,
            "DPO rewards/margins per round",
            "rewards/margins",
        ),
    ] {
        let mut chart = crate::figures::LineChart::new(title, "step", y);
        for r in &summary.rounds {
            let path = RunDir::new(run.file(&format!("dpo/round{}", r.round))).metrics("dpo");
            let (_, rows) = crate::read_csv(&path);
            chart = chart.series(
                format!("round {} ({} labels)", r.round, r.labels),
                rows.iter()
                    .filter(|row| row.len() > column)
                    .map(|row| (row[0], row[column]))
                    .collect(),
            );
        }
        dreamgym_base::write_atomic(
            &figures.join(file),
            &crate::figures::line_chart_png(&chart)?,
        )?;
        md.push_str(&format!("\n![](figures/{file})\n"));
    }

    if let Some(h) = &summary.rlhf {
        md.push_str("\n## RLHF\n\n");
        md.push_str(&format!(
            "The reward model (the start model with a scalar head, Bradley–Terry loss) saw {} \
             preferences: its training loss went {:.3} -> {:.3} (first and last 20 steps), and \
             it ranks {} against the labeler's own ceiling of {:.0}%. RLOO against it: score \
             {:.3} -> {:.3} (first and last 10 steps), KL to the start {:.3}; {:.0} s in all.\n",
            h.preferences,
            h.reward_loss.0,
            h.reward_loss.1,
            h.heldout_accuracy
                .map_or("(no labels held out)".into(), |(a, n)| format!(
                    "{:.1}% of {n} held-out labels right",
                    100.0 * a
                )),
            100.0 * (1.0 - stage.labeler.flip),
            h.score.0,
            h.score.1,
            h.kl,
            h.seconds
        ));
    }
    dreamgym_base::write_atomic(&run.file(DPO_REPORT), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::read_pairs;

    /// A stage a tiny untrained model finishes in seconds: two rounds of 3 labels, a coin
    /// between equally good episodes (an untrained model rarely gets anywhere, and the
    /// plumbing needs preferences), a few steps of everything.
    fn tiny_stage(model: &Path) -> LanguageDpoStage {
        let mut stage = LanguageDpoStage {
            model: model.to_path_buf(),
            env_config: serde_json::json!({ "split": "train", "max_commands": 1 }),
            labels: vec![3, 6],
            seed: 40,
            ..LanguageDpoStage::default()
        };
        stage.pairs.max_turns = 1;
        stage.pairs.distinct_attempts = 4;
        stage.labeler.equal_ties = false;
        stage.dpo.epochs = 2.0;
        stage.dpo.batch_size = 2;
        stage.dpo.lr = 1e-3;
        stage.dpo.checkpoint_every = 1;
        stage.rlhf.reward.steps = 2;
        stage.rlhf.reward.batch_size = 2;
        stage.rlhf.reward.holdout = 0.0;
        stage.rlhf.rloo.steps = 2;
        stage.rlhf.rloo.prompts = 2;
        stage.rlhf.rloo.k = 2;
        stage.rlhf.rloo.sampling.max_new_tokens = 8;
        stage.eval.episodes = 2;
        stage.eval.splits = vec![Split::Train, Split::UnseenPhrasings];
        stage.eval.max_new_tokens = 8;
        stage
    }

    /// Saves an untrained tiny model as the start model folder `start`.
    fn save_tiny_start(start: &Path, seed: u64) {
        crate::testing::tiny_language_model(seed)
            .unwrap()
            .save(
                &RunDir::new(start).checkpoint(LM_CHECKPOINT),
                None,
                serde_json::json!({}),
            )
            .unwrap();
    }

    #[test]
    fn rounds_sample_from_the_last_model_resume_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        let save_start = |seed: u64| save_tiny_start(&start, seed);
        save_start(3);
        let stage = tiny_stage(&start);
        let run = RunDir::new(dir.path().join("run"));
        let registry = Registry::with_builtins();
        let first = run_language_dpo(&stage, &run, &registry, &()).unwrap();

        assert_eq!(first.rounds.len(), 2);
        assert_eq!(first.baselines.len(), 4);
        for (r, round) in first.rounds.iter().enumerate() {
            assert_eq!((round.pairs, round.labels), (3, 3 * (r + 1)));
            assert_eq!(round.choices.values().sum::<usize>(), 3);
            assert_eq!(round.eval.len(), 2);
            assert!(round.steps >= 1 && round.seconds > 0.0);
        }
        assert!(first.rounds[1].preferences >= first.rounds[0].preferences);
        // Round 2's pairs come from round 1's model, from the seeds after round 1's.
        let (meta, pairs) = read_pairs(&round_dir(run.root(), 2)).unwrap();
        assert!(meta.model.ends_with("round1"), "{}", meta.model);
        assert_eq!(meta.seed, 43);
        assert_eq!(pairs[0].seed, 43);
        let rlhf = first.rlhf.as_ref().unwrap();
        assert_eq!(rlhf.eval.len(), 2);
        assert_eq!(rlhf.preferences, first.rounds[1].preferences);
        let report = std::fs::read_to_string(run.file(DPO_REPORT)).unwrap();
        for row in ["| scripted planner |", "| DPO round 2 | 6 |", "| RLHF"] {
            assert!(report.contains(row), "{row} not in the report:\n{report}");
        }
        for f in [
            "dpo_label_efficiency.png",
            "dpo_loss.png",
            "dpo_margins.png",
        ] {
            assert!(run.figures().join(f).exists(), "{f}");
        }

        // Run again: nothing trains or is evaluated again, and the numbers are the same.
        let again = run_language_dpo(&stage, &run, &registry, &()).unwrap();
        assert!(again.rounds.iter().all(|r| r.seconds == 0.0));
        let zero = |s: &LanguageDpoSummary| {
            let mut s = s.clone();
            s.rounds.iter_mut().for_each(|r| r.seconds = 0.0);
            s
        };
        assert_eq!(zero(&again), zero(&first));

        // Round 2's model lost (a crash before its first checkpoint): trained again, it is the
        // same model, and the RLHF run is kept.
        let round2 = RunDir::new(run.file("dpo/round2"));
        let crc = dreamgym_nn::weights_crc32(&round2.checkpoint(LM_CHECKPOINT)).unwrap();
        for ext in ["json", "safetensors"] {
            std::fs::remove_file(round2.checkpoint(LM_CHECKPOINT).with_extension(ext)).unwrap();
        }
        let third = run_language_dpo(&stage, &run, &registry, &()).unwrap();
        assert!(third.rounds[1].seconds > 0.0 && third.rounds[0].seconds == 0.0);
        assert_eq!(
            dreamgym_nn::weights_crc32(&round2.checkpoint(LM_CHECKPOINT)).unwrap(),
            crc
        );
        assert_eq!(zero(&third), zero(&first));

        // Another start model in the same folder is refused.
        save_start(4);
        let err = run_language_dpo(&stage, &run, &registry, &())
            .unwrap_err()
            .to_string();
        assert!(err.contains("another start model"), "{err}");
    }

    #[test]
    fn rounds_from_the_previous_model_train_it_on_their_own_preferences() {
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        save_tiny_start(&start, 3);
        let registry = Registry::with_builtins();
        let mut stage = tiny_stage(&start);
        stage.rlhf.enabled = false;
        let from_start = RunDir::new(dir.path().join("from_start"));
        let a = run_language_dpo(&stage, &from_start, &registry, &()).unwrap();
        stage.dpo.from = DpoStart::Previous;
        let previous = RunDir::new(dir.path().join("previous"));
        let b = run_language_dpo(&stage, &previous, &registry, &()).unwrap();
        let crc = |run: &RunDir, r: usize| {
            let model = RunDir::new(run.file(&format!("dpo/round{r}")));
            dreamgym_nn::weights_crc32(&model.checkpoint(LM_CHECKPOINT)).unwrap()
        };
        // Round 1 starts from the start model either way: the same model.
        assert_eq!(crc(&from_start, 1), crc(&previous, 1));
        assert_eq!(a.rounds[1].preferences, b.rounds[1].preferences);
        // Round 2 trains round 1's model on round 2's preferences only (2 epochs of batch 2:
        // one step per preference), not the start model on all of them.
        let own = b.rounds[1].preferences - b.rounds[0].preferences;
        assert!(own >= 1);
        assert_eq!(b.rounds[1].steps, own);
        assert_eq!(a.rounds[1].steps, a.rounds[1].preferences);
        assert_ne!(crc(&from_start, 2), crc(&previous, 2));
        let report = std::fs::read_to_string(previous.file(DPO_REPORT)).unwrap();
        assert!(
            report.contains("from the previous round's model"),
            "{report}"
        );
        // Run again: kept, nothing trained again.
        let again = run_language_dpo(&stage, &previous, &registry, &()).unwrap();
        assert!(again.rounds.iter().all(|r| r.seconds == 0.0));
    }

    #[test]
    fn labels_go_only_to_pairs_whose_first_actions_differ_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        save_tiny_start(&start, 3);
        let mut stage = tiny_stage(&start);
        stage.rlhf.enabled = false;
        stage.pairs.label_distinct_only = true;
        // B's first action drawn once, at a low temperature: most pairs write the same first
        // action twice (round 1 runs out of pairs to search with one label spent).
        stage.pairs.distinct_attempts = 1;
        stage.pairs.temperature = 0.1;
        let run = RunDir::new(dir.path().join("run"));
        let registry = Registry::with_builtins();
        let summary = run_language_dpo(&stage, &run, &registry, &()).unwrap();
        let mut spent = 0;
        for (r, round) in summary.rounds.iter().enumerate() {
            let dir = round_dir(run.root(), r + 1);
            let (meta, pairs) = read_pairs(&dir).unwrap();
            // Round seeds lie DISTINCT_SEARCH apart per label.
            assert_eq!(meta.seed, 40 + (3 * r * DISTINCT_SEARCH) as u64);
            let log = LabelLog::open(&dir.join(LABELS_FILE)).unwrap();
            let labeled = log.in_effect();
            spent += labeled.len();
            assert!(labeled.len() <= 3 && pairs.len() <= 3 * DISTINCT_SEARCH);
            // Short of three differing pairs only when the search ran out.
            assert!(labeled.len() == 3 || pairs.len() == 3 * DISTINCT_SEARCH);
            for (pair, _) in labeled.keys() {
                let p = pairs.iter().find(|p| &p.id == pair).unwrap();
                assert_ne!(p.first_action(false), p.first_action(true), "{pair}");
            }
            let same = pairs
                .iter()
                .filter(|p| p.first_action(false) == p.first_action(true))
                .count();
            println!(
                "round {}: {} pairs, {same} alike, {} labeled",
                r + 1,
                pairs.len(),
                labeled.len()
            );
            assert_eq!(round.pairs, pairs.len());
            assert_eq!(round.differ, pairs.len() - same);
            assert_eq!(round.labels, spent);
        }
        // The search had something to skip (else this test proves nothing).
        assert!(summary.rounds.iter().any(|r| r.pairs > r.differ));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let bad = |f: &dyn Fn(&mut LanguageDpoStage)| {
            let mut s = LanguageDpoStage::default();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(&|s| s.labels = vec![200, 100]).contains("labels"));
        assert!(bad(&|s| s.labels.clear()).contains("labels"));
        assert!(bad(&|s| s.pairs.temperature = 0.0).contains("pairs.temperature"));
        assert!(bad(&|s| s.dpo.epochs = f64::NAN).contains("dpo.epochs"));
        assert!(bad(&|s| s.labeler.flip = 2.0).contains("labeler"));
        assert!(bad(&|s| s.rlhf.rloo.k = 1).contains("rlhf.rloo"));
        assert!(bad(&|s| s.eval.splits.clear()).contains("eval.splits"));
        // RLHF off: its settings are not checked.
        let mut off = LanguageDpoStage::default();
        off.rlhf.enabled = false;
        off.rlhf.rloo.k = 1;
        off.validate().unwrap();
        LanguageDpoStage::default().validate().unwrap();
        assert_eq!(DpoSettings::default().config(188).steps, 188);
    }
}
