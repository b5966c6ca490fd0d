//! `dreamgym-viewer`: watch agents in a bevy window, replay recordings, and see what the agent
//! sees.
//!
//! - Live: `dreamgym view --env Racer-v0 --policy random` draws the env's scene (the same
//!   [`Scene`](dreamgym_sim::Scene) the CPU camera renders for pixel observations) with a
//!   follow/orbit camera, a HUD and a picture-in-picture of the agent's own pixels.
//! - Replay: `dreamgym view --replay data/racer` re-simulates recorded episodes from their seeds
//!   and actions (flagging any divergence), with keys for the next and previous episode and
//!   for scrubbing.
//! - Headless pictures: `--screenshot out.png --frames 60` renders, saves and exits (under
//!   `xvfb-run` on a machine without a display).
//!
//! - Labeling: `dreamgym label pairs/round1 --labeler alice` shows each pair of episodes side
//!   by side, in step, and saves the labeler's choice as one fsynced line (see [`Labeling`]).
//!
//! The viewer only reads env and sim state: a live run takes exactly the steps of a headless
//! run with the same seed. The simulation logic lives in [`Session`], which has no bevy types.

mod app;
mod label_app;
mod labeling;
mod session;
mod shot;

pub use labeling::Labeling;
pub use session::{Session, Source};

use std::path::PathBuf;

use anyhow::Context;
use dreamgym_envs::Registry;

/// Arguments of `dreamgym view`.
#[derive(Debug, clap::Args)]
pub struct ViewArgs {
    /// Environment id for a live view (with `--world-model`: defaults to the run's env).
    #[arg(long, required_unless_present_any = ["replay", "world_model", "dream"], conflicts_with_all = ["replay", "dream"])]
    pub env: Option<String>,
    /// A World Models run folder (from `dreamgym run`): its C drives the live env, and V's
    /// reconstruction of each frame is shown beside the agent's pixels.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["replay", "dream"])]
    pub world_model: Option<PathBuf>,
    /// Play M's dream of a World Models run folder, decoded to images by V (C drives when
    /// trained).
    #[arg(long, value_name = "RUN", conflicts_with = "replay")]
    pub dream: Option<PathBuf>,
    /// A dataset folder (from `dreamgym rollout`) to replay instead.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Env config overrides, `key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The policy of a live view: `random`, a World Models run folder, a Decision Transformer
    /// run folder with its target (`runs/x@200`), or a controller file
    /// (`dreamgym policies` lists them).
    #[arg(long, default_value = "random")]
    pub policy: String,
    /// Seed of the first episode and of the policy.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a screenshot to this PNG after `--frames` frames, then exit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Frames to run before the screenshot (in screenshot mode one env step a frame, or one
    /// kept pose of a language command's motion).
    #[arg(long, default_value_t = 60)]
    pub frames: u32,
    /// Window width, pixels.
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    /// Window height, pixels.
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    /// Initial speed multiplier (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f32,
}

/// Errors unless a display is available, saying how to run without one.
pub fn check_display() -> anyhow::Result<()> {
    if cfg!(target_os = "linux") && std::env::var_os("DISPLAY").is_none_or(|d| d.is_empty()) {
        anyhow::bail!(
            "no display available (DISPLAY is not set; this viewer is built for X11).\n\
             To get a picture on a machine without a display, run it under a virtual one:\n  \
             xvfb-run -a dreamgym view --env Racer-v0 --screenshot out.png --frames 60\n\
             or use the headless commands, which need no display at all:\n  \
             dreamgym render --env Racer-v0 --out frame.png\n  \
             dreamgym rollout --env Racer-v0 --obs pixels --out data/racer"
        );
    }
    Ok(())
}

/// Runs the viewer.
pub fn run(args: ViewArgs, registry: &Registry) -> anyhow::Result<()> {
    anyhow::ensure!(
        (64..=8192).contains(&args.width) && (64..=8192).contains(&args.height),
        "window size {}x{} is invalid: each side must be in 64..=8192",
        args.width,
        args.height
    );
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be positive"
    );
    anyhow::ensure!(args.frames >= 1, "--frames must be at least 1");
    let source = match (&args.env, &args.replay, &args.dream, &args.world_model) {
        (_, Some(dir), _, _) => Source::Replay { dir: dir.clone() },
        (_, None, Some(run), _) => Source::Dream {
            run: run.clone(),
            seed: args.seed,
        },
        (Some(env), None, None, wm) => Source::Live {
            env: env.clone(),
            overrides: dreamgym_envs::parse_overrides(&args.set)?,
            policy: args.policy.clone(),
            seed: args.seed,
            world_model: wm.clone(),
        },
        (None, None, None, Some(run)) => {
            // The run's own env and config, as recorded.
            let meta = dreamgym_envs::recording::Dataset::open(run.join("data"))
                .with_context(|| format!("{} has no dataset in data/", run.display()))?
                .meta()
                .clone();
            Source::Live {
                env: meta.env_id.clone(),
                overrides: Some(meta.env_config.clone()),
                policy: args.policy.clone(),
                seed: args.seed,
                world_model: Some(run.clone()),
            }
        }
        (None, None, None, None) => {
            anyhow::bail!(
                "give --env ID for a live view, --replay DIR, --world-model RUN or --dream RUN"
            )
        }
    };
    // Bad sources fail here, before any window opens.
    let session = Session::new(&source, registry)?;
    check_display()?;
    if let Some(path) = &args.screenshot {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            anyhow::ensure!(
                dir.is_dir(),
                "cannot save the screenshot: {} is not a folder",
                dir.display()
            );
        }
    }
    app::run(
        session,
        app::AppSettings {
            window: (args.width, args.height),
            screenshot: args.screenshot.map(|p| (p, args.frames)),
            speed: args.speed,
        },
    )
}

/// Arguments of `dreamgym label`.
#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// The pairs folder (from `dreamgym pairs`).
    pub pairs: PathBuf,
    /// Who is labeling: labels carry the name, and a restarted session goes on with this
    /// labeler's next unlabeled pair.
    #[arg(long)]
    pub labeler: String,
    /// Save a screenshot to this PNG after `--frames` frames (one replay frame each), then exit
    /// without labeling.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Frames to run before the screenshot.
    #[arg(long, default_value_t = 60)]
    pub frames: u32,
    /// Window width, pixels.
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    /// Window height, pixels.
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    /// Initial speed multiplier (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f32,
}

/// Runs a labeling session.
pub fn run_label(args: LabelArgs, registry: &Registry) -> anyhow::Result<()> {
    anyhow::ensure!(
        (320..=8192).contains(&args.width) && (240..=8192).contains(&args.height),
        "window size {}x{} is too small for two views: at least 320x240",
        args.width,
        args.height
    );
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be positive"
    );
    anyhow::ensure!(args.frames >= 1, "--frames must be at least 1");
    // A bad folder or labeler fails here, before any window opens.
    let labeling = Labeling::open(&args.pairs, &args.labeler, registry)?;
    let notes = labeling::opening_notes(labeling.session());
    if !notes.is_empty() {
        eprintln!("note: {notes}");
    }
    check_display()?;
    if let Some(path) = &args.screenshot
        && path.exists()
    {
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let labeler = labeling.session().labeler().to_string();
    let (given, done, total) = label_app::run(
        labeling,
        label_app::LabelSettings {
            window: (args.width, args.height),
            screenshot: args.screenshot.map(|p| (p, args.frames)),
            speed: args.speed,
        },
    )?;
    println!(
        "{labeler}: {given} label(s) this session; {done} of {total} pairs labeled, every label \
         saved in {}",
        args.pairs
            .join(dreamgym_agents::preference::LABELS_FILE)
            .display()
    );
    Ok(())
}
