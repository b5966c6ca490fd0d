//! The World Models stages as commands: `train-vae`, `train-mdnrnn`, `train-controller`, `eval`
//! (each reads the same experiment config as `dreamgym run`), and the whole pipeline.

use std::path::PathBuf;
use std::time::Instant;

use dreamgym_agents::WorldModelsConfig;
use dreamgym_agents::stages;
use dreamgym_envs::Registry;

use super::experiment::{Experiment, load};

/// Arguments of each stage command.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// Experiment config (TOML) with a `[world_models]` section; without one, the embedded
    /// default.
    config: Option<PathBuf>,
    /// The dataset folder (`rollout.out`); the run folder is its parent.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compute device: `cpu`, `cuda`, `cuda:N` (overrides `world_models.device`).
    #[arg(long)]
    device: Option<String>,
}

/// Which stage.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// V.
    Vae,
    /// Encode + M.
    Mdn,
    /// C.
    Controller,
    /// Evaluation + report.
    Eval,
}

pub fn stage(which: Stage, args: StageArgs, registry: &Registry) -> anyhow::Result<()> {
    let (exp, _) = load(args.config.as_deref(), args.out)?;
    let mut wm = exp.world_models()?.clone();
    if let Some(d) = args.device {
        wm.device = d;
    }
    exp.validate(registry)?;
    wm.validate()?;
    let (data, run) = (exp.rollout.out.clone(), exp.run_dir());
    match which {
        Stage::Vae => print_train("V", &stages::train_vae(&wm, &data, &run, true)?, "frames/s"),
        Stage::Mdn => {
            let frames = stages::encode(&wm, &data, &run, true)?;
            println!(
                "encoded {frames} frames into {}",
                run.join("series.safetensors").display()
            );
            print_train("M", &stages::train_mdn(&wm, &run, true)?, "sequences/s");
        }
        Stage::Controller => {
            print_controller(&stages::train_controller(&wm, &data, &run, registry, true)?)
        }
        Stage::Eval => {
            print_eval(&stages::evaluate(&wm, &data, &run, registry, true)?);
            println!(
                "report: {}",
                stages::report(&wm, &data, &run, None)?.display()
            );
        }
    }
    Ok(())
}

/// Runs every stage after collection.
pub fn pipeline(
    exp: &Experiment,
    wm: &WorldModelsConfig,
    registry: &Registry,
    started: Instant,
) -> anyhow::Result<()> {
    let (data, run) = (exp.rollout.out.clone(), exp.run_dir());
    print_train("V", &stages::train_vae(wm, &data, &run, true)?, "frames/s");
    let frames = stages::encode(wm, &data, &run, true)?;
    println!("encoded {frames} frames");
    print_train("M", &stages::train_mdn(wm, &run, true)?, "sequences/s");
    print_controller(&stages::train_controller(wm, &data, &run, registry, true)?);
    print_eval(&stages::evaluate(wm, &data, &run, registry, true)?);
    let report = stages::report(wm, &data, &run, Some(started.elapsed().as_secs_f64()))?;
    println!(
        "report: {} ({:.0} s in all)",
        report.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_train(name: &str, s: &stages::TrainSummary, unit: &str) {
    println!(
        "{name}: {} epochs, {} steps this run, final epoch loss {:.4}, {:.1} {unit}, {:.1} s",
        s.epochs, s.steps, s.final_loss, s.throughput, s.seconds
    );
}

fn print_controller(c: &stages::ControllerFile) {
    println!(
        "C: {} generations {}, best mean training return {:.1}",
        c.generations,
        if c.in_dream {
            "in the dream"
        } else {
            "in the real env"
        },
        c.best_fitness
    );
}

fn print_eval(e: &stages::EvalSummary) {
    let (cm, cs) = stages::mean_std(&e.controller);
    let (rm, rs) = stages::mean_std(&e.random);
    println!(
        "eval on {} seeds of {}: C {cm:.1} ± {cs:.1}, random {rm:.1} ± {rs:.1}",
        e.controller.len(),
        e.env
    );
    if let Some(d) = &e.dream {
        let (dm, ds) = stages::mean_std(d);
        println!("C in the dream (M's predicted reward): {dm:.1} ± {ds:.1}");
    }
}
