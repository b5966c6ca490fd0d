//! The viewer on its own: `dreamgym-viewer --env Racer-v0` (same options as `dreamgym view`).

use clap::Parser;

/// dreamgym's viewer: watch an agent live or replay recorded episodes.
#[derive(Debug, Parser)]
#[command(name = "dreamgym-viewer", version)]
struct Cli {
    #[command(flatten)]
    view: dreamgym_viewer::ViewArgs,
}

fn main() {
    let cli = Cli::parse();
    let registry = dreamgym_envs::Registry::with_builtins();
    if let Err(e) = dreamgym_viewer::run(cli.view, &registry) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
