//! The World Models pipeline (Ha & Schmidhuber, 2018) over recorded pixel episodes:
//! train V → encode the dataset → train M → train C with CMA-ES (in the real env or in M's
//! dream) → evaluate over many seeds against a random policy → write a report.
//!
//! Every stage reads and writes files in one [`RunDir`](crate::RunDir), so each can also run
//! alone; V and M checkpoint (weights and Adam's moments) after every epoch and resume exactly
//! from there.

mod agent;
mod calibrate;
mod config;
mod data;
mod encode;
mod ensemble;
mod evaluate;
mod pipeline;
mod report;
mod rounds;
mod saved;
mod train_controller;
mod train_mdn;
mod train_vae;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use agent::{WorldModel, WorldModelsAgent, check_pixels, frame_of};
pub use calibrate::CalibrationFile;
pub use config::{
    ActionNoise, ControllerStage, EvalStage, IterateStage, MdnStage, VaeStage, WorldModelsConfig,
};
pub use data::{
    EpisodeFrames, Frames, PixelData, Series, action_size, dataset_meta, load_series, make_env,
    save_series, start_latents,
};
pub use encode::encode;
pub use ensemble::EnsembleFile;
pub use evaluate::{EvalSummary, evaluate};
pub use pipeline::{Outcome, Stage, run_world_models};
pub use report::report;
pub use rounds::{RoundSummary, round_dir, run_rounds};
pub use saved::{
    ControllerFile, LoadedRun, TrainedWith, load_mdn, load_run, load_vae, load_world_model,
};
pub use train_controller::train_controller;
pub use train_mdn::{mdn_config, train_mdn};
pub use train_vae::train_vae;

use crate::{Interrupted, Progress};

/// What a training stage did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Epochs done in total (including resumed ones).
    pub epochs: usize,
    /// Epochs the checkpoint already held when this call started.
    pub resumed_from: usize,
    /// Optimiser steps this call took.
    pub steps: usize,
    /// Mean loss of the last epoch this call trained.
    pub final_loss: f64,
    /// Samples (frames or sequences) per second this call.
    pub throughput: f64,
    /// Seconds this call took.
    pub seconds: f64,
}

/// Where a training stage starts: epochs and optimiser steps its checkpoint holds.
pub(crate) struct ResumePoint {
    pub epochs: usize,
    pub steps: usize,
    /// The mean loss of the last epoch saved (NaN when unknown).
    pub loss: f64,
}

/// Restores a training stage from the checkpoint at `stem` when it was made with the same
/// model `config` from the same inputs (`trained_on`: for V the dataset's fingerprint, for M
/// which V made its latents): the weights, Adam's moments and the counters.
///
/// A checkpoint made from other inputs is stale: the stage starts fresh and says why through
/// `progress`. A checkpoint of another architecture is an error (the config changed under a
/// trained model): nothing is discarded unless the user asks for it (`--force`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn resume<C: Serialize + DeserializeOwned + PartialEq>(
    stem: &Path,
    kind: &str,
    config: &C,
    settings: &serde_json::Value,
    epochs_asked: usize,
    trained_on: &serde_json::Value,
    varmap: &candle_nn::VarMap,
    opt: &mut dreamgym_nn::Adam,
    progress: &dyn Progress,
) -> anyhow::Result<ResumePoint> {
    let fresh = ResumePoint {
        epochs: 0,
        steps: 0,
        loss: f64::NAN,
    };
    if !dreamgym_nn::checkpoint_paths(stem).1.exists() {
        return Ok(fresh);
    }
    let (saved, state): (C, serde_json::Value) = match dreamgym_nn::read_checkpoint_meta(stem, kind)
    {
        Ok(x) => x,
        Err(e) => {
            progress.note(&format!(
                "{kind}: not resuming ({e}); training from scratch"
            ));
            return Ok(fresh);
        }
    };
    if &saved != config {
        anyhow::bail!(
            "{} holds a {kind} of another architecture than the config asks for ({}); run \
             with --force to discard it and the stages after it, or use another --out",
            stem.display(),
            config_diff(&saved, config)
        );
    }
    check_settings(stem, kind, &state, settings)?;
    let done = state
        .get("epochs_done")
        .and_then(|e| e.as_u64())
        .unwrap_or(0) as usize;
    anyhow::ensure!(
        done <= epochs_asked,
        "{} holds a {kind} trained for {done} epochs, more than the {epochs_asked} asked for; \
         run with --force to train it again, or use another --out",
        stem.display()
    );
    let saved_on = state
        .get("trained_on")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if &saved_on != trained_on {
        let what = if kind == "vae" {
            "the dataset changed since V was trained"
        } else {
            "what M was trained on (V, or a round's episodes) changed since"
        };
        progress.note(&format!(
            "{kind}: {what}, so it is stale; training it from scratch"
        ));
        return Ok(fresh);
    }
    let epochs = state
        .get("epochs_done")
        .and_then(|e| e.as_u64())
        .unwrap_or(0) as usize;
    if epochs == 0 {
        return Ok(fresh);
    }
    // A checkpoint cut off mid-save (its files from two epochs) cannot be resumed: say so and
    // train from scratch rather than refuse to run.
    if let Err(e) = dreamgym_nn::load_weights(stem, varmap) {
        progress.note(&format!(
            "{kind}: not resuming ({e}); training from scratch"
        ));
        return Ok(fresh);
    }
    match dreamgym_nn::load_optimizer(stem, opt) {
        Ok(true) => {}
        Ok(false) => progress.note(&format!(
            "{kind}: the checkpoint has no optimiser state (made by an older dreamgym); resuming with fresh Adam moments"
        )),
        Err(e) => progress.note(&format!(
            "{kind}: the optimiser state is unreadable ({e}); resuming with fresh Adam moments"
        )),
    }
    let steps = state
        .get("steps_done")
        .and_then(|e| e.as_u64())
        .unwrap_or(0) as usize;
    let loss = state
        .get("loss")
        .and_then(|l| l.as_f64())
        .unwrap_or(f64::NAN);
    Ok(ResumePoint {
        epochs,
        steps,
        loss,
    })
}

/// Refuses a checkpoint whose sidecar `state` records other training `settings` (learning
/// rate, batch size, seed...) than asked: a model made otherwise is not this config's, and is
/// not thrown away unasked either. Checkpoints from before settings were recorded pass.
pub(crate) fn check_settings(
    stem: &Path,
    kind: &str,
    state: &serde_json::Value,
    settings: &serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(saved) = state.get("settings")
        && saved != settings
    {
        anyhow::bail!(
            "{} holds a {kind} trained with other settings ({}); run with --force to discard \
             it and the stages after it, or use another --out",
            stem.display(),
            config_diff(saved, settings)
        );
    }
    Ok(())
}

/// `a → b` for every field where two configs differ, for messages.
pub fn config_diff<C: Serialize>(a: &C, b: &C) -> String {
    let flat = |c: &C| crate::experiment::flatten(&serde_json::to_value(c).unwrap_or_default());
    let (a, b) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".into(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns [`Interrupted`] (ending the stage's progress) when the user asked to stop; `what`
/// has been saved after `epochs_done` epochs.
pub(crate) fn stop_if_interrupted(
    progress: &dyn Progress,
    stage: &str,
    what: &str,
    epochs_done: usize,
) -> anyhow::Result<()> {
    if progress.interrupted() {
        progress.end();
        let saved = if epochs_done == 0 {
            format!("no epoch of {what} had finished, so nothing was saved")
        } else {
            format!("{what} is saved after epoch {epochs_done}; run again to resume")
        };
        return Err(Interrupted {
            stage: stage.into(),
            saved,
        }
        .into());
    }
    Ok(())
}
