//! The `[world_models]` section of an experiment config.

use dreamgym_policies::CmaEsConfig;
use dreamgym_world_model::{DreamConfig, MdnRnnConfig, VaeConfig};
use serde::{Deserialize, Serialize};

/// Everything after data collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldModelsConfig {
    /// `cpu`, or `cuda` / `cuda:N` with the `cuda` feature.
    pub device: String,
    /// Seed of initialisation, shuffling and sampling.
    pub seed: u64,
    /// V and its training.
    pub vae: VaeStage,
    /// M and its training.
    pub mdnrnn: MdnStage,
    /// C and CMA-ES.
    pub controller: ControllerStage,
    /// Final evaluation.
    pub eval: EvalStage,
    /// The paper's iterative procedure: rounds of collect with C, retrain M, retrain C.
    pub iterate: IterateStage,
}

impl Default for WorldModelsConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            seed: 0,
            vae: VaeStage::default(),
            mdnrnn: MdnStage::default(),
            controller: ControllerStage::default(),
            eval: EvalStage::default(),
            iterate: IterateStage::default(),
        }
    }
}

/// V's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeStage {
    /// Architecture (the paper's by default).
    pub model: VaeConfig,
    /// Passes over the frames.
    pub epochs: usize,
    /// Frames per minibatch (the paper: 100).
    pub batch_size: usize,
    /// Adam's learning rate (the paper: 1e-4).
    pub lr: f64,
}

impl Default for VaeStage {
    fn default() -> Self {
        Self {
            model: VaeConfig::default(),
            epochs: 10,
            batch_size: 100,
            lr: 1e-4,
        }
    }
}

/// M's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdnStage {
    /// Architecture; `z_size` and `action_size` are taken from V and the env.
    pub model: MdnRnnConfig,
    /// Passes over the sequences.
    pub epochs: usize,
    /// Sequences per minibatch (the paper: 100).
    pub batch_size: usize,
    /// Steps per training sequence (the paper: 999; shorter episodes are skipped).
    pub seq_len: usize,
    /// Adam's learning rate (the paper: 1e-3).
    pub lr: f64,
    /// Gradient clipping by value (the paper: 1.0).
    pub grad_clip: f64,
    /// Fraction of the episodes held out of M's training (every n-th, n = 1 / fraction), on
    /// which its reward and done heads are measured and calibrated (`calibration.json`).
    pub held_out: f64,
    /// Ms trained on the same episodes from different seeds (1: only the run's own M). The
    /// others live in `ensemble/<k>/`; where they disagree, M is guessing
    /// (`controller.dream.halt_quantile`).
    #[serde(skip_serializing_if = "is_one")]
    pub ensemble: usize,
}

// Left out of the serialized config while 1 (its value before it existed).
fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for MdnStage {
    fn default() -> Self {
        Self {
            model: MdnRnnConfig::default(),
            epochs: 20,
            batch_size: 100,
            seq_len: 100,
            lr: 1e-3,
            grad_clip: 1.0,
            held_out: 0.0,
            ensemble: 1,
        }
    }
}

/// C's training with CMA-ES.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerStage {
    /// Train in M's dream instead of the real env.
    pub in_dream: bool,
    /// CMA-ES generations.
    pub generations: usize,
    /// CMA-ES settings (the paper: population 64, sigma0 0.1).
    pub cmaes: CmaEsConfig,
    /// Rollouts averaged per candidate (the paper: 16).
    pub rollouts: usize,
    /// Step limit of each rollout.
    pub max_steps: u64,
    /// Threads evaluating candidates.
    pub workers: usize,
    /// The dream's settings (temperature, done threshold).
    pub dream: DreamConfig,
    /// Every this many generations, and after the last, CMA-ES's mean is scored on
    /// `select_rollouts` episodes (the same seeds every time, none of them a training seed),
    /// and C is the mean that scored best: the paper's procedure. 0: C is the candidate with
    /// the best training fitness of any generation, a mean over `rollouts` episodes that the
    /// search picked for being high, and so an overestimate.
    #[serde(skip_serializing_if = "is_zero")]
    pub select_every: usize,
    /// Episodes each selection scores CMA-ES's mean on.
    #[serde(skip_serializing_if = "is_zero")]
    pub select_rollouts: usize,
}

// Settings added later are left out of the serialized config while unset, so that runs and
// checkpoints made before them still match it.
fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Default for ControllerStage {
    fn default() -> Self {
        Self {
            in_dream: false,
            generations: 100,
            cmaes: CmaEsConfig {
                population: 64,
                sigma0: 0.1,
                seed: 0,
            },
            rollouts: 16,
            max_steps: 1000,
            workers: 2,
            dream: DreamConfig::default(),
            select_every: 0,
            select_rollouts: 0,
        }
    }
}

/// The final evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalStage {
    /// Episodes (seeds) for the trained controller and for the random baseline.
    pub episodes: usize,
    /// First evaluation seed (distinct from the training seeds by default).
    pub seed: u64,
    /// Step limit per episode.
    pub max_steps: u64,
}

impl Default for EvalStage {
    fn default() -> Self {
        Self {
            episodes: 100,
            seed: 1_000_000,
            max_steps: 1000,
        }
    }
}

/// The iterative training procedure of the paper (section 5): after the first C, each round
/// records episodes with the latest agent (V, M and C), trains M further on every episode
/// recorded so far, trains C again (in the dream when `controller.in_dream`, starting from the
/// last C), and evaluates it in the real env and in the dream. Round `r` is a run folder of its
/// own, `<run>/rounds/<r>`; `rounds.md` compares them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IterateStage {
    /// Rounds after the first C (0: off).
    pub rounds: usize,
    /// Episodes the latest agent records in each round.
    pub episodes: usize,
    /// Action noise of the recording agent (`<run>~<noise>`: Gaussian, in half-ranges of the
    /// action space); 0 records the agent as it acts. A list of levels (`[0.1, 0.5]`) records
    /// each episode with one of them, drawn from the episode's seed (`<run>~0.1 | <run>~0.5`):
    /// M then also sees what lies beside the agent's path.
    pub noise: ActionNoise,
    /// Epochs of M's training in each round, over every episode recorded so far, starting
    /// from the last round's M.
    pub mdnrnn_epochs: usize,
    /// CMA-ES generations in each round, starting from the last round's C.
    pub generations: usize,
    /// After the last round, its C records `episodes` episodes more (the next round's, in
    /// `rounds/<rounds + 1>/data`, so more rounds later reuse them), and the run's chosen C is
    /// the C whose recorded episodes returned most in the real env (each round's C records the
    /// next round's): marked in `rounds.json` and `rounds.md`. C still learns only in the
    /// dream (or wherever `controller.in_dream` says): the real returns come from episodes the
    /// procedure records anyway, and only choose among Cs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub choose_best: bool,
    /// Each round's CMA-ES starts from the C whose recorded episodes returned most so far
    /// instead of the last C.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub start_from_best: bool,
}

impl Default for IterateStage {
    fn default() -> Self {
        Self {
            rounds: 0,
            episodes: 32,
            noise: ActionNoise::Level(0.1),
            mdnrnn_epochs: 10,
            generations: 20,
            choose_best: false,
            start_from_best: false,
        }
    }
}

/// The recording agent's action noise in a round: one level for every episode, or one level
/// per episode drawn from several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionNoise {
    /// The same level in every episode.
    Level(f64),
    /// One of these levels in each episode (repeat one to weight it).
    Mixture(Vec<f64>),
}

impl ActionNoise {
    /// The levels (one for `Level`).
    pub fn levels(&self) -> &[f64] {
        match self {
            Self::Level(v) => std::slice::from_ref(v),
            Self::Mixture(v) => v,
        }
    }

    /// The policy spec of `agent` with this noise: `<agent>~<level>` (the agent alone for 0),
    /// a per-episode mixture of those for several levels.
    pub fn spec(&self, agent: &str) -> String {
        let part = |level: f64| {
            if level > 0.0 {
                format!("{agent}~{level}")
            } else {
                agent.to_string()
            }
        };
        self.levels()
            .iter()
            .map(|&l| part(l))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.levels().is_empty(),
            "iterate.noise: an empty list (give one level, or several to draw one per episode)"
        );
        for &l in self.levels() {
            anyhow::ensure!(
                l.is_finite() && l >= 0.0,
                "iterate.noise must be a number >= 0, or a list of them (got {l})"
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for ActionNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Level(v) => write!(f, "{v}"),
            Self::Mixture(v) => {
                let levels: Vec<String> = v.iter().map(|l| l.to_string()).collect();
                match levels.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        write!(f, "{} or {last}, one per episode", rest.join(", "))
                    }
                    _ => write!(f, "{}", levels.join("")),
                }
            }
        }
    }
}

impl WorldModelsConfig {
    /// Checks ranges and that the parts fit together, naming the first bad field.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.vae.model.validate()?;
        anyhow::ensure!(self.vae.epochs >= 1, "vae.epochs must be at least 1");
        anyhow::ensure!(
            self.vae.batch_size >= 1,
            "vae.batch_size must be at least 1"
        );
        anyhow::ensure!(self.vae.lr > 0.0, "vae.lr must be positive");
        // z_size and action_size come from V and the env; check the rest of M's model now.
        let mut m = self.mdnrnn.model.clone();
        m.z_size = self.vae.model.z_size;
        m.action_size = m.action_size.max(1);
        m.validate()?;
        self.controller
            .cmaes
            .validate()
            .map_err(|e| anyhow::anyhow!("controller.{e}"))?;
        anyhow::ensure!(self.mdnrnn.epochs >= 1, "mdnrnn.epochs must be at least 1");
        anyhow::ensure!(
            self.mdnrnn.batch_size >= 1,
            "mdnrnn.batch_size must be at least 1"
        );
        anyhow::ensure!(
            self.mdnrnn.seq_len >= 1,
            "mdnrnn.seq_len must be at least 1"
        );
        anyhow::ensure!(self.mdnrnn.lr > 0.0, "mdnrnn.lr must be positive");
        anyhow::ensure!(
            self.mdnrnn.grad_clip > 0.0,
            "mdnrnn.grad_clip must be positive"
        );
        anyhow::ensure!(
            (0.0..=0.5).contains(&self.mdnrnn.held_out),
            "mdnrnn.held_out must be a fraction in 0..=0.5"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.mdnrnn.ensemble),
            "mdnrnn.ensemble must be in 1..=16"
        );
        let dream = &self.controller.dream;
        anyhow::ensure!(
            (0.0..1.0).contains(&dream.halt_quantile) && dream.halt_reward.is_finite(),
            "controller.dream.halt_quantile must be a fraction in 0..1 (0: off) and \
             controller.dream.halt_reward a number"
        );
        if dream.halt_quantile > 0.0 {
            anyhow::ensure!(
                self.mdnrnn.ensemble >= 2 && self.mdnrnn.held_out > 0.0,
                "controller.dream.halt_quantile needs an ensemble of Ms (mdnrnn.ensemble >= 2) \
                 and episodes held out of their training to measure their disagreement on \
                 (mdnrnn.held_out, e.g. 0.1)"
            );
        }
        anyhow::ensure!(
            !dream.ensemble_dynamics || dream.halt_quantile > 0.0,
            "controller.dream.ensemble_dynamics draws each dream episode's model from the \
             ensemble the dream halts with: set controller.dream.halt_quantile too (e.g. 0.99)"
        );
        if self.controller.dream.calibrated {
            anyhow::ensure!(
                self.mdnrnn.held_out > 0.0,
                "controller.dream.calibrated needs episodes held out of M's training to \
                 calibrate on: set mdnrnn.held_out (e.g. 0.1)"
            );
            anyhow::ensure!(
                self.mdnrnn.model.reward_head && self.mdnrnn.model.done_head,
                "controller.dream.calibrated needs M's reward and done heads"
            );
        }
        anyhow::ensure!(
            self.controller.generations >= 1,
            "controller.generations must be at least 1"
        );
        anyhow::ensure!(
            self.controller.rollouts >= 1,
            "controller.rollouts must be at least 1"
        );
        anyhow::ensure!(
            self.controller.max_steps >= 1,
            "controller.max_steps must be at least 1"
        );
        anyhow::ensure!(
            (1..=256).contains(&self.controller.workers),
            "controller.workers must be in 1..=256"
        );
        anyhow::ensure!(
            (self.controller.select_every == 0) == (self.controller.select_rollouts == 0),
            "controller.select_every and controller.select_rollouts go together: both 0 (C is \
             the best candidate by its training fitness) or both at least 1"
        );
        anyhow::ensure!(self.eval.episodes >= 1, "eval.episodes must be at least 1");
        anyhow::ensure!(
            self.eval.max_steps >= 1,
            "eval.max_steps must be at least 1"
        );
        let it = &self.iterate;
        if it.rounds > 0 {
            anyhow::ensure!(it.episodes >= 1, "iterate.episodes must be at least 1");
            it.noise.validate()?;
            anyhow::ensure!(
                it.mdnrnn_epochs >= 1,
                "iterate.mdnrnn_epochs must be at least 1"
            );
            anyhow::ensure!(
                it.generations >= 1,
                "iterate.generations must be at least 1"
            );
            anyhow::ensure!(it.rounds <= 1000, "iterate.rounds must be at most 1000");
        }
        dreamgym_world_model::device(&self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iterate(toml_text: &str) -> anyhow::Result<IterateStage> {
        let it: IterateStage = toml::from_str(toml_text)?;
        let cfg = WorldModelsConfig {
            iterate: it.clone(),
            ..Default::default()
        };
        cfg.validate()?;
        Ok(it)
    }

    #[test]
    fn round_noise_is_one_level_or_one_level_per_episode() {
        let one = iterate("rounds = 1\nnoise = 0.2").unwrap();
        assert_eq!(one.noise, ActionNoise::Level(0.2));
        assert_eq!(one.noise.spec("runs/a"), "runs/a~0.2");
        // A single level is written as it was before lists existed, so old runs still match.
        assert_eq!(serde_json::to_string(&one.noise).unwrap(), "0.2");
        let zero = iterate("rounds = 1\nnoise = 0").unwrap();
        assert_eq!(zero.noise.spec("runs/a"), "runs/a");
        let mix = iterate("rounds = 1\nnoise = [0, 0.1, 0.5]").unwrap();
        assert_eq!(mix.noise, ActionNoise::Mixture(vec![0.0, 0.1, 0.5]));
        assert_eq!(mix.noise.spec("runs/a"), "runs/a | runs/a~0.1 | runs/a~0.5");
        assert_eq!(mix.noise.to_string(), "0, 0.1 or 0.5, one per episode");
        assert_eq!(ActionNoise::Mixture(vec![0.2]).to_string(), "0.2");
        // Several are written as a list.
        assert_eq!(serde_json::to_string(&mix.noise).unwrap(), "[0.0,0.1,0.5]");
        for (bad, says) in [
            ("noise = []", "an empty list"),
            ("noise = [0.1, -1]", "got -1"),
            ("noise = -0.5", ">= 0"),
            ("noise = \"lots\"", "noise"),
        ] {
            let err = format!("{:#}", iterate(&format!("rounds = 1\n{bad}")).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
