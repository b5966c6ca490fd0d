//! `dreamgym pairs`: sample two episodes from a language model for each of many start states,
//! for people (or the synthetic labeler) to compare.

use std::path::PathBuf;
use std::sync::Arc;

use dreamgym_agents::language::load_language_model;
use dreamgym_agents::preference::{PairsConfig, collect_pairs};
use dreamgym_envs::Registry;
use dreamgym_policies::language::Sampling;

/// Arguments of `dreamgym pairs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: a fine-tuned run folder (`runs/language-sft`), a `.gguf` file or a Hugging
    /// Face folder.
    #[arg(long)]
    model: PathBuf,
    /// Environment id (a language env).
    #[arg(long, default_value = "Tabletop-v0")]
    env: String,
    /// Pairs wanted in the folder (pairs already there count: an interrupted run goes on).
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// The folder (`pairs.json`, `pairs.jsonl`; labels go in `labels.jsonl` beside them).
    #[arg(long)]
    out: PathBuf,
    /// Env seed of the first pair (pair i starts from seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature of both episodes (above 0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Most actions per episode.
    #[arg(long, default_value_t = 8)]
    max_turns: usize,
    /// Samples of episode B's first action to draw until one differs from A's (a pair with
    /// the same first action on both sides teaches DPO nothing).
    #[arg(long, default_value_t = 8)]
    distinct_attempts: usize,
    /// Episode B's first action is A's with one decision changed (another object, zone,
    /// relation or direction on the table) instead of a sample: answers the model never
    /// samples get into the pairs (B is sampled where A's action does not parse)
    #[arg(long)]
    edit: bool,
    /// Sample with grammar-constrained decoding: tokens that cannot continue a valid program of
    /// the action language are masked, so every answer parses (explore at a higher
    /// --temperature without breaking the syntax)
    #[arg(long)]
    constrained: bool,
    /// Episode A is decoded greedily, as the model is evaluated, and only B samples: each
    /// label then compares the model's own answer with another
    #[arg(long)]
    greedy_a: bool,
    /// Env config overrides, `key=value` (repeatable); `mode=language` is always set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.count),
        "--count must be in 1..=1000000"
    );
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature > 0.0,
        "--temperature must be above 0 (greedy decoding would write the same action twice)"
    );
    anyhow::ensure!(
        args.top_p > 0.0 && args.top_p <= 1.0,
        "--top-p must be in (0, 1]"
    );
    let overrides = super::language_overrides(&args.set, "pairs", &[])?;
    // The env first: a wrong --env or --set is an error before the model loads.
    registry.make(&args.env, Some(&overrides)).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(pairs need an env with a language mode, `mode = language`, such as \
             Tabletop-v0)"
        )
    })?;
    let model = Arc::new(load_language_model(&args.model)?);
    let cfg = PairsConfig {
        count: args.count,
        seed: args.seed,
        sampling: Sampling {
            temperature: args.temperature,
            top_p: args.top_p,
            constrained: args.constrained,
            ..Sampling::default()
        },
        max_turns: args.max_turns,
        distinct_attempts: args.distinct_attempts,
        edit: args.edit,
        greedy_a: args.greedy_a,
        model_fingerprint: Some(dreamgym_agents::language::language_model_fingerprint(
            &args.model,
        )?),
    };
    let progress = super::CliProgress::new();
    let pairs = collect_pairs(
        model,
        &args.model.display().to_string(),
        registry,
        (&args.env, &overrides),
        &cfg,
        &args.out,
        &progress,
    )?;
    let differ = pairs
        .iter()
        .filter(|p| p.first_action(false) != p.first_action(true))
        .count();
    let one_wins = pairs.iter().filter(|p| p.a.success != p.b.success).count();
    let both = pairs.iter().filter(|p| p.a.success && p.b.success).count();
    println!(
        "{} pairs in {}: first actions differ in {differ}, one side succeeds in {one_wins}, both \
         in {both}",
        pairs.len(),
        args.out.display()
    );
    Ok(())
}
