//! Writes the paper-size V and M (fixed seeds), fixed inputs, their losses and every
//! parameter's gradient to a folder, for `bench/world_model_parity.py` to recompute in PyTorch.
//!
//! `cargo run --release -p dreamgym-world-model --example parity_dump -- OUT_DIR`

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use dreamgym_nn::{save_checkpoint, sorted_vars};
use dreamgym_world_model::mdn::SeqBatch;
use dreamgym_world_model::{MdnRnn, MdnRnnConfig, Vae, VaeConfig};
use rand::{RngExt, SeedableRng};

fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "parity".into()));
    std::fs::create_dir_all(&out)?;
    let dev = Device::Cpu;

    let vae = Vae::new(VaeConfig::default(), &dev, 1)?;
    let x = uniform(&[4, 64, 64, 3], 0.0, 1.0, 2);
    let eps = uniform(&[4, 32], -2.0, 2.0, 3);
    let loss = vae.loss(&x, &eps)?;
    let grads = loss.total.backward()?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("x".into(), x);
    t.insert("eps".into(), eps);
    t.insert("loss".into(), loss.total.reshape(1)?);
    t.insert("reconstruction".into(), loss.reconstruction.reshape(1)?);
    t.insert("kl".into(), loss.kl.reshape(1)?);
    for (name, var) in sorted_vars(vae.varmap()) {
        t.insert(
            format!("grad.{name}"),
            grads.get(var.as_tensor()).unwrap().clone(),
        );
    }
    save_checkpoint(
        &out.join("vae"),
        "vae",
        vae.config(),
        vae.varmap(),
        None,
        serde_json::json!({}),
    )?;
    candle_core::safetensors::save(&t, out.join("vae_io.safetensors"))?;

    let cfg = MdnRnnConfig::default();
    let m = MdnRnn::new(cfg.clone(), &dev, 4)?;
    let (b, s) = (4, 20);
    let dones: Vec<f32> = (0..b * s)
        .map(|i| if i % 7 == 6 { 1.0 } else { 0.0 })
        .collect();
    let batch = SeqBatch {
        z: uniform(&[b, s + 1, 32], -2.0, 2.0, 5),
        actions: uniform(&[b, s, 3], -1.0, 1.0, 6),
        rewards: uniform(&[b, s], -1.0, 3.0, 7),
        dones: Tensor::from_vec(dones, (b, s), &dev)?,
    };
    let loss = m.loss(&batch)?;
    let grads = loss.total.backward()?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("z".into(), batch.z.clone());
    t.insert("actions".into(), batch.actions.clone());
    t.insert("rewards".into(), batch.rewards.clone());
    t.insert("dones".into(), batch.dones.clone());
    for (k, v) in [
        ("loss", &loss.total),
        ("z_nll", &loss.z_nll),
        ("reward", &loss.reward),
        ("done", &loss.done),
    ] {
        t.insert(k.into(), v.reshape(1)?);
    }
    for (name, var) in sorted_vars(m.varmap()) {
        t.insert(
            format!("grad.{name}"),
            grads.get(var.as_tensor()).unwrap().clone(),
        );
    }
    save_checkpoint(
        &out.join("mdnrnn"),
        "mdnrnn",
        m.config(),
        m.varmap(),
        None,
        serde_json::json!({}),
    )?;
    candle_core::safetensors::save(&t, out.join("mdnrnn_io.safetensors"))?;
    println!("wrote {}", out.display());
    Ok(())
}
