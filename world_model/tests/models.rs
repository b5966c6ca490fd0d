//! V, M and the dream: gradients, losses against hand computations, finite differences,
//! checkpoints, learning, and the dream's conformance.

use std::sync::Arc;

use candle_core::{D, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use dreamgym_envs::{BoxSpace, Space, check_env};
use dreamgym_nn::{
    check_gradients_reach_every_parameter, load_weights, param_count, save_checkpoint, sorted_vars,
};
use dreamgym_world_model::dream::StartLatent;
use dreamgym_world_model::mdn::{Mixture, SeqBatch, mixture_nll};
use dreamgym_world_model::{DreamConfig, DreamEnv, MdnRnn, MdnRnnConfig, Vae, VaeConfig};
use rand::{RngExt, SeedableRng};

fn rand_tensor(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

fn tiny_vae() -> VaeConfig {
    VaeConfig {
        image_size: 16,
        channels: 3,
        z_size: 4,
        encoder_channels: vec![4, 8],
        encoder_kernel: 4,
        decoder_dense: 16,
        decoder_channels: vec![4],
        decoder_kernels: vec![6, 6],
        kl_tolerance: 0.0,
    }
}

fn tiny_mdn() -> MdnRnnConfig {
    MdnRnnConfig {
        z_size: 3,
        action_size: 2,
        hidden: 8,
        mixtures: 2,
        ..Default::default()
    }
}

fn seq_batch(cfg: &MdnRnnConfig, b: usize, t: usize, seed: u64) -> SeqBatch {
    let dones: Vec<f32> = (0..b * t)
        .map(|i| if i % 5 == 4 { 1.0 } else { 0.0 })
        .collect();
    SeqBatch {
        z: rand_tensor(&[b, t + 1, cfg.z_size], -1.0, 1.0, seed),
        actions: rand_tensor(&[b, t, cfg.action_size], -1.0, 1.0, seed + 1),
        rewards: rand_tensor(&[b, t], -1.0, 1.0, seed + 2),
        dones: Tensor::from_vec(dones, (b, t), &Device::Cpu).unwrap(),
    }
}

#[test]
fn paper_vae_has_the_papers_parameter_count() {
    let vae = Vae::new(VaeConfig::default(), &Device::Cpu, 0).unwrap();
    assert_eq!(param_count(vae.varmap()), 4_348_547);
    let x = rand_tensor(&[2, 64, 64, 3], 0.0, 1.0, 1);
    let (mu, logvar) = vae.encode(&x).unwrap();
    assert_eq!(mu.dims(), &[2, 32]);
    assert_eq!(logvar.dims(), &[2, 32]);
    assert_eq!(vae.decode(&mu).unwrap().dims(), &[2, 64, 64, 3]);
}

#[test]
fn linear_controller_input_size_matches_paper() {
    // C reads [z, h] = 32 + 256 and outputs 3 actions: 867 parameters (W and b).
    let m = MdnRnnConfig::default();
    assert_eq!((m.z_size + m.hidden) * 3 + 3, 867);
}

#[test]
fn every_vae_parameter_gets_a_finite_nonzero_gradient() {
    let vae = Vae::new(VaeConfig::default(), &Device::Cpu, 3).unwrap();
    let x = rand_tensor(&[2, 64, 64, 3], 0.0, 1.0, 4);
    let eps = rand_tensor(&[2, 32], -1.0, 1.0, 5);
    let loss = vae.loss(&x, &eps).unwrap();
    check_gradients_reach_every_parameter(vae.varmap(), &loss.total).unwrap();
}

#[test]
fn every_mdn_parameter_gets_a_finite_nonzero_gradient() {
    let cfg = MdnRnnConfig::default();
    let m = MdnRnn::new(cfg.clone(), &Device::Cpu, 1).unwrap();
    let loss = m.loss(&seq_batch(&cfg, 2, 6, 7)).unwrap();
    assert_eq!(
        sorted_vars(m.varmap()).len(),
        10,
        "lstm (4), mdn (2), reward (2), done (2)"
    );
    check_gradients_reach_every_parameter(m.varmap(), &loss.total).unwrap();
}

#[test]
fn vae_loss_equals_hand_computation() {
    let cfg = VaeConfig {
        kl_tolerance: 0.5,
        ..tiny_vae()
    };
    let vae = Vae::new(cfg.clone(), &Device::Cpu, 11).unwrap();
    let x = rand_tensor(&[3, 16, 16, 3], 0.0, 1.0, 12);
    let eps = rand_tensor(&[3, 4], -1.0, 1.0, 13);
    let loss = vae.loss(&x, &eps).unwrap();
    // By hand from the encoder's and decoder's outputs.
    let (mu, logvar) = vae.encode(&x).unwrap();
    type Rows = Vec<Vec<f32>>;
    let (mu, lv, e): (Rows, Rows, Rows) = (
        mu.to_vec2().unwrap(),
        logvar.to_vec2().unwrap(),
        eps.to_vec2().unwrap(),
    );
    let z: Vec<f32> = (0..3)
        .flat_map(|b| (0..4).map(move |j| (b, j)))
        .map(|(b, j)| mu[b][j] + (0.5 * lv[b][j]).exp() * e[b][j])
        .collect();
    let y = vae
        .decode(&Tensor::from_vec(z, (3, 4), &Device::Cpu).unwrap())
        .unwrap();
    let (y, xs): (Vec<f32>, Vec<f32>) = (
        y.flatten_all().unwrap().to_vec1().unwrap(),
        x.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let recon: f64 = y
        .iter()
        .zip(&xs)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / 3.0;
    let floor = 0.5 * 4.0;
    let kl: f64 = (0..3)
        .map(|b| {
            let k: f64 = (0..4)
                .map(|j| {
                    let (m, l) = (mu[b][j] as f64, lv[b][j] as f64);
                    -0.5 * (1.0 + l - m * m - l.exp())
                })
                .sum();
            k.max(floor)
        })
        .sum::<f64>()
        / 3.0;
    assert!((scalar(&loss.reconstruction) as f64 - recon).abs() < 1e-3 * recon.max(1.0));
    assert!((scalar(&loss.kl) as f64 - kl).abs() < 1e-4 * kl.max(1.0));
    assert!((scalar(&loss.total) as f64 - recon - kl).abs() < 1e-3 * (recon + kl));
}

#[test]
fn fused_mdn_loss_matches_the_composed_loss_and_its_gradients() {
    // M's loss uses a fused NLL on the CPU; mixture_nll (plain candle ops) is the reference.
    // Two components on a small batch; the paper's five (a loop of constant length) on a
    // batch large enough for the rows to be shared between threads.
    for (mixtures, b, t) in [(2, 3, 4), (5, 40, 40)] {
        fused_mdn_loss_case(mixtures, b, t);
    }
}

fn fused_mdn_loss_case(mixtures: usize, b: usize, t: usize) {
    let cfg = MdnRnnConfig {
        mixtures,
        ..tiny_mdn()
    };
    let m = MdnRnn::new(cfg.clone(), &Device::Cpu, 71).unwrap();
    let batch = seq_batch(&cfg, b, t, 72);
    let fused = m.loss(&batch).unwrap().z_nll;
    let out = m
        .forward(&batch.z.narrow(1, 0, t).unwrap(), &batch.actions)
        .unwrap();
    let z = cfg.z_size;
    let targets = batch
        .z
        .narrow(1, 1, t)
        .unwrap()
        .reshape((b * t, z))
        .unwrap();
    let composed = mixture_nll(&out.mixture().unwrap(), &targets).unwrap();
    assert!((scalar(&fused) - scalar(&composed)).abs() < 1e-5);
    let (g1, g2) = (fused.backward().unwrap(), composed.backward().unwrap());
    for (name, var) in sorted_vars(m.varmap()) {
        if name.starts_with("reward") || name.starts_with("done") {
            continue;
        }
        let a: Vec<f32> = g1
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = g2
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn mixture_nll_equals_direct_density() {
    // Two rows, two latent dims, three components, fixed numbers.
    let lp = [
        0.2f32, -0.5, 1.0, 0.0, 0.3, -1.2, 0.7, 0.1, 0.0, -0.3, 0.5, 0.9,
    ];
    let mu = [
        0.1f32, -0.4, 0.9, 0.0, 0.5, -1.0, 0.3, 0.2, -0.6, 1.1, 0.0, 0.4,
    ];
    let ls = [
        -0.3f32, 0.2, 0.0, -1.0, 0.4, 0.1, 0.0, -0.5, 0.3, 0.2, -0.2, 0.6,
    ];
    let y = [0.3f32, -0.7, 1.2, 0.05];
    let t = |v: &[f32]| Tensor::from_slice(v, (2, 2, 3), &Device::Cpu).unwrap();
    let logits = t(&lp);
    let log_pi = logits
        .broadcast_sub(
            &logits
                .log_sum_exp(D::Minus1)
                .unwrap()
                .unsqueeze(D::Minus1)
                .unwrap(),
        )
        .unwrap();
    let m = Mixture {
        log_pi,
        mu: t(&mu),
        log_sigma: t(&ls),
    };
    let nll =
        scalar(&mixture_nll(&m, &Tensor::from_slice(&y, (2, 2), &Device::Cpu).unwrap()).unwrap());
    let mut total = 0.0f64;
    for cell in 0..4 {
        let w: Vec<f64> = (0..3).map(|k| (lp[cell * 3 + k] as f64).exp()).collect();
        let wsum: f64 = w.iter().sum();
        let p: f64 = (0..3)
            .map(|k| {
                let i = cell * 3 + k;
                let s = (ls[i] as f64).exp();
                let d = (y[cell] as f64 - mu[i] as f64) / s;
                w[k] / wsum * (-0.5 * d * d).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
            })
            .sum();
        total -= p.ln();
    }
    assert!(
        (nll as f64 - total / 4.0).abs() < 1e-5,
        "{nll} vs {}",
        total / 4.0
    );
}

/// Central finite differences of `loss` against autograd for a few entries of every variable.
/// `value` evaluates the same loss for the differences (in f64 where f32 sums are too coarse).
fn check_finite_differences(
    vars: &[(String, Var)],
    loss: &dyn Fn() -> Tensor,
    value: &dyn Fn() -> f64,
    eps: f32,
    tol: f32,
) {
    let grads = loss().backward().unwrap();
    for (name, var) in vars {
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // The entries with the largest gradients, where f32 differences are meaningful.
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|a, b| g[*b].abs().total_cmp(&g[*a].abs()));
        for &i in idx.iter().take(3) {
            let eval = |delta: f32| {
                let mut v = orig.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                value()
            };
            let fd = ((eval(eps) - eval(-eps)) / (2.0 * eps as f64)) as f32;
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (fd - g[i]).abs() / g[i].abs().max(0.05);
            assert!(
                err < tol,
                "{name}[{i}]: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn vae_gradients_match_finite_differences() {
    let vae = Vae::new(tiny_vae(), &Device::Cpu, 21).unwrap();
    let x = rand_tensor(&[2, 16, 16, 3], 0.0, 1.0, 22);
    let eps = rand_tensor(&[2, 4], -1.0, 1.0, 23);
    let vars = sorted_vars(vae.varmap());
    // The loss summed in f64 from the network's outputs (kl_tolerance is 0: no clamp).
    let value = || {
        let (mu, logvar) = vae.encode(&x).unwrap();
        let z = Vae::reparameterize(&mu, &logvar, &eps).unwrap();
        let y: Vec<f32> = vae
            .decode(&z)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let recon: f64 = y
            .iter()
            .zip(&xs)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let (mu, lv): (Vec<f32>, Vec<f32>) = (
            mu.flatten_all().unwrap().to_vec1().unwrap(),
            logvar.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let kl: f64 = mu
            .iter()
            .zip(&lv)
            .map(|(m, l)| -0.5 * (1.0 + *l as f64 - (*m as f64).powi(2) - (*l as f64).exp()))
            .sum();
        (recon + kl) / 2.0
    };
    check_finite_differences(
        &vars,
        &|| vae.loss(&x, &eps).unwrap().total,
        &value,
        1e-3,
        0.02,
    );
}

#[test]
fn mdn_gradients_match_finite_differences() {
    let cfg = tiny_mdn();
    let m = MdnRnn::new(cfg.clone(), &Device::Cpu, 31).unwrap();
    let batch = seq_batch(&cfg, 2, 5, 32);
    let vars = sorted_vars(m.varmap());
    let loss = || m.loss(&batch).unwrap().total;
    check_finite_differences(&vars, &loss, &|| scalar(&loss()) as f64, 1e-2, 0.03);
}

#[test]
fn checkpoints_round_trip_and_refuse_damage_and_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("vae");
    let vae = Vae::new(tiny_vae(), &Device::Cpu, 41).unwrap();
    save_checkpoint(
        &stem,
        "vae",
        vae.config(),
        vae.varmap(),
        None,
        serde_json::json!({"step": 3}),
    )
    .unwrap();
    let loaded = Vae::new(tiny_vae(), &Device::Cpu, 999).unwrap();
    load_weights(&stem, loaded.varmap()).unwrap();
    let x = rand_tensor(&[2, 16, 16, 3], 0.0, 1.0, 42);
    let (a, _) = vae.encode(&x).unwrap();
    let (b, _) = loaded.encode(&x).unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    let (ya, yb) = (vae.decode(&a).unwrap(), loaded.decode(&b).unwrap());
    assert_eq!(
        ya.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        yb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // A model of another shape: a clear mismatch error naming the tensor.
    let other = Vae::new(
        VaeConfig {
            z_size: 5,
            ..tiny_vae()
        },
        &Device::Cpu,
        0,
    )
    .unwrap();
    let err = load_weights(&stem, other.varmap()).unwrap_err().to_string();
    assert!(
        err.contains("has shape") && err.contains("expects"),
        "{err}"
    );
    // The wrong kind.
    let err = dreamgym_nn::read_checkpoint_meta::<MdnRnnConfig>(&stem, "mdnrnn")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("expected mdnrnn"), "{err}");

    // One flipped byte in the weights: damaged, and the model keeps its weights.
    let path = stem.with_extension("safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_weights(&stem, loaded.varmap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("damaged"), "{err}");
    let (c, _) = loaded.encode(&x).unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
    // Truncated and missing files.
    std::fs::write(&path, &bytes[..n / 2]).unwrap();
    assert!(load_weights(&stem, loaded.varmap()).is_err());
    assert!(load_weights(&dir.path().join("nothing"), loaded.varmap()).is_err());
}

#[test]
fn a_few_training_steps_lower_both_losses() {
    // V on a fixed batch.
    let vae = Vae::new(tiny_vae(), &Device::Cpu, 51).unwrap();
    let x = rand_tensor(&[8, 16, 16, 3], 0.0, 1.0, 52);
    let eps = rand_tensor(&[8, 4], -1.0, 1.0, 53);
    let mut opt = AdamW::new(
        vae.varmap().all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let first = scalar(&vae.loss(&x, &eps).unwrap().total);
    for _ in 0..20 {
        opt.backward_step(&vae.loss(&x, &eps).unwrap().total)
            .unwrap();
    }
    let last = scalar(&vae.loss(&x, &eps).unwrap().total);
    assert!(last < 0.9 * first, "vae loss {first} -> {last}");

    // M on a fixed batch.
    let cfg = tiny_mdn();
    let m = MdnRnn::new(cfg.clone(), &Device::Cpu, 54).unwrap();
    let batch = seq_batch(&cfg, 4, 8, 55);
    let mut opt = AdamW::new(
        m.varmap().all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let first = scalar(&m.loss(&batch).unwrap().total);
    for _ in 0..30 {
        opt.backward_step(&m.loss(&batch).unwrap().total).unwrap();
    }
    let last = scalar(&m.loss(&batch).unwrap().total);
    assert!(last < first - 0.3, "mdn loss {first} -> {last}");
}

fn dream_env(seed: u64) -> DreamEnv {
    dream_env_with(
        seed,
        DreamConfig {
            max_steps: 20,
            ..Default::default()
        },
    )
}

fn dream_env_with(seed: u64, config: DreamConfig) -> DreamEnv {
    let cfg = tiny_mdn();
    let m = Arc::new(MdnRnn::new(cfg.clone(), &Device::Cpu, seed).unwrap());
    let starts = Arc::new(vec![
        StartLatent {
            mu: vec![0.1, -0.2, 0.3],
            logvar: vec![-1.0, -2.0, -0.5],
        },
        StartLatent {
            mu: vec![0.5, 0.0, -0.3],
            logvar: vec![-3.0, -1.0, -1.0],
        },
    ]);
    let actions = Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0));
    DreamEnv::new(m, starts, actions, config).unwrap()
}

#[test]
fn dream_env_passes_the_conformance_checker() {
    let mut env = dream_env(61);
    check_env(&mut env).unwrap();
}

#[test]
fn dream_env_is_deterministic_per_seed_and_refuses_bad_input() {
    use dreamgym_envs::{Env, Info, Value};
    let run = |seed| {
        let mut env = dream_env(62);
        let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
        let mut trace = vec![obs];
        for _ in 0..5 {
            let s = env.step(&Value::F32(vec![0.5, -0.5])).unwrap();
            trace.push(s.obs);
        }
        trace
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let mut env = dream_env(63);
    assert!(
        env.step(&Value::F32(vec![0.0, 0.0])).is_err(),
        "step before reset"
    );
    env.reset(Some(1), &Info::new()).unwrap();
    assert!(
        env.step(&Value::F32(vec![0.0])).is_err(),
        "wrong action size"
    );
    assert!(
        env.step(&Value::F32(vec![f32::NAN, 0.0])).is_err(),
        "NaN action"
    );
    // A mismatched action space or empty starts: a config error, not a panic.
    let m = Arc::new(MdnRnn::new(tiny_mdn(), &Device::Cpu, 0).unwrap());
    let bad = DreamEnv::new(
        m.clone(),
        Arc::new(vec![]),
        Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0)),
        DreamConfig::default(),
    );
    assert!(bad.is_err());
    let bad = DreamEnv::new(
        m,
        Arc::new(vec![StartLatent {
            mu: vec![0.0; 3],
            logvar: vec![0.0; 3],
        }]),
        Space::Box(BoxSpace::uniform(vec![5], -1.0, 1.0)),
        DreamConfig::default(),
    );
    assert!(bad.is_err());
}

#[test]
fn a_sampled_done_ends_dream_episodes_as_often_as_m_predicts() {
    use dreamgym_envs::{Env, Info, Value};
    let m = MdnRnn::new(tiny_mdn(), &Device::Cpu, 64).unwrap();
    // M's done head says 0.25 at every step, whatever the state.
    {
        let vars = m.varmap().data().lock().unwrap();
        let w = &vars["done.weight"];
        w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
        let b = &vars["done.bias"];
        let logit = (0.25f32 / 0.75).ln();
        b.set(&Tensor::full(logit, b.as_tensor().shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let m = Arc::new(m);
    let starts = Arc::new(vec![StartLatent {
        mu: vec![0.0; 3],
        logvar: vec![-1.0; 3],
    }]);
    let lengths = |sample_done: bool| -> Vec<(u64, bool)> {
        let mut env = DreamEnv::new(
            m.clone(),
            starts.clone(),
            Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0)),
            DreamConfig {
                max_steps: 50,
                sample_done,
                ..Default::default()
            },
        )
        .unwrap();
        (0..300)
            .map(|e| {
                env.reset(Some(e), &Info::new()).unwrap();
                let mut n = 0;
                loop {
                    n += 1;
                    let s = env.step(&Value::F32(vec![0.1, -0.1])).unwrap();
                    if s.terminated || s.truncated {
                        return (n, s.terminated);
                    }
                }
            })
            .collect()
    };
    // Under the 0.5 threshold a 0.25 risk never ends an episode...
    assert!(lengths(false).iter().all(|&(n, t)| n == 50 && !t));
    // ...sampled, episodes end after 1 / 0.25 = 4 steps on average (geometric).
    let sampled = lengths(true);
    assert!(sampled.iter().all(|&(_, t)| t), "none reaches 50 steps");
    let mean = sampled.iter().map(|&(n, _)| n as f64).sum::<f64>() / sampled.len() as f64;
    assert!((3.4..4.6).contains(&mean), "mean length {mean}");
    assert_eq!(sampled, lengths(true), "same seeds, same ends");
}

#[test]
fn a_calibrated_dream_reads_the_heads_through_the_calibration() {
    use dreamgym_envs::{Env, Info, Value};
    use dreamgym_world_model::Calibration;
    let env = |c: Calibration| dream_env(65).with_calibration(c);
    let rewards = |mut e: DreamEnv| -> Vec<f64> {
        e.reset(Some(3), &Info::new()).unwrap();
        (0..6)
            .map(|_| e.step(&Value::F32(vec![0.2, 0.4])).unwrap().reward)
            .collect()
    };
    let raw = rewards(env(Calibration::IDENTITY));
    let scaled = rewards(env(Calibration {
        reward_scale: 2.0,
        reward_offset: -1.0,
        ..Calibration::IDENTITY
    }));
    for (r, s) in raw.iter().zip(&scaled) {
        assert!((2.0 * r - 1.0 - s).abs() < 1e-9, "{raw:?} {scaled:?}");
    }
    // A done logit pushed far up ends the first step; far down, none.
    let ends = |offset: f64| {
        let mut e = env(Calibration {
            done_offset: offset,
            ..Calibration::IDENTITY
        });
        e.reset(Some(3), &Info::new()).unwrap();
        e.step(&Value::F32(vec![0.2, 0.4])).unwrap().terminated
    };
    assert!(ends(50.0) && !ends(-50.0));
}

#[test]
fn the_mixture_mean_and_the_disagreement_are_the_closed_forms() {
    use dreamgym_world_model::mdn::disagreement;
    let m = MdnRnn::new(tiny_mdn(), &Device::Cpu, 70).unwrap();
    let z = rand_tensor(&[1, 4, 3], -1.0, 1.0, 71);
    let a = rand_tensor(&[1, 4, 2], -1.0, 1.0, 72);
    let mix = m.forward(&z, &a).unwrap().mixture().unwrap();
    let mean = mix.mean().unwrap().to_vec2::<f32>().unwrap();
    let (lp, mu) = (
        mix.log_pi.to_vec3::<f32>().unwrap(),
        mix.mu.to_vec3::<f32>().unwrap(),
    );
    for n in 0..4 {
        for d in 0..3 {
            let want: f32 = (0..2).map(|k| lp[n][d][k].exp() * mu[n][d][k]).sum();
            assert!((mean[n][d] - want).abs() < 1e-6, "{n} {d}");
        }
    }
    // Two members 2 apart in one of two dimensions: std 1 there, 0 in the other.
    let u = disagreement(&[&[0.0, 5.0], &[2.0, 5.0]]);
    assert!((u - 0.5f64.sqrt()).abs() < 1e-12, "{u}");
    assert_eq!(disagreement(&[&[1.0, 2.0]]), 0.0);
    assert_eq!(disagreement(&[&[1.0, 2.0], &[1.0, 2.0], &[1.0, 2.0]]), 0.0);
}

#[test]
fn a_dream_halts_where_its_ensemble_disagrees() {
    use dreamgym_envs::{Env, Info, Value};
    use dreamgym_world_model::dream::Halting;
    let member = |seed| Arc::new(MdnRnn::new(tiny_mdn(), &Device::Cpu, seed).unwrap());
    let episode = |halting: Option<Halting>| {
        let mut env = dream_env(65);
        if let Some(h) = halting {
            env = env.with_halting(h).unwrap();
        }
        env.reset(Some(4), &Info::new()).unwrap();
        let mut steps = Vec::new();
        loop {
            let s = env.step(&Value::F32(vec![0.3, -0.6])).unwrap();
            let end = s.terminated || s.truncated;
            steps.push(s);
            if end {
                return steps;
            }
        }
    };
    let plain = episode(None);
    assert_eq!(plain.len(), 20);
    // Members that agree with M (its own weights) never halt it, even at threshold 0, and
    // the members do not change the dream.
    let same = episode(Some(Halting {
        members: vec![member(65), member(65)],
        threshold: 0.0,
        reward: -100.0,
    }));
    assert_eq!(same.len(), 20);
    for (a, b) in plain.iter().zip(&same) {
        assert_eq!((&a.obs, a.reward), (&b.obs, b.reward));
        assert_eq!(b.info["disagreement"].as_f64(), Some(0.0));
    }
    // Members from other seeds disagree: over a threshold of 0 the first step ends the
    // dream with the halting reward; under a threshold above every spread, nothing changes.
    let other = vec![member(66), member(67)];
    let halted = episode(Some(Halting {
        members: other.clone(),
        threshold: 0.0,
        reward: -100.0,
    }));
    assert_eq!(halted.len(), 1);
    assert!(halted[0].terminated && halted[0].reward == -100.0);
    assert_eq!(halted[0].info["halted"].as_bool(), Some(true));
    let spread = halted[0].info["disagreement"].as_f64().unwrap();
    assert!(spread > 0.0);
    let loose = episode(Some(Halting {
        members: other,
        threshold: 1e9,
        reward: -100.0,
    }));
    assert_eq!(loose.len(), 20);
    assert!(
        plain
            .iter()
            .zip(&loose)
            .all(|(a, b)| a.obs == b.obs && a.reward == b.reward)
    );
    // A member of another size is a config error.
    let wide = Arc::new(
        MdnRnn::new(
            MdnRnnConfig {
                z_size: 4,
                ..tiny_mdn()
            },
            &Device::Cpu,
            1,
        )
        .unwrap(),
    );
    assert!(
        dream_env(65)
            .with_halting(Halting {
                members: vec![wide],
                threshold: 1.0,
                reward: 0.0,
            })
            .is_err()
    );
}

#[test]
fn a_batch_of_dreams_is_the_same_episodes_as_one_at_a_time() {
    use dreamgym_envs::{Env, Info, Value};
    use dreamgym_world_model::Calibration;
    use dreamgym_world_model::dream::Halting;
    let member = |seed| Arc::new(MdnRnn::new(tiny_mdn(), &Device::Cpu, seed).unwrap());
    // A policy that reads the whole observation: a fixed linear map, squashed.
    let act = |i: usize, obs: &[f32], out: &mut [f32]| {
        for (o, a) in out.iter_mut().enumerate() {
            let s: f32 = obs
                .iter()
                .enumerate()
                .map(|(j, x)| x * (((j * 7 + o * 3 + i % 3) % 11) as f32 - 5.0) * 0.2)
                .sum();
            *a = s.tanh();
        }
    };
    let env = |halt_at: f64, ensemble_dynamics: bool| {
        let config = DreamConfig {
            max_steps: 20,
            sample_done: true,
            ensemble_dynamics,
            ..Default::default()
        };
        let mut e = dream_env_with(80, config).with_calibration(Calibration {
            reward_scale: 3.0,
            done_offset: -5.0,
            ..Calibration::IDENTITY
        });
        if halt_at > 0.0 {
            e = e
                .with_halting(Halting {
                    members: vec![member(81), member(82)],
                    threshold: halt_at,
                    reward: -7.0,
                })
                .unwrap();
        }
        e
    };
    let seeds: Vec<u64> = (0..24).map(|s| s * 13 + 5).collect();
    // A threshold that some steps' disagreement passes and some do not: the median over
    // the seeds' first steps (within 1e9, nothing halts).
    let mut spreads: Vec<f64> = seeds
        .iter()
        .map(|&seed| {
            let mut e = env(1e9, false);
            e.reset(Some(seed), &Info::new()).unwrap();
            let s = e.step(&Value::F32(vec![0.1, 0.2])).unwrap();
            s.info["disagreement"].as_f64().unwrap()
        })
        .collect();
    spreads.sort_by(f64::total_cmp);
    let median = spreads[spreads.len() / 2];
    let mut batches = Vec::new();
    for (halt_at, ensemble_dynamics) in [(0.0, false), (median, false), (median, true)] {
        let batch_env = env(halt_at, ensemble_dynamics);
        let batch = batch_env
            .run_batch(&seeds, 15, &mut |i, o, a| act(i, o, a))
            .unwrap();
        let mut single = env(halt_at, ensemble_dynamics);
        for (i, &seed) in seeds.iter().enumerate() {
            let (mut obs, _) = single.reset(Some(seed), &Info::new()).unwrap();
            let (mut ret, mut steps, mut terminated, mut halted) = (0.0, 0, false, false);
            while steps < 15 {
                let mut a = vec![0.0; 2];
                act(i, obs.as_f32().unwrap(), &mut a);
                let s = single.step(&Value::F32(a)).unwrap();
                ret += s.reward;
                steps += 1;
                if s.terminated || s.truncated {
                    terminated = s.terminated;
                    halted = s.info.contains_key("halted");
                    break;
                }
                obs = s.obs;
            }
            let b = batch[i];
            assert_eq!(
                (b.steps, b.terminated, b.halted),
                (steps, terminated, halted),
                "episode {i}, halt at {halt_at}"
            );
            assert!(
                (b.total_return - ret).abs() <= 1e-4 * (1.0 + ret.abs()),
                "episode {i}: batch {} one at a time {ret}",
                b.total_return
            );
        }
        // Episodes end at different steps (the batch shrinks as they do), some halted.
        let lengths: std::collections::BTreeSet<u64> = batch.iter().map(|b| b.steps).collect();
        assert!(lengths.len() > 2, "{lengths:?} {batch:?}");
        if halt_at > 0.0 && !ensemble_dynamics {
            assert!(batch.iter().any(|b| b.halted) && batch.iter().any(|b| !b.halted));
        }
        batches.push(batch);
    }
    // Members' dynamics make other episodes than M's.
    assert_ne!(batches[1], batches[2]);
    // A policy that writes NaN is refused, not stepped.
    let err = env(0.0, false).run_batch(&seeds, 5, &mut |_, _, a| a.fill(f32::NAN));
    assert!(err.is_err());
    assert!(
        env(0.0, false)
            .run_batch(&[], 5, &mut |_, _, _| ())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn ensemble_dynamics_draws_each_episodes_model_from_the_ensemble() {
    use dreamgym_world_model::dream::Halting;
    // M and member 2 never end an episode; member 1 always ends it at the first step.
    let with_done = |seed, logit: f32| {
        let m = MdnRnn::new(tiny_mdn(), &Device::Cpu, seed).unwrap();
        {
            let vars = m.varmap().data().lock().unwrap();
            let w = &vars["done.weight"];
            w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
            let b = &vars["done.bias"];
            b.set(&Tensor::full(logit, b.as_tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        Arc::new(m)
    };
    let starts = Arc::new(vec![StartLatent {
        mu: vec![0.0; 3],
        logvar: vec![-1.0; 3],
    }]);
    let lengths = |ensemble_dynamics: bool| -> Vec<u64> {
        let env = DreamEnv::new(
            with_done(90, -50.0),
            starts.clone(),
            Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0)),
            DreamConfig {
                max_steps: 10,
                ensemble_dynamics,
                ..Default::default()
            },
        )
        .unwrap()
        .with_halting(Halting {
            members: vec![with_done(91, 50.0), with_done(92, -50.0)],
            threshold: 1e9,
            reward: -1.0,
        })
        .unwrap();
        let seeds: Vec<u64> = (0..600).collect();
        env.run_batch(&seeds, 10, &mut |_, _, a| a.fill(0.1))
            .unwrap()
            .iter()
            .map(|e| e.steps)
            .collect()
    };
    assert!(lengths(false).iter().all(|&n| n == 10));
    let drawn = lengths(true);
    assert!(drawn.iter().all(|&n| n == 1 || n == 10));
    // One model in three ends its episodes at once.
    let short = drawn.iter().filter(|&&n| n == 1).count() as f64 / drawn.len() as f64;
    assert!((0.28..0.39).contains(&short), "{short}");
    assert_eq!(drawn, lengths(true), "same seeds, same draws");
}
