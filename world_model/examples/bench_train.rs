//! Training throughput of the paper-size V and M on the CPU (one Adam step per batch).
//!
//! `cargo run --release -p dreamgym-world-model --example bench_train -- vae [batch] [steps]`
//! `cargo run --release -p dreamgym-world-model --example bench_train -- mdn [batch] [steps] [seq]`
//! Threads: `RAYON_NUM_THREADS` (candle's matmul). `BENCH_DEVICE=cuda` runs on the GPU (a
//! `--features cuda` build; timed spans end with a device synchronize). Prints one JSON line;
//! `bench/world_model_vs_torch.py` runs it beside PyTorch.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use dreamgym_nn::{Adam, AdamConfig, sorted_vars};
use dreamgym_world_model::mdn::SeqBatch;
use dreamgym_world_model::{MdnRnn, MdnRnnConfig, Vae, VaeConfig};

fn randn(shape: &[usize], seed: u64, scale: f32, dev: &Device) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..scale)).collect();
    Tensor::from_vec(v, shape, dev).unwrap()
}

fn main() -> candle_core::Result<()> {
    // As in the dreamgym binary: keep freed memory mapped (mi_option_purge_delay = -1).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("vae");
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let dev = dreamgym_nn::device(&std::env::var("BENCH_DEVICE").unwrap_or("cpu".into()))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let adam = AdamConfig {
        lr: 1e-4,
        ..Default::default()
    };
    match what {
        "vae" => {
            let (batch, steps) = (arg(2, 32), arg(3, 10));
            let vae = Vae::new(VaeConfig::default(), &dev, 0).unwrap();
            let mut opt = Adam::new(sorted_vars(vae.varmap()), adam)?;
            let x = randn(&[batch, 64, 64, 3], 1, 1.0, &dev);
            let eps = randn(&[batch, 32], 2, 1.0, &dev);
            // One warm-up step (allocations, thread pool).
            opt.step(vae.loss(&x, &eps)?.total.backward()?)?;
            dev.synchronize()?;
            let t = Instant::now();
            let mut last = 0.0;
            for _ in 0..steps {
                // On rayon's workers, as dreamgym's training loops run it.
                last = dreamgym_nn::on_workers(|| -> candle_core::Result<f32> {
                    let loss = vae.loss(&x, &eps)?;
                    opt.step(loss.total.backward()?)?;
                    loss.total.to_scalar::<f32>()
                })?;
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "{{\"model\": \"vae\", \"batch\": {batch}, \"steps\": {steps}, \"samples_per_s\": {:.2}, \"loss\": {last}}}",
                (batch * steps) as f64 / dt
            );
        }
        "mdn" => {
            let (batch, steps, seq) = (arg(2, 100), arg(3, 5), arg(4, 100));
            let cfg = MdnRnnConfig {
                reward_head: false,
                done_head: false,
                ..Default::default()
            };
            let m = MdnRnn::new(cfg, &dev, 0).unwrap();
            let mut opt = Adam::new(
                sorted_vars(m.varmap()),
                AdamConfig {
                    lr: 1e-3,
                    clip_value: Some(1.0),
                    ..adam
                },
            )?;
            let b = SeqBatch {
                z: randn(&[batch, seq + 1, 32], 3, 1.0, &dev),
                actions: randn(&[batch, seq, 3], 4, 1.0, &dev),
                rewards: Tensor::zeros((batch, seq), candle_core::DType::F32, &dev)?,
                dones: Tensor::zeros((batch, seq), candle_core::DType::F32, &dev)?,
            };
            // On rayon's workers, as dreamgym's training loops run it.
            let step = |opt: &mut Adam| -> candle_core::Result<f32> {
                dreamgym_nn::on_workers(|| {
                    let loss = m.loss(&b)?;
                    opt.step(loss.total.backward()?)?;
                    loss.total.to_scalar::<f32>()
                })
            };
            step(&mut opt)?;
            dev.synchronize()?;
            let t = Instant::now();
            let mut last = 0.0;
            for _ in 0..steps {
                last = step(&mut opt)?;
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "{{\"model\": \"mdn\", \"batch\": {batch}, \"seq\": {seq}, \"steps\": {steps}, \"sequences_per_s\": {:.2}, \"loss\": {last}}}",
                (batch * steps) as f64 / dt
            );
        }
        other => panic!("unknown model {other}: expected vae or mdn"),
    }
    Ok(())
}
