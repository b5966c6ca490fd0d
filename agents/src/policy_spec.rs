//! Policies from specs: `random`, a World Models run folder, or a checkpoint file. The CLI,
//! the experiment runner and the viewer all load policies here.

use std::path::Path;

use anyhow::Context;
use dreamgym_envs::Space;
use dreamgym_policies::{Policy, RandomPolicy};

use crate::RunDir;
use crate::world_models::{
    ControllerFile, WorldModelsAgent, check_pixels, dataset_meta, load_world_model,
};

/// A kind of policy a spec can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyKind {
    /// How a spec names it.
    pub spec: &'static str,
    /// What it is.
    pub description: &'static str,
}

/// Every kind of policy [`load_policy`] understands, for `dreamgym policies`.
pub const POLICY_KINDS: &[PolicyKind] = &[
    PolicyKind {
        spec: "random",
        description: "uniform samples of the action space, seeded per episode",
    },
    PolicyKind {
        spec: "<run folder>",
        description: "a trained World Models run (vae, mdnrnn, controller.json): V encodes each frame, C acts on [z, h], M carries h; pixel observations",
    },
    PolicyKind {
        spec: "<path>/controller.json",
        description: "a linear controller C: inside a World Models run it acts through that run's V and M; alone it acts on float observations of its input size",
    },
];

fn kinds_list() -> String {
    POLICY_KINDS
        .iter()
        .map(|k| k.spec)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that a spec names a policy that could load, without loading models (for config
/// validation).
pub fn check_policy_spec(spec: &str) -> anyhow::Result<()> {
    if spec == "random" {
        return Ok(());
    }
    let path = Path::new(spec);
    anyhow::ensure!(
        path.exists(),
        "unknown policy `{spec}`: not `random` and no such file or folder (known kinds: {})",
        kinds_list()
    );
    Ok(())
}

/// Loads the policy `spec` for an env with these spaces. `seed` seeds the policy's own
/// randomness (the random policy's actions).
pub fn load_policy(
    spec: &str,
    observation_space: &Space,
    action_space: &Space,
    seed: u64,
) -> anyhow::Result<Box<dyn Policy>> {
    if spec == "random" {
        return Ok(Box::new(RandomPolicy::new(action_space.clone(), seed)));
    }
    let path = Path::new(spec);
    let (run, controller_path) = if path.is_dir() {
        (Some(RunDir::new(path)), path.join("controller.json"))
    } else if path.is_file() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let is_run = dir.join("vae.json").exists() && dir.join("mdnrnn.json").exists();
        (is_run.then(|| RunDir::new(dir)), path.to_path_buf())
    } else {
        anyhow::bail!(
            "unknown policy `{spec}`: not `random` and no such file or folder (known kinds: {})",
            kinds_list()
        );
    };
    let file = ControllerFile::read(&controller_path)
        .with_context(|| format!("policy `{spec}` has no trained controller"))?;
    match run {
        Some(run) => {
            let meta = dataset_meta(&run.data()).with_context(|| {
                format!("policy `{spec}`: the run has no dataset in data/ to say its env")
            })?;
            anyhow::ensure!(
                &meta.action_space == action_space,
                "policy `{spec}` was trained on {} with actions {}; this env's actions are {}",
                meta.env_id,
                meta.action_space,
                action_space
            );
            let wm = load_world_model(&run, &candle_core::Device::Cpu)?;
            check_pixels(observation_space, &wm.vae)
                .with_context(|| format!("policy `{spec}` cannot see this env's observations"))?;
            file.check_fits(&run)?;
            let c = file.controller(&meta)?;
            Ok(Box::new(WorldModelsAgent::new(&wm, &c)?))
        }
        None => {
            let n = observation_space.as_box().map(|b| b.len());
            anyhow::ensure!(
                n == Some(file.inputs),
                "policy `{spec}`: a bare controller takes {} floats, this env observes {}",
                file.inputs,
                observation_space
            );
            Ok(Box::new(dreamgym_policies::LinearController::new(
                file.inputs,
                action_space,
                file.params,
            )?))
        }
    }
}
