//! Small fixtures for tests of crates built on the pipeline (this one, the viewer): a tiny
//! recorded Racer dataset, a config whose stages finish in well under a second, and a tiny
//! untrained language model.

use std::path::Path;

use crate::RunDir;
use crate::world_models::{
    ControllerStage, EvalStage, IterateStage, MdnStage, Stage, VaeStage, WorldModelsConfig,
    run_world_models,
};
use dreamgym_envs::recording::{DatasetMeta, EpisodeWriter, WriterOptions};
use dreamgym_envs::{Env, Info, Registry};
use dreamgym_policies::CmaEsConfig;
use dreamgym_world_model::{DreamConfig, MdnRnnConfig, VaeConfig};
use rand::SeedableRng;

const OVERRIDES: &str = r#"{"obs": "pixels", "width": 16, "height": 16}"#;

/// Records `episodes` random Racer episodes of at most `steps` steps at 16x16 pixels.
pub fn record(dir: &Path, episodes: usize, steps: usize) -> anyhow::Result<()> {
    let registry = Registry::with_builtins();
    let overrides: serde_json::Value = serde_json::from_str(OVERRIDES)?;
    let mut env = registry.make("Racer-v0", Some(&overrides))?;
    let resolved = registry.resolve_config("Racer-v0", Some(&overrides))?;
    let meta = DatasetMeta::new(
        "Racer-v0",
        resolved,
        env.observation_space().clone(),
        env.action_space().clone(),
        "random",
        Some(0),
    );
    let mut w = EpisodeWriter::create(dir, meta, WriterOptions::default())?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for e in 0..episodes {
        let (obs, _) = env.reset(Some(e as u64), &Info::new())?;
        let mut ep = dreamgym_envs::recording::Episode::new(e as u64, obs);
        for _ in 0..steps {
            let a = env.action_space().sample(&mut rng);
            let s = env.step(&a)?;
            let done = s.done();
            ep.push(a, s.obs, s.reward, s.terminated, s.truncated);
            if done {
                break;
            }
        }
        w.push(ep)?;
    }
    w.finish()?;
    Ok(())
}

/// V, M and C small enough for tests, sized for [`record`]'s 16x16 frames.
pub fn tiny_config() -> WorldModelsConfig {
    WorldModelsConfig {
        device: "cpu".into(),
        seed: 3,
        vae: VaeStage {
            model: VaeConfig {
                image_size: 16,
                z_size: 4,
                encoder_channels: vec![4, 8],
                decoder_dense: 16,
                decoder_channels: vec![4],
                decoder_kernels: vec![6, 6],
                ..Default::default()
            },
            epochs: 2,
            batch_size: 16,
            lr: 1e-3,
        },
        mdnrnn: MdnStage {
            model: MdnRnnConfig {
                hidden: 8,
                mixtures: 2,
                ..Default::default()
            },
            epochs: 2,
            batch_size: 4,
            seq_len: 8,
            lr: 1e-3,
            grad_clip: 1.0,
            held_out: 0.0,
            ensemble: 1,
        },
        controller: ControllerStage {
            in_dream: false,
            generations: 2,
            cmaes: CmaEsConfig {
                population: 4,
                sigma0: 0.1,
                seed: 0,
            },
            rollouts: 1,
            max_steps: 10,
            workers: 2,
            select_every: 0,
            select_rollouts: 0,
            dream: DreamConfig {
                max_steps: 10,
                ..Default::default()
            },
        },
        eval: EvalStage {
            episodes: 3,
            seed: 100,
            max_steps: 10,
        },
        iterate: IterateStage::default(),
    }
}

/// Records a tiny dataset into `<run>/data` and trains V, M and C on it.
pub fn tiny_run(run: &Path) -> anyhow::Result<()> {
    let run = RunDir::new(run);
    record(&run.data(), 4, 30)?;
    let cfg = tiny_config();
    let registry = Registry::with_builtins();
    for stage in [Stage::Vae, Stage::Mdn, Stage::Controller] {
        run_world_models(&cfg, &run, &registry, stage, &(), None)?;
    }
    Ok(())
}

/// A tiny untrained Llama-architecture model (one layer, 16 wide, a 300-token BPE tokenizer,
/// 512 positions): it writes text at random, which is all that pairs, DPO and RLHF plumbing
/// need to be tested.
pub fn tiny_language_model(seed: u64) -> anyhow::Result<dreamgym_policies::LanguageModel> {
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "objects: red cube ({i}, 3)\ninstruction: push the red cube\naction: push red \
                 cube to blue zone"
            )
        })
        .collect();
    let tok = dreamgym_policies::TextTokenizer::train(&texts, 300)?;
    let size = dreamgym_policies::LlamaSize {
        n_layer: 1,
        n_embd: 16,
        n_head: 2,
        n_kv_head: 1,
        mlp_hidden: 24,
        block_size: 512,
        dropout: 0.0,
    };
    Ok(dreamgym_policies::LanguageModel::new(
        &size,
        tok,
        &candle_core::Device::Cpu,
        seed,
    )?)
}
