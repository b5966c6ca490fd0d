//! Decision Transformer speed: training steps per second (AdamW, batch of windows) and acting
//! latency per step with and without the KV cache. `bench/dt_speed.py` runs it beside the same
//! model in PyTorch and prints the ratios.
//!
//!     cargo run --release --example dt_speed -- paper 20
//!     (sizes: `paper` = 3 layers, 128 wide, 1 head, K = 20; `large` = 6 layers, 512, 8 heads, K = 30)

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

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn main() -> anyhow::Result<()> {
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let size = std::env::args().nth(1).unwrap_or("paper".into());
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
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
    };
    let spec = DtSpec {
        obs_mean: vec![0.0; obs_dim],
        obs_std: vec![1.0; obs_dim],
        action: DtAction::Box {
            low: vec![-1.0; act_dim],
            high: vec![1.0; act_dim],
        },
    };
    let model = DecisionTransformer::new(&config, spec, &Device::Cpu, 0)?;
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
        returns: rand(&[batch, k, 1], 1),
        obs: rand(&[batch, k, obs_dim], 2),
        actions: rand(&[batch, k, act_dim], 3),
        timesteps: Tensor::from_vec(
            (0..batch * k).map(|i| (i % k) as u32).collect::<Vec<u32>>(),
            (batch, k),
            &Device::Cpu,
        )?,
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4);
    let mut step = || -> anyhow::Result<()> {
        let loss = model.loss(&b, Some(&mut rng))?;
        opt.step(loss.backward()?)?;
        Ok(())
    };
    for _ in 0..3 {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let train = t0.elapsed().as_secs_f64() / steps as f64;
    // Acting: one episode of 2K steps, with and without the cache.
    let model = Arc::new(model);
    let act = |cached: bool| -> anyhow::Result<f64> {
        let p = DtPolicy::new(model.clone(), 100.0)?;
        let mut p = if cached { p } else { p.without_cache() };
        p.reset(0)?;
        let obs = Value::F32(vec![0.1; obs_dim]);
        let n = 2 * k;
        let t0 = Instant::now();
        for _ in 0..n {
            p.act(&obs)?;
            p.reward(1.0);
        }
        Ok(t0.elapsed().as_secs_f64() / n as f64)
    };
    let cached = act(true)?;
    let plain = act(false)?;
    println!(
        "{{\"size\": \"{size}\", \"train_step_ms\": {:.3}, \"train_tokens_per_s\": {:.0}, \"act_ms_cached\": {:.3}, \"act_ms_uncached\": {:.3}}}",
        train * 1e3,
        (batch * 3 * k) as f64 / train,
        cached * 1e3,
        plain * 1e3
    );
    Ok(())
}
