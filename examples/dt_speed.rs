//! Decision Transformer speed: training steps per second (AdamW, batch of windows) and acting
//! latency per step with and without the KV cache. `bench/dt_speed.py` runs it beside the same
//! model in PyTorch and prints the ratios.
//!
//!     cargo run --release --example dt_speed -- paper 20 [cpu|cuda] [f32|tf32]
//!     (sizes: `paper` = 3 layers, 128 wide, 1 head, K = 20; `large` = 6 layers, 512, 8 heads, K = 30)
//!
//! On `cuda` (a `--features cuda` build) every timed span ends with a device synchronize. `tf32`
//! lets cuBLAS use TF32 tensor cores for f32 matrix products (PyTorch's `allow_tf32`).

use std::sync::Arc;
use std::time::Instant;

// The allocator and setting the `dreamgym` binary uses (see src/main.rs): freed training buffers
// stay mapped instead of being faulted back in zeroed every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use candle_core::{Device, Tensor};
use dreamgym_envs::Value;
use dreamgym_nn::{Adam, AdamConfig, PositionKind, TransformerConfig, sorted_vars};
use dreamgym_policies::{
    DecisionTransformer, DecisionTransformerConfig, DtAction, DtBatch, DtPolicy, DtSpec, Policy,
};

fn rand(shape: &[usize], seed: u64, device: &Device) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, device).expect("tensor")
}

/// Timed acting episodes (after one untimed), here and in `bench/dt_speed.py`.
const ACT_EPISODES: u64 = 5;

fn main() -> anyhow::Result<()> {
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let size = std::env::args().nth(1).unwrap_or("paper".into());
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let device = dreamgym_nn::device(&std::env::args().nth(3).unwrap_or("cpu".into()))?;
    let precision = std::env::args().nth(4).unwrap_or("f32".into());
    if precision == "tf32" {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    let (layers, width, heads, k) = match size.as_str() {
        "large" => (6, 512, 8, 30),
        _ => (3, 128, 1, 20),
    };
    let (obs_dim, act_dim, batch) = (17, 6, 64);
    let config = DecisionTransformerConfig {
        transformer: TransformerConfig {
            n_layer: layers,
            n_embd: width,
            n_head: heads,
            block_size: 3 * k,
            positions: PositionKind::None,
            dropout: 0.1,
            ..TransformerConfig::default()
        },
        context: k,
        max_timestep: 1000,
        return_scale: 1000.0,
        condition_on_return: true,
        conv: None,
    };
    let spec = DtSpec {
        obs_mean: vec![0.0; obs_dim],
        obs_std: vec![1.0; obs_dim],
        action: DtAction::Box {
            low: vec![-1.0; act_dim],
            high: vec![1.0; act_dim],
        },
        image: None,
    };
    let model = DecisionTransformer::new(&config, spec, &device, 0)?;
    let mut opt = Adam::new(
        sorted_vars(model.varmap()),
        AdamConfig {
            lr: 1e-4,
            weight_decay: 1e-4,
            clip_norm: Some(0.25),
            ..Default::default()
        },
    )?;
    let b = DtBatch {
        returns: rand(&[batch, k, 1], 1, &device),
        obs: rand(&[batch, k, obs_dim], 2, &device),
        actions: rand(&[batch, k, act_dim], 3, &device),
        timesteps: Tensor::from_vec(
            (0..batch * k).map(|i| (i % k) as u32).collect::<Vec<u32>>(),
            (batch, k),
            &device,
        )?,
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4);
    // Losses come back only at the ends (reading one synchronizes the device).
    let mut step = |read: bool| -> anyhow::Result<f32> {
        // On rayon's workers, as dreamgym's training loops run it (`dreamgym_nn::on_workers`).
        let mut run = || -> anyhow::Result<f32> {
            let loss = model.loss(&b, Some(&mut rng))?;
            opt.step(loss.backward()?)?;
            Ok(if read { loss.to_scalar::<f32>()? } else { 0.0 })
        };
        if std::env::var_os("DT_SPEED_CALLER").is_some() {
            run()
        } else {
            dreamgym_nn::on_workers(run)
        }
    };
    // `DT_SPEED_STEPS_ONLY=act`: acting only (to profile it); the training numbers are then 0.
    let act_only = std::env::var("DT_SPEED_STEPS_ONLY").is_ok_and(|v| v == "act");
    let steps = if act_only { 0 } else { steps };
    // The first loss (before any update) compares devices: same seed, same weights, same masks.
    let first_loss = if act_only { 0.0 } else { step(true)? };
    for _ in 0..if act_only { 0 } else { 2 } {
        step(false)?;
    }
    device.synchronize()?;
    let t0 = Instant::now();
    let each = std::env::var_os("DT_SPEED_EACH").is_some();
    for _ in 0..steps {
        let t = Instant::now();
        step(false)?;
        if each {
            device.synchronize()?;
            eprintln!("step {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
    device.synchronize()?;
    // Read here: the step that reads the last loss (and the parts below) are not timed. Until
    // 2026-12-06 they were, which added one step in `steps` to dreamgym's time.
    let train = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    let last_loss = if act_only { 0.0 } else { step(true)? };
    // `DT_SPEED_PARTS=1`: where a training step's time goes (each part ends synchronized).
    if std::env::var_os("DT_SPEED_PARTS").is_some() {
        let (mut fwd, mut bwd, mut upd) = (0.0, 0.0, 0.0);
        let n = steps.clamp(1, 10);
        for _ in 0..n {
            let t = Instant::now();
            let loss = model.loss(&b, Some(&mut rng))?;
            device.synchronize()?;
            fwd += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let grads = loss.backward()?;
            device.synchronize()?;
            bwd += t.elapsed().as_secs_f64();
            let t = Instant::now();
            opt.step(grads)?;
            device.synchronize()?;
            upd += t.elapsed().as_secs_f64();
        }
        let ms = |x: f64| x / n as f64 * 1e3;
        eprintln!(
            "{size} parts per step: forward {:.2} ms, backward {:.2} ms, AdamW {:.2} ms",
            ms(fwd),
            ms(bwd),
            ms(upd)
        );
    }
    // Acting: episodes of 2K steps (K growing, then K full), with and without the cache; the
    // first episode warms up and is not timed.
    let model = Arc::new(model);
    let act = |cached: bool| -> anyhow::Result<f64> {
        let p = DtPolicy::new(model.clone(), 100.0)?;
        let mut p = if cached { p } else { p.without_cache() };
        let obs = Value::F32(vec![0.1; obs_dim]);
        let n = 2 * k;
        let mut episode = |seed: u64| -> anyhow::Result<()> {
            p.reset(seed)?;
            for _ in 0..n {
                p.act(&obs)?;
                p.reward(1.0);
            }
            Ok(())
        };
        episode(0)?;
        // `DT_SPEED_ACT_EPISODES=N`: more acting (to profile it).
        let episodes = std::env::var("DT_SPEED_ACT_EPISODES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(ACT_EPISODES);
        let t0 = Instant::now();
        for seed in 1..=episodes {
            episode(seed)?;
        }
        Ok(t0.elapsed().as_secs_f64() / (episodes as usize * n) as f64)
    };
    let cached = act(true)?;
    let plain = act(false)?;
    println!(
        "{{\"size\": \"{size}\", \"device\": \"{}\", \"precision\": \"{precision}\", \"train_step_ms\": {:.3}, \"train_tokens_per_s\": {:.0}, \"act_ms_cached\": {:.3}, \"act_ms_uncached\": {:.3}, \"first_loss\": {first_loss}, \"last_loss\": {last_loss}}}",
        if device.is_cpu() { "cpu" } else { "cuda" },
        train * 1e3,
        (batch * 3 * k) as f64 / train,
        cached * 1e3,
        plain * 1e3
    );
    Ok(())
}
