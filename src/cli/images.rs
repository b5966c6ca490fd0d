//! `dreamgym render` (one camera frame to PNG) and `dreamgym export-gif` (a recorded pixel
//! episode to an animated GIF).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use dreamgym_envs::recording::Dataset;
use dreamgym_envs::{Info, Registry, Space, Value};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Arguments of `dreamgym render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Environment id.
    #[arg(long)]
    env: String,
    /// Env config overrides, `key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Image width, pixels.
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Image height, pixels.
    #[arg(long, default_value_t = 256)]
    height: usize,
    /// Reset seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random-policy steps to take before the picture.
    #[arg(long, default_value_t = 0)]
    steps: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `dreamgym export-gif`.
#[derive(Debug, clap::Args)]
pub struct GifArgs {
    /// Dataset folder recorded with pixel observations (`--obs pixels` or `both`).
    dir: PathBuf,
    /// Episode index within the dataset (0 is the first).
    #[arg(long, default_value_t = 0)]
    episode: usize,
    /// Output GIF.
    out: PathBuf,
    /// Enlarge each pixel to a `scale`×`scale` block.
    #[arg(long, default_value_t = 4)]
    scale: usize,
    /// Frames per second.
    #[arg(long, default_value_t = 50)]
    fps: u16,
}

pub fn render(args: RenderArgs, registry: &Registry) -> anyhow::Result<()> {
    let mut overrides = super::parse_overrides(&args.set)?.unwrap_or_else(|| serde_json::json!({}));
    overrides["obs"] = "pixels".into();
    overrides["width"] = args.width.into();
    overrides["height"] = args.height.into();
    let mut env = registry
        .make(&args.env, Some(&overrides))
        .with_context(|| format!("{} with pixel observations", args.env))?;
    let (mut obs, _) = env.reset(Some(args.seed), &Info::new())?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    for _ in 0..args.steps {
        let step = env.step(&env.action_space().sample(&mut rng))?;
        let done = step.done();
        obs = step.obs;
        if done {
            break;
        }
    }
    let Value::U8(rgb) = obs else {
        bail!("{} did not return an image", args.env)
    };
    write_png(&args.out, args.width, args.height, &rgb)?;
    println!(
        "wrote {} ({}x{})",
        args.out.display(),
        args.width,
        args.height
    );
    Ok(())
}

/// Writes an RGB image as PNG (atomically: a reader never sees half a file).
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> anyhow::Result<()> {
    let png = dreamgym_agents::figures::encode_png(width as u32, height as u32, rgb)?;
    dreamgym_base::write_atomic(path, &png)?;
    Ok(())
}

/// The image inside an observation, and its (height, width).
fn image_of<'a>(space: &Space, obs: &'a Value) -> Option<(&'a [u8], usize, usize)> {
    match (space, obs) {
        (Space::Box(b), Value::U8(v)) if b.shape.len() == 3 && b.shape[2] == 3 => {
            Some((v, b.shape[0], b.shape[1]))
        }
        (Space::Dict(d), Value::Dict(v)) => {
            let (s, o) = (d.spaces.get("pixels")?, v.get("pixels")?);
            image_of(s, o)
        }
        _ => None,
    }
}

pub fn export_gif(args: GifArgs) -> anyhow::Result<()> {
    ensure!((1..=16).contains(&args.scale), "--scale must be in 1..=16");
    ensure!(args.fps >= 1, "--fps must be at least 1");
    let dataset = Dataset::open(&args.dir)
        .with_context(|| format!("cannot open dataset {}", args.dir.display()))?;
    let space = dataset.meta().observation_space.clone();
    // Find the episode chunk by chunk, so only one chunk is in memory.
    let mut seen = 0;
    let mut episode = None;
    for path in dataset.chunk_paths() {
        let Ok(eps) = dataset.read_chunk(path) else {
            continue;
        };
        if args.episode < seen + eps.len() {
            episode = eps.into_iter().nth(args.episode - seen);
            break;
        }
        seen += eps.len();
    }
    let episode = episode.with_context(|| {
        format!(
            "the dataset has only {seen} readable episodes; --episode {} is out of range",
            args.episode
        )
    })?;
    let Some((_, h, w)) = image_of(&space, &episode.observations[0]) else {
        bail!(
            "{} has no pixel observations ({}); record with `--obs pixels`",
            args.dir.display(),
            space
        );
    };
    let (sw, sh) = (w * args.scale, h * args.scale);
    ensure!(
        sw <= u16::MAX as usize && sh <= u16::MAX as usize,
        "the scaled image is too large for a GIF"
    );
    let mut gif_bytes = Vec::new();
    let mut encoder = gif::Encoder::new(&mut gif_bytes, sw as u16, sh as u16, &[])
        .context("writing GIF header")?;
    encoder
        .set_repeat(gif::Repeat::Infinite)
        .context("writing GIF")?;
    let delay = (100 / args.fps).max(1);
    for obs in &episode.observations {
        let (rgb, _, _) = image_of(&space, obs).context("an observation without an image")?;
        let mut big = vec![0u8; sw * sh * 3];
        for y in 0..sh {
            for x in 0..sw {
                let src = ((y / args.scale) * w + x / args.scale) * 3;
                big[(y * sw + x) * 3..(y * sw + x) * 3 + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
        let mut frame = gif::Frame::from_rgb_speed(sw as u16, sh as u16, &big, 10);
        frame.delay = delay;
        encoder.write_frame(&frame).context("writing a GIF frame")?;
    }
    drop(encoder);
    dreamgym_base::write_atomic(&args.out, &gif_bytes)?;
    println!(
        "wrote {} ({} frames, {}x{})",
        args.out.display(),
        episode.observations.len(),
        sw,
        sh
    );
    Ok(())
}
