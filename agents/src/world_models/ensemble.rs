//! An ensemble of Ms (`mdnrnn.ensemble`): members trained like the run's M on the same
//! episodes from other seeds, kept in `<run>/ensemble/<k>/`. Where they disagree about the next
//! latent, M is guessing; `controller.dream.halt_quantile` ends the dream there (MOReL,
//! Kidambi et al. 2020), at a threshold read off the disagreement on the held-out real
//! episodes (`ensemble.json`).

use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use dreamgym_base::derive_seed;
use dreamgym_world_model::dream::Halting;
use dreamgym_world_model::mdn::disagreement;
use serde::{Deserialize, Serialize};

use super::calibrate::{is_held_out, values};
use super::data::Series;
use super::saved::load_mdn;
use super::train_mdn::{MdnStart, train_mdn_in};
use super::{TrainSummary, WorldModelsConfig};
use crate::{Progress, RunDir};

/// The file the held-out disagreement is saved in.
pub(crate) const ENSEMBLE: &str = "ensemble.json";

/// Quantiles saved: `QUANTILES + 1` values, the q-th of them at `q / QUANTILES`.
const QUANTILES: usize = 1000;

/// The folder of member `k` (`k >= 1`; member 0 is the run's own M).
pub(crate) fn member_dir(run: &RunDir, k: usize) -> RunDir {
    RunDir::new(run.root().join("ensemble").join(k.to_string()))
}

/// `ensemble.json`: how far the members' predictions spread on the held-out real steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleFile {
    /// The CRC-32 of each member's weights, the run's M first.
    pub members_crc32: Vec<u32>,
    /// Held-out episodes and steps it was measured on.
    pub episodes: usize,
    /// Their steps.
    pub steps: usize,
    /// The disagreement's quantiles on those steps, at 0, 1/1000, ..., 1.
    pub quantiles: Vec<f64>,
}

impl EnsembleFile {
    /// The disagreement below which a fraction `q` of the held-out steps lie (interpolated).
    pub fn quantile(&self, q: f64) -> f64 {
        interpolate(&self.quantiles, q)
    }
}

/// The value a fraction `q` of the way through `sorted`, interpolated between neighbours (0
/// when empty).
fn interpolate(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let x = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let (i, f) = (x.floor() as usize, x.fract());
    sorted[i] * (1.0 - f) + sorted[(i + 1).min(n - 1)] * f
}

fn crcs(run: &RunDir, members: usize) -> anyhow::Result<Vec<u32>> {
    let mut out = vec![dreamgym_nn::weights_crc32(&run.checkpoint("mdnrnn"))?];
    for k in 1..members {
        out.push(dreamgym_nn::weights_crc32(
            &member_dir(run, k).checkpoint("mdnrnn"),
        )?);
    }
    Ok(out)
}

/// Trains members 1.. of the ensemble in `run` (each from its own seed; from the same member
/// of `prev` when given, the iterative procedure's last round), then measures their
/// disagreement on the held-out episodes into `ensemble.json`. Does nothing with
/// `mdnrnn.ensemble = 1`. Returns each member's training summary.
pub(crate) fn train_ensemble(
    cfg: &WorldModelsConfig,
    series: &[Series],
    run: &RunDir,
    prev: Option<(&RunDir, serde_json::Value)>,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<TrainSummary>> {
    let k_all = cfg.mdnrnn.ensemble;
    if k_all < 2 {
        return Ok(Vec::new());
    }
    let mut members = vec![Arc::new(load_mdn(run, &dreamgym_nn::device(&cfg.device)?)?)];
    let mut summaries = Vec::new();
    for k in 1..k_all {
        let mut mcfg = cfg.clone();
        mcfg.seed = derive_seed(cfg.seed, "mdnrnn.member", k as u64);
        let dir = member_dir(run, k);
        let init = prev
            .as_ref()
            .map(|(p, _)| member_dir(p, k).checkpoint("mdnrnn"));
        let start = match (&init, &prev) {
            (Some(init), Some((_, trained_on))) => Some(MdnStart {
                init,
                trained_on: serde_json::json!({
                    "round": trained_on,
                    "init_crc32": dreamgym_nn::weights_crc32(init)?,
                }),
            }),
            _ => None,
        };
        let (m, s) = train_mdn_in(&mcfg, series, run, &dir, start, progress)
            .with_context(|| format!("ensemble member {k}"))?;
        members.push(Arc::new(m));
        summaries.push(s);
    }
    let members_crc32 = crcs(run, k_all)?;
    let path = run.file(ENSEMBLE);
    if std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<EnsembleFile>(&b).ok())
        .is_some_and(|f| f.members_crc32 == members_crc32)
    {
        return Ok(summaries);
    }
    let mut spread = Vec::new();
    let mut episodes = 0;
    for (i, s) in series.iter().enumerate() {
        if !is_held_out(i, cfg.mdnrnn.held_out) {
            continue;
        }
        let t = s.actions.dim(0)?;
        if t == 0 {
            continue;
        }
        episodes += 1;
        let mut means = Vec::with_capacity(members.len());
        for m in &members {
            let device = m.device();
            let z = s.mu.narrow(0, 0, t)?.unsqueeze(0)?.to_device(device)?;
            let a = s.actions.unsqueeze(0)?.to_device(device)?;
            let mean = m.forward(&z, &a)?.mixture()?.mean()?;
            means.push(values(&mean)?);
        }
        let z_size = means[0].len() / t;
        for step in 0..t {
            let rows: Vec<Vec<f32>> = means
                .iter()
                .map(|m| {
                    m[step * z_size..(step + 1) * z_size]
                        .iter()
                        .map(|v| *v as f32)
                        .collect()
                })
                .collect();
            let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
            spread.push(disagreement(&refs));
        }
    }
    anyhow::ensure!(
        !spread.is_empty(),
        "the ensemble's disagreement is measured on held-out episodes: set mdnrnn.held_out \
         (e.g. 0.1) so that some are held out"
    );
    spread.sort_by(f64::total_cmp);
    let n = spread.len();
    let quantiles = (0..=QUANTILES)
        .map(|q| interpolate(&spread, q as f64 / QUANTILES as f64))
        .collect();
    let file = EnsembleFile {
        members_crc32,
        episodes,
        steps: n,
        quantiles,
    };
    dreamgym_base::write_atomic(&path, &serde_json::to_vec_pretty(&file)?)?;
    progress.note(&format!(
        "M's ensemble of {k_all} on {episodes} held-out episodes ({n} steps): disagreement \
         median {:.4}, 99% {:.4}, max {:.4}",
        file.quantile(0.5),
        file.quantile(0.99),
        file.quantile(1.0)
    ));
    Ok(summaries)
}

/// The halting the dream does when `controller.dream.halt_quantile` asks for it: the run's
/// members and the threshold read off `ensemble.json` (which must describe them).
pub(crate) fn dream_halting(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    device: &Device,
) -> anyhow::Result<Option<Halting>> {
    let dream = &cfg.controller.dream;
    if dream.halt_quantile <= 0.0 {
        return Ok(None);
    }
    let path = run.file(ENSEMBLE);
    let file: EnsembleFile = serde_json::from_slice(&std::fs::read(&path).with_context(|| {
        format!(
            "controller.dream.halt_quantile needs {} (made when M trains with \
             mdnrnn.ensemble >= 2)",
            path.display()
        )
    })?)
    .with_context(|| format!("{} is not an ensemble file", path.display()))?;
    anyhow::ensure!(
        file.members_crc32 == crcs(run, file.members_crc32.len())?
            && file.members_crc32.len() == cfg.mdnrnn.ensemble,
        "{} describes other Ms than the run holds (retrain M to remake it)",
        path.display()
    );
    let members = (1..cfg.mdnrnn.ensemble)
        .map(|k| {
            load_mdn(&member_dir(run, k), device)
                .map(Arc::new)
                .with_context(|| format!("ensemble member {k}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Halting {
        members,
        threshold: file.quantile(dream.halt_quantile),
        reward: dream.halt_reward,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_the_saved_points() {
        let f = EnsembleFile {
            members_crc32: vec![],
            episodes: 1,
            steps: 3,
            quantiles: vec![0.0, 1.0, 3.0],
        };
        assert_eq!(f.quantile(0.0), 0.0);
        assert_eq!(f.quantile(0.5), 1.0);
        assert_eq!(f.quantile(0.75), 2.0);
        assert_eq!(f.quantile(1.0), 3.0);
        assert_eq!(f.quantile(7.0), 3.0);
    }
}
