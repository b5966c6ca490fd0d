//! Preference losses for the language model, as TRL's `DPOTrainer` computes them: DPO's
//! sigmoid loss (with label smoothing: conservative DPO), IPO, hinge and robust DPO, against a
//! frozen reference whose log-probabilities are computed once, with TRL's metrics.
//!
//! For a pair (prompt `x`, chosen `y_w`, rejected `y_l`), with `π` the policy, `π_ref` the
//! reference, `log π(y | x)` summed over the completion's tokens, `Δ_w = log π(y_w|x) −
//! log π_ref(y_w|x)`, `Δ_l` the same for `y_l`, `h = Δ_w − Δ_l`, and `n_w`, `n_l` the
//! completions' lengths in tokens:
//!
//! ```text
//! sigmoid  −(1 − ε) log σ(β h) − ε log σ(−β h)             (Rafailov et al. 2023; ε: cDPO)
//! robust   (−(1 − ε) log σ(β h) + ε log σ(−β h)) / (1 − 2ε)  (Chowdhury et al. 2024)
//! hinge    max(0, 1 − β h)                                  (SLiC, Zhao et al. 2023)
//! ipo      (Δ_w / n_w − Δ_l / n_l − 1 / (2β))²               (Azar et al. 2023)
//! ```
//!
//! These are TRL 1.16's formulas (`DPOTrainer._compute_loss`; `bench/dpo_parity.py` checks
//! them against it), except that TRL's sigmoid loss ignores label smoothing: with ε > 0 it is
//! conservative DPO as older TRL versions and the cDPO note define it.
//!
//! The loss is the batch mean; with `rpo_alpha` > 0 (RPO), `rpo_alpha` times the chosen
//! completions' negative log-likelihood per token (over the batch) is added. The metrics carry TRL's names: `rewards/chosen` is the batch
//! mean of `β (log π(y_w|x) − log π_ref(y_w|x))`, `rewards/rejected` the same for `y_l`,
//! `rewards/accuracies` the fraction of pairs whose chosen reward is larger, `rewards/margins`
//! the mean difference, `logps/chosen` and `logps/rejected` the policy's mean log-probs.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::LanguageModel;
use crate::PolicyError;

/// A preference pair as token ids: the prompt (with its start token, if the model uses one),
/// and the chosen and rejected completions (with their end token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The prompt's ids.
    pub prompt: Vec<u32>,
    /// The preferred completion's ids.
    pub chosen: Vec<u32>,
    /// The other completion's ids.
    pub rejected: Vec<u32>,
}

/// Which preference loss (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLossKind {
    /// DPO: `−log σ(β h)`, with label smoothing (conservative DPO).
    #[default]
    Sigmoid,
    /// IPO: `(h − 1/(2β))²` on token-averaged log-probs.
    Ipo,
    /// SLiC's hinge: `max(0, 1 − β h)`.
    Hinge,
    /// Robust DPO: the sigmoid loss unbiased for labels flipped at rate `label_smoothing`.
    Robust,
}

/// A preference loss and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreferenceLoss {
    /// The loss.
    pub kind: PreferenceLossKind,
    /// How far the policy may move from the reference (TRL's `beta`; 0.1 by default).
    pub beta: f64,
    /// The assumed rate of flipped labels, in `[0, 0.5)` (sigmoid and robust only).
    pub label_smoothing: f64,
    /// RPO (Pang et al. 2024; TRL's `rpo_alpha`): the weight of the chosen completions'
    /// negative log-likelihood per token, added to the loss so that the chosen answers do not
    /// lose probability while the rejected ones are pushed down. 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub rpo_alpha: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for PreferenceLoss {
    fn default() -> Self {
        Self {
            kind: PreferenceLossKind::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            rpo_alpha: 0.0,
        }
    }
}

/// The smallest β a preference loss takes.
pub const MIN_BETA: f64 = 1e-6;
/// The largest β (and RPO α, and RLOO's KL weight) taken.
pub const MAX_WEIGHT: f64 = 1000.0;

impl PreferenceLoss {
    /// Refuses settings the formulas cannot take. β and α have bounds far outside any use
    /// (TRL's defaults are β 0.1, α 1) but inside what f32 arithmetic survives: a β of 1e-300
    /// makes IPO's target 1/(2β) infinite, one of 1e308 makes every reward infinite.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(self.beta.is_finite() && (MIN_BETA..=MAX_WEIGHT).contains(&self.beta)) {
            return Err(PolicyError::Config(format!(
                "beta must be in [{MIN_BETA:e}, {MAX_WEIGHT}], got {}",
                self.beta
            )));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(PolicyError::Config(format!(
                "label_smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            )));
        }
        if !(self.rpo_alpha.is_finite() && (0.0..=MAX_WEIGHT).contains(&self.rpo_alpha)) {
            return Err(PolicyError::Config(format!(
                "rpo_alpha must be in [0, {MAX_WEIGHT}], got {}",
                self.rpo_alpha
            )));
        }
        if self.label_smoothing > 0.0
            && matches!(
                self.kind,
                PreferenceLossKind::Ipo | PreferenceLossKind::Hinge
            )
        {
            return Err(PolicyError::Config(format!(
                "label_smoothing applies to the sigmoid and robust losses, not {:?}",
                self.kind
            )));
        }
        Ok(())
    }

    /// The loss (a scalar) and TRL's metrics for a batch of log-probs summed over each
    /// completion, each `[B]`: the policy's (carrying gradients) and the reference's
    /// (constants) for the chosen and the rejected completions. `lengths` holds each pair's
    /// completion lengths in tokens (chosen, rejected): IPO averages over them.
    pub fn compute(
        &self,
        chosen: &Tensor,
        rejected: &Tensor,
        ref_chosen: &Tensor,
        ref_rejected: &Tensor,
        lengths: &[(usize, usize)],
    ) -> Result<(Tensor, PreferenceMetrics), PolicyError> {
        self.validate()?;
        let b = chosen.dim(0)?;
        if [rejected, ref_chosen, ref_rejected]
            .iter()
            .any(|t| t.dims() != [b])
            || lengths.len() != b
        {
            return Err(PolicyError::Config(format!(
                "preference loss: log-probs of shapes {:?}, {:?}, {:?}, {:?} and {} lengths; \
                 one of each per pair is needed",
                chosen.dims(),
                rejected.dims(),
                ref_chosen.dims(),
                ref_rejected.dims(),
                lengths.len()
            )));
        }
        let (beta, eps) = (self.beta, self.label_smoothing);
        let chosen_ratio = (chosen - ref_chosen.detach())?;
        let rejected_ratio = (rejected - ref_rejected.detach())?;
        let losses = match self.kind {
            PreferenceLossKind::Sigmoid | PreferenceLossKind::Robust => {
                let h = (&chosen_ratio - &rejected_ratio)?;
                let pos = log_sigmoid(&h.affine(beta, 0.0)?)?;
                let neg = log_sigmoid(&h.affine(-beta, 0.0)?)?;
                if self.kind == PreferenceLossKind::Sigmoid {
                    (pos.affine(-(1.0 - eps), 0.0)? - neg.affine(eps, 0.0)?)?
                } else {
                    (pos.affine(-(1.0 - eps), 0.0)? + neg.affine(eps, 0.0)?)?
                        .affine(1.0 / (1.0 - 2.0 * eps), 0.0)?
                }
            }
            PreferenceLossKind::Hinge => (&chosen_ratio - &rejected_ratio)?
                .affine(-beta, 1.0)?
                .relu()?,
            PreferenceLossKind::Ipo => {
                let per_token = |counts: Vec<f32>| Tensor::from_vec(counts, b, chosen.device());
                let nc = per_token(lengths.iter().map(|l| 1.0 / l.0.max(1) as f32).collect())?;
                let nr = per_token(lengths.iter().map(|l| 1.0 / l.1.max(1) as f32).collect())?;
                let h = ((&chosen_ratio * nc)? - (&rejected_ratio * nr)?)?;
                h.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?
            }
        };
        let mut loss = losses.mean_all()?;
        if self.rpo_alpha > 0.0 {
            // TRL's NLL: over every chosen token of the batch.
            let tokens: usize = lengths.iter().map(|l| l.0).sum();
            let nll = chosen.sum_all()?.affine(-1.0 / tokens.max(1) as f64, 0.0)?;
            loss = (loss + nll.affine(self.rpo_alpha, 0.0)?)?;
        }
        let values = |t: &Tensor| -> Result<Vec<f32>, PolicyError> {
            Ok(t.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        let (rc, rr) = (values(&chosen_ratio)?, values(&rejected_ratio)?);
        let (pc, pr) = (values(chosen)?, values(rejected)?);
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        let rewards_chosen: Vec<f32> = rc.iter().map(|&x| (beta * x as f64) as f32).collect();
        let rewards_rejected: Vec<f32> = rr.iter().map(|&x| (beta * x as f64) as f32).collect();
        let accurate: Vec<f32> = rewards_chosen
            .iter()
            .zip(&rewards_rejected)
            .map(|(c, r)| f32::from(c > r))
            .collect();
        let margins: Vec<f32> = rewards_chosen
            .iter()
            .zip(&rewards_rejected)
            .map(|(c, r)| c - r)
            .collect();
        let metrics = PreferenceMetrics {
            rewards_chosen: mean(&rewards_chosen),
            rewards_rejected: mean(&rewards_rejected),
            rewards_accuracies: mean(&accurate),
            rewards_margins: mean(&margins),
            logps_chosen: mean(&pc),
            logps_rejected: mean(&pr),
        };
        Ok((loss, metrics))
    }
}

/// `log σ(x)`, stable for large `|x|`: `min(x, 0) − log(1 + e^{−|x|})`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.minimum(0.0)? - tail
}

/// TRL's metrics of one batch (means over its pairs).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// `rewards/chosen`.
    pub rewards_chosen: f64,
    /// `rewards/rejected`.
    pub rewards_rejected: f64,
    /// `rewards/accuracies`.
    pub rewards_accuracies: f64,
    /// `rewards/margins`.
    pub rewards_margins: f64,
    /// `logps/chosen`.
    pub logps_chosen: f64,
    /// `logps/rejected`.
    pub logps_rejected: f64,
}

impl PreferenceMetrics {
    /// The metrics under TRL's names.
    pub fn named(&self) -> BTreeMap<&'static str, f64> {
        BTreeMap::from([
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ])
    }
}

/// The log-probability of each completion given its prompt under `model`, summed over the
/// completion's tokens: `[B]` for `B` (prompt, completion) pairs,
/// carrying gradients to the model's parameters. The sequences run in one batch, padded on
/// the right (causal attention: padding after a sequence does not change it), with the head
/// applied at the completions' positions only.
pub fn completion_logps(
    model: &LanguageModel,
    sequences: &[(&[u32], &[u32])],
) -> Result<Tensor, PolicyError> {
    let block = model.config().transformer.block_size;
    let mut width = 0;
    for (i, (prompt, completion)) in sequences.iter().enumerate() {
        if prompt.is_empty() || completion.is_empty() {
            return Err(PolicyError::Config(format!(
                "preference sequence {i}: the prompt and the completion need a token each"
            )));
        }
        let len = prompt.len() + completion.len() - 1;
        if len > block {
            return Err(PolicyError::Config(format!(
                "preference sequence {i} is {} tokens, and the model's context is {block}",
                len + 1
            )));
        }
        width = width.max(len);
    }
    let b = sequences.len();
    if b == 0 {
        return Ok(Tensor::zeros(0, DType::F32, model.device())?);
    }
    let vocab = model.config().vocab_size as u32;
    let mut inputs = vec![0u32; b * width];
    let mut targets = vec![0u32; b * width];
    let mut at = Vec::new();
    // Which sequence each picked position belongs to, as a [B, positions] 0/1 matrix: the
    // per-sequence sums are one product.
    let mut owner = Vec::new();
    for (s, (prompt, completion)) in sequences.iter().enumerate() {
        let ids: Vec<u32> = prompt.iter().chain(completion.iter()).copied().collect();
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(PolicyError::Config(format!(
                "preference sequence {s}: token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let len = ids.len() - 1;
        inputs[s * width..s * width + len].copy_from_slice(&ids[..len]);
        targets[s * width..s * width + len].copy_from_slice(&ids[1..]);
        for p in prompt.len() - 1..len {
            at.push((s * width + p) as u32);
            owner.push(s);
        }
    }
    let n = at.len();
    let mut select = vec![0f32; b * n];
    for (j, &s) in owner.iter().enumerate() {
        select[s * n + j] = 1.0;
    }
    let dev = model.device();
    let inputs = Tensor::from_vec(inputs, (b, width), dev)?;
    let targets = Tensor::from_vec(targets, (b, width), dev)?;
    let at = Tensor::from_vec(at, n, dev)?;
    let nll = model.token_losses_at(&inputs, &targets, &at, None)?;
    let select = Tensor::from_vec(select, (b, n), dev)?;
    Ok(select.matmul(&nll.neg()?.unsqueeze(1)?)?.squeeze(1)?)
}

/// The preference loss of `pairs` for `model` against reference log-probs computed before
/// (`reference[i]` = (chosen, rejected) of pair `i`, as [`completion_logps`] gives them for
/// the reference model), with TRL's metrics.
pub fn preference_loss(
    model: &LanguageModel,
    pairs: &[PreferencePair],
    reference: &[(f32, f32)],
    loss: &PreferenceLoss,
) -> Result<(Tensor, PreferenceMetrics), PolicyError> {
    if pairs.len() != reference.len() || pairs.is_empty() {
        return Err(PolicyError::Config(format!(
            "{} preference pairs with {} reference log-probs: one each is needed",
            pairs.len(),
            reference.len()
        )));
    }
    let (chosen, rejected) = pair_logps(model, pairs)?;
    let dev = model.device();
    let (rc, rr): (Vec<f32>, Vec<f32>) = reference.iter().copied().unzip();
    let rc = Tensor::from_vec(rc, pairs.len(), dev)?;
    let rr = Tensor::from_vec(rr, pairs.len(), dev)?;
    let lengths: Vec<(usize, usize)> = pairs
        .iter()
        .map(|p| (p.chosen.len(), p.rejected.len()))
        .collect();
    loss.compute(&chosen, &rejected, &rc, &rr, &lengths)
}

/// The chosen and rejected completions' log-probs of `pairs` (`[B]` each), in one batch.
pub fn pair_logps(
    model: &LanguageModel,
    pairs: &[PreferencePair],
) -> Result<(Tensor, Tensor), PolicyError> {
    let sequences: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (&p.prompt[..], &p.chosen[..]))
        .chain(pairs.iter().map(|p| (&p.prompt[..], &p.rejected[..])))
        .collect();
    let all = completion_logps(model, &sequences)?;
    let b = pairs.len();
    Ok((all.narrow(0, 0, b)?, all.narrow(0, b, b)?))
}

/// The reference's log-probs of `pairs`, as constants (computed once, before training).
pub fn reference_logps(
    reference: &LanguageModel,
    pairs: &[PreferencePair],
) -> Result<Vec<(f32, f32)>, PolicyError> {
    let (c, r) = pair_logps(reference, pairs)?;
    let c = c.detach().to_vec1::<f32>()?;
    let r = r.detach().to_vec1::<f32>()?;
    Ok(c.into_iter().zip(r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn sigma(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Each loss against its formula, written out in f64 for one pair at a time.
    #[test]
    fn losses_follow_their_formulas() {
        let (c, r, rc, rr) = (
            [-3.0f32, -10.0, -2.5],
            [-4.0f32, -9.0, -7.0],
            [-3.5f32, -9.5, -2.0],
            [-3.0f32, -9.2, -6.0],
        );
        for (kind, eps) in [
            (PreferenceLossKind::Sigmoid, 0.0),
            (PreferenceLossKind::Sigmoid, 0.1),
            (PreferenceLossKind::Robust, 0.1),
            (PreferenceLossKind::Hinge, 0.0),
            (PreferenceLossKind::Ipo, 0.0),
        ] {
            let beta = 0.5;
            let l = PreferenceLoss {
                kind,
                beta,
                label_smoothing: eps,
                rpo_alpha: 0.0,
            };
            let lengths = [(2, 5), (4, 1), (3, 3)];
            let (loss, m) = l
                .compute(&t(&c), &t(&r), &t(&rc), &t(&rr), &lengths)
                .unwrap();
            let mut want = 0.0;
            for i in 0..3 {
                let (dw, dl) = ((c[i] - rc[i]) as f64, (r[i] - rr[i]) as f64);
                let h = dw - dl;
                want += match kind {
                    PreferenceLossKind::Sigmoid => {
                        -(1.0 - eps) * sigma(beta * h).ln() - eps * sigma(-beta * h).ln()
                    }
                    PreferenceLossKind::Robust => {
                        (-(1.0 - eps) * sigma(beta * h).ln() + eps * sigma(-beta * h).ln())
                            / (1.0 - 2.0 * eps)
                    }
                    PreferenceLossKind::Hinge => (1.0 - beta * h).max(0.0),
                    PreferenceLossKind::Ipo => {
                        let (nw, nl) = (lengths[i].0 as f64, lengths[i].1 as f64);
                        (dw / nw - dl / nl - 1.0 / (2.0 * beta)).powi(2)
                    }
                } / 3.0;
            }
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{kind:?} {eps}: {got} vs {want}"
            );
            // Rewards: β · (policy − reference); pair 0 and 2 prefer the chosen, pair 1 not.
            assert!((m.rewards_chosen - beta * (0.5 - 0.5 - 0.5) / 3.0).abs() < 1e-6);
            assert!((m.rewards_accuracies - 2.0 / 3.0).abs() < 1e-9);
            assert!((m.rewards_margins - (m.rewards_chosen - m.rewards_rejected)).abs() < 1e-6);
            assert!((m.logps_chosen - (-15.5 / 3.0)).abs() < 1e-6);
            // RPO adds α times the chosen answers' NLL per token: 15.5 nats over 9 tokens.
            let rpo = PreferenceLoss {
                rpo_alpha: 0.7,
                ..l
            };
            let (with, _) = rpo
                .compute(&t(&c), &t(&r), &t(&rc), &t(&rr), &lengths)
                .unwrap();
            let with = with.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (with - got - 0.7 * 15.5 / 9.0).abs() < 1e-5,
                "{kind:?}: {with} vs {got}"
            );
        }
    }

    fn tiny() -> LanguageModel {
        let texts: Vec<String> = (0..30)
            .map(|i| format!("instruction: push the red cube {i}\naction: push red cube left"))
            .collect();
        let tok = super::super::TextTokenizer::train(&texts, 280).unwrap();
        LanguageModel::new(&super::super::tiny_size(), tok, &Device::Cpu, 5).unwrap()
    }

    /// `Σ log softmax(logits)[next]` over the completion, from one unpadded forward pass.
    fn direct_logp(model: &LanguageModel, prompt: &[u32], completion: &[u32]) -> f32 {
        let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        let x = Tensor::new(&ids[..ids.len() - 1], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&x, None, None).unwrap().squeeze(0).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        (prompt.len() - 1..ids.len() - 1)
            .map(|p| logp[p][ids[p + 1] as usize])
            .sum()
    }

    #[test]
    fn completion_logps_are_unpadded_sums_and_carry_gradients() {
        let model = tiny();
        let pairs = [
            PreferencePair {
                prompt: vec![1, 7, 9],
                chosen: vec![4, 5, 2],
                rejected: vec![6, 2],
            },
            PreferencePair {
                prompt: vec![1, 3, 8, 8, 10, 11],
                chosen: vec![12],
                rejected: vec![13, 14, 15, 2],
            },
        ];
        let (c, r) = pair_logps(&model, &pairs).unwrap();
        let (c, r) = (c.to_vec1::<f32>().unwrap(), r.to_vec1::<f32>().unwrap());
        for (i, p) in pairs.iter().enumerate() {
            let (wc, wr) = (
                direct_logp(&model, &p.prompt, &p.chosen),
                direct_logp(&model, &p.prompt, &p.rejected),
            );
            assert!(
                (c[i] - wc).abs() < 1e-4 * (1.0 + wc.abs()),
                "chosen {i}: {} vs {wc}",
                c[i]
            );
            assert!(
                (r[i] - wr).abs() < 1e-4 * (1.0 + wr.abs()),
                "rejected {i}: {} vs {wr}",
                r[i]
            );
        }
        // The loss against a reference (here a perturbed copy of the logps) reaches the weights.
        let reference: Vec<(f32, f32)> =
            c.iter().zip(&r).map(|(a, b)| (a + 0.3, b - 0.2)).collect();
        let (loss, m) =
            preference_loss(&model, &pairs, &reference, &PreferenceLoss::default()).unwrap();
        assert!((m.rewards_chosen - 0.1 * -0.3).abs() < 1e-5);
        let grads = loss.backward().unwrap();
        let mut reached = 0;
        for (_, v) in dreamgym_nn::sorted_vars(model.varmap()) {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for every weight");
            reached += (g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0) as usize;
        }
        assert!(reached > 0);
        // Bad input: mismatched reference, ids outside the vocabulary, empty completions.
        assert!(
            preference_loss(&model, &pairs, &reference[..1], &PreferenceLoss::default()).is_err()
        );
        let outside = PreferencePair {
            prompt: vec![1],
            chosen: vec![100_000],
            rejected: vec![2],
        };
        assert!(pair_logps(&model, &[outside]).is_err());
        let empty = PreferencePair {
            prompt: vec![1],
            chosen: vec![],
            rejected: vec![2],
        };
        assert!(pair_logps(&model, &[empty]).is_err());
        let long = PreferencePair {
            prompt: vec![1; 70],
            chosen: vec![2],
            rejected: vec![2],
        };
        assert!(pair_logps(&model, &[long]).is_err());
    }

    #[test]
    fn log_sigmoid_is_stable_far_from_zero() {
        let x = t(&[-200.0, -20.0, 0.0, 20.0, 200.0]);
        let y = log_sigmoid(&x).unwrap().to_vec1::<f32>().unwrap();
        let want = [-200.0, -20.0, -(2f32.ln()), -2.0611537e-9, 0.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad = [
            PreferenceLoss {
                beta: 0.0,
                ..Default::default()
            },
            PreferenceLoss {
                beta: f64::NAN,
                ..Default::default()
            },
            PreferenceLoss {
                label_smoothing: 0.5,
                ..Default::default()
            },
            PreferenceLoss {
                kind: PreferenceLossKind::Ipo,
                label_smoothing: 0.1,
                ..Default::default()
            },
            PreferenceLoss {
                rpo_alpha: -1.0,
                ..Default::default()
            },
            // Finite, but past what the losses survive in f32.
            PreferenceLoss {
                kind: PreferenceLossKind::Ipo,
                beta: 1e-300,
                ..Default::default()
            },
            PreferenceLoss {
                beta: 1e308,
                ..Default::default()
            },
            PreferenceLoss {
                rpo_alpha: 1e308,
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
        assert!(PreferenceLoss::default().validate().is_ok());
        // The bounds themselves are taken.
        for (beta, rpo_alpha) in [(MIN_BETA, 0.0), (MAX_WEIGHT, MAX_WEIGHT)] {
            let l = PreferenceLoss {
                beta,
                rpo_alpha,
                ..Default::default()
            };
            assert!(l.validate().is_ok(), "{l:?}");
        }
    }
}
