//! The `[language_sft]` section of an experiment: supervised fine-tuning of a language
//! controller on the run's recorded language episodes (`Tabletop-v0` with
//! `mode = "language"`, usually the scripted planner's demonstrations), then its evaluation
//! with physics execution on held-out seeds and splits.
//!
//! As in TRL's SFT recipe: the loss is on completion tokens only (the prompt is masked),
//! examples are packed end to end into rows of the model's context (`packing`), AdamW with a
//! linear warm-up and a cosine decay to a tenth of `lr`, the gradient norm clipped. A
//! byte-level BPE tokenizer is trained on the examples first. Training checkpoints (weights,
//! AdamW's moments, the step) every `checkpoint_every` steps and resumes exactly; every
//! random draw comes from the seed by name.
//!
//! The evaluation runs the scripted planner, the model (greedy) and the model with
//! grammar-constrained decoding on the same seeds of each split, and writes `lm_eval.json`
//! and `lm_report.md`: success per split and per instruction family, parse rates, and samples
//! of what the model wrote.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dreamgym_base::derive_seed;
use dreamgym_envs::builtin::tabletop::{Split, parse_program};
use dreamgym_envs::recording::Dataset;
use dreamgym_envs::{Info, Registry, Space};
use dreamgym_nn::{Adam, AdamConfig, LoraConfig};
use dreamgym_policies::language::{load_pretrained, masked_mean, observation_text, prompt_for};
use dreamgym_policies::{
    LanguageModel, LanguagePolicy, LlamaSize, Policy, Sampling, TextTokenizer,
};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Interrupted, MetricsLog, Progress, RunDir};

/// The checkpoint stem in a run folder.
pub const LM_CHECKPOINT: &str = "lm";

/// Settings of supervised fine-tuning and its evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanguageSftStage {
    /// `cpu`, or `cuda` / `cuda:N` with the `cuda` feature.
    pub device: String,
    /// Seed of the initialisation, the packing order, batches and dropout.
    pub seed: u64,
    /// A pretrained model to fine-tune (a GGUF file or a Hugging Face folder); its size and
    /// tokenizer replace `vocab_size` and `model`. Unset: a new model of `model`'s size, with
    /// a BPE tokenizer trained on the examples.
    pub base: Option<std::path::PathBuf>,
    /// Train LoRA adapters on the base's projections instead of every weight; the run
    /// folder then holds only the adapters.
    pub lora: Option<LoraConfig>,
    /// Tokens of the BPE vocabulary (bytes and special tokens included).
    pub vocab_size: usize,
    /// The model's size (a Llama architecture).
    pub model: LlamaSize,
    /// Optimiser steps.
    pub steps: usize,
    /// Rows of `block_size` tokens per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay (on every parameter).
    pub weight_decay: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Largest gradient norm.
    pub grad_clip: f64,
    /// Pack examples end to end into rows (TRL's `packing`: no padding, but an example
    /// attends to the ones before it in its row); otherwise one example a row, padded (TRL's
    /// default).
    pub packing: bool,
    /// Weight of a language-modelling loss on the prompt's tokens beside the completion's
    /// (0: completion only, TRL's default; OpenAI's fine-tuning once used 0.01). A model
    /// trained from scratch learns the observations' text from it: which objects are on the
    /// table, what an instruction names.
    pub prompt_loss_weight: f64,
    /// Learn only from episodes that succeeded (return 1).
    pub successful_only: bool,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// The evaluation.
    pub eval: SftEval,
}

impl Default for LanguageSftStage {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            seed: 0,
            base: None,
            lora: None,
            vocab_size: 512,
            model: LlamaSize::default(),
            steps: 800,
            batch_size: 8,
            lr: 3e-3,
            weight_decay: 0.0,
            warmup_steps: 50,
            grad_clip: 1.0,
            packing: false,
            prompt_loss_weight: 0.0,
            successful_only: true,
            checkpoint_every: 100,
            eval: SftEval::default(),
        }
    }
}

/// How the fine-tuned model is evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftEval {
    /// Episodes per split and policy.
    pub episodes: usize,
    /// Seed of the first episode (episode `i` has `seed + i`); keep it away from the
    /// collection's seeds so the evaluation's scenes are held out.
    pub seed: u64,
    /// The instruction splits evaluated.
    pub splits: Vec<Split>,
    /// Tokens the model may write per action.
    pub max_new_tokens: usize,
    /// Samples of the model's actions shown in the report.
    pub samples: usize,
    /// Episodes per split on which the base model is evaluated before fine-tuning
    /// (zero-shot, greedy and constrained), as a baseline; 0 skips it. Needs `base`.
    #[serde(skip_serializing_if = "is_zero")]
    pub zero_shot_episodes: usize,
}

impl Default for SftEval {
    fn default() -> Self {
        Self {
            episodes: 50,
            seed: 1_000_000,
            splits: vec![
                Split::Train,
                Split::UnseenCombinations,
                Split::UnseenPhrasings,
            ],
            max_new_tokens: 96,
            samples: 10,
            zero_shot_episodes: 0,
        }
    }
}

impl LanguageSftStage {
    /// Checks every field before any work, naming the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        dreamgym_nn::device(&self.device)?;
        // With a base, its own size and tokenizer replace `model` and `vocab_size`.
        if self.base.is_none() {
            self.model
                .gpt(self.vocab_size.max(1))
                .transformer
                .validate()
                .context("invalid [language_sft.model]")?;
        }
        let ensure = |ok: bool, what: &str| -> anyhow::Result<()> {
            anyhow::ensure!(ok, "language_sft.{what}");
            Ok(())
        };
        ensure(
            (260..=1 << 20).contains(&self.vocab_size),
            "vocab_size must be in 260..=1048576",
        )?;
        ensure(
            (1..=10_000_000).contains(&self.steps),
            "steps must be in 1..=10000000",
        )?;
        ensure(
            (1..=65_536).contains(&self.batch_size),
            "batch_size must be in 1..=65536",
        )?;
        ensure(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be a positive number",
        )?;
        ensure(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay must be a number >= 0",
        )?;
        ensure(
            (0.0..=10.0).contains(&self.prompt_loss_weight),
            "prompt_loss_weight must be in [0, 10]",
        )?;
        ensure(
            self.grad_clip.is_finite() && self.grad_clip > 0.0,
            "grad_clip must be a positive number",
        )?;
        ensure(
            self.checkpoint_every >= 1,
            "checkpoint_every must be at least 1",
        )?;
        ensure(
            (1..=100_000).contains(&self.eval.episodes),
            "eval.episodes must be in 1..=100000",
        )?;
        ensure(
            !self.eval.splits.is_empty(),
            "eval.splits must name a split",
        )?;
        ensure(
            (1..=4096).contains(&self.eval.max_new_tokens),
            "eval.max_new_tokens must be in 1..=4096",
        )?;
        ensure(
            self.eval.zero_shot_episodes <= 100_000,
            "eval.zero_shot_episodes must be at most 100000",
        )?;
        ensure(
            self.base.is_some() || self.eval.zero_shot_episodes == 0,
            "eval.zero_shot_episodes needs a pretrained base (a new model knows nothing yet)",
        )?;
        ensure(
            self.base.is_some() || self.lora.is_none(),
            "lora needs a pretrained base to adapt (set language_sft.base)",
        )?;
        if let Some(lora) = &self.lora {
            lora.validate().context("invalid [language_sft.lora]")?;
        }
        if let Some(base) = &self.base {
            anyhow::ensure!(
                dreamgym_policies::language::is_pretrained(base),
                "language_sft.base: {} is neither a .gguf file nor a folder with config.json \
                 and tokenizer.json (SmolLM2-135M-Instruct: scripts/fetch-smollm2.sh)",
                base.display()
            );
        }
        Ok(())
    }

    /// The learning rate at `step`: linear warm-up, then cosine decay to `lr / 10`.
    pub fn lr_at(&self, step: usize) -> f64 {
        crate::warmup_cosine(self.lr, self.warmup_steps, self.steps, step)
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One demonstration: an observation (the model's prompt is made from it) and the
/// completion (the action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// The observation text.
    pub observation: String,
    /// The action text.
    pub completion: String,
}

/// The demonstrations in a recorded language dataset, with its env config.
pub struct SftData {
    /// The examples, in recording order.
    pub examples: Vec<SftExample>,
    /// Episodes used and episodes read.
    pub episodes: (usize, usize),
    /// The dataset's fingerprint (a model trained on other data is stale).
    pub fingerprint: String,
    /// The env id and config the episodes were recorded with.
    pub env: (String, serde_json::Value),
}

impl SftData {
    /// Reads every step of every (successful) episode as a prompt and completion.
    pub fn load(dir: &std::path::Path, successful_only: bool) -> anyhow::Result<Self> {
        let ds = Dataset::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        let meta = ds.meta().clone();
        let text_obs = dreamgym_policies::language::is_text_space(&meta.observation_space);
        anyhow::ensure!(
            text_obs && matches!(meta.action_space, Space::Text(_)),
            "{} holds {} episodes that observe {} and act in {}: supervised fine-tuning needs \
             text observations and text actions (record Tabletop-v0 with mode = \"language\")",
            dir.display(),
            meta.env_id,
            meta.observation_space,
            meta.action_space
        );
        let report = ds.load();
        anyhow::ensure!(
            report.damaged.is_empty(),
            "{} has damaged chunks ({}); run `dreamgym inspect` on it",
            dir.display(),
            report.damaged.len()
        );
        let total = report.episodes.len();
        let mut used = 0;
        let mut examples = Vec::new();
        for e in &report.episodes {
            let ret: f64 = e.rewards.iter().sum();
            if successful_only && ret < 0.999 {
                continue;
            }
            used += 1;
            for (obs, action) in e.observations.iter().zip(&e.actions) {
                let (Some(o), Some(a)) = (observation_text(obs), action.as_text()) else {
                    continue;
                };
                examples.push(SftExample {
                    observation: o.to_string(),
                    completion: a.to_string(),
                });
            }
        }
        anyhow::ensure!(
            !examples.is_empty(),
            "{} has no {}episodes to learn from ({total} episodes read)",
            dir.display(),
            if successful_only { "successful " } else { "" }
        );
        Ok(Self {
            examples,
            episodes: (used, total),
            fingerprint: ds.fingerprint(),
            env: (meta.env_id.clone(), meta.env_config.clone()),
        })
    }
}

/// Rows of token ids with next-token targets and the completion-only mask.
struct Rows {
    inputs: Vec<Vec<u32>>,
    targets: Vec<Vec<u32>>,
    mask: Vec<Vec<f32>>,
    /// Tokens before the padding: a batch is cut to its longest row.
    lengths: Vec<usize>,
}

/// Tokenizes and lays out the examples: packed end to end into rows of `block` tokens, or
/// one example a row padded with the end token (masked).
fn make_rows(
    examples: &[SftExample],
    tokenizer: &TextTokenizer,
    prompt_of: &dyn Fn(&str) -> String,
    block: usize,
    packing: bool,
    seed: u64,
) -> anyhow::Result<Rows> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
        seed,
        "sft.order",
        0,
    )));
    let mut seqs = Vec::with_capacity(order.len());
    for i in order {
        let e = &examples[i];
        let prompt = tokenizer.encode(&prompt_of(&e.observation))?;
        let completion = tokenizer.encode(&e.completion)?;
        let mut ids = if tokenizer.add_bos() {
            vec![tokenizer.bos()]
        } else {
            vec![]
        };
        ids.extend(&prompt);
        let first_answer = ids.len();
        ids.extend(&completion);
        ids.push(tokenizer.eos());
        anyhow::ensure!(
            ids.len() <= block + 1,
            "an example is {} tokens and the model's context is {block}: raise \
             language_sft.model.block_size (a pretrained base's context is its own)",
            ids.len()
        );
        // Target j is token j + 1: it counts when it belongs to the completion.
        let mask: Vec<f32> = (1..ids.len())
            .map(|j| if j >= first_answer { 1.0 } else { 0.0 })
            .collect();
        seqs.push((ids, mask));
    }
    let mut rows = Rows {
        inputs: vec![],
        targets: vec![],
        mask: vec![],
        lengths: vec![],
    };
    if packing {
        let mut stream: Vec<u32> = Vec::new();
        let mut stream_mask: Vec<f32> = Vec::new();
        for (ids, mask) in &seqs {
            if !stream.is_empty() {
                // The first token of an example is predicted from the one before: no loss.
                stream_mask.push(0.0);
            }
            stream.extend(ids);
            stream_mask.extend(mask);
        }
        let mut start = 0;
        while start + 1 < stream.len() {
            let end = (start + block).min(stream.len() - 1);
            let mut inputs = stream[start..end].to_vec();
            let mut targets = stream[start + 1..end + 1].to_vec();
            let mut mask = stream_mask[start..end].to_vec();
            rows.lengths.push(inputs.len());
            pad(&mut inputs, &mut targets, &mut mask, block, tokenizer.eos());
            rows.inputs.push(inputs);
            rows.targets.push(targets);
            rows.mask.push(mask);
            start = end;
        }
    } else {
        for (ids, mask) in seqs {
            let mut inputs = ids[..ids.len() - 1].to_vec();
            let mut targets = ids[1..].to_vec();
            let mut mask = mask;
            rows.lengths.push(inputs.len());
            pad(&mut inputs, &mut targets, &mut mask, block, tokenizer.eos());
            rows.inputs.push(inputs);
            rows.targets.push(targets);
            rows.mask.push(mask);
        }
    }
    Ok(rows)
}

/// The prompt mask of a row's first `width` targets: 1 for every real target (before the
/// row's `length`) that is not the completion's, 0 for the completion and the padding.
fn prompt_mask(mask: &[f32], length: usize, width: usize) -> impl Iterator<Item = f32> + '_ {
    mask[..width]
        .iter()
        .enumerate()
        .map(move |(j, &c)| if j < length && c == 0.0 { 1.0 } else { 0.0 })
}

fn pad(
    inputs: &mut Vec<u32>,
    targets: &mut Vec<u32>,
    mask: &mut Vec<f32>,
    block: usize,
    fill: u32,
) {
    inputs.resize(block, fill);
    targets.resize(block, fill);
    mask.resize(block, 0.0);
}

/// What training did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftTrainSummary {
    /// Steps done in all.
    pub steps: usize,
    /// Steps the checkpoint held when this call started.
    pub resumed_from: usize,
    /// Mean loss of the last 50 steps (or the saved one when nothing ran).
    pub final_loss: f64,
    /// Seconds this call took.
    pub seconds: f64,
    /// Parameters.
    pub parameters: usize,
    /// Parameters that trained (the adapters' with LoRA).
    #[serde(default)]
    pub trainable: usize,
    /// Examples and rows trained on.
    pub examples: usize,
    /// Completion tokens per row, on average.
    pub rows: usize,
}

/// What, besides the architecture and the step count, shapes the trained weights.
fn settings_of(stage: &LanguageSftStage) -> serde_json::Value {
    let mut settings = serde_json::json!({
        "seed": stage.seed,
        "vocab_size": stage.vocab_size,
        "batch_size": stage.batch_size,
        "lr": stage.lr,
        "weight_decay": stage.weight_decay,
        "warmup_steps": stage.warmup_steps,
        "grad_clip": stage.grad_clip,
        "packing": stage.packing,
        "prompt_loss_weight": stage.prompt_loss_weight,
        "successful_only": stage.successful_only,
        "steps": stage.steps,
    });
    // Only when set, so that runs trained before these settings existed still resume.
    if let Some(m) = settings.as_object_mut() {
        if let Some(base) = &stage.base {
            m.insert("base".into(), serde_json::json!(base));
        }
        if let Some(lora) = &stage.lora {
            m.insert("lora".into(), serde_json::json!(lora));
        }
    }
    settings
}

/// The model training starts from: the pretrained base (with fresh adapters when `lora` is
/// set), or a new model of the config's size with a tokenizer trained on the examples (read
/// back from the checkpoint when resuming: training it again would give the same one).
fn initial_model(
    stage: &LanguageSftStage,
    data: &SftData,
    stem: &std::path::Path,
    resumable: bool,
    device: &Device,
) -> anyhow::Result<LanguageModel> {
    if let Some(base) = &stage.base {
        let mut model = load_pretrained(base, device)
            .with_context(|| format!("cannot load the base model {}", base.display()))?;
        if let Some(lora) = &stage.lora {
            model.add_lora(lora, derive_seed(stage.seed, "lm.lora", 0))?;
        }
        return Ok(model);
    }
    let tokenizer = if resumable {
        TextTokenizer::load(&dreamgym_policies::language::tokenizer_path(stem))?
    } else {
        let texts: Vec<String> = data
            .examples
            .iter()
            .flat_map(|e| [prompt_for(&e.observation), e.completion.clone()])
            .collect();
        TextTokenizer::train(&texts, stage.vocab_size)?
    };
    Ok(LanguageModel::new(
        &stage.model,
        tokenizer,
        device,
        derive_seed(stage.seed, "lm.init", 0),
    )?)
}

/// Trains (or resumes) the language model on `data`.
pub fn train_language_model(
    stage: &LanguageSftStage,
    data: &SftData,
    run: &RunDir,
    progress: &dyn Progress,
) -> anyhow::Result<(LanguageModel, SftTrainSummary)> {
    let device = dreamgym_nn::device(&stage.device)?;
    let stem = run.checkpoint(LM_CHECKPOINT);
    let trained_on = serde_json::json!({ "dataset": data.fingerprint });
    let saved = read_state(&stem)?;
    let resumable = saved.as_ref().is_some_and(|(s, _)| {
        s.get("trained_on") == Some(&trained_on) && s.get("settings") == Some(&settings_of(stage))
    });
    let model = initial_model(stage, data, &stem, resumable, &device)?;
    let architecture = serde_json::to_value(model.config())?;
    // A checkpoint of another architecture (another size, or one saved before a change of
    // initialisation) is not resumed: training starts again.
    let resumable = resumable && saved.as_ref().is_some_and(|(_, a)| *a == architecture);
    if saved.is_some() && !resumable {
        progress.note("language model: the dataset, settings or model changed since it was trained; training it from scratch");
    }
    let trainable = model.trainable();
    let trainable_count: usize = trainable.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = Adam::new(
        trainable,
        AdamConfig {
            lr: stage.lr,
            beta2: 0.95,
            weight_decay: stage.weight_decay,
            clip_norm: Some(stage.grad_clip),
            ..Default::default()
        },
    )?;
    let (start, mut last_loss) = match (resumable, &saved) {
        (true, Some((state, _))) => {
            model.load_trainable(&stem)?;
            dreamgym_nn::load_optimizer(&stem, &mut opt)?;
            (
                state
                    .get("steps_done")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0) as usize,
                state
                    .get("loss")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::NAN),
            )
        }
        _ => (0, f64::NAN),
    };
    let parameters = dreamgym_nn::param_count(model.varmap());
    let block = model.config().transformer.block_size;
    let rows = make_rows(
        &data.examples,
        model.tokenizer(),
        &|o| model.prompt(o),
        block,
        stage.packing,
        stage.seed,
    )?;
    let summary = |steps, seconds, loss| SftTrainSummary {
        steps,
        resumed_from: start,
        final_loss: loss,
        seconds,
        parameters,
        trainable: trainable_count,
        examples: data.examples.len(),
        rows: rows.inputs.len(),
    };
    if start >= stage.steps {
        return Ok((model, summary(start, 0.0, last_loss)));
    }
    if start > 0 {
        progress.note(&format!("language model: resuming after step {start}"));
    }
    let mut metrics = MetricsLog::open(
        run,
        "lm",
        &["step", "loss", "prompt_loss", "lr", "tokens"],
        Some(start as f64),
    )?;
    let state = |steps_done: usize, loss: f64| {
        serde_json::json!({
            "steps_done": steps_done,
            "loss": loss,
            "settings": settings_of(stage),
            "trained_on": trained_on,
        })
    };
    progress.begin("train the language model", (stage.steps - start) as u64);
    let t0 = std::time::Instant::now();
    let mut recent: Vec<f64> = Vec::new();
    for step in start..stage.steps {
        if progress.interrupted() {
            progress.end();
            if step > start {
                metrics.commit()?;
                model.save(&stem, Some(&opt), state(step, last_loss))?;
            }
            return Err(Interrupted {
                stage: "train the language model".into(),
                saved: if step == 0 {
                    "no step had finished, so nothing was saved".into()
                } else {
                    format!("the language model is saved after step {step}; run again to resume")
                },
            }
            .into());
        }
        let mut batch_rng =
            ChaCha8Rng::seed_from_u64(derive_seed(stage.seed, "lm.batch", step as u64));
        let mut drop_rng =
            ChaCha8Rng::seed_from_u64(derive_seed(stage.seed, "lm.dropout", step as u64));
        let picks: Vec<usize> = (0..stage.batch_size)
            .map(|_| batch_rng.random_range(0..rows.inputs.len()))
            .collect();
        let b = picks.len();
        // Padding past the batch's longest row changes nothing (it is masked and comes
        // after every real token), so the batch is cut there.
        let width = picks
            .iter()
            .map(|&i| rows.lengths[i])
            .max()
            .unwrap_or(1)
            .max(1);
        let gather_u32 = |src: &Vec<Vec<u32>>| -> anyhow::Result<Tensor> {
            let flat: Vec<u32> = picks
                .iter()
                .flat_map(|&i| src[i][..width].iter().copied())
                .collect();
            Ok(Tensor::from_vec(flat, (b, width), &device)?)
        };
        let inputs = gather_u32(&rows.inputs)?;
        let targets = gather_u32(&rows.targets)?;
        let mask_flat: Vec<f32> = picks
            .iter()
            .flat_map(|&i| rows.mask[i][..width].iter().copied())
            .collect();
        let tokens: f32 = mask_flat.iter().sum();
        let use_dropout = model.config().transformer.dropout > 0.0;
        let drop = if use_dropout {
            Some(&mut drop_rng)
        } else {
            None
        };
        let lr = stage.lr_at(step);
        // On rayon's workers: see `dreamgym_nn::on_workers`.
        let (l, prompt_loss) = dreamgym_nn::on_workers(|| -> anyhow::Result<(f64, f64)> {
            let (completion_loss, loss, prompt_loss) = if stage.prompt_loss_weight > 0.0 {
                let mask = Tensor::from_vec(mask_flat, (b, width), &device)?;
                let losses = model.token_losses(&inputs, &targets, drop)?;
                let completion_loss = masked_mean(&losses, &mask)?;
                let prompt_flat: Vec<f32> = picks
                    .iter()
                    .flat_map(|&i| prompt_mask(&rows.mask[i], rows.lengths[i], width))
                    .collect();
                let prompt = Tensor::from_vec(prompt_flat, (b, width), &device)?;
                let p = masked_mean(&losses, &prompt)?;
                let total = (&completion_loss + p.affine(stage.prompt_loss_weight, 0.0)?)?;
                let p = p.to_scalar::<f32>()? as f64;
                (completion_loss, total, p)
            } else {
                // Completion only: the head runs at the completion's positions alone.
                let at: Vec<u32> = mask_flat
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| **m > 0.0)
                    .map(|(j, _)| j as u32)
                    .collect();
                let n = at.len();
                anyhow::ensure!(n > 0, "language model: a batch without completion tokens");
                let at = Tensor::from_vec(at, n, &device)?;
                let completion_loss = model
                    .token_losses_at(&inputs, &targets, &at, drop)?
                    .mean_all()?;
                (completion_loss.clone(), completion_loss, f64::NAN)
            };
            let l = completion_loss.to_scalar::<f32>()? as f64;
            let total = loss.to_scalar::<f32>()?;
            anyhow::ensure!(
                total.is_finite(),
                "language model: the loss became {total} (completion {l}, prompt {prompt_loss}) at \
                 step {step}"
            );
            opt.set_lr(lr);
            opt.step(loss.backward()?)?;
            Ok((l, prompt_loss))
        })?;
        metrics.push(&[step as f64, l, prompt_loss, lr, tokens as f64])?;
        recent.push(l);
        if recent.len() > 50 {
            recent.remove(0);
        }
        last_loss = recent.iter().sum::<f64>() / recent.len() as f64;
        progress.status(&format!("loss {l:.4}"));
        progress.advance(1);
        if (step + 1) % stage.checkpoint_every == 0 || step + 1 == stage.steps {
            metrics.commit()?;
            model.save(&stem, Some(&opt), state(step + 1, last_loss))?;
        }
    }
    progress.end();
    Ok((
        model,
        summary(stage.steps, t0.elapsed().as_secs_f64(), last_loss),
    ))
}

/// A saved checkpoint's training state and the architecture it holds (the model config of a
/// model trained here; the base's for a fine-tuned pretrained model).
pub(crate) fn read_state(
    stem: &std::path::Path,
) -> anyhow::Result<Option<(serde_json::Value, serde_json::Value)>> {
    if !dreamgym_nn::checkpoint_paths(stem).1.exists() {
        return Ok(None);
    }
    let kind = dreamgym_nn::checkpoint_kind(stem)?;
    let (config, state): (serde_json::Value, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(stem, &kind)?;
    let architecture = if kind == dreamgym_policies::language::FINETUNE_CHECKPOINT_KIND {
        config.get("model").cloned().unwrap_or_default()
    } else {
        config
    };
    Ok(Some((state, architecture)))
}

/// Success of one policy on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitResult {
    /// `planner`, `SFT` or `SFT, constrained`.
    pub policy: String,
    /// The split.
    pub split: Split,
    /// Episodes.
    pub episodes: usize,
    /// Episodes that succeeded.
    pub successes: usize,
    /// Per instruction family: (episodes, successes).
    pub families: BTreeMap<String, (usize, usize)>,
    /// Actions written, and how many of them parsed.
    pub actions: (usize, usize),
}

impl SplitResult {
    /// Success rate.
    pub fn success(&self) -> f64 {
        self.successes as f64 / self.episodes.max(1) as f64
    }

    /// Parse rate.
    pub fn parse_rate(&self) -> f64 {
        self.actions.1 as f64 / self.actions.0.max(1) as f64
    }

    /// The header of [`table_row`](Self::table_row)'s Markdown table.
    pub const TABLE_HEADER: &str =
        "| split | success | parse rate | per family |\n|---|---|---|---|";

    /// A Markdown row: split, success, parse rate, successes per family.
    pub fn table_row(&self) -> String {
        let families: Vec<String> = self
            .families
            .iter()
            .map(|(f, (n, k))| format!("{f} {k}/{n}"))
            .collect();
        format!(
            "| {} | {:.0}% ({}/{}) | {:.0}% | {} |",
            split_name(self.split),
            100.0 * self.success(),
            self.successes,
            self.episodes,
            100.0 * self.parse_rate(),
            families.join(", ")
        )
    }
}

/// One action the model wrote, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSample {
    /// The split.
    pub split: Split,
    /// The instruction.
    pub instruction: String,
    /// What the model wrote.
    pub action: String,
    /// What the env said.
    pub feedback: String,
    /// Whether the episode succeeded.
    pub success: bool,
}

/// The evaluation's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftEvalSummary {
    /// One row per policy and split.
    pub results: Vec<SplitResult>,
    /// Samples of the model's actions (unconstrained).
    pub samples: Vec<SftSample>,
    /// The weights' CRC-32 and the eval settings: the evaluation is done while they hold.
    pub made_by: serde_json::Value,
}

/// Runs `policy` on `eval.episodes` seeds (from `eval.seed`) of `split` of the language env
/// `env` (id and config) and counts successes per family and parsed actions; keeps up to
/// `eval.samples` first actions in `samples`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_policy(
    label: &str,
    policy: &mut dyn Policy,
    registry: &Registry,
    env: &(String, serde_json::Value),
    split: Split,
    eval: &SftEval,
    mut samples: Option<&mut Vec<SftSample>>,
    progress: &dyn Progress,
) -> anyhow::Result<SplitResult> {
    let mut config = env.1.clone();
    if let Some(m) = config.as_object_mut() {
        m.insert("mode".into(), "language".into());
        m.insert("split".into(), serde_json::to_value(split)?);
    }
    let mut e = registry
        .make(&env.0, Some(&config))
        .with_context(|| format!("cannot build {}", env.0))?;
    let mut result = SplitResult {
        policy: label.into(),
        split,
        episodes: 0,
        successes: 0,
        families: BTreeMap::new(),
        actions: (0, 0),
    };
    for i in 0..eval.episodes {
        if progress.interrupted() {
            return Err(Interrupted {
                stage: format!("evaluate {label}"),
                saved: "finished stages are saved; run again to go on".into(),
            }
            .into());
        }
        let seed = eval.seed + i as u64;
        let (mut obs, info) = e.reset(Some(seed), &Info::new())?;
        policy.reset(seed)?;
        let family = info
            .get("family")
            .and_then(|f| f.as_str())
            .unwrap_or("?")
            .to_string();
        let instruction = info
            .get("instruction")
            .and_then(|f| f.as_str())
            .unwrap_or("")
            .to_string();
        let mut first: Option<(String, String)> = None;
        let mut success = false;
        for _ in 0..256 {
            let action = policy.act(&obs)?;
            let text = action.as_text().unwrap_or("").to_string();
            result.actions.0 += 1;
            result.actions.1 += parse_program(&text).is_ok() as usize;
            let step = e.step(&action)?;
            if first.is_none() {
                let feedback = step
                    .info
                    .get("feedback")
                    .and_then(|f| f.as_str())
                    .unwrap_or("")
                    .to_string();
                first = Some((text, feedback));
            }
            obs = step.obs;
            if step.terminated || step.truncated {
                success = step.info.get("success") == Some(&true.into());
                break;
            }
        }
        result.episodes += 1;
        result.successes += success as usize;
        let f = result.families.entry(family).or_default();
        f.0 += 1;
        f.1 += success as usize;
        if let (Some(s), Some((action, feedback))) = (samples.as_deref_mut(), first)
            && s.iter().filter(|x| x.split == split).count() < eval.samples
        {
            s.push(SftSample {
                split,
                instruction,
                action,
                feedback,
                success,
            });
        }
        progress.advance(1);
    }
    Ok(result)
}

/// The model as two evaluation policies: greedy, and greedy with grammar-constrained
/// decoding.
fn greedy_and_constrained(
    model: Arc<LanguageModel>,
    eval: &SftEval,
    name: &str,
) -> (LanguagePolicy, LanguagePolicy) {
    let sampling = Sampling {
        max_new_tokens: eval.max_new_tokens,
        ..Sampling::default()
    };
    let constrained = Sampling {
        constrained: true,
        ..sampling
    };
    (
        LanguagePolicy::new(model.clone(), sampling, name),
        LanguagePolicy::new(model, constrained, name),
    )
}

/// The pretrained base before fine-tuning, greedy and constrained, on
/// `eval.zero_shot_episodes` episodes of every split: the baseline fine-tuning is measured
/// against. Kept in `lm_zero_shot.json` while the base and the eval settings hold.
pub fn evaluate_zero_shot(
    stage: &LanguageSftStage,
    data: &SftData,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<SplitResult>> {
    let (Some(base), n) = (&stage.base, stage.eval.zero_shot_episodes) else {
        return Ok(vec![]);
    };
    if n == 0 {
        return Ok(vec![]);
    }
    let made_by = serde_json::json!({
        "base": base,
        "base_fingerprint": dreamgym_policies::language::base_fingerprint(base)?,
        "env": data.env,
        "episodes": n,
        "seed": stage.eval.seed,
        "splits": stage.eval.splits,
        "max_new_tokens": stage.eval.max_new_tokens,
    });
    cached(&run.file("lm_zero_shot.json"), &made_by, || {
        let model = Arc::new(
            load_pretrained(base, &Device::Cpu)
                .with_context(|| format!("cannot load the base model {}", base.display()))?,
        );
        let (mut greedy, mut constrained) = greedy_and_constrained(model, &stage.eval, "zero-shot");
        let eval = SftEval {
            episodes: n,
            ..stage.eval.clone()
        };
        progress.begin(
            "evaluate the base model zero-shot",
            (n * eval.splits.len() * 2) as u64,
        );
        let mut results = Vec::new();
        for &split in &eval.splits {
            for (label, policy) in [
                ("zero-shot", &mut greedy),
                ("zero-shot, constrained", &mut constrained),
            ] {
                results.push(evaluate_policy(
                    label, policy, registry, &data.env, split, &eval, None, progress,
                )?);
            }
        }
        progress.end();
        Ok(results)
    })
}

/// `path`'s results when it was made by `made_by` (a JSON file `{made_by, results}`), else
/// `make`'s, saved there: evaluations kept while what made them holds.
pub(crate) fn cached(
    path: &std::path::Path,
    made_by: &serde_json::Value,
    make: impl FnOnce() -> anyhow::Result<Vec<SplitResult>>,
) -> anyhow::Result<Vec<SplitResult>> {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(old) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && old.get("made_by") == Some(made_by)
        && let Some(Ok(results)) = old
            .get("results")
            .map(|r| serde_json::from_value::<Vec<SplitResult>>(r.clone()))
    {
        return Ok(results);
    }
    let results = make()?;
    dreamgym_base::write_atomic(
        path,
        &serde_json::to_vec_pretty(&serde_json::json!({ "made_by": made_by, "results": results }))?,
    )?;
    Ok(results)
}

/// Evaluates the planner, the model and the constrained model on every split; writes
/// `lm_eval.json` and `lm_report.md` (with the `zero_shot` baseline's results first).
/// Returns the numbers and whether they were computed now.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_language_model(
    stage: &LanguageSftStage,
    data: &SftData,
    model: Arc<LanguageModel>,
    trained: &SftTrainSummary,
    zero_shot: &[SplitResult],
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<(SftEvalSummary, bool)> {
    let crc = dreamgym_nn::weights_crc32(&run.checkpoint(LM_CHECKPOINT))?;
    let mut made_by = serde_json::json!({ "weights_crc32": crc, "eval": stage.eval });
    if let (Some(base), Some(m)) = (&stage.base, made_by.as_object_mut()) {
        m.insert("base".into(), serde_json::json!(base));
    }
    let eval_path = run.file("lm_eval.json");
    if let Ok(bytes) = std::fs::read(&eval_path)
        && let Ok(old) = serde_json::from_slice::<SftEvalSummary>(&bytes)
        && old.made_by == made_by
        && run.file("lm_report.md").exists()
    {
        return Ok((old, false));
    }
    let (mut sft, mut constrained) = greedy_and_constrained(model, &stage.eval, "SFT");
    let mut planner = dreamgym_policies::TabletopPlanner::default();
    let n = stage.eval.episodes * stage.eval.splits.len() * 3;
    progress.begin("evaluate the language model", n as u64);
    let mut results = zero_shot.to_vec();
    let mut samples = Vec::new();
    for &split in &stage.eval.splits {
        let policies: [(&str, &mut dyn Policy, bool); 3] = [
            ("planner", &mut planner, false),
            ("SFT", &mut sft, true),
            ("SFT, constrained", &mut constrained, false),
        ];
        for (label, policy, sampled) in policies {
            let kept = if sampled { Some(&mut samples) } else { None };
            results.push(evaluate_policy(
                label,
                policy,
                registry,
                &data.env,
                split,
                &stage.eval,
                kept,
                progress,
            )?);
        }
    }
    progress.end();
    let summary = SftEvalSummary {
        results,
        samples,
        made_by,
    };
    dreamgym_base::write_atomic(&eval_path, &serde_json::to_vec_pretty(&summary)?)?;
    dreamgym_base::write_atomic(
        &run.file("lm_report.md"),
        report(stage, data, trained, &summary).as_bytes(),
    )?;
    Ok((summary, true))
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "held-out seeds (seen combinations and phrasings)",
        Split::UnseenCombinations => "unseen combinations",
        Split::UnseenPhrasings => "unseen phrasings",
        Split::All => "all",
    }
}

fn report(
    stage: &LanguageSftStage,
    data: &SftData,
    trained: &SftTrainSummary,
    eval: &SftEvalSummary,
) -> String {
    let mut s = String::new();
    s.push_str("# Language controller: supervised fine-tuning\n\n");
    let model = match (&stage.base, &stage.lora) {
        (Some(base), Some(lora)) => format!(
            "{} ({} parameters) with LoRA adapters (rank {}, alpha {}, on {}: {} trainable \
             parameters)",
            base.display(),
            trained.parameters,
            lora.rank,
            lora.alpha,
            lora.targets.join(", "),
            trained.trainable
        ),
        (Some(base), None) => format!(
            "{} ({} parameters, every one trained)",
            base.display(),
            trained.parameters
        ),
        _ => format!(
            "A {}-parameter Llama-architecture model ({} layers, {} wide, {} heads, {} \
             key/value heads, vocabulary {})",
            trained.parameters,
            stage.model.n_layer,
            stage.model.n_embd,
            stage.model.n_head,
            stage.model.n_kv_head,
            stage.vocab_size
        ),
    };
    s.push_str(&format!(
        "{model}, trained for {} steps on {} demonstrations from {} of {} recorded episodes \
         ({}); final loss {:.4}.\n\n",
        trained.steps,
        trained.examples,
        data.episodes.0,
        data.episodes.1,
        data.env.0,
        trained.final_loss
    ));
    if stage.eval.zero_shot_episodes > 0 {
        s.push_str(&format!(
            "The zero-shot rows are the base model before fine-tuning, prompted with the \
             action language, on the first {} seeds of each split.\n\n",
            stage.eval.zero_shot_episodes
        ));
    }
    s.push_str(&format!(
        "Evaluation: {} episodes per split and policy, seeds {}.., with physics execution.\n\n",
        stage.eval.episodes, stage.eval.seed
    ));
    s.push_str("| policy | split | success | parse rate |\n|---|---|---|---|\n");
    for r in &eval.results {
        s.push_str(&format!(
            "| {} | {} | {:.0}% ({}/{}) | {:.0}% |\n",
            r.policy,
            split_name(r.split),
            100.0 * r.success(),
            r.successes,
            r.episodes,
            100.0 * r.parse_rate()
        ));
    }
    s.push_str("\n## Success per instruction family\n\n");
    let families: std::collections::BTreeSet<&String> = eval
        .results
        .iter()
        .flat_map(|r| r.families.keys())
        .collect();
    s.push_str("| policy | split |");
    for f in &families {
        s.push_str(&format!(" {f} |"));
    }
    s.push_str("\n|---|---|");
    for _ in &families {
        s.push_str("---|");
    }
    s.push('\n');
    for r in &eval.results {
        s.push_str(&format!("| {} | {} |", r.policy, split_name(r.split)));
        for f in &families {
            match r.families.get(*f) {
                Some((n, k)) => s.push_str(&format!(" {k}/{n} |")),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s.push_str("\n## What the model wrote (first action of an episode)\n\n");
    for x in &eval.samples {
        s.push_str(&format!(
            "- *{}* ({}): `{}` → {} — {}\n",
            x.instruction,
            split_name(x.split),
            x.action.replace('`', "'"),
            x.feedback,
            if x.success { "success" } else { "failure" }
        ));
    }
    s
}

/// Trains (or resumes) and evaluates: the whole `[language_sft]` section.
pub fn run_language_sft(
    stage: &LanguageSftStage,
    run: &RunDir,
    registry: &Registry,
    progress: &dyn Progress,
) -> anyhow::Result<(SftTrainSummary, SftEvalSummary)> {
    stage.validate()?;
    let data = SftData::load(&run.data(), stage.successful_only)?;
    let zero_shot = evaluate_zero_shot(stage, &data, run, registry, progress)?;
    let (model, trained) = train_language_model(stage, &data, run, progress)?;
    if trained.seconds == 0.0 {
        progress.done(&format!(
            "language model: already done (step {}, loss {:.4})",
            trained.steps, trained.final_loss
        ));
    } else {
        progress.done(&format!(
            "language model: {} parameters, {} steps on {} examples, loss {:.4} (mean of the \
             last 50), {:.1} s",
            trained.parameters,
            trained.steps,
            trained.examples,
            trained.final_loss,
            trained.seconds
        ));
    }
    // Acting is one token at a time: evaluate from the saved weights on the CPU.
    let model = if model.device().is_cpu() {
        model
    } else {
        LanguageModel::load(&run.checkpoint(LM_CHECKPOINT), &Device::Cpu)?
    };
    let (eval, ran) = evaluate_language_model(
        stage,
        &data,
        Arc::new(model),
        &trained,
        &zero_shot,
        run,
        registry,
        progress,
    )?;
    let mut line = String::from("language model eval:");
    for r in &eval.results {
        line.push_str(&format!(
            " {} on {}: {:.0}% (parse {:.0}%);",
            r.policy,
            split_name(r.split),
            100.0 * r.success(),
            100.0 * r.parse_rate()
        ));
    }
    if !ran {
        line.push_str(" (already done)");
    }
    progress.done(&line);
    Ok((trained, eval))
}

/// A pretrained model (a GGUF file or a Hugging Face checkpoint folder) as a zero-shot policy
/// (greedy decoding; a ChatML model such as SmolLM2 gets the action language in its system
/// message).
pub fn load_pretrained_policy(
    path: &std::path::Path,
    constrained: bool,
) -> anyhow::Result<Box<dyn Policy>> {
    let model = dreamgym_policies::language::load_pretrained(path, &Device::Cpu)?;
    Ok(Box::new(LanguagePolicy::new(
        Arc::new(model),
        Sampling {
            constrained,
            ..Sampling::default()
        },
        &path.display().to_string(),
    )))
}

/// A language model from a fine-tuned run folder (`lm.json`) or a pretrained model (a `.gguf`
/// file or a Hugging Face folder).
pub fn load_language_model(spec: &std::path::Path) -> anyhow::Result<LanguageModel> {
    let cpu = candle_core::Device::Cpu;
    if dreamgym_policies::language::is_pretrained(spec) {
        return Ok(dreamgym_policies::language::load_pretrained(spec, &cpu)?);
    }
    anyhow::ensure!(
        spec.exists(),
        "{} does not exist: give a fine-tuned run folder (holding lm.json), a .gguf file or a \
         Hugging Face folder",
        spec.display()
    );
    anyhow::ensure!(
        spec.is_dir(),
        "{} is a file but not a .gguf model: give the run folder that holds it, a .gguf file \
         or a Hugging Face folder",
        spec.display()
    );
    let run = RunDir::new(spec);
    anyhow::ensure!(
        run.checkpoint(LM_CHECKPOINT)
            .with_extension("json")
            .exists(),
        "{} holds no language model (lm.json): train one with `dreamgym run \
         experiments/language-sft.toml`, or give a .gguf file or a Hugging Face folder",
        spec.display()
    );
    Ok(LanguageModel::load(&run.checkpoint(LM_CHECKPOINT), &cpu)?)
}

/// A fingerprint of the model [`load_language_model`] loads from `spec`: its weights' CRC-32
/// for a run folder, the file's size and checksum for a pretrained one.
pub fn language_model_fingerprint(spec: &std::path::Path) -> anyhow::Result<String> {
    if dreamgym_policies::language::is_pretrained(spec) {
        return Ok(dreamgym_policies::language::base_fingerprint(spec)?);
    }
    let crc = dreamgym_nn::weights_crc32(&RunDir::new(spec).checkpoint(LM_CHECKPOINT))
        .with_context(|| format!("{} holds no language model", spec.display()))?;
    Ok(format!("crc32:{crc:08x}"))
}

/// The language model of a run folder as a policy (greedy decoding).
pub fn load_language_policy(run: &RunDir, constrained: bool) -> anyhow::Result<Box<dyn Policy>> {
    let model = LanguageModel::load(&run.checkpoint(LM_CHECKPOINT), &Device::Cpu)?;
    Ok(Box::new(LanguagePolicy::new(
        Arc::new(model),
        Sampling {
            constrained,
            ..Sampling::default()
        },
        &run.root().display().to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<SftExample> {
        (0..5)
            .map(|i| SftExample {
                observation: format!("instruction: push the red cube {i} cm"),
                completion: format!("push red cube left {i} cm"),
            })
            .collect()
    }

    #[test]
    fn rows_mask_everything_but_the_completions() {
        let ex = examples();
        let texts: Vec<String> = ex
            .iter()
            .flat_map(|e| [prompt_for(&e.observation), e.completion.clone()])
            .collect();
        let tok = TextTokenizer::train(&texts, 280).unwrap();
        let completion_tokens: usize = ex
            .iter()
            .map(|e| tok.encode(&e.completion).unwrap().len() + 1)
            .sum();
        for packing in [false, true] {
            let rows = make_rows(&ex, &tok, &prompt_for, 48, packing, 3).unwrap();
            let counted: f32 = rows.mask.iter().flatten().sum();
            // Every completion token and each end token is learned, nothing else.
            assert_eq!(counted as usize, completion_tokens, "packing {packing}");
            for ((x, y), m) in rows.inputs.iter().zip(&rows.targets).zip(&rows.mask) {
                assert_eq!((x.len(), y.len(), m.len()), (48, 48, 48));
                // Targets are the inputs shifted by one.
                assert_eq!(&x[1..], &y[..47]);
                for (t, w) in y.iter().zip(m) {
                    if *w == 1.0 {
                        assert_ne!(*t, tok.bos());
                    }
                }
            }
            // The prompt mask covers the other real targets, and padding is in neither.
            for (m, &n) in rows.mask.iter().zip(&rows.lengths) {
                let p: Vec<f32> = prompt_mask(m, n, 48).collect();
                for j in 0..48 {
                    assert_eq!(m[j] + p[j], if j < n { 1.0 } else { 0.0 }, "position {j}");
                }
            }
            if packing {
                assert!(rows.inputs.len() < ex.len(), "packing fills rows");
            } else {
                assert_eq!(rows.inputs.len(), ex.len());
                let prompt_tokens: usize = ex
                    .iter()
                    .map(|e| tok.encode(&prompt_for(&e.observation)).unwrap().len())
                    .sum();
                let counted: f32 = rows
                    .mask
                    .iter()
                    .zip(&rows.lengths)
                    .flat_map(|(m, &n)| prompt_mask(m, n, 48))
                    .sum();
                assert_eq!(counted as usize, prompt_tokens);
            }
        }
        let e = make_rows(&ex, &tok, &prompt_for, 8, false, 3)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("raise language_sft.model.block_size"),
            "{e}"
        );
    }

    #[test]
    fn the_learning_rate_warms_up_then_decays_to_a_tenth() {
        let stage = LanguageSftStage {
            steps: 100,
            warmup_steps: 10,
            lr: 1e-3,
            ..LanguageSftStage::default()
        };
        assert!((stage.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((stage.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((stage.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((stage.lr_at(99) - 1e-4).abs() < 1e-5);
        assert!(stage.validate().is_ok());
        let bad = LanguageSftStage {
            vocab_size: 10,
            ..LanguageSftStage::default()
        };
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("vocab_size"));
    }
}
