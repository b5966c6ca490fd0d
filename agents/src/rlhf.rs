//! RLHF for the language controller, as TRL does it: a reward model trained on the labels
//! (Bradley–Terry), then RLOO against it with a KL penalty to the start model.
//!
//! - [`RewardModel`]: the language model with a scalar head on the hidden state of a
//!   sequence's last token (TRL's `AutoModelForSequenceClassification` with one label),
//!   trained whole on `-log σ(r(chosen) − r(rejected))` ([`train_reward_model`]); its accuracy
//!   on held-out labels says how far to trust it.
//! - [`train_rloo`]: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, TRL's
//!   `RLOOTrainer`): `k` completions are sampled per prompt, each scored
//!   `R = reward − β · (log π(y|x) − log π_ref(y|x))` (the sequence-level KL estimate), and the
//!   loss is `−mean((R_i − mean_{j≠i} R_j) · log π(y_i|x))`. The reward is any scorer of
//!   (prompt, completion) token ids: the reward model's, or, as an ablation,
//!   [`VerifierReward`]: the env executes each answer from its prompt's start and its
//!   verifier's progress is the reward.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{D, DType, Tensor};
use dreamgym_base::derive_seed;
use dreamgym_envs::{Env, Info, Value};
use dreamgym_policies::language::{
    LanguageModel, MAX_WEIGHT, PreferencePair, Sampling, completion_logps,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::Progress;
use crate::preference::{Epochs, adam, ensure_finite_weights, stopped};

/// The reward head's variable in the model's variable map.
pub const REWARD_HEAD: &str = "reward_head.weight";

/// A language model with a scalar reward head.
pub struct RewardModel {
    lm: LanguageModel,
    head: Tensor,
}

impl RewardModel {
    /// A reward model from `lm` (its weights are trained too), with a zero head: every
    /// sequence scores 0 before training.
    pub fn new(lm: LanguageModel) -> anyhow::Result<Self> {
        let c = lm.config().transformer.n_embd;
        let head = lm.varmap().get(
            (c, 1),
            REWARD_HEAD,
            candle_nn::Init::Const(0.0),
            DType::F32,
            lm.device(),
        )?;
        Ok(Self { lm, head })
    }

    /// The language model under the head.
    pub fn model(&self) -> &LanguageModel {
        &self.lm
    }

    /// The score of each (prompt, completion) sequence, `[B]`, carrying gradients.
    pub fn scores(&self, sequences: &[(&[u32], &[u32])]) -> anyhow::Result<Tensor> {
        let block = self.lm.config().transformer.block_size;
        let vocab = self.lm.config().vocab_size as u32;
        let width = sequences
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0);
        anyhow::ensure!(width > 0, "a reward model scores at least one token");
        anyhow::ensure!(
            width <= block,
            "a sequence of {width} tokens does not fit the model's context of {block}"
        );
        let b = sequences.len();
        let mut ids = vec![0u32; b * width];
        let mut last = Vec::with_capacity(b);
        for (s, (p, c)) in sequences.iter().enumerate() {
            let row = &mut ids[s * width..];
            for (i, &t) in p.iter().chain(c.iter()).enumerate() {
                anyhow::ensure!(
                    t < vocab,
                    "token id {t} is outside the vocabulary ({vocab})"
                );
                row[i] = t;
            }
            anyhow::ensure!(p.len() + c.len() > 0, "sequence {s} is empty");
            // Right padding: the causal model's state at the last real token ignores it.
            last.push((s * width + p.len() + c.len() - 1) as u32);
        }
        let dev = self.lm.device();
        let ids = Tensor::from_vec(ids, (b, width), dev)?;
        let h = self.lm.hidden(&ids)?;
        let c = h.dim(D::Minus1)?;
        let at = Tensor::from_vec(last, b, dev)?;
        let picked = h.reshape(((), c))?.index_select(&at, 0)?;
        Ok(picked.matmul(&self.head)?.squeeze(1)?)
    }

    /// Scores as numbers (no gradients kept).
    pub fn score_values(&self, sequences: &[(&[u32], &[u32])]) -> anyhow::Result<Vec<f32>> {
        Ok(self.scores(sequences)?.detach().to_vec1::<f32>()?)
    }

    /// Saves every weight (the model's and the head's) as safetensors.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        self.lm.varmap().save(path)?;
        Ok(())
    }
}

/// Settings of [`train_reward_model`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// AdamW's learning rate.
    pub lr: f64,
    /// The share of the pairs held out to measure accuracy (never trained on).
    pub holdout: f64,
    /// The seed of the split and the batch order.
    pub seed: u64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 16,
            lr: 1e-4,
            holdout: 0.2,
            seed: 0,
        }
    }
}

/// What training a reward model did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardReport {
    /// Each step's loss and batch accuracy.
    pub steps: Vec<(f64, f64)>,
    /// Pairs trained on.
    pub train: usize,
    /// Accuracy on the held-out pairs (chosen scored above rejected), and how many there
    /// were; `None` when none were held out.
    pub heldout_accuracy: Option<(f64, usize)>,
}

/// The Bradley–Terry loss of a batch and its accuracy.
fn reward_loss(rm: &RewardModel, pairs: &[&PreferencePair]) -> anyhow::Result<(Tensor, f64)> {
    let seqs: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (&p.prompt[..], &p.chosen[..]))
        .chain(pairs.iter().map(|p| (&p.prompt[..], &p.rejected[..])))
        .collect();
    let all = rm.scores(&seqs)?;
    let b = pairs.len();
    let margin = (all.narrow(0, 0, b)? - all.narrow(0, b, b)?)?;
    // −log σ(m) = softplus(−m), computed stably as relu(−m) + log(1 + e^{−|m|}).
    let loss = (margin.neg()?.relu()? + (margin.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
    let m = margin.detach().to_vec1::<f32>()?;
    let acc = m.iter().filter(|&&x| x > 0.0).count() as f64 / b.max(1) as f64;
    Ok((loss, acc))
}

/// Trains `rm` on `pairs` (a share held out for accuracy).
pub fn train_reward_model(
    rm: &RewardModel,
    labeled: &crate::preference::Tokenized,
    cfg: &RewardConfig,
    progress: &dyn Progress,
) -> anyhow::Result<RewardReport> {
    anyhow::ensure!(
        (0.0..1.0).contains(&cfg.holdout),
        "the held-out share must be in [0, 1), got {}",
        cfg.holdout
    );
    anyhow::ensure!(cfg.batch_size > 0, "batch_size must be at least 1");
    anyhow::ensure!(
        cfg.lr.is_finite() && cfg.lr > 0.0,
        "the learning rate must be positive"
    );
    let pairs = &labeled.pairs;
    // Held out by pair, not by label: where several people labeled one pair, a held-out
    // label must not be one the model trained on under another labeler's name. (With one
    // label per pair this is the same split as by label.)
    let mut groups: Vec<&str> = Vec::new();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, id) in labeled.ids.iter().enumerate() {
        let group = members.entry(id.as_str()).or_default();
        if group.is_empty() {
            groups.push(id.as_str());
        }
        group.push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, "reward.split", 0));
    groups.shuffle(&mut rng);
    let held_pairs = ((groups.len() as f64) * cfg.holdout).round() as usize;
    let idx: Vec<usize> = groups
        .iter()
        .flat_map(|g| members[g].iter().copied())
        .collect();
    let held: usize = groups[..held_pairs.min(groups.len())]
        .iter()
        .map(|g| members[g].len())
        .sum();
    let (heldout, train) = idx.split_at(held);
    anyhow::ensure!(
        !train.is_empty(),
        "a reward model needs at least one pair to train on ({} labeled, {held} held out)",
        pairs.len()
    );
    let mut opt = adam(rm.lm.varmap(), cfg.lr)?;
    let mut batches = Epochs::new(train.to_vec(), derive_seed(cfg.seed, "reward.order", 0));
    let mut steps = Vec::with_capacity(cfg.steps);
    progress.begin("reward model", cfg.steps as u64);
    for step in 0..cfg.steps {
        if progress.interrupted() {
            return Err(stopped("reward model", step, "the reward model"));
        }
        let batch: Vec<&PreferencePair> = batches
            .next(cfg.batch_size)
            .into_iter()
            .map(|i| &pairs[i])
            .collect();
        // On rayon's workers: see `dreamgym_nn::on_workers`.
        let (value, acc) = dreamgym_nn::on_workers(|| -> anyhow::Result<_> {
            let (loss, acc) = reward_loss(rm, &batch)?;
            let value = loss.to_scalar::<f32>()? as f64;
            anyhow::ensure!(
                value.is_finite(),
                "the reward loss is {value} at step {step}"
            );
            opt.step(loss.backward()?)?;
            Ok((value, acc))
        })?;
        steps.push((value, acc));
        progress.advance(1);
    }
    progress.end();
    ensure_finite_weights(rm.lm.varmap(), "the reward model", cfg.steps)?;
    let heldout_accuracy = if heldout.is_empty() {
        None
    } else {
        let mut right = 0usize;
        for chunk in heldout.chunks(cfg.batch_size) {
            let batch: Vec<&PreferencePair> = chunk.iter().map(|&i| &pairs[i]).collect();
            let (_, acc) = reward_loss(rm, &batch)?;
            right += (acc * batch.len() as f64).round() as usize;
        }
        Some((right as f64 / heldout.len() as f64, heldout.len()))
    };
    Ok(RewardReport {
        steps,
        train: train.len(),
        heldout_accuracy,
    })
}

/// Writes a reward model's training to `metrics/reward_model.csv` (and TensorBoard).
pub fn write_reward_metrics(run: &crate::RunDir, report: &RewardReport) -> anyhow::Result<()> {
    let mut csv =
        crate::MetricsLog::open(run, "reward_model", &["step", "loss", "accuracy"], None)?;
    for (i, (loss, acc)) in report.steps.iter().enumerate() {
        csv.push(&[i as f64 + 1.0, *loss, *acc])?;
    }
    csv.commit()
}

/// Settings of [`train_rloo`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlooConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Prompts per step.
    pub prompts: usize,
    /// Completions sampled per prompt (at least 2: each one's baseline is the others' mean).
    pub k: usize,
    /// The KL penalty's weight.
    pub beta: f64,
    /// AdamW's learning rate.
    pub lr: f64,
    /// How completions are sampled (a temperature above 0).
    pub sampling: Sampling,
    /// The seed of the prompt order and the samples.
    pub seed: u64,
}

impl Default for RlooConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            prompts: 8,
            k: 4,
            beta: 0.05,
            lr: 1e-4,
            sampling: Sampling {
                temperature: 1.0,
                max_new_tokens: 96,
                ..Sampling::default()
            },
            seed: 0,
        }
    }
}

/// One RLOO step's numbers (TRL's names in the CSV).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RlooStep {
    /// The loss.
    pub loss: f64,
    /// The mean score of the completions.
    pub score: f64,
    /// The mean sequence-level KL estimate to the reference.
    pub kl: f64,
    /// The mean penalized reward.
    pub reward: f64,
    /// The mean completion length, tokens.
    pub length: f64,
}

/// Writes RLOO's steps to `metrics/rloo.csv` (and TensorBoard) under TRL's names.
pub fn write_rloo_metrics(run: &crate::RunDir, steps: &[RlooStep]) -> anyhow::Result<()> {
    let mut csv = crate::MetricsLog::open(
        run,
        "rloo",
        &[
            "step",
            "loss",
            "scores",
            "kl",
            "reward",
            "completion_length",
        ],
        None,
    )?;
    for (i, s) in steps.iter().enumerate() {
        csv.push(&[i as f64 + 1.0, s.loss, s.score, s.kl, s.reward, s.length])?;
    }
    csv.commit()
}

/// Leave-one-out advantages: for each group of `k` rewards, each one minus the mean of the
/// other `k − 1`.
pub fn rloo_advantages(rewards: &[f64], k: usize) -> Vec<f64> {
    if k < 2 {
        return vec![0.0; rewards.len()];
    }
    rewards
        .chunks(k)
        .flat_map(|g| {
            let sum: f64 = g.iter().sum();
            let n = g.len() as f64;
            g.iter().map(move |r| {
                if n > 1.0 {
                    r - (sum - r) / (n - 1.0)
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// The scorer RLOO maximises: scores for (prompt, completion) token ids.
pub type Scorer<'a> = dyn Fn(&[(&[u32], &[u32])]) -> anyhow::Result<Vec<f32>> + 'a;

/// RLOO on `prompts` (prompt texts as the model reads them, [`LanguageModel::prompt`] made):
/// `policy` trains, `reference` stays as it was (the KL penalty's anchor), `score` rewards.
pub fn train_rloo(
    policy: &LanguageModel,
    reference: &LanguageModel,
    score: &Scorer,
    prompts: &[String],
    cfg: &RlooConfig,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<RlooStep>> {
    anyhow::ensure!(!prompts.is_empty(), "RLOO needs at least one prompt");
    anyhow::ensure!(
        cfg.k >= 2,
        "RLOO needs k >= 2 completions a prompt, got {}",
        cfg.k
    );
    anyhow::ensure!(cfg.prompts >= 1, "RLOO needs at least one prompt a step");
    anyhow::ensure!(
        cfg.sampling.temperature > 0.0,
        "RLOO samples: the temperature must be above 0"
    );
    anyhow::ensure!(
        cfg.beta.is_finite() && (0.0..=MAX_WEIGHT).contains(&cfg.beta),
        "beta must be in [0, {MAX_WEIGHT}], got {}",
        cfg.beta
    );
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| policy.prompt_ids(p))
        .collect::<Result<_, _>>()?;
    let mut opt = adam(policy.varmap(), cfg.lr)?;
    let mut batches = Epochs::new(
        (0..prompts.len()).collect(),
        derive_seed(cfg.seed, "rloo.order", 0),
    );
    let mut log = Vec::with_capacity(cfg.steps);
    progress.begin("RLOO", cfg.steps as u64);
    for step in 0..cfg.steps {
        if progress.interrupted() {
            return Err(stopped("RLOO", step, "the model"));
        }
        let chosen = batches.next(cfg.prompts);
        // k samples a prompt, each from a seed of its own.
        let mut samples: Vec<(usize, Vec<u32>)> = Vec::with_capacity(cfg.prompts * cfg.k);
        for (j, &i) in chosen.iter().enumerate() {
            for s in 0..cfg.k {
                let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(
                    cfg.seed,
                    "rloo.sample",
                    ((step * cfg.prompts + j) * cfg.k + s) as u64,
                ));
                let g = policy.generate(&prompts[i], &cfg.sampling, &mut rng)?;
                let mut c = g.ids;
                if c.is_empty() {
                    // Nothing fit in the context: an empty answer is its end token.
                    c.push(policy.tokenizer().eos());
                }
                samples.push((i, c));
            }
        }
        let seqs: Vec<(&[u32], &[u32])> = samples
            .iter()
            .map(|(i, c)| (&ids[*i][..], &c[..]))
            .collect();
        let scores = score(&seqs)?;
        anyhow::ensure!(
            scores.len() == seqs.len(),
            "the scorer gave {} scores for {} completions",
            scores.len(),
            seqs.len()
        );
        // On rayon's workers: see `dreamgym_nn::on_workers`.
        let (value, kl, rewards, n) = dreamgym_nn::on_workers(|| -> anyhow::Result<_> {
            let logp = completion_logps(policy, &seqs)?;
            let lp = logp.detach().to_vec1::<f32>()?;
            let rp = completion_logps(reference, &seqs)?
                .detach()
                .to_vec1::<f32>()?;
            let kl: Vec<f64> = lp.iter().zip(&rp).map(|(a, b)| (a - b) as f64).collect();
            let rewards: Vec<f64> = scores
                .iter()
                .zip(&kl)
                .map(|(s, k)| *s as f64 - cfg.beta * k)
                .collect();
            let adv = rloo_advantages(&rewards, cfg.k);
            let n = adv.len();
            let adv_t = Tensor::from_vec(
                adv.iter().map(|&a| a as f32).collect::<Vec<_>>(),
                n,
                policy.device(),
            )?;
            let loss = (logp * adv_t)?.mean_all()?.neg()?;
            let value = loss.to_scalar::<f32>()? as f64;
            anyhow::ensure!(value.is_finite(), "the RLOO loss is {value} at step {step}");
            opt.step(loss.backward()?)?;
            Ok((value, kl, rewards, n))
        })?;
        let mean = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>() / n as f64;
        log.push(RlooStep {
            loss: value,
            score: mean(&mut scores.iter().map(|&s| s as f64)),
            kl: mean(&mut kl.iter().copied()),
            reward: mean(&mut rewards.iter().copied()),
            length: mean(&mut samples.iter().map(|(_, c)| c.len() as f64)),
        });
        progress.advance(1);
    }
    progress.end();
    ensure_finite_weights(policy.varmap(), "RLOO", cfg.steps)?;
    Ok(log)
}

/// The env's verifier as a reward: each answer is executed from its prompt's start (the
/// seed that reset the env there) and scores the progress the env reports (its reward where
/// it reports none).
pub struct VerifierReward<'a> {
    env: RefCell<Box<dyn Env>>,
    model: &'a LanguageModel,
    /// Prompt token ids to the seed that starts the env there.
    seeds: HashMap<Vec<u32>, u64>,
}

impl<'a> VerifierReward<'a> {
    /// A verifier in `env` for the starts `(first observation, seed)`, whose prompts `model`
    /// makes and reads.
    pub fn new<'s>(
        model: &'a LanguageModel,
        env: Box<dyn Env>,
        starts: impl IntoIterator<Item = (&'s str, u64)>,
    ) -> anyhow::Result<Self> {
        let mut seeds = HashMap::new();
        for (observation, seed) in starts {
            seeds.insert(model.prompt_ids(&model.prompt(observation))?, seed);
        }
        Ok(Self {
            env: RefCell::new(env),
            model,
            seeds,
        })
    }

    /// Scores (prompt, answer) token ids; an answer's end token is not part of its text.
    pub fn score(&self, seqs: &[(&[u32], &[u32])]) -> anyhow::Result<Vec<f32>> {
        let tok = self.model.tokenizer();
        let mut env = self.env.borrow_mut();
        seqs.iter()
            .map(|(prompt, answer)| {
                let Some(&seed) = self.seeds.get(*prompt) else {
                    anyhow::bail!("a prompt with no known start: nothing to verify from");
                };
                let answer = match answer.split_last() {
                    Some((&last, rest)) if last == tok.eos() => rest,
                    _ => answer,
                };
                env.reset(Some(seed), &Info::new())?;
                let step = env.step(&Value::Text(tok.decode(answer)?))?;
                let progress = step.info.get("progress").and_then(|p| p.as_f64());
                Ok(progress.unwrap_or(step.reward) as f32)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_policies::language::{LlamaSize, TextTokenizer};

    /// A one-layer model whose tokenizer was trained on `texts`.
    fn tiny(texts: &[String], vocab: usize, block_size: usize, seed: u64) -> LanguageModel {
        let tok = TextTokenizer::train(texts, vocab).unwrap();
        let size = LlamaSize {
            n_layer: 1,
            n_embd: 16,
            n_head: 2,
            n_kv_head: 1,
            mlp_hidden: 24,
            block_size,
            dropout: 0.0,
        };
        LanguageModel::new(&size, tok, &candle_core::Device::Cpu, seed).unwrap()
    }

    fn model(seed: u64) -> LanguageModel {
        let texts: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "objects: red cube ({i}, 3)\ninstruction: push the red cube\naction: push red cube to blue zone"
                )
            })
            .collect();
        tiny(&texts, 300, 128, seed)
    }

    #[test]
    fn leave_one_out_advantages_match_the_closed_form() {
        let a = rloo_advantages(&[1.0, 2.0, 3.0, 10.0, 10.0, 10.0], 3);
        // 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2; a group of equal rewards has none.
        assert_eq!(a, vec![-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]);
        // Each group's advantages sum to 0: the baseline adds no bias.
        let b = rloo_advantages(&[0.3, -1.0, 2.5, 0.7], 4);
        assert!(b.iter().sum::<f64>().abs() < 1e-12);
        assert!((b[2] - (2.5 - (0.3 - 1.0 + 0.7) / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn the_reward_model_learns_which_completion_is_preferred_and_generalises() {
        let lm = model(1);
        let tok = lm.tokenizer();
        let good = tok.encode("push red cube to blue zone").unwrap();
        let bad = tok.encode("done").unwrap();
        let pairs: Vec<PreferencePair> = (0..30)
            .map(|i| PreferencePair {
                prompt: lm
                    .prompt_ids(&lm.prompt(&format!("objects: red cube ({i}, 3)")))
                    .unwrap(),
                chosen: good.clone(),
                rejected: bad.clone(),
            })
            .collect();
        let rm = RewardModel::new(lm).unwrap();
        // A zero head scores everything alike.
        let before = rm.score_values(&[(&pairs[0].prompt, &good), (&pairs[0].prompt, &bad)]);
        assert_eq!(before.unwrap(), vec![0.0, 0.0]);
        let cfg = RewardConfig {
            steps: 40,
            batch_size: 8,
            lr: 3e-3,
            holdout: 0.2,
            seed: 0,
        };
        // 30 labels of 7 pairs (several people labeled each): a fifth of the pairs is held
        // out, all of its labels with it (a fifth of the labels would be 6).
        let labeled = crate::preference::Tokenized {
            pairs: pairs.clone(),
            ids: (0..30).map(|i| format!("p{}", i % 7)).collect(),
            too_long: Vec::new(),
            context: rm.model().config().transformer.block_size,
        };
        let report = train_reward_model(&rm, &labeled, &cfg, &()).unwrap();
        let first = report.steps[0].0;
        let last = report.steps.last().unwrap().0;
        assert!((first - std::f64::consts::LN_2).abs() < 1e-5, "{first}");
        assert!(last < 0.1, "{first} -> {last}");
        // The held-out prompts were never trained on: one pair's 4 or 5 labels.
        let (accuracy, held) = report.heldout_accuracy.unwrap();
        assert!(held == 4 || held == 5, "{held}");
        assert_eq!(report.train, 30 - held);
        assert_eq!(accuracy, 1.0);
        // Padding does not change a score: a sequence scores the same alone and beside a
        // longer one.
        let p = &pairs[0].prompt;
        let alone = rm.score_values(&[(p, &bad)]).unwrap()[0];
        let beside = rm.score_values(&[(p, &bad), (p, &good)]).unwrap()[0];
        assert!((alone - beside).abs() < 1e-5, "{alone} vs {beside}");
    }

    #[test]
    fn the_verifier_rewards_an_answer_by_what_it_does_in_the_env() {
        let registry = dreamgym_envs::Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language" });
        let mut env = registry.make("Tabletop-v0", Some(&config)).unwrap();
        let (obs, _) = env.reset(Some(4), &Info::new()).unwrap();
        let Value::Text(obs) = obs else {
            panic!("a language observation is text")
        };
        let mut planner = crate::load_policy(
            "expert",
            "Tabletop-v0",
            env.observation_space(),
            env.action_space(),
            0,
        )
        .unwrap();
        let good = planner.act(&Value::Text(obs.clone())).unwrap();
        let good = good.as_text().unwrap().to_string();
        let bad = "retreat".to_string();
        // A tokenizer that has seen the texts: decoding gives them back exactly.
        let texts = vec![obs.clone(), good.clone(), bad.clone()];
        let lm = tiny(&texts, 400, 512, 0);
        let env = registry.make("Tabletop-v0", Some(&config)).unwrap();
        let verifier = VerifierReward::new(&lm, env, [(obs.as_str(), 4)]).unwrap();
        let prompt = lm.prompt_ids(&lm.prompt(&obs)).unwrap();
        let tok = lm.tokenizer();
        let mut good_ids = tok.encode(&good).unwrap();
        good_ids.push(tok.eos());
        let bad_ids = tok.encode(&bad).unwrap();
        let scores = verifier
            .score(&[
                (&prompt, &good_ids),
                (&prompt, &bad_ids),
                (&prompt, &good_ids),
            ])
            .unwrap();
        assert!(
            scores[0] > scores[1],
            "{scores:?}: the planner's answer is worth more"
        );
        assert!(
            scores[0] > 0.0 && (0.0..=1.0).contains(&scores[1]),
            "{scores:?}"
        );
        assert_eq!(
            scores[0], scores[2],
            "the same answer from the same start scores alike"
        );
        // A prompt it has no start for is an error, not a score.
        let other = lm.prompt_ids(&lm.prompt("objects: none")).unwrap();
        assert!(verifier.score(&[(&other, &bad_ids)]).is_err());
    }

    /// The probability that the first completion token has an even id.
    fn p_even_first(lm: &LanguageModel, prompt: &str) -> f64 {
        let ids = lm.prompt_ids(prompt).unwrap();
        let t = Tensor::new(ids.as_slice(), lm.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = lm.forward(&t, None, None).unwrap();
        let last = logits
            .narrow(1, ids.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let p = candle_nn::ops::softmax(&last, 0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        p.iter().step_by(2).map(|&x| x as f64).sum()
    }

    #[test]
    fn rloo_raises_the_rewarded_behaviour_and_beta_holds_it_near_the_reference() {
        let prompts: Vec<String> = (0..4)
            .map(|i| model(0).prompt(&format!("objects: red cube ({i}, 3)")))
            .collect();
        // Reward: the first token's id is even.
        let even = |seqs: &[(&[u32], &[u32])]| -> anyhow::Result<Vec<f32>> {
            Ok(seqs
                .iter()
                .map(|(_, c)| if c[0] % 2 == 0 { 1.0 } else { 0.0 })
                .collect())
        };
        let cfg = RlooConfig {
            steps: 25,
            prompts: 4,
            k: 4,
            beta: 0.0,
            lr: 3e-2,
            sampling: Sampling {
                temperature: 1.0,
                max_new_tokens: 3,
                ..Sampling::default()
            },
            seed: 0,
        };
        let run = |beta: f64| {
            let (policy, reference) = (model(0), model(0));
            let before = p_even_first(&policy, &prompts[0]);
            let log = train_rloo(
                &policy,
                &reference,
                &even,
                &prompts,
                &RlooConfig { beta, ..cfg },
                &(),
            )
            .unwrap();
            (before, p_even_first(&policy, &prompts[0]), log)
        };
        let (before, after, log) = run(0.0);
        assert!(
            after > before + 0.2,
            "P(even first token) {before:.3} -> {after:.3}"
        );
        assert_eq!(log.len(), 25);
        assert!(log[0].kl.abs() < 1e-4, "policy and reference start equal");
        // A heavy KL penalty keeps the policy near where it started.
        let (_, held, _) = run(50.0);
        assert!(held < after, "beta 50: {held:.3}, beta 0: {after:.3}");
    }
}
