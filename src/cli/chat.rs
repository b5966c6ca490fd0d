//! `dreamgym chat`: give a language controller an instruction and watch it act. Prints the
//! scene, takes an instruction (typed, or `--instruction`), prints each action the controller
//! writes and what the env made of it, and ends with success or failure.

use std::io::{BufRead, Write};

use anyhow::Context;
use dreamgym_envs::{Info, Registry, Value};

/// Arguments of `dreamgym chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Environment id (a language env).
    #[arg(long, default_value = "Tabletop-v0")]
    env: String,
    /// The controller: a fine-tuned language model's run folder, a pretrained model (a `.gguf`
    /// file or a Hugging Face folder with config.json), or `expert` (the scripted planner).
    #[arg(long)]
    model: String,
    /// Seed of the table.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The instruction; without it, one is read from standard input (an empty line keeps the
    /// table's own).
    #[arg(long)]
    instruction: Option<String>,
    /// Mask what cannot continue a valid command (grammar-constrained decoding).
    #[arg(long)]
    constrained: bool,
    /// Env config overrides, `key=value` (repeatable); `mode=language` is always set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: Args, registry: &Registry) -> anyhow::Result<()> {
    let mut set = args.set.clone();
    set.push("mode=language".into());
    let overrides = super::parse_overrides(&set)?;
    let mut env = registry.make(&args.env, overrides.as_ref())?;
    // The controller first: a wrong --model is an error before any question.
    let mut policy: Box<dyn dreamgym_policies::Policy> = if args.model == "expert" {
        dreamgym_agents::load_policy(
            "expert",
            &args.env,
            env.observation_space(),
            env.action_space(),
            args.seed,
        )?
    } else if dreamgym_policies::language::is_pretrained(std::path::Path::new(&args.model)) {
        dreamgym_agents::language::load_pretrained_policy(
            std::path::Path::new(&args.model),
            args.constrained,
        )?
    } else {
        let run = dreamgym_agents::RunDir::new(&args.model);
        anyhow::ensure!(
            run.file("lm.json").exists(),
            "{} holds no fine-tuned language model (lm.json); train one with `dreamgym run \
             experiments/language-sft.toml`",
            args.model
        );
        dreamgym_agents::language::load_language_policy(&run, args.constrained)
            .with_context(|| format!("cannot load the language model in {}", args.model))?
    };
    let (obs, info) = env.reset(Some(args.seed), &Info::new())?;
    let text = |v: &Value| {
        dreamgym_policies::language::observation_text(v)
            .unwrap_or_default()
            .to_string()
    };
    println!("{}", text(&obs));
    let drawn = info
        .get("instruction")
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_string();
    let words = match args.instruction {
        Some(w) => w,
        None => {
            print!("instruction (empty: {drawn:?})> ");
            std::io::stdout().flush().ok();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                // Piped input is not echoed: end the prompt's line.
                println!();
            }
            let line = line.trim().to_string();
            if line.is_empty() { drawn } else { line }
        }
    };
    let mut options = Info::new();
    options.insert("instruction".into(), words.clone().into());
    let (mut obs, _) = env.reset(Some(args.seed), &options)?;
    policy.reset(args.seed)?;
    println!("instruction: {words}");
    loop {
        let action = policy.act(&obs)?;
        println!("controller> {}", action.as_text().unwrap_or_default());
        let step = env.step(&action)?;
        let feedback = step
            .info
            .get("feedback")
            .and_then(|f| f.as_str())
            .unwrap_or_default();
        println!("env> {feedback}");
        obs = step.obs;
        if step.terminated || step.truncated {
            let success = step.info.get("success") == Some(&true.into());
            let progress = step
                .info
                .get("progress")
                .and_then(|p| p.as_f64())
                .unwrap_or(0.0);
            println!(
                "{} (progress {progress:.2})",
                if success { "success" } else { "failure" }
            );
            return Ok(());
        }
    }
}
