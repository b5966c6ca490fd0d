//! Calibrating M's reward and done heads on episodes it was not trained on.
//!
//! The reward head is corrected by the affine map that best fits the real rewards (least
//! squares), the done head by Platt scaling (a logistic regression on its logit), both fitted on
//! held-out episodes. The dream can then read the heads through the calibration
//! ([`DreamEnv::with_calibration`](crate::DreamEnv::with_calibration)).

use serde::{Deserialize, Serialize};

/// How to read M's heads: `reward' = reward_scale · reward + reward_offset`, and the done
/// probability `σ(done_scale · logit + done_offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Multiplies the predicted reward.
    pub reward_scale: f64,
    /// Added to the scaled reward.
    pub reward_offset: f64,
    /// Multiplies the done logit.
    pub done_scale: f64,
    /// Added to the scaled logit.
    pub done_offset: f64,
}

impl Calibration {
    /// Reads the heads as they are.
    pub const IDENTITY: Self = Self {
        reward_scale: 1.0,
        reward_offset: 0.0,
        done_scale: 1.0,
        done_offset: 0.0,
    };

    /// The calibrated reward.
    pub fn reward(&self, predicted: f64) -> f64 {
        self.reward_scale * predicted + self.reward_offset
    }

    /// The calibrated done probability of a logit.
    pub fn done_probability(&self, logit: f64) -> f64 {
        sigmoid(self.done_scale * logit + self.done_offset)
    }

    /// Whether every number is finite.
    pub fn is_finite(&self) -> bool {
        [
            self.reward_scale,
            self.reward_offset,
            self.done_scale,
            self.done_offset,
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `(a, b)` minimising `Σ (a·x + b − y)²`. With no spread in `x`, only the offset is fitted
/// (`a = 1`); with no data, the identity.
pub fn fit_affine(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().min(y.len());
    if n == 0 {
        return (1.0, 0.0);
    }
    let (mx, my) = (
        x[..n].iter().sum::<f64>() / n as f64,
        y[..n].iter().sum::<f64>() / n as f64,
    );
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (a, b) in x[..n].iter().zip(&y[..n]) {
        sxx += (a - mx) * (a - mx);
        sxy += (a - mx) * (b - my);
    }
    if sxx <= 1e-12 * n as f64 {
        return (1.0, my - mx);
    }
    let a = sxy / sxx;
    (a, my - a * mx)
}

/// Platt scaling: `(α, β)` minimising the cross-entropy of `σ(α·logit + β)` against `labels`
/// (0 or 1), by Newton's method. The targets are smoothed as Platt proposed
/// (`(N₊ + 1) / (N₊ + 2)` and `1 / (N₋ + 2)`), which keeps the fit finite when one class is
/// missing or the classes separate. The slope is kept >= 0: a head whose logits rank the
/// held-out steps backwards (as a fit on a handful of episodes can make it look) is no better
/// than a constant rate, so it is read as the smoothed rate of the held-out steps.
pub fn fit_platt(logits: &[f64], labels: &[f64]) -> (f64, f64) {
    let n = logits.len().min(labels.len());
    if n == 0 {
        return (1.0, 0.0);
    }
    let pos = labels[..n].iter().filter(|l| **l > 0.5).count() as f64;
    let neg = n as f64 - pos;
    let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let targets: Vec<f64> = labels[..n]
        .iter()
        .map(|l| if *l > 0.5 { hi } else { lo })
        .collect();
    let (mut a, mut b) = (1.0, 0.0);
    let loss = |a: f64, b: f64| -> f64 {
        logits[..n]
            .iter()
            .zip(&targets)
            .map(|(x, t)| {
                let z = a * x + b;
                // log(1 + e^z) − t·z, computed stably.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z
            })
            .sum()
    };
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (x, t) in logits[..n].iter().zip(&targets) {
            let p = sigmoid(a * x + b);
            let d = p - t;
            let w = (p * (1.0 - p)).max(1e-12);
            ga += d * x;
            gb += d;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        // A small ridge keeps the Newton step defined when the logits have no spread.
        let (haa, hbb) = (haa + 1e-9, hbb + 1e-9);
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        // Backtracking: Newton's step, halved until the loss does not rise.
        let mut step = 1.0;
        let mut next = loss(a - step * da, b - step * db);
        while next > current && step > 1e-6 {
            step *= 0.5;
            next = loss(a - step * da, b - step * db);
        }
        if next > current {
            break;
        }
        a -= step * da;
        b -= step * db;
        let done = current - next < 1e-12 * current.abs().max(1.0);
        current = next;
        if done {
            break;
        }
    }
    if a < 0.0 {
        let rate = targets.iter().sum::<f64>() / n as f64;
        return (0.0, (rate / (1.0 - rate)).ln());
    }
    (a, b)
}

/// How well M's heads predict held-out episodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadErrors {
    /// Root mean squared error of the per-step reward.
    pub reward_rmse: f64,
    /// Mean absolute error of each episode's return (the sum of its predicted rewards).
    pub return_error: f64,
    /// Mean cross-entropy of the done probability against the real done flags.
    pub done_bce: f64,
    /// Mean predicted done probability per step.
    pub done_rate: f64,
}

/// The errors of heads read through `c` on episodes given as `(predicted rewards, real
/// rewards, done logits, real done flags)`, one entry per step.
pub fn head_errors(c: &Calibration, episodes: &[EpisodeHeads]) -> HeadErrors {
    let (mut se, mut steps, mut ret_err, mut bce, mut rate) = (0.0, 0usize, 0.0, 0.0, 0.0);
    for e in episodes {
        let mut ret = 0.0;
        for i in 0..e.rewards.len() {
            let r = c.reward(e.predicted_rewards[i]);
            se += (r - e.rewards[i]).powi(2);
            ret += r - e.rewards[i];
            let p = c
                .done_probability(e.done_logits[i])
                .clamp(1e-12, 1.0 - 1e-12);
            let d = e.dones[i];
            bce -= d * p.ln() + (1.0 - d) * (1.0 - p).ln();
            rate += p;
            steps += 1;
        }
        ret_err += ret.abs();
    }
    let s = steps.max(1) as f64;
    HeadErrors {
        reward_rmse: (se / s).sqrt(),
        return_error: ret_err / episodes.len().max(1) as f64,
        done_bce: bce / s,
        done_rate: rate / s,
    }
}

/// What M's heads said along one real episode (teacher-forced), beside what happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeHeads {
    /// The reward head's output per step.
    pub predicted_rewards: Vec<f64>,
    /// The real rewards.
    pub rewards: Vec<f64>,
    /// The done head's logit per step.
    pub done_logits: Vec<f64>,
    /// The real done flags (0 or 1).
    pub dones: Vec<f64>,
}

/// Fits the calibration to `episodes`.
pub fn fit_calibration(episodes: &[EpisodeHeads]) -> Calibration {
    let cat = |f: fn(&EpisodeHeads) -> &Vec<f64>| -> Vec<f64> {
        episodes.iter().flat_map(|e| f(e).iter().copied()).collect()
    };
    let (reward_scale, reward_offset) =
        fit_affine(&cat(|e| &e.predicted_rewards), &cat(|e| &e.rewards));
    let (done_scale, done_offset) = fit_platt(&cat(|e| &e.done_logits), &cat(|e| &e.dones));
    Calibration {
        reward_scale,
        reward_offset,
        done_scale,
        done_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn the_affine_fit_is_least_squares() {
        let x: Vec<f64> = (0..50).map(|i| i as f64 * 0.3 - 4.0).collect();
        let y: Vec<f64> = x.iter().map(|v| 2.0 * v - 1.0).collect();
        let (a, b) = fit_affine(&x, &y);
        assert!(
            (a - 2.0).abs() < 1e-12 && (b + 1.0).abs() < 1e-12,
            "{a} {b}"
        );
        // Constant predictions: only the offset moves (to the mean); no data: the identity.
        assert_eq!(fit_affine(&[3.0, 3.0], &[1.0, 2.0]), (1.0, -1.5));
        assert_eq!(fit_affine(&[], &[]), (1.0, 0.0));
    }

    fn bce(a: f64, b: f64, x: &[f64], y: &[f64]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(x, y)| {
                let p = sigmoid(a * x + b).clamp(1e-12, 1.0 - 1e-12);
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / x.len() as f64
    }

    #[test]
    fn platt_scaling_recovers_the_logistic_that_made_the_labels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f64> = (0..20000).map(|i| (i % 801) as f64 / 100.0 - 4.0).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| (rng.random::<f64>() < sigmoid(0.5 * v - 1.0)) as u8 as f64)
            .collect();
        let (a, b) = fit_platt(&x, &y);
        assert!((a - 0.5).abs() < 0.05 && (b + 1.0).abs() < 0.06, "{a} {b}");
        // It lowers the cross-entropy against the heads read as they are.
        assert!(bce(a, b, &x, &y) < bce(1.0, 0.0, &x, &y));
        // The maximum of the likelihood: the gradient is zero there (targets as smoothed).
        let pos = y.iter().sum::<f64>();
        let (hi, lo) = (
            (pos + 1.0) / (pos + 2.0),
            1.0 / (y.len() as f64 - pos + 2.0),
        );
        let g: f64 = x
            .iter()
            .zip(&y)
            .map(|(x, y)| sigmoid(a * x + b) - if *y > 0.5 { hi } else { lo })
            .sum();
        assert!(g.abs() < 1e-6, "{g}");
    }

    #[test]
    fn platt_scaling_stays_finite_without_positives_or_spread() {
        let (a, b) = fit_platt(&[-3.0, -1.0, 0.5, 2.0], &[0.0; 4]);
        assert!(a.is_finite() && b.is_finite(), "{a} {b}");
        assert!(sigmoid(a * 2.0 + b) < 0.5);
        let (a, b) = fit_platt(
            &[0.3; 10],
            &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        );
        assert!(a.is_finite() && b.is_finite(), "{a} {b}");
        // One positive in ten, smoothed: (1 + 1) / (1 + 2) and 1 / (9 + 2).
        let target = (2.0 / 3.0 + 9.0 / 11.0) / 10.0;
        assert!((sigmoid(a * 0.3 + b) - target).abs() < 1e-6);
    }

    #[test]
    fn platt_scaling_never_inverts_the_head() {
        // Labels that fall as the logit rises: the best slope is negative, the fit keeps 0
        // and reads every step at the smoothed rate of the held-out steps.
        let x: Vec<f64> = (0..40).map(|i| i as f64 / 4.0 - 5.0).collect();
        let y: Vec<f64> = x.iter().map(|v| (*v < -3.0) as u8 as f64).collect();
        let (a, b) = fit_platt(&x, &y);
        assert_eq!(a, 0.0);
        let pos = y.iter().sum::<f64>();
        let rate = (pos * (pos + 1.0) / (pos + 2.0) + (40.0 - pos) / (40.0 - pos + 2.0)) / 40.0;
        assert!((sigmoid(b) - rate).abs() < 1e-12, "{} {rate}", sigmoid(b));
        // A constant rate beats the inverted head read as it is.
        assert!(bce(a, b, &x, &y) < bce(1.0, 0.0, &x, &y));
    }

    #[test]
    fn head_errors_are_the_closed_forms() {
        let e = EpisodeHeads {
            predicted_rewards: vec![1.0, 2.0],
            rewards: vec![0.0, 4.0],
            done_logits: vec![0.0, 0.0],
            dones: vec![0.0, 1.0],
        };
        let h = head_errors(&Calibration::IDENTITY, std::slice::from_ref(&e));
        assert!((h.reward_rmse - (2.5f64).sqrt()).abs() < 1e-12);
        // Predicted return 3, real 4.
        assert!((h.return_error - 1.0).abs() < 1e-12);
        assert!((h.done_bce - 2f64.ln()).abs() < 1e-12);
        assert!((h.done_rate - 0.5).abs() < 1e-12);
        // Read through a calibration that doubles the reward: 2 and 4 against 0 and 4.
        let c = Calibration {
            reward_scale: 2.0,
            ..Calibration::IDENTITY
        };
        let h = head_errors(&c, &[e]);
        assert!((h.reward_rmse - 2f64.sqrt()).abs() < 1e-12);
        assert!((h.return_error - 2.0).abs() < 1e-12);
    }
}
