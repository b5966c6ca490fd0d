//! Policies from specs: `random`, `expert`, a World Models or Decision Transformer run folder,
//! or a checkpoint file, with action noise (`<spec>~<noise>`) and per-episode mixtures
//! (`<spec> | <spec> | ...`). The CLI, the experiment runner and the viewer all load policies
//! here.

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
        spec: "brownian[:<step>]",
        description: "random play as a walk: a uniform first action, then Gaussian steps of <step> half-ranges (default 0.141), clipped; holds turns and speed as uniform draws rarely do (bounded Box actions)",
    },
    PolicyKind {
        spec: "expert",
        description: "the env's scripted expert (CartPole-v0: state feedback; Reacher-v0: inverse kinematics + PD; Tabletop-v0 in language mode: the scripted planner)",
    },
    PolicyKind {
        spec: "<spec>~<noise>",
        description: "that policy with action noise: Gaussian with std <noise> half-ranges on a bounded Box (clipped), a random action with probability <noise> on Discrete",
    },
    PolicyKind {
        spec: "<spec> | <spec> | ...",
        description: "one of the policies per episode, drawn from the episode's seed (repeat one to weight it), e.g. `expert | expert~0.5 | random`",
    },
    PolicyKind {
        spec: "<run folder>",
        description: "a trained World Models run (vae, mdnrnn, controller.json): V encodes each frame, C acts on [z, h], M carries h; pixel observations",
    },
    PolicyKind {
        spec: "<run folder>@<target return>",
        description: "a trained Decision Transformer run (dt.json): acts on float observations, or on pixels through the V it was trained with, aiming at the target return (without @target: the best return in its dataset)",
    },
    PolicyKind {
        spec: "<run folder>",
        description: "a fine-tuned language model run (lm.json): writes action-language commands for Tabletop-v0 in mode = \"language\" (greedy decoding)",
    },
    PolicyKind {
        spec: "<path>.gguf",
        description: "a pretrained Llama-family model in a GGUF file (SmolLM2-135M-Instruct: scripts/fetch-smollm2.sh), zero-shot on Tabletop-v0's language mode with the action language in its system prompt",
    },
    PolicyKind {
        spec: "<folder with config.json>",
        description: "a pretrained Llama-family model in Hugging Face's layout (config.json, model.safetensors, tokenizer.json), zero-shot like a GGUF file",
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

/// The parts of a mixture `a | b | c` (None for a spec without `|` or one that is a path);
/// an empty part is an error.
fn mixture_parts(spec: &str) -> anyhow::Result<Option<Vec<&str>>> {
    if !spec.contains('|') || Path::new(spec).exists() {
        return Ok(None);
    }
    let parts: Vec<&str> = spec.split('|').map(str::trim).collect();
    anyhow::ensure!(
        parts.iter().all(|p| !p.is_empty()),
        "policy `{spec}`: an empty part in the mixture"
    );
    Ok(Some(parts))
}

/// The error for `expert` on an env without one.
fn no_expert(env_id: &str) -> anyhow::Error {
    let experts: Vec<&str> = dreamgym_policies::EXPERTS
        .iter()
        .map(|(id, _)| *id)
        .collect();
    anyhow::anyhow!(
        "{env_id} has no scripted expert (experts: {})",
        experts.join(", ")
    )
}

/// Splits `<spec>~<noise>` (None for a spec without it or one that is a path).
fn noise_suffix(spec: &str) -> anyhow::Result<Option<(&str, f64)>> {
    let Some((inner, noise)) = spec.rsplit_once('~') else {
        return Ok(None);
    };
    if Path::new(spec).exists() || inner.trim().is_empty() {
        return Ok(None);
    }
    let n: f64 = noise.trim().parse().map_err(|_| {
        anyhow::anyhow!("policy `{spec}`: `{noise}` after ~ is not an action-noise level")
    })?;
    anyhow::ensure!(
        n.is_finite() && n >= 0.0,
        "policy `{spec}`: the action noise must be a number >= 0"
    );
    Ok(Some((inner.trim(), n)))
}

/// The step of a `brownian` or `brownian:<step>` spec (None for any other spec).
fn brownian_step(spec: &str) -> anyhow::Result<Option<f64>> {
    let Some(rest) = spec.strip_prefix("brownian") else {
        return Ok(None);
    };
    if Path::new(spec).exists() {
        return Ok(None);
    }
    if rest.is_empty() {
        return Ok(Some(dreamgym_policies::BrownianPolicy::DEFAULT_SIGMA));
    }
    let Some(step) = rest.strip_prefix(':') else {
        return Ok(None);
    };
    match step.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => anyhow::bail!(
            "`{spec}`: the random walk's step must be a number > 0 (in half-ranges), e.g. \
             brownian:0.2"
        ),
    }
}

/// Checks that a spec names a policy that could load on `env_id`, without loading models (for
/// config validation).
pub fn check_policy_spec(spec: &str, env_id: &str) -> anyhow::Result<()> {
    if let Some(parts) = mixture_parts(spec)? {
        for part in parts {
            check_policy_spec(part, env_id)?;
        }
        return Ok(());
    }
    if let Some((inner, _)) = noise_suffix(spec)? {
        return check_policy_spec(inner, env_id);
    }
    if spec == "random" {
        return Ok(());
    }
    if brownian_step(spec)?.is_some() {
        return Ok(());
    }
    if spec == "expert" {
        if !dreamgym_policies::EXPERTS
            .iter()
            .any(|(id, _)| *id == env_id)
        {
            return Err(no_expert(env_id));
        }
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
    let encoder = crate::decision_transformer::saved_encoder(&state)
        .with_context(|| format!("policy `{spec}` reads pixels through V"))?;
    match &encoder {
        Some(e) => e
            .check(observation_space)
            .with_context(|| format!("policy `{spec}` cannot see this env's observations"))?,
        None => match model.spec().image {
            Some([h, w, c]) => anyhow::ensure!(
                dreamgym_policies::DtSpec::image_of(observation_space) == Some([h, w, c]),
                "policy `{spec}` reads {h}x{w}x{c} images (obs = \"pixels\", width = {w}, \
                 height = {h}); this env observes {observation_space}"
            ),
            None => {
                let fits_obs = observation_space
                    .as_box()
                    .is_some_and(|b| b.shape.len() == 1 && b.len() == model.spec().obs_dim());
                anyhow::ensure!(
                    fits_obs,
                    "policy `{spec}` takes {} floats per observation; this env observes {}",
                    model.spec().obs_dim(),
                    observation_space
                );
            }
        },
    }
    anyhow::ensure!(
        dreamgym_policies::DtAction::of(action_space).ok().as_ref() == Some(&model.spec().action),
        "policy `{spec}` was trained on other actions than this env's {action_space}"
    );
    crate::decision_transformer::dt_policy(std::sync::Arc::new(model), target, encoder.as_ref())
}

/// Loads the policy `spec` for env `env_id` with these spaces. `seed` seeds the policy's own
/// randomness (random actions, action noise, a mixture's draws).
pub fn load_policy(
    spec: &str,
    env_id: &str,
    observation_space: &Space,
    action_space: &Space,
    seed: u64,
) -> anyhow::Result<Box<dyn Policy>> {
    if let Some(parts) = mixture_parts(spec)? {
        // Parts that differ only in their action noise (`agent | agent~0.1 | agent~0.3`, a
        // rounds' noise list) load `agent` once and each take a fork of it: the weights are
        // shared, the episode state is not. Random, Brownian and noisy policies are seeded
        // when made, so each of those parts is made with its own seed, as before.
        let mut models: std::collections::HashMap<&str, Box<dyn Policy>> = Default::default();
        let mut loaded = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let s = dreamgym_base::derive_seed(seed, "policy.mixture.part", i as u64);
            let in_mixture = || format!("in the mixture `{spec}`");
            let (inner, noise) = match noise_suffix(part)? {
                Some((inner, noise)) => (inner, Some(noise)),
                None => (*part, None),
            };
            let seeded = inner == "random"
                || brownian_step(inner)?.is_some()
                || noise_suffix(inner)?.is_some();
            if seeded {
                loaded.push(
                    load_policy(part, env_id, observation_space, action_space, s)
                        .with_context(in_mixture)?,
                );
                continue;
            }
            let base = match models.get(inner) {
                Some(model) => model.fork(),
                None => {
                    let model = load_policy(inner, env_id, observation_space, action_space, s)
                        .with_context(in_mixture)?;
                    let base = model.fork();
                    models.insert(inner, model);
                    base
                }
            };
            loaded.push(match noise {
                Some(noise) => Box::new(
                    dreamgym_policies::NoisyPolicy::new(base, action_space.clone(), noise, s)
                        .with_context(in_mixture)?,
                ),
                None => base,
            });
        }
        return Ok(Box::new(dreamgym_policies::MixturePolicy::new(
            loaded, seed,
        )?));
    }
    if let Some((inner, noise)) = noise_suffix(spec)? {
        let policy = load_policy(inner, env_id, observation_space, action_space, seed)?;
        return Ok(Box::new(dreamgym_policies::NoisyPolicy::new(
            policy,
            action_space.clone(),
            noise,
            seed,
        )?));
    }
    if spec == "random" {
        return Ok(Box::new(RandomPolicy::new(action_space.clone(), seed)));
    }
    if let Some(step) = brownian_step(spec)? {
        return Ok(Box::new(dreamgym_policies::BrownianPolicy::new(
            action_space.clone(),
            step,
            seed,
        )?));
    }
    if spec == "expert" {
        return dreamgym_policies::expert_for(env_id, observation_space, action_space)?
            .ok_or_else(|| no_expert(env_id));
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
    let pretrained = dreamgym_policies::language::is_pretrained(path);
    if pretrained
        || (path.is_dir()
            && path.join("lm.json").exists()
            && !path.join("controller.json").exists())
    {
        anyhow::ensure!(
            dreamgym_policies::language::is_text_space(observation_space)
                && matches!(action_space, Space::Text(_)),
            "policy `{spec}` is a language model: it reads text and writes text (Tabletop-v0 \
             with mode = \"language\"); this env observes {observation_space} and acts in \
             {action_space}"
        );
        if pretrained {
            return crate::language::load_pretrained_policy(path, false)
                .with_context(|| format!("policy `{spec}`"));
        }
        return crate::language::load_language_policy(&RunDir::new(path), false);
    }
    if path.is_dir() && !path.join("controller.json").exists() && path.join("dt.json").exists() {
        return load_dt(spec, path, None, observation_space, action_space);
    }
    let (run, controller_path) = if path.is_dir() {
        anyhow::ensure!(
            path.join("controller.json").exists(),
            "policy `{spec}`: the folder holds no trained policy (none of controller.json: World \
             Models, dt.json: Decision Transformer, lm.json: language model)"
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_envs::{BoxSpace, Discrete};

    fn reacher_spaces() -> (Space, Space) {
        (
            Space::Box(BoxSpace::uniform(
                vec![10],
                f32::NEG_INFINITY,
                f32::INFINITY,
            )),
            Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0)),
        )
    }

    #[test]
    fn mixtures_and_noise_load_and_describe_their_parts() {
        let (obs, act) = reacher_spaces();
        let spec = "expert | expert~0.5 | random";
        check_policy_spec(spec, "Reacher-v0").unwrap();
        let mut p = load_policy(spec, "Reacher-v0", &obs, &act, 3).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..30 {
            p.reset(seed).unwrap();
            seen.insert(p.describe());
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().any(|d| d.contains("action noise 0.5")),
            "{seen:?}"
        );
    }

    #[test]
    fn parts_that_share_an_agent_act_as_if_each_were_loaded_alone() {
        let (obs, act) = reacher_spaces();
        let spec = "expert | expert~0.1 | expert~0.3 | random";
        let mut mixture = load_policy(spec, "Reacher-v0", &obs, &act, 11).unwrap();
        let mut alone: Vec<Box<dyn Policy>> = ["expert", "expert~0.1", "expert~0.3", "random"]
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let s = dreamgym_base::derive_seed(11, "policy.mixture.part", i as u64);
                load_policy(part, "Reacher-v0", &obs, &act, s).unwrap()
            })
            .collect();
        let mut e = dreamgym_envs::Registry::with_builtins()
            .make("Reacher-v0", None)
            .unwrap();
        let mut used = std::collections::BTreeSet::new();
        for episode in 0..20 {
            mixture.reset(episode).unwrap();
            let which = alone
                .iter()
                .position(|p| {
                    mixture
                        .describe()
                        .contains(&format!("now {} (", p.describe()))
                })
                .unwrap();
            used.insert(which);
            let part = &mut alone[which];
            part.reset(episode).unwrap();
            let (mut o, _) = e.reset(Some(episode), &Default::default()).unwrap();
            for _ in 0..5 {
                let a = mixture.act(&o).unwrap();
                assert_eq!(a, part.act(&o).unwrap(), "episode {episode}");
                o = e.step(&a).unwrap().obs;
            }
        }
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        let (obs, act) = reacher_spaces();
        let msg = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());
        assert!(msg(check_policy_spec("expert", "Racer-v0")).contains("no scripted expert"));
        assert!(
            msg(check_policy_spec("expert~lots", "Reacher-v0")).contains("not an action-noise")
        );
        assert!(msg(check_policy_spec("expert~-1", "Reacher-v0")).contains(">= 0"));
        assert!(msg(check_policy_spec("expert | ", "Reacher-v0")).contains("empty part"));
        assert!(
            msg(check_policy_spec("random | nowhere/at/all", "Reacher-v0"))
                .contains("unknown policy")
        );
        // Discrete noise is a probability.
        let cart_obs = Space::Box(BoxSpace::uniform(vec![4], f32::NEG_INFINITY, f32::INFINITY));
        let two = Space::Discrete(Discrete::new(2));
        assert!(load_policy("expert~0.3", "CartPole-v0", &cart_obs, &two, 0).is_ok());
        let err = load_policy("expert~2", "CartPole-v0", &cart_obs, &two, 0)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("probability"), "{err:#}");
        // The expert refuses the wrong observations (pixels) with the env's name.
        let pixels = Space::Box(BoxSpace::image(64, 64, 3));
        let err = load_policy("expert", "Reacher-v0", &pixels, &act, 0)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("10 state floats"), "{err:#}");
        // An empty folder names every kind of trained policy it could have held.
        let empty = tempfile::tempdir().unwrap();
        let spec = empty.path().to_str().unwrap();
        let err = load_policy(spec, "Reacher-v0", &obs, &act, 0)
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        for name in ["controller.json", "dt.json", "lm.json"] {
            assert!(msg.contains(name), "{msg}");
        }
    }
}
