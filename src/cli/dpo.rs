//! `dreamgym dpo`: fine-tune a language model on the preferences of one or more labeled pairs
//! folders (DPO, IPO, hinge or robust DPO against the model as it was), save it as a run
//! folder, and evaluate it on Tabletop-v0's language splits.

use std::path::PathBuf;

use dreamgym_agents::labels::LabelLog;
use dreamgym_agents::language::{SftEval, language_model_fingerprint, load_language_model};
use dreamgym_agents::preference::{
    DpoCheckpoint, DpoConfig, LABELS_FILE, PairRecord, PairsMeta, TextPreference, preferences,
    preferences_fingerprint, tokenize_preferences, train_dpo,
};
use dreamgym_agents::{Progress, RunDir};
use dreamgym_envs::Registry;
use dreamgym_policies::language::{LanguagePolicy, PreferenceLoss, PreferenceLossKind, Sampling};

/// Arguments of `dreamgym dpo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model to start from, which is also the frozen reference: a fine-tuned run folder
    /// (`runs/language-sft`), a `.gguf` file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// Labeled pairs folders (repeatable).
    #[arg(long = "pairs", required = true)]
    pairs: Vec<PathBuf>,
    /// The run folder to write (the model as `lm.*`, metrics in `metrics/dpo.csv`).
    #[arg(long)]
    out: PathBuf,
    /// The loss: sigmoid (DPO), ipo, hinge or robust.
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    /// How far the model may move from the reference.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Assumed label-flip rate (sigmoid: conservative DPO; robust).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// RPO: the weight of the chosen answers' NLL per token added to the loss (0: none).
    #[arg(long, default_value_t = 0.0)]
    rpo_alpha: f64,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// AdamW's learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluation episodes per split after training (0: none).
    #[arg(long, default_value_t = 50)]
    eval_episodes: usize,
    /// Seed of the first evaluation episode.
    #[arg(long, default_value_t = 1_000_000)]
    eval_seed: u64,
}

/// What a `dpo` run folder holds: the model's checkpoint, its metrics and TensorBoard files.
const DPO_RUN_FILES: [&str; 6] = [
    "lm.json",
    "lm.safetensors",
    "lm.optimizer.safetensors",
    "lm.tokenizer.json",
    "metrics",
    "tb",
];

/// An env id and its config.
pub(crate) type EnvSpec = (String, serde_json::Value);

/// The preferences of labeled pairs folders, and the env the first one was made in.
pub(crate) fn load_preferences(
    dirs: &[PathBuf],
    registry: &Registry,
) -> anyhow::Result<(Vec<TextPreference>, EnvSpec)> {
    let (env, folders) = read_pairs_folders(dirs, registry)?;
    let (mut prefs, mut labels) = (Vec::new(), 0);
    for (dir, (_, records)) in dirs.iter().zip(&folders) {
        let log = LabelLog::read(&dir.join(LABELS_FILE))?;
        labels += log.in_effect().len();
        let (p, unknown) = preferences(records, &log);
        if unknown > 0 {
            eprintln!(
                "note: {unknown} labels in {} name pairs it does not have; left out",
                dir.display()
            );
        }
        eprintln!("{}: {} preferences", dir.display(), p.len());
        prefs.extend(p);
    }
    anyhow::ensure!(
        !prefs.is_empty(),
        "{}",
        if labels == 0 {
            "no preferences to learn from: label the pairs first (`dreamgym labels synth`, or a \
             labeling session)"
                .to_string()
        } else {
            format!(
                "no preferences to learn from: none of the {labels} labels in effect prefers one \
                 side where the two first actions differ (equally good, can't tell, or the same \
                 action twice)"
            )
        }
    );
    Ok((prefs, env))
}

/// A pairs folder as read: its meta and its pairs.
pub(crate) type PairsFolder = (PairsMeta, Vec<PairRecord>);

/// Every pairs folder of `dirs`, each read once (meta and pairs), with the env the first was
/// made in; each folder's env must be a language env, the same as the first's.
pub(crate) fn read_pairs_folders(
    dirs: &[PathBuf],
    registry: &Registry,
) -> anyhow::Result<(EnvSpec, Vec<PairsFolder>)> {
    let mut env = None;
    let mut folders = Vec::new();
    for dir in dirs {
        let (meta, records) = super::labels::read_pairs(dir)?;
        check_pairs_env(dir, &meta, env.as_ref(), registry)?;
        env.get_or_insert((meta.env.clone(), meta.env_config.clone()));
        folders.push((meta, records));
    }
    let env = env.ok_or_else(|| anyhow::anyhow!("no pairs folder given"))?;
    Ok((env, folders))
}

/// A pairs folder's env must be a registered language env (text in, text out), the same env
/// as the folders before it (`first`): the models are evaluated in it.
fn check_pairs_env(
    dir: &std::path::Path,
    meta: &PairsMeta,
    first: Option<&EnvSpec>,
    registry: &Registry,
) -> anyhow::Result<()> {
    let env = registry
        .make(&meta.env, Some(&meta.env_config))
        .map_err(|e| anyhow::anyhow!("{}: cannot make the env of its pairs: {e}", dir.display()))?;
    anyhow::ensure!(
        dreamgym_policies::language::is_text_space(env.observation_space())
            && matches!(env.action_space(), dreamgym_envs::Space::Text(_)),
        "{}: its pairs name {}, which is not a language env (text observations and actions)",
        dir.display(),
        meta.env
    );
    if let Some((id, config)) = first {
        anyhow::ensure!(
            *id == meta.env,
            "{}: its pairs were made in {}, the first folder's in {id}: give folders of one env",
            dir.display(),
            meta.env
        );
        // The models are evaluated in the first folder's config, on every split: folders may
        // come from different splits, but not from an env configured otherwise.
        let (a, b) = (but_split(config), but_split(&meta.env_config));
        anyhow::ensure!(
            a == b,
            "{}: its pairs were made in {} configured {b}, the first folder's {a}: the models \
             are evaluated in one configuration (folders may differ in their split only)",
            dir.display(),
            meta.env
        );
    }
    Ok(())
}

/// An env config without its `split`.
fn but_split(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("split");
    }
    c
}

/// Evaluates a fine-tuned model on the language splits of `env`.
pub(crate) fn evaluate(
    title: &str,
    model: dreamgym_policies::language::LanguageModel,
    name: &str,
    env: &EnvSpec,
    episodes: usize,
    seed: u64,
    registry: &Registry,
) -> anyhow::Result<()> {
    if episodes == 0 {
        return Ok(());
    }
    let eval = SftEval {
        episodes,
        seed,
        samples: 0,
        ..SftEval::default()
    };
    let mut policy = LanguagePolicy::new(std::sync::Arc::new(model), Sampling::default(), name);
    super::eval_language::print_splits(title, &mut policy, registry, env, &eval)
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let kind: PreferenceLossKind =
        serde_json::from_value(serde_json::Value::String(args.loss.clone())).map_err(|_| {
            anyhow::anyhow!(
                "unknown loss `{}`: sigmoid, ipo, hinge or robust",
                args.loss
            )
        })?;
    let cfg = DpoConfig {
        loss: PreferenceLoss {
            kind,
            beta: args.beta,
            label_smoothing: args.label_smoothing,
            rpo_alpha: args.rpo_alpha,
        },
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
    };
    cfg.loss.validate()?;
    anyhow::ensure!(
        args.lr.is_finite() && args.lr > 0.0 && args.lr <= 1.0,
        "--lr must be in (0, 1]"
    );
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.steps) && (1..=4096).contains(&args.batch_size),
        "--steps must be in 1..=1000000 and --batch-size in 1..=4096"
    );
    super::distinct_folders(&args.pairs)?;
    let (prefs, env) = load_preferences(&args.pairs, registry)?;
    let policy = load_language_model(&args.model)?;
    let reference = load_language_model(&args.model)?;
    let pairs = tokenize_preferences(&policy, &prefs)?;
    // A DPO run of its own to resume (the checkpoint says whether it is this training), or a
    // new folder: never another run's, the start model's or a pairs folder.
    super::run_folder(&args.out, "dpo", &DPO_RUN_FILES)?;
    let run = RunDir::new(&args.out);
    let progress = super::CliProgress::new();
    pairs.note_left_out(&progress);
    let started = std::time::Instant::now();
    let made_from = serde_json::json!({
        "from": language_model_fingerprint(&args.model)?,
        "preferences": preferences_fingerprint(&prefs),
        "config": cfg,
    });
    let checkpoint = DpoCheckpoint {
        run: &run,
        every: 25,
        made_from,
    };
    let log = train_dpo(
        &policy,
        &reference,
        &pairs.pairs,
        &cfg,
        Some(&checkpoint),
        &progress,
    )?;
    let tail = &log[log.len().saturating_sub(20)..];
    let mean = |f: &dyn Fn(&(f64, dreamgym_policies::language::PreferenceMetrics)) -> f64| {
        tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
    };
    progress.done(&format!(
        "DPO: {} steps on {} preferences in {:.1} s; last 20 steps: loss {:.4}, rewards/accuracies \
         {:.2}, rewards/margins {:.3}",
        args.steps,
        pairs.len(),
        started.elapsed().as_secs_f64(),
        mean(&|x| x.0),
        mean(&|x| x.1.rewards_accuracies),
        mean(&|x| x.1.rewards_margins)
    ));
    evaluate(
        "DPO",
        policy,
        &args.out.display().to_string(),
        &env,
        args.eval_episodes,
        args.eval_seed,
        registry,
    )
}
