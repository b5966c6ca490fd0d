//! `dreamgym rlhf`: RLHF as TRL does it, on labeled pairs folders: a reward model trained on
//! the labels (its accuracy on held-out labels reported), then RLOO against it with a KL
//! penalty to the start model; saves the policy as a run folder and evaluates it. With
//! `--reward verifier` (the ablation) RLOO is scored by the env itself instead: each sampled
//! answer is executed from its pair's start and rewarded with the verifier's progress.

use std::path::PathBuf;

use dreamgym_agents::language::{LM_CHECKPOINT, load_language_model};
use dreamgym_agents::preference::tokenize_preferences;
use dreamgym_agents::rlhf::{
    RewardConfig, RewardModel, RlooConfig, VerifierReward, train_reward_model, train_rloo,
    write_reward_metrics, write_rloo_metrics,
};
use dreamgym_agents::{Progress, RunDir};
use dreamgym_envs::Registry;
use dreamgym_policies::language::{LanguageModel, MAX_WEIGHT, Sampling};

/// What RLOO maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reward {
    /// A reward model trained on the labels (RLHF proper).
    Model,
    /// The env's verifier: the answer executed from the pair's start, its progress (an
    /// ablation: the reward RLHF approximates, with no labels at all).
    Verifier,
}

/// Arguments of `dreamgym rlhf`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model to start from (the reward model starts from it too, and it is the KL
    /// penalty's reference): a fine-tuned run folder, a `.gguf` file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// Labeled pairs folders (repeatable): the reward model's labels, and RLOO's prompts.
    #[arg(long = "pairs", required = true)]
    pairs: Vec<PathBuf>,
    /// The run folder to write (the policy as `lm.*`, the reward model as
    /// `reward_model.safetensors`, metrics in `metrics/`).
    #[arg(long)]
    out: PathBuf,
    /// Reward model: optimiser steps.
    #[arg(long, default_value_t = 200)]
    rm_steps: usize,
    /// Reward model: learning rate.
    #[arg(long, default_value_t = 1e-4)]
    rm_lr: f64,
    /// Reward model: the share of labels held out to measure its accuracy.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// What RLOO maximises: the reward model, or (an ablation) the env's verifier.
    #[arg(long, value_enum, default_value_t = Reward::Model)]
    reward: Reward,
    /// RLOO: optimiser steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// RLOO: prompts per step.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// RLOO: completions sampled per prompt.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// RLOO: the KL penalty's weight.
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    /// RLOO: learning rate.
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// RLOO: sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the split, batch orders and samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluation episodes per split after training (0: none).
    #[arg(long, default_value_t = 50)]
    eval_episodes: usize,
    /// Seed of the first evaluation episode.
    #[arg(long, default_value_t = 1_000_000)]
    eval_seed: u64,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    for (name, v) in [("--rm-lr", args.rm_lr), ("--lr", args.lr)] {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v <= 1.0,
            "{name} must be in (0, 1]"
        );
    }
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.rm_steps) && (1..=1_000_000).contains(&args.steps),
        "--rm-steps and --steps must be in 1..=1000000"
    );
    anyhow::ensure!(
        (1..=4096).contains(&args.prompts) && (2..=64).contains(&args.k),
        "--prompts must be in 1..=4096 and --k in 2..=64"
    );
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature > 0.0,
        "--temperature must be above 0"
    );
    // Checked before the reward model trains: RLOO would refuse it only after.
    anyhow::ensure!(
        args.beta.is_finite() && (0.0..=MAX_WEIGHT).contains(&args.beta),
        "--beta must be in [0, {MAX_WEIGHT}]"
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&args.holdout),
        "--holdout must be in [0, 1)"
    );
    super::distinct_folders(&args.pairs)?;
    // The verifier scores answers itself: the pairs give prompts and starts, labels or not.
    let (prefs, env, folders) = match args.reward {
        Reward::Model => {
            let (prefs, env) = super::dpo::load_preferences(&args.pairs, registry)?;
            (prefs, env, Vec::new())
        }
        Reward::Verifier => {
            let (env, folders) = super::dpo::read_pairs_folders(&args.pairs, registry)?;
            (Vec::new(), env, folders)
        }
    };
    let progress = super::CliProgress::new();
    let policy = load_language_model(&args.model)?;
    let reference = load_language_model(&args.model)?;
    // rlhf does not resume: a new (or empty) folder, never another run's or the start model's.
    anyhow::ensure!(
        !args.out.join("reward_model.safetensors").exists()
            && !args.out.join("metrics").join("rloo.csv").exists(),
        "{} holds an earlier `dreamgym rlhf` run (finished or stopped; rlhf does not resume): \
         choose a new folder for this one, or delete that one",
        args.out.display()
    );
    super::run_folder(&args.out, "rlhf", &[])?;
    let run = RunDir::new(&args.out);

    // RLOO starts from the labels' prompts (with the verifier: every pair's).
    let mut prompts: Vec<String> = match args.reward {
        Reward::Model => prefs.iter().map(|p| policy.prompt(&p.prompt)).collect(),
        Reward::Verifier => {
            let all: Vec<String> = folders
                .iter()
                .flat_map(|(_, records)| records.iter().map(|r| policy.prompt(r.prompt())))
                .collect();
            anyhow::ensure!(!all.is_empty(), "the pairs folders hold no pairs");
            all
        }
    };
    prompts.sort();
    prompts.dedup();
    let cfg = RlooConfig {
        steps: args.steps,
        prompts: args.prompts,
        k: args.k,
        beta: args.beta,
        lr: args.lr,
        sampling: Sampling {
            temperature: args.temperature,
            ..Sampling::default()
        },
        seed: args.seed,
    };
    let mut about = serde_json::json!({
        "from": args.model.display().to_string(),
        "pairs": args.pairs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "rloo": cfg,
    });
    let rloo = |score: &dreamgym_agents::rlhf::Scorer| {
        let started = std::time::Instant::now();
        let log = train_rloo(&policy, &reference, score, &prompts, &cfg, &progress)?;
        anyhow::Ok((log, started.elapsed().as_secs_f64()))
    };
    let (log, seconds) = match args.reward {
        Reward::Model => {
            let (rm, summary) = reward_model(&args, &prefs, &run, &progress)?;
            about["reward_model"] = summary;
            rloo(&|seqs: &[(&[u32], &[u32])]| rm.score_values(seqs))?
        }
        Reward::Verifier => {
            about["reward"] = "verifier".into();
            let verifier = verifier(&args.pairs, &folders, &policy, &env, registry)?;
            rloo(&|seqs: &[(&[u32], &[u32])]| verifier.score(seqs))?
        }
    };
    write_rloo_metrics(&run, &log)?;
    let first = &log[..log.len().min(10)];
    let last = &log[log.len().saturating_sub(10)..];
    let mean = |xs: &[dreamgym_agents::rlhf::RlooStep],
                f: fn(&dreamgym_agents::rlhf::RlooStep) -> f64| {
        xs.iter().map(f).sum::<f64>() / xs.len().max(1) as f64
    };
    progress.done(&format!(
        "RLOO: {} steps on {} prompts in {:.1} s; score {:.3} -> {:.3} (first and last 10 \
         steps), KL {:.3}",
        args.steps,
        prompts.len(),
        seconds,
        mean(first, |s| s.score),
        mean(last, |s| s.score),
        mean(last, |s| s.kl),
    ));
    policy.save(
        &run.checkpoint(LM_CHECKPOINT),
        None,
        serde_json::json!({ "rlhf": about }),
    )?;
    super::dpo::evaluate(
        "RLHF (RLOO)",
        policy,
        &args.out.display().to_string(),
        &env,
        args.eval_episodes,
        args.eval_seed,
        registry,
    )
}

/// Trains the reward model on the labels, saves it and its metrics, and says how it did.
fn reward_model(
    args: &Args,
    prefs: &[dreamgym_agents::preference::TextPreference],
    run: &RunDir,
    progress: &super::CliProgress,
) -> anyhow::Result<(RewardModel, serde_json::Value)> {
    let rm = RewardModel::new(load_language_model(&args.model)?)?;
    let pairs = tokenize_preferences(rm.model(), prefs)?;
    pairs.note_left_out(progress);
    let rm_cfg = RewardConfig {
        steps: args.rm_steps,
        batch_size: 16,
        lr: args.rm_lr,
        holdout: args.holdout,
        seed: args.seed,
    };
    let started = std::time::Instant::now();
    let report = train_reward_model(&rm, &pairs, &rm_cfg, progress)?;
    write_reward_metrics(run, &report)?;
    rm.save(&run.root().join("reward_model.safetensors"))?;
    let held = match report.heldout_accuracy {
        Some((acc, n)) => format!("held-out accuracy {:.1}% on {n} labels", 100.0 * acc),
        None => "no labels held out".into(),
    };
    progress.done(&format!(
        "reward model: {} steps on {} labels in {:.1} s; {held}",
        args.rm_steps,
        report.train,
        started.elapsed().as_secs_f64()
    ));
    let summary = serde_json::json!({
        "config": rm_cfg,
        "labels": pairs.len(),
        "heldout_accuracy": report.heldout_accuracy,
    });
    Ok((rm, summary))
}

/// The verifier of the pairs' env, with every pair's start (`folders` as read from `dirs`).
fn verifier<'a>(
    dirs: &[PathBuf],
    folders: &[super::dpo::PairsFolder],
    model: &'a LanguageModel,
    (id, config): &super::dpo::EnvSpec,
    registry: &Registry,
) -> anyhow::Result<VerifierReward<'a>> {
    let mut starts = Vec::new();
    for (dir, (meta, records)) in dirs.iter().zip(folders) {
        anyhow::ensure!(
            (&meta.env, &meta.env_config) == (id, config),
            "{} was made in {} with another config than the first folder: the verifier \
             replays one env",
            dir.display(),
            meta.env
        );
        starts.extend(records.iter().map(|r| (r.prompt().to_string(), r.seed)));
    }
    VerifierReward::new(
        model,
        registry.make(id, Some(config))?,
        starts.iter().map(|(o, s)| (o.as_str(), *s)),
    )
}
