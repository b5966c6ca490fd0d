//! `dreamgym policies`: the kinds of policy `--policy` accepts.

use dreamgym_agents::POLICY_KINDS;

/// Arguments of `dreamgym policies` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let width = POLICY_KINDS.iter().map(|k| k.spec.len()).max().unwrap_or(0);
    for k in POLICY_KINDS {
        println!("{:<width$}  {}", k.spec, k.description);
    }
    Ok(())
}
