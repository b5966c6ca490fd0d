//! M's reward and done heads, measured and calibrated on the episodes held out of its training
//! (`mdnrnn.held_out`): `calibration.json`, which the dream reads when
//! `controller.dream.calibrated` is set.

use anyhow::Context;
use candle_core::Device;
use dreamgym_world_model::MdnRnn;
use dreamgym_world_model::calibration::{
    Calibration, EpisodeHeads, HeadErrors, fit_calibration, head_errors,
};
use dreamgym_world_model::mdn::MdnOutput;
use serde::{Deserialize, Serialize};

use super::WorldModelsConfig;
use super::data::Series;
use crate::RunDir;

/// The file the calibration is saved in.
pub(crate) const CALIBRATION: &str = "calibration.json";

/// Whether episode `i` of M's data is held out of its training when a `fraction` is: every
/// n-th episode, n = 1 / fraction (so the choice stays put as rounds add episodes).
pub(crate) fn is_held_out(i: usize, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let n = (1.0 / fraction).round().max(2.0) as usize;
    i % n == n - 1
}

/// `calibration.json`: M's heads on the held-out episodes, as they are and calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFile {
    /// The M it calibrates (the CRC-32 of its weights).
    pub mdnrnn_crc32: u32,
    /// Held-out episodes it was fitted and measured on.
    pub episodes: usize,
    /// Their steps.
    pub steps: usize,
    /// The fitted calibration.
    pub calibration: Calibration,
    /// The heads as they are.
    pub raw: HeadErrors,
    /// The heads read through the calibration (on the same episodes it was fitted on).
    pub calibrated: HeadErrors,
}

/// M's heads teacher-forced along one recorded episode (its frames' μ and its actions), `None`
/// for an episode without steps.
pub(crate) fn teacher_forced(m: &MdnRnn, s: &Series) -> anyhow::Result<Option<MdnOutput>> {
    let t = s.actions.dim(0)?;
    if t == 0 {
        return Ok(None);
    }
    let device = m.device();
    let z = s.mu.narrow(0, 0, t)?.unsqueeze(0)?.to_device(device)?;
    let a = s.actions.unsqueeze(0)?.to_device(device)?;
    Ok(Some(m.forward(&z, &a)?))
}

/// A head's output (or a recorded column) as f64s on the CPU.
pub(crate) fn values(x: &candle_core::Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(x.detach()
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// What the heads said along each held-out episode, beside what happened.
fn heads_along(m: &MdnRnn, series: &[Series], fraction: f64) -> anyhow::Result<Vec<EpisodeHeads>> {
    let mut out = Vec::new();
    for (i, s) in series.iter().enumerate() {
        if !is_held_out(i, fraction) {
            continue;
        }
        let Some(o) = teacher_forced(m, s)? else {
            continue;
        };
        let head = |x: Option<candle_core::Tensor>| {
            values(&x.context("calibration needs M's reward and done heads")?)
        };
        out.push(EpisodeHeads {
            predicted_rewards: head(o.reward)?,
            rewards: values(&s.rewards)?,
            done_logits: head(o.done_logit)?,
            dones: values(&s.dones)?,
        });
    }
    Ok(out)
}

/// Fits and writes `calibration.json` for the M the run holds, when `mdnrnn.held_out` holds
/// episodes out and M has both heads; returns it.
pub(crate) fn calibrate(
    cfg: &WorldModelsConfig,
    m: &MdnRnn,
    series: &[Series],
    run: &RunDir,
) -> anyhow::Result<Option<CalibrationFile>> {
    let fraction = cfg.mdnrnn.held_out;
    let mc = m.config();
    if fraction <= 0.0 || !mc.reward_head || !mc.done_head {
        return Ok(None);
    }
    let mdnrnn_crc32 = dreamgym_nn::weights_crc32(&run.checkpoint("mdnrnn"))?;
    if let Some(saved) = std::fs::read(run.file(CALIBRATION))
        .ok()
        .and_then(|b| serde_json::from_slice::<CalibrationFile>(&b).ok())
        .filter(|f| f.mdnrnn_crc32 == mdnrnn_crc32)
    {
        return Ok(Some(saved));
    }
    let episodes = heads_along(m, series, fraction)?;
    if episodes.is_empty() {
        return Ok(None);
    }
    let calibration = fit_calibration(&episodes);
    anyhow::ensure!(
        calibration.is_finite(),
        "the calibration of M's heads is not finite ({calibration:?})"
    );
    let file = CalibrationFile {
        mdnrnn_crc32,
        episodes: episodes.len(),
        steps: episodes.iter().map(|e| e.rewards.len()).sum(),
        calibration,
        raw: head_errors(&Calibration::IDENTITY, &episodes),
        calibrated: head_errors(&calibration, &episodes),
    };
    dreamgym_base::write_atomic(&run.file(CALIBRATION), &serde_json::to_vec_pretty(&file)?)?;
    Ok(Some(file))
}

/// The calibration the dream reads, when `controller.dream.calibrated` asks for one: that of
/// the M the run holds now.
pub(crate) fn dream_calibration(
    cfg: &WorldModelsConfig,
    run: &RunDir,
) -> anyhow::Result<Option<Calibration>> {
    if !cfg.controller.dream.calibrated {
        return Ok(None);
    }
    let path = run.file(CALIBRATION);
    let file: CalibrationFile = serde_json::from_slice(&std::fs::read(&path).with_context(|| {
        format!(
            "controller.dream.calibrated needs {} (made when M trains with mdnrnn.held_out > 0)",
            path.display()
        )
    })?)
    .with_context(|| format!("{} is not a calibration file", path.display()))?;
    anyhow::ensure!(
        file.mdnrnn_crc32 == dreamgym_nn::weights_crc32(&run.checkpoint("mdnrnn"))?,
        "{} calibrates another M than the run holds (retrain M to remake it)",
        path.display()
    );
    Ok(Some(file.calibration))
}
