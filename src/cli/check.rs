//! `dreamgym check`: the conformance checker on a registered environment.

use dreamgym_envs::{Registry, check_env};

/// Arguments of `dreamgym check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Environment id (all registered envs when omitted).
    #[arg(long)]
    env: Option<String>,
    /// Env config overrides, `key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let overrides = super::parse_overrides(&args.set)?;
    let ids = match args.env {
        Some(id) => vec![id],
        None => registry.ids(),
    };
    let mut failed = 0;
    for id in &ids {
        let mut env = registry.make(id, overrides.as_ref())?;
        match check_env(&mut env) {
            Ok(()) => println!("{id}: ok"),
            Err(e) => {
                failed += 1;
                println!("{id}: {e}");
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} env(s) failed the checker",
        ids.len()
    );
    Ok(())
}
