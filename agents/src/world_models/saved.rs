//! Loading what a World Models run saved: V, M, C, and the whole run for watching.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use dreamgym_envs::recording::DatasetMeta;
use dreamgym_nn::{load_weights, read_checkpoint_meta};
use dreamgym_policies::LinearController;
use dreamgym_world_model::dream::StartLatent;
use dreamgym_world_model::{MdnRnn, MdnRnnConfig, Vae, VaeConfig};
use serde::{Deserialize, Serialize};

use super::agent::WorldModel;
use super::data::{dataset_meta, load_series, start_latents};
use crate::RunDir;

/// Loads V from a run folder.
pub fn load_vae(run: &RunDir, device: &Device) -> anyhow::Result<Vae> {
    let stem = run.checkpoint("vae");
    let (config, _): (VaeConfig, _) = read_checkpoint_meta(&stem, "vae")?;
    let vae = Vae::new(config, device, 0)?;
    load_weights(&stem, vae.varmap())?;
    Ok(vae)
}

/// Loads M from a run folder.
pub fn load_mdn(run: &RunDir, device: &Device) -> anyhow::Result<MdnRnn> {
    let stem = run.checkpoint("mdnrnn");
    let (config, _): (MdnRnnConfig, _) = read_checkpoint_meta(&stem, "mdnrnn")?;
    let m = MdnRnn::new(config, device, 0)?;
    load_weights(&stem, m.varmap())?;
    Ok(m)
}

/// Loads V and M from a run folder and checks that they fit together (M reads V's z).
pub fn load_world_model(run: &RunDir, device: &Device) -> anyhow::Result<WorldModel> {
    let root = run.root().display();
    let vae = load_vae(run, device).with_context(|| format!("{root}: no trained V"))?;
    let mdn = load_mdn(run, device).with_context(|| format!("{root}: no trained M"))?;
    anyhow::ensure!(
        vae.config().z_size == mdn.config().z_size,
        "{root}: V's z_size {} does not match M's {} (were they trained in different runs?)",
        vae.config().z_size,
        mdn.config().z_size
    );
    Ok(WorldModel {
        vae: Arc::new(vae),
        mdn: Arc::new(mdn),
    })
}

/// The trained controller, as saved in `controller.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerFile {
    /// Trained in the dream (true) or the real env.
    pub in_dream: bool,
    /// C's inputs (z + hidden).
    pub inputs: usize,
    /// W row-major, then b.
    pub params: Vec<f32>,
    /// The best mean training return seen (the one these parameters earned); with
    /// `controller.select_every`, the selected mean's score on the selection episodes.
    pub best_fitness: f64,
    /// Generations done.
    pub generations: usize,
    /// With `controller.select_every`: the generation after which CMA-ES's mean was C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_after: Option<usize>,
    /// The V and M it was trained with (absent in files from before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_with: Option<TrainedWith>,
}

/// Which V and M a controller was trained with: the CRC-32s of their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainedWith {
    /// V's weights.
    pub vae_crc32: u32,
    /// M's weights.
    pub mdnrnn_crc32: u32,
}

impl TrainedWith {
    /// The V and M a run folder holds now.
    pub fn of_run(run: &RunDir) -> anyhow::Result<Self> {
        Ok(Self {
            vae_crc32: dreamgym_nn::weights_crc32(&run.checkpoint("vae"))?,
            mdnrnn_crc32: dreamgym_nn::weights_crc32(&run.checkpoint("mdnrnn"))?,
        })
    }
}

impl ControllerFile {
    /// What its score is, for messages: the best training fitness, or the selected mean's
    /// score on the selection episodes.
    pub fn score_line(&self) -> String {
        match self.selected_after {
            Some(g) => format!(
                "CMA-ES's mean after generation {g}, mean return {:.1} on the selection episodes",
                self.best_fitness
            ),
            None => format!("best mean training return {:.1}", self.best_fitness),
        }
    }

    /// Reads a controller file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read {} (train the controller first)",
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a controller file", path.display()))
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        dreamgym_base::write_atomic(path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Refuses a controller trained with another V or M than the run holds now (they were
    /// retrained since): its actions would be read from latents it never saw.
    pub fn check_fits(&self, run: &RunDir) -> anyhow::Result<()> {
        if let Some(with) = self.trained_with {
            anyhow::ensure!(
                with == TrainedWith::of_run(run)?,
                "{}: C was trained with another V or M than the run holds now (they were \
                 retrained since); run `dreamgym train-controller` again",
                run.file("controller.json").display()
            );
        }
        Ok(())
    }

    /// The controller, acting in `meta`'s action space.
    pub fn controller(&self, meta: &DatasetMeta) -> anyhow::Result<LinearController> {
        Ok(LinearController::new(
            self.inputs,
            &meta.action_space,
            self.params.clone(),
        )?)
    }
}

/// A trained run loaded for acting and watching: V and M, C if trained, the dataset's
/// description, and the dream's starting latents if the run was encoded.
pub struct LoadedRun {
    /// V and M.
    pub wm: WorldModel,
    /// C, when `controller.json` exists.
    pub controller: Option<LinearController>,
    /// The recorded dataset's description (env id, config, spaces) from `<run>/data`.
    pub meta: DatasetMeta,
    /// Every episode's first latent (empty without `series.safetensors`).
    pub starts: Vec<StartLatent>,
}

/// Loads a run folder (`vae.*`, `mdnrnn.*`, optional `controller.json` and
/// `series.safetensors`, the dataset in `data/`) on the CPU.
pub fn load_run(run: &RunDir) -> anyhow::Result<LoadedRun> {
    let device = Device::Cpu;
    let meta = dataset_meta(&run.data()).with_context(|| {
        format!(
            "{} has no dataset in data/ (is it a World Models run folder?)",
            run.root().display()
        )
    })?;
    let wm = load_world_model(run, &device)?;
    let path = run.file("controller.json");
    let controller = if path.exists() {
        let file = ControllerFile::read(&path)?;
        file.check_fits(run)?;
        let c = file.controller(&meta)?;
        anyhow::ensure!(
            c.inputs() == wm.feature_size(),
            "{}: controller inputs do not match V and M",
            path.display()
        );
        Some(c)
    } else {
        None
    };
    let series = run.file("series.safetensors");
    let starts = if series.exists() {
        start_latents(&load_series(&series)?)?
    } else {
        Vec::new()
    };
    Ok(LoadedRun {
        wm,
        controller,
        meta,
        starts,
    })
}
