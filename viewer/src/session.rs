//! What the viewer shows, without bevy: a live env driven by a policy, or recorded episodes
//! replayed through their env, plus the numbers for the HUD and the agent's pixels.
//!
//! The session only reads env and sim state: a live session takes exactly the steps a headless
//! run with the same seed takes (tested), and a replay re-simulates each recorded episode from
//! its seed and actions, flagging any divergence from the recording.

use std::path::PathBuf;

use anyhow::{Context, bail};
use dreamgym_envs::recording::{Dataset, Episode};
use dreamgym_envs::{Env, Info, Registry, Value};
use dreamgym_sim::{Scene, World};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value as Json;

/// Where the viewer's episodes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A live env stepped by a policy.
    Live {
        /// Env id.
        env: String,
        /// Env config overrides.
        overrides: Option<Json>,
        /// Policy name (`random`).
        policy: String,
        /// Seed of the first episode and of the policy.
        seed: u64,
    },
    /// Episodes recorded by `dreamgym rollout`.
    Replay {
        /// The dataset folder.
        dir: PathBuf,
    },
}

/// A live env or a replay, one step at a time.
pub struct Session {
    env: Box<dyn Env>,
    env_id: String,
    live: bool,
    policy_rng: ChaCha8Rng,
    episodes: Vec<Episode>,
    damaged_chunks: usize,
    episode: usize,
    step: usize,
    episode_return: f64,
    last_reward: f64,
    last_action: Option<Value>,
    obs: Value,
    done: bool,
    diverged: bool,
    has_pixels: bool,
}

/// The env built with pixels added when the env takes an `obs` setting (for the
/// picture-in-picture), else as configured; and whether it observes an image.
fn with_pixels(
    registry: &Registry,
    id: &str,
    overrides: Option<&Json>,
) -> anyhow::Result<(Box<dyn Env>, bool)> {
    let mut o = overrides.cloned().unwrap_or_else(|| serde_json::json!({}));
    if o.get("obs")
        .and_then(Json::as_str)
        .is_none_or(|m| m == "state")
    {
        o["obs"] = "both".into();
    }
    if let Ok(env) = registry.make(id, Some(&o)) {
        return Ok((env, true));
    }
    let env = registry
        .make(id, overrides)
        .with_context(|| format!("cannot build {id}"))?;
    let pixels = has_image(env.observation_space());
    Ok((env, pixels))
}

fn has_image(space: &dreamgym_envs::Space) -> bool {
    match space {
        dreamgym_envs::Space::Box(b) => b.dtype == dreamgym_envs::Dtype::U8 && b.shape.len() == 3,
        dreamgym_envs::Space::Dict(d) => d.spaces.get("pixels").is_some_and(has_image),
        _ => false,
    }
}

impl Session {
    /// Opens a session: builds the env (with pixel observations when the env offers them, for
    /// the picture-in-picture) and resets it.
    pub fn new(source: &Source, registry: &Registry) -> anyhow::Result<Self> {
        match source {
            Source::Live {
                env,
                overrides,
                policy,
                seed,
            } => {
                if policy != "random" {
                    bail!("unknown policy `{policy}`; the viewer knows: random");
                }
                // A bad id or config fails here with the registry's own message.
                let (env_box, has_pixels) = with_pixels(registry, env, overrides.as_ref())?;
                let mut s = Self::with_env(
                    env_box,
                    env,
                    true,
                    has_pixels,
                    ChaCha8Rng::seed_from_u64(*seed),
                );
                s.start(Some(*seed))?;
                Ok(s)
            }
            Source::Replay { dir } => {
                let dataset = Dataset::open(dir)
                    .with_context(|| format!("cannot open the replay {}", dir.display()))?;
                let report = dataset.load();
                if report.episodes.is_empty() {
                    bail!(
                        "{} holds no readable episodes ({} damaged chunks)",
                        dir.display(),
                        report.damaged.len()
                    );
                }
                let meta = dataset.meta();
                let (env, has_pixels) = with_pixels(registry, &meta.env_id, Some(&meta.env_config))
                    .with_context(|| format!("cannot rebuild {} for the replay", meta.env_id))?;
                let mut s = Self::with_env(
                    env,
                    &meta.env_id,
                    false,
                    has_pixels,
                    ChaCha8Rng::seed_from_u64(0),
                );
                s.damaged_chunks = report.damaged.len();
                s.episodes = report.episodes;
                s.start(Some(s.episodes[0].seed))?;
                Ok(s)
            }
        }
    }

    fn with_env(
        env: Box<dyn Env>,
        id: &str,
        live: bool,
        has_pixels: bool,
        policy_rng: ChaCha8Rng,
    ) -> Self {
        Self {
            env,
            env_id: id.to_string(),
            live,
            policy_rng,
            episodes: Vec::new(),
            damaged_chunks: 0,
            episode: 0,
            step: 0,
            episode_return: 0.0,
            last_reward: 0.0,
            last_action: None,
            obs: Value::Int(0),
            done: false,
            diverged: false,
            has_pixels,
        }
    }

    fn start(&mut self, seed: Option<u64>) -> anyhow::Result<()> {
        let (obs, _) = self.env.reset(seed, &Info::new())?;
        self.obs = obs;
        self.step = 0;
        self.episode_return = 0.0;
        self.last_reward = 0.0;
        self.last_action = None;
        self.done = false;
        self.diverged = false;
        Ok(())
    }

    /// Advances one step. Live: a finished episode is followed by a reset (the seeded stream
    /// continues, as in a headless run); replay: a finished episode stays on its last frame.
    pub fn advance(&mut self) -> anyhow::Result<()> {
        if self.done {
            if self.live {
                self.episode += 1;
                return self.start(None);
            }
            return Ok(());
        }
        let action = if self.live {
            self.env.action_space().sample(&mut self.policy_rng)
        } else {
            let e = &self.episodes[self.episode];
            match e.actions.get(self.step) {
                Some(a) => a.clone(),
                None => {
                    self.done = true;
                    return Ok(());
                }
            }
        };
        let step = self.env.step(&action)?;
        self.step += 1;
        self.last_reward = step.reward;
        self.episode_return += step.reward;
        self.done = step.done();
        if !self.live {
            let recorded = &self.episodes[self.episode].observations[self.step];
            if state_part(&step.obs) != state_part(recorded) {
                self.diverged = true;
            }
            if self.step >= self.episodes[self.episode].len() {
                self.done = true;
            }
        }
        self.obs = step.obs;
        self.last_action = Some(action);
        Ok(())
    }

    /// Starts the current episode again (live: a new episode).
    pub fn reset(&mut self) -> anyhow::Result<()> {
        if self.live {
            self.episode += 1;
            self.start(None)
        } else {
            self.seek(0)
        }
    }

    /// Replay: moves to episode `index` (wrapping), at its first step.
    pub fn goto_episode(&mut self, index: isize) -> anyhow::Result<()> {
        if self.live || self.episodes.is_empty() {
            return Ok(());
        }
        let n = self.episodes.len() as isize;
        self.episode = index.rem_euclid(n) as usize;
        self.start(Some(self.episodes[self.episode].seed))
    }

    /// Replay: shows step `t` of the current episode (re-simulated from its seed).
    pub fn seek(&mut self, t: usize) -> anyhow::Result<()> {
        if self.live {
            return Ok(());
        }
        let t = t.min(self.episodes[self.episode].len());
        self.start(Some(self.episodes[self.episode].seed))?;
        while self.step < t && !self.done {
            self.advance()?;
        }
        Ok(())
    }

    /// The env id.
    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    /// Whether this is a live session (not a replay).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Episode index and step within it.
    pub fn position(&self) -> (usize, usize) {
        (self.episode, self.step)
    }

    /// Number of recorded episodes (replay) or `None` (live).
    pub fn episode_count(&self) -> Option<usize> {
        (!self.live).then_some(self.episodes.len())
    }

    /// The current observation.
    pub fn observation(&self) -> &Value {
        &self.obs
    }

    /// The world and its scene, when the env has them.
    pub fn scene(&self) -> Option<(&World, &Scene)> {
        self.env.scene()
    }

    /// The agent's picture: RGB bytes, width, height.
    pub fn pixels(&self) -> Option<(&[u8], usize, usize)> {
        if !self.has_pixels {
            return None;
        }
        fn find<'a>(
            space: &dreamgym_envs::Space,
            v: &'a Value,
        ) -> Option<(&'a [u8], usize, usize)> {
            match (space, v) {
                (dreamgym_envs::Space::Box(b), Value::U8(px)) if b.shape.len() == 3 => {
                    Some((px, b.shape[1], b.shape[0]))
                }
                (dreamgym_envs::Space::Dict(d), Value::Dict(m)) => {
                    find(d.spaces.get("pixels")?, m.get("pixels")?)
                }
                _ => None,
            }
        }
        find(self.env.observation_space(), &self.obs)
    }

    /// The HUD's text.
    pub fn hud(&self, speed: f32, paused: bool) -> String {
        let action = match &self.last_action {
            None => "-".to_string(),
            Some(Value::F32(v)) => format!(
                "[{}]",
                v.iter()
                    .map(|x| format!("{x:+.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(Value::Int(i)) => i.to_string(),
            Some(other) => other.describe(),
        };
        let episode = match self.episode_count() {
            Some(n) => format!("episode {}/{}", self.episode + 1, n),
            None => format!("episode {}", self.episode + 1),
        };
        let mut status = Vec::new();
        if paused {
            status.push("PAUSED".to_string());
        }
        if self.done {
            status.push("episode over".to_string());
        }
        if self.diverged {
            status.push("replay diverged from the recording".to_string());
        }
        if self.damaged_chunks > 0 {
            status.push(format!("{} damaged chunk(s) skipped", self.damaged_chunks));
        }
        let keys = if self.live {
            "space pause | . step | +/- speed | r reset | f follow | drag orbit | wheel zoom | esc quit"
        } else {
            "space pause | . step | +/- speed | r restart | n/p episode | left/right scrub (shift x10) | f follow | esc quit"
        };
        format!(
            "{}  {}  step {}  speed {speed}x  {}\nreward {:+.3}  return {:.3}  action {action}\n{keys}",
            self.env_id,
            episode,
            self.step,
            status.join(" | "),
            self.last_reward,
            self.episode_return,
        )
    }
}

/// The state part of an observation (the whole of it when there is no Dict), for comparing a
/// replay with its recording whatever the obs mode.
fn state_part(v: &Value) -> &Value {
    match v {
        Value::Dict(d) => d.get("state").unwrap_or(v),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(env: &str, seed: u64) -> Session {
        let source = Source::Live {
            env: env.into(),
            overrides: None,
            policy: "random".into(),
            seed,
        };
        Session::new(&source, &Registry::with_builtins()).unwrap()
    }

    #[test]
    fn a_live_session_takes_the_steps_of_a_headless_run() {
        for id in ["CartPole-v0", "Reacher-v0", "Racer-v0"] {
            let mut s = live(id, 5);
            let registry = Registry::with_builtins();
            let mut env = registry.make(id, None).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let (mut obs, _) = env.reset(Some(5), &Info::new()).unwrap();
            for _ in 0..300 {
                assert_eq!(state_part(s.observation()), &obs, "{id}");
                let done_before = s.done;
                s.advance().unwrap();
                if done_before {
                    obs = env.reset(None, &Info::new()).unwrap().0;
                } else {
                    let step = env.step(&env.action_space().sample(&mut rng)).unwrap();
                    obs = step.obs;
                }
            }
            assert!(s.pixels().is_some(), "{id} has a picture for the PiP");
        }
    }

    #[test]
    fn a_replay_reproduces_the_recording_and_scrubs() {
        let dir =
            std::env::temp_dir().join(format!("dreamgym-viewer-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let registry = Registry::with_builtins();
        // Record two Reacher episodes headless.
        let mut env = registry.make("Reacher-v0", None).unwrap();
        let meta = dreamgym_envs::recording::DatasetMeta::new(
            "Reacher-v0",
            registry.resolve_config("Reacher-v0", None).unwrap(),
            env.observation_space().clone(),
            env.action_space().clone(),
            "random",
            Some(1),
        );
        let mut w = dreamgym_envs::recording::EpisodeWriter::create(&dir, meta, Default::default())
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for seed in [11, 12] {
            let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
            let mut e = Episode::new(seed, obs);
            loop {
                let a = env.action_space().sample(&mut rng);
                let s = env.step(&a).unwrap();
                let done = s.done();
                e.push(a, s.obs, s.reward, s.terminated, s.truncated);
                if done {
                    break;
                }
            }
            w.push(e).unwrap();
        }
        w.finish().unwrap();

        let mut s = Session::new(&Source::Replay { dir: dir.clone() }, &registry).unwrap();
        assert_eq!(s.episode_count(), Some(2));
        for _ in 0..60 {
            s.advance().unwrap();
        }
        assert_eq!(s.position(), (0, 50));
        assert!(!s.diverged && s.done);
        s.seek(20).unwrap();
        assert_eq!(s.position(), (0, 20));
        s.goto_episode(-1).unwrap();
        assert_eq!(s.position(), (1, 0));
        s.advance().unwrap();
        assert!(!s.diverged);
        assert!(s.hud(1.0, false).contains("episode 2/2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_sources_are_clear_errors() {
        let registry = Registry::with_builtins();
        let err = Session::new(
            &Source::Live {
                env: "Nope-v0".into(),
                overrides: None,
                policy: "random".into(),
                seed: 0,
            },
            &registry,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("CartPole-v0"));
        let err = Session::new(
            &Source::Replay {
                dir: "/nonexistent/replay".into(),
            },
            &registry,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("cannot open the replay"));
        let empty =
            std::env::temp_dir().join(format!("dreamgym-viewer-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("dataset.json"), "{not json").unwrap();
        let err = Session::new(&Source::Replay { dir: empty.clone() }, &registry)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not valid"), "{err:#}");
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
