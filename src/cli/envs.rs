//! `dreamgym envs`: the registered environments and their spaces.

use anyhow::Context;
use dreamgym_envs::Registry;

/// Arguments of `dreamgym envs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON lines (id, spaces, default config) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    if !args.json {
        println!(
            "{:<14} {:<28} {:<34} {:>9}  description",
            "id", "observation space", "action space", "max steps"
        );
    }
    for spec in registry.specs() {
        let env = registry
            .make(&spec.id, None)
            .with_context(|| format!("building {}", spec.id))?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "id": spec.id,
                    "description": spec.description,
                    "observation_space": env.observation_space(),
                    "action_space": env.action_space(),
                    "max_episode_steps": spec.max_episode_steps,
                    "default_config": spec.default_config,
                })
            );
        } else {
            println!(
                "{:<14} {:<28} {:<34} {:>9}  {}",
                spec.id,
                env.observation_space().to_string(),
                env.action_space().to_string(),
                spec.max_episode_steps
                    .map_or("-".to_string(), |m| m.to_string()),
                spec.description
            );
        }
    }
    Ok(())
}
