//! `dreamgym eval-language`: a policy on the language env's instruction splits, with physics
//! execution: success per split and per instruction family, and the parse rate.

use dreamgym_agents::language::{SftEval, SplitResult, evaluate_policy};
use dreamgym_envs::Registry;
use dreamgym_envs::builtin::tabletop::Split;

/// Arguments of `dreamgym eval-language`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy: `expert` (the planner), a fine-tuned run folder, a `.gguf` file or a Hugging
    /// Face checkpoint folder.
    #[arg(long)]
    policy: String,
    /// Episodes per split.
    #[arg(long, default_value_t = 20)]
    episodes: usize,
    /// Seed of the first episode.
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Splits: train, unseen_combinations, unseen_phrasings, all (repeatable).
    #[arg(long = "split", default_values_t = vec!["train".to_string(), "unseen_combinations".to_string(), "unseen_phrasings".to_string()])]
    splits: Vec<String>,
    /// Env config overrides, `key=value` (repeatable); `mode=language` is always set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100_000).contains(&args.episodes),
        "--episodes must be in 1..=100000"
    );
    let splits = args
        .splits
        .iter()
        .map(|s| {
            serde_json::from_value::<Split>(serde_json::Value::String(s.clone())).map_err(|_| {
                anyhow::anyhow!(
                    "unknown split `{s}`: train, unseen_combinations, unseen_phrasings or all"
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each split once, in the order given.
    let mut splits_once = Vec::new();
    for s in splits {
        if !splits_once.contains(&s) {
            splits_once.push(s);
        }
    }
    let splits = splits_once;
    let overrides = super::language_overrides(
        &args.set,
        "eval-language",
        &[("split", "the splits come from --split")],
    )?;
    let id = "Tabletop-v0";
    let env = registry.make(id, Some(&overrides))?;
    let mut policy = dreamgym_agents::load_policy(
        &args.policy,
        id,
        env.observation_space(),
        env.action_space(),
        args.seed,
    )?;
    let eval = SftEval {
        episodes: args.episodes,
        seed: args.seed,
        splits: splits.clone(),
        samples: 0,
        ..SftEval::default()
    };
    let label = policy.describe();
    print_splits(
        &label,
        policy.as_mut(),
        registry,
        &(id.to_string(), overrides),
        &eval,
    )
}

/// Evaluates `policy` on each of `eval.splits` and prints a Markdown table, a row per split.
pub(super) fn print_splits(
    label: &str,
    policy: &mut dyn dreamgym_policies::Policy,
    registry: &Registry,
    env: &(String, serde_json::Value),
    eval: &SftEval,
) -> anyhow::Result<()> {
    let progress = super::CliProgress::new();
    println!("{}", SplitResult::TABLE_HEADER);
    for &split in &eval.splits {
        dreamgym_agents::Progress::begin(&progress, &format!("{split:?}"), eval.episodes as u64);
        let r = evaluate_policy(label, policy, registry, env, split, eval, None, &progress)?;
        dreamgym_agents::Progress::end(&progress);
        println!("{}", r.table_row());
    }
    Ok(())
}
