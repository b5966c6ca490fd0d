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
        spec: "<run folder>@<target return>",
        description: "a trained Decision Transformer run (dt.json): acts on float observations, aiming at the target return (without @target: the best return in its dataset)",
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
    let spec = match dt_target(spec)? {
        Some((folder, _)) => folder,
        None => spec,
    };
    let path = Path::new(spec);
    anyhow::ensure!(
        path.exists(),
        "unknown policy `{spec}`: not `random` and no such file or folder (known kinds: {})",
        kinds_list()
    );
    Ok(())
}

/// Splits `<folder>@<target>` (a Decision Transformer run and its target return).
fn dt_target(spec: &str) -> anyhow::Result<Option<(&str, f64)>> {
    let Some((folder, target)) = spec.rsplit_once('@') else {
        return Ok(None);
    };
    if Path::new(spec).exists() {
        return Ok(None);
    }
    let t: f64 = target.parse().map_err(|_| {
        anyhow::anyhow!("policy `{spec}`: `{target}` after @ is not a target return")
    })?;
    anyhow::ensure!(
        t.is_finite(),
        "policy `{spec}`: the target return must be finite"
    );
    Ok(Some((folder, t)))
}

/// The Decision Transformer of run folder `folder`, aiming at `target` (default: the best
/// return in the dataset it was trained on).
fn load_dt(
    spec: &str,
    folder: &Path,
    target: Option<f64>,
    observation_space: &Space,
    action_space: &Space,
) -> anyhow::Result<Box<dyn Policy>> {
    let run = RunDir::new(folder);
    let stem = run.checkpoint(crate::decision_transformer::DT_CHECKPOINT);
    let (_, state): (dreamgym_policies::DtCheckpointConfig, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(&stem, dreamgym_policies::DT_CHECKPOINT_KIND)
            .with_context(|| format!("policy `{spec}` has no trained Decision Transformer"))?;
    let target = match target.or_else(|| state.get("dataset_best_return").and_then(|v| v.as_f64()))
    {
        Some(t) => t,
        None => anyhow::bail!("policy `{spec}`: give a target return as `{spec}@<target>`"),
    };
    let model = dreamgym_policies::DecisionTransformer::load(&stem, &candle_core::Device::Cpu)?;
    let fits_obs = observation_space
        .as_box()
        .is_some_and(|b| b.shape.len() == 1 && b.len() == model.spec().obs_dim());
    anyhow::ensure!(
        fits_obs,
        "policy `{spec}` takes {} floats per observation; this env observes {}",
        model.spec().obs_dim(),
        observation_space
    );
    anyhow::ensure!(
        dreamgym_policies::DtAction::of(action_space).ok().as_ref() == Some(&model.spec().action),
        "policy `{spec}` was trained on other actions than this env's {action_space}"
    );
    Ok(Box::new(dreamgym_policies::DtPolicy::new(
        std::sync::Arc::new(model),
        target,
    )?))
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
    if let Some((folder, target)) = dt_target(spec)? {
        return load_dt(
            spec,
            Path::new(folder),
            Some(target),
            observation_space,
            action_space,
        );
    }
    let path = Path::new(spec);
    if path.is_dir() && !path.join("controller.json").exists() && path.join("dt.json").exists() {
        return load_dt(spec, path, None, observation_space, action_space);
    }
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
