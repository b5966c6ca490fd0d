//! What the viewer shows, without bevy: a live env driven by a policy, or recorded episodes
//! replayed through their env, plus the numbers for the HUD and the agent's pixels.
//!
//! (Over 600 lines: about 220 are unit tests that need the session's private state.)
//!
//! The session only reads env and sim state: a live session takes exactly the steps a headless
//! run with the same seed takes (tested), and a replay re-simulates each recorded episode from
//! its seed and actions, flagging any divergence from the recording.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use dreamgym_agents::RunDir;
use dreamgym_agents::world_models::{LoadedRun, WorldModel, WorldModelsAgent, frame_of, load_run};
use dreamgym_envs::recording::{Dataset, Episode};
use dreamgym_envs::{Env, Info, Motion, Registry, Value};

use crate::labeling::MOTION_EVERY;
use dreamgym_policies::{Policy, RandomPolicy};
use dreamgym_sim::{Scene, World};
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
        /// Policy spec: `random`, a run folder or a controller file (`dreamgym policies`).
        policy: String,
        /// Seed of the first episode and of the policy.
        seed: u64,
        /// A World Models run folder: C drives (random actions if it has no C yet) and V's
        /// reconstruction of each frame is shown beside it.
        world_model: Option<PathBuf>,
    },
    /// M's dream of a World Models run, decoded to images by V; C drives when trained.
    Dream {
        /// The run folder.
        run: PathBuf,
        /// Seed of the first dream.
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
    /// What acts in a live session (none in a replay).
    policy: Option<Box<dyn Policy>>,
    /// The session's seed: the fallback episode seeds derive from it.
    seed: u64,
    /// Whether the policy is a trained controller (not random).
    trained: bool,
    episodes: Vec<Episode>,
    damaged_chunks: usize,
    episode: usize,
    step: usize,
    episode_return: f64,
    last_reward: f64,
    last_action: Option<Value>,
    obs: Value,
    done: bool,
    /// The language env's verdict on a finished episode (its `success` info).
    verdict: Option<bool>,
    diverged: bool,
    has_pixels: bool,
    world: Option<WorldModelView>,
    /// The env keeps each step's motion (a language command's skills): the poses of the last
    /// step, and how many of them have been shown.
    smooth: bool,
    frames: Vec<Motion>,
    shown: usize,
}

/// V and M attached to a session, for their pictures.
struct WorldModelView {
    wm: WorldModel,
    /// V's picture: the reconstruction of the frame (live) or the dream's decoded latent.
    picture: Vec<u8>,
    side: usize,
    dream: bool,
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
                world_model,
            } => {
                // A bad id or config fails here with the registry's own message.
                let (mut env_box, mut has_pixels) = with_pixels(registry, env, overrides.as_ref())?;
                let load = |e: &dyn Env| {
                    dreamgym_agents::load_policy(
                        policy,
                        env,
                        e.observation_space(),
                        e.action_space(),
                        *seed,
                    )
                };
                let loaded = match load(env_box.as_ref()) {
                    Ok(p) => p,
                    Err(first) => {
                        // A policy for the env's own observations (a controller on state
                        // vectors) cannot read the pixels added for the picture-in-picture:
                        // fall back to the env as configured.
                        let plain = registry
                            .make(env, overrides.as_ref())
                            .with_context(|| format!("cannot build {env}"))?;
                        let p = load(plain.as_ref())
                            .map_err(|_| first)
                            .with_context(|| format!("cannot use policy `{policy}` on {env}"))?;
                        has_pixels = has_image(plain.observation_space());
                        env_box = plain;
                        p
                    }
                };
                let obs_space = env_box.observation_space().clone();
                let mut s = Self::with_env(env_box, env, true, has_pixels);
                s.seed = *seed;
                s.policy = Some(loaded);
                s.trained = policy != "random";
                if let Some(run) = world_model {
                    let LoadedRun { wm, controller, .. } = load_run(&RunDir::new(run))?;
                    dreamgym_agents::world_models::check_pixels(&obs_space, &wm.vae)
                        .with_context(|| format!("{} does not fit {env}", run.display()))?;
                    // The run's C drives, unless another policy was asked for.
                    if let (Some(c), "random") = (&controller, policy.as_str()) {
                        s.policy = Some(Box::new(WorldModelsAgent::new(&wm, c)?));
                        s.trained = true;
                    }
                    let side = wm.vae.config().image_size;
                    s.world = Some(WorldModelView {
                        wm,
                        picture: Vec::new(),
                        side,
                        dream: false,
                    });
                }
                s.start(Some(*seed))?;
                Ok(s)
            }
            Source::Dream { run, seed } => {
                let LoadedRun {
                    wm,
                    controller,
                    meta,
                    starts,
                } = load_run(&RunDir::new(run))?;
                anyhow::ensure!(
                    !starts.is_empty(),
                    "{}: no series.safetensors (run `dreamgym train-mdnrnn` first)",
                    run.display()
                );
                let dream = dreamgym_world_model::DreamEnv::new(
                    wm.mdn.clone(),
                    Arc::new(starts),
                    meta.action_space.clone(),
                    dreamgym_world_model::DreamConfig::default(),
                )?;
                let side = wm.vae.config().image_size;
                let mut s = Self::with_env(
                    Box::new(dream),
                    &format!("dream of {}", meta.env_id),
                    true,
                    true,
                );
                s.seed = *seed;
                // C acts on the dream's [z, h]; random actions until one is trained.
                s.trained = controller.is_some();
                s.policy = Some(match controller {
                    Some(c) => Box::new(c),
                    None => Box::new(RandomPolicy::new(meta.action_space.clone(), *seed)),
                });
                s.world = Some(WorldModelView {
                    wm,
                    picture: Vec::new(),
                    side,
                    dream: true,
                });
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
                let mut s = Self::with_env(env, &meta.env_id, false, has_pixels);
                s.damaged_chunks = report.damaged.len();
                s.episodes = report.episodes;
                s.start(Some(s.episodes[0].seed))?;
                Ok(s)
            }
        }
    }

    fn with_env(mut env: Box<dyn Env>, id: &str, live: bool, has_pixels: bool) -> Self {
        Self {
            smooth: env.keep_motion(MOTION_EVERY),
            frames: Vec::new(),
            shown: 0,
            env,
            env_id: id.to_string(),
            live,
            policy: None,
            seed: 0,
            trained: false,
            episodes: Vec::new(),
            damaged_chunks: 0,
            episode: 0,
            step: 0,
            episode_return: 0.0,
            last_reward: 0.0,
            last_action: None,
            obs: Value::Int(0),
            done: false,
            verdict: None,
            diverged: false,
            has_pixels,
            world: None,
        }
    }

    /// Refreshes V's picture.
    fn update_world_model(&mut self) -> anyhow::Result<()> {
        let Some(w) = &mut self.world else {
            return Ok(());
        };
        if w.dream {
            let z: Vec<f32> = self
                .obs
                .as_f32()
                .map(|x| x[..w.wm.vae.config().z_size].to_vec())
                .unwrap_or_default();
            w.picture = w.wm.decode_latent(&z)?;
        } else {
            w.picture = w.wm.reconstruct(frame_of(&self.obs)?)?;
        }
        Ok(())
    }

    fn start(&mut self, seed: Option<u64>) -> anyhow::Result<()> {
        let (obs, info) = self.env.reset(seed, &Info::new())?;
        if let Some(p) = &mut self.policy {
            // The env's own episode seed; for an env that reports none, one per episode of
            // the session.
            let episode_seed = info
                .get("episode_seed")
                .and_then(|v| v.as_u64())
                .unwrap_or_else(|| {
                    dreamgym_base::derive_seed(self.seed, "viewer.episode", self.episode as u64)
                });
            p.reset(episode_seed)?;
        }
        self.obs = obs;
        self.frames.clear();
        self.shown = 0;
        self.step = 0;
        self.episode_return = 0.0;
        self.last_reward = 0.0;
        self.last_action = None;
        self.done = false;
        self.verdict = None;
        self.diverged = false;
        self.update_world_model()
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
            match &mut self.policy {
                Some(p) => p.act(&self.obs)?,
                None => bail!("a live session without a policy"),
            }
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
        self.frames.clear();
        self.frames.extend_from_slice(self.env.motion());
        self.shown = 0;
        if let Some(p) = &mut self.policy {
            p.reward(step.reward);
        }
        self.step += 1;
        self.last_reward = step.reward;
        self.episode_return += step.reward;
        self.done = step.done();
        if self.done {
            self.verdict = step.info.get("success").and_then(|v| v.as_bool());
        }
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
        self.update_world_model()
    }

    /// One frame of the view: the next kept pose of the last step's motion while there is
    /// one to show (an env that keeps its steps' motion), else the next step.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if self.shown < self.frames.len() {
            self.shown += 1;
            return Ok(());
        }
        self.advance()
    }

    /// Frames per second at speed 1: real time for an env that keeps its steps' motion (a
    /// kept pose every [`MOTION_EVERY`] physics steps of 0.02 s), else a step a frame at the
    /// built-in envs' 50 steps a second.
    pub fn ticks_per_second(&self) -> f32 {
        if self.smooth {
            50.0 / MOTION_EVERY as f32
        } else {
            50.0
        }
    }

    /// The poses to draw mid-step, while the last step's motion is being shown (else the
    /// world's own poses).
    pub fn poses(&self) -> Option<&Motion> {
        self.frames.get(self.shown)
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

    /// V's reconstruction of the agent's current frame, when a World Models run is attached
    /// to a live view: RGB bytes, width, height.
    pub fn reconstruction(&self) -> Option<(&[u8], usize, usize)> {
        match &self.world {
            Some(w) if !w.dream && !w.picture.is_empty() => Some((&w.picture, w.side, w.side)),
            _ => None,
        }
    }

    /// Whether a trained C drives this session.
    pub fn has_controller(&self) -> bool {
        self.live && self.trained
    }

    /// What drives a live session (`random`, `World Models agent (V + M + C)`, ...).
    pub fn policy_description(&self) -> Option<String> {
        self.policy.as_ref().map(|p| p.describe())
    }

    /// The agent's picture: RGB bytes, width, height (in a dream: V's decoding of M's latent).
    pub fn pixels(&self) -> Option<(&[u8], usize, usize)> {
        if let Some(w) = self.world.as_ref().filter(|w| w.dream) {
            return Some((&w.picture, w.side, w.side));
        }
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
            // A language action: the commands themselves, on one line.
            Some(Value::Text(t)) => ellipsize(t, 60),
            Some(other) => other.describe(),
        };
        let episode = match self.episode_count() {
            Some(n) => format!("episode {}/{}", self.episode + 1, n),
            None => format!("episode {}", self.episode + 1),
        };
        // A language episode: the instruction, what the env said of the last action, and
        // the verdict once the episode is over.
        let language = match observation_text(&self.obs) {
            Some(text) => {
                let line = |key: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                // The verdict waits for the last command's motion to play out.
                let verdict = match self.verdict.filter(|_| self.poses().is_none()) {
                    Some(true) => "\nverdict: success",
                    Some(false) => "\nverdict: failure",
                    None => "",
                };
                format!(
                    "instruction: {}\nlast: {}{verdict}\n",
                    ellipsize(&line("instruction: "), 90),
                    ellipsize(&line("last: "), 90)
                )
            }
            None => String::new(),
        };
        let mut status = Vec::new();
        // The policy on a line of its own: a Decision Transformer's target and return to go
        // make it long.
        let policy = match self.policy_description().filter(|_| self.live) {
            Some(p) => format!("policy: {p}\n"),
            None => String::new(),
        };
        if paused {
            status.push("PAUSED".to_string());
        }
        if self.done && self.poses().is_none() {
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
            "{}  {}  step {}  speed {speed}x  {}\n{policy}{language}reward {:+.3}  return {:.3}  action {action}\n{keys}",
            self.env_id,
            episode,
            self.step,
            status.join(" | "),
            self.last_reward,
            self.episode_return,
        )
    }
}

/// `text` on one line (newlines become `;`), cut to `n` characters with an ellipsis.
pub(crate) fn ellipsize(text: &str, n: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c == '\n' { ';' } else { c })
        .collect();
    match line.char_indices().nth(n) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The text of a language observation (Text, or a Dict's `text`).
pub(crate) fn observation_text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(t) => Some(t),
        Value::Dict(d) => match d.get("text") {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        },
        _ => None,
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
            world_model: None,
        };
        Session::new(&source, &Registry::with_builtins()).unwrap()
    }

    #[test]
    fn a_language_episode_shows_its_instruction_feedback_and_verdict() {
        let source = Source::Live {
            env: "Tabletop-v0".into(),
            overrides: Some(serde_json::json!({ "mode": "language" })),
            policy: "expert".into(),
            seed: 3,
            world_model: None,
        };
        let mut s = Session::new(&source, &Registry::with_builtins()).unwrap();
        let hud = s.hud(1.0, false);
        let instruction = hud
            .lines()
            .find_map(|l| l.strip_prefix("instruction: "))
            .unwrap_or_else(|| panic!("no instruction in {hud}"));
        assert!(!instruction.is_empty(), "{hud}");
        assert!(!hud.contains("verdict"), "{hud}");
        for _ in 0..16 {
            s.advance().unwrap();
            if s.done {
                break;
            }
        }
        assert!(
            s.done,
            "the planner's episode ends within its command budget"
        );
        // While the last command's motion plays, the episode is not yet over on screen.
        assert!(s.poses().is_some());
        let hud = s.hud(1.0, false);
        assert!(
            !hud.contains("verdict") && !hud.contains("episode over"),
            "{hud}"
        );
        while s.poses().is_some() {
            s.tick().unwrap();
        }
        let hud = s.hud(1.0, false);
        assert!(hud.contains("episode over"), "{hud}");
        // The env's feedback on the last command, and the verdict with the return it earned.
        let last = hud
            .lines()
            .find_map(|l| l.strip_prefix("last: "))
            .unwrap_or_else(|| panic!("no feedback in {hud}"));
        assert!(!last.is_empty() && last != "none", "{hud}");
        let verdict = if s.episode_return > 0.999 {
            "success"
        } else {
            "failure"
        };
        assert!(hud.contains(&format!("verdict: {verdict}")), "{hud}");
    }

    #[test]
    fn a_language_command_plays_out_frame_by_frame_before_the_next() {
        let source = Source::Live {
            env: "Tabletop-v0".into(),
            overrides: Some(serde_json::json!({ "mode": "language" })),
            policy: "expert".into(),
            seed: 3,
            world_model: None,
        };
        let mut s = Session::new(&source, &Registry::with_builtins()).unwrap();
        assert_eq!(s.ticks_per_second(), 50.0 / MOTION_EVERY as f32);
        assert!(s.poses().is_none(), "nothing kept before the first command");
        s.tick().unwrap();
        assert_eq!(s.step, 1);
        let n = s.frames.len();
        assert!(n >= 5, "{n} kept poses for a whole command");
        let first = s.poses().cloned().unwrap();
        for _ in 0..n {
            assert_eq!(s.step, 1, "the command's motion is still showing");
            s.tick().unwrap();
        }
        // The last kept pose is where the command left the world, and the next tick steps.
        assert!(s.poses().is_none());
        assert_ne!(
            Some(&first),
            s.frames.last(),
            "the objects moved during the command"
        );
        s.tick().unwrap();
        assert_ne!(
            s.step, 1,
            "the next tick takes the next step (or a new episode)"
        );
        // A state env keeps no motion: one step a tick, as before.
        let mut c = live("CartPole-v0", 1);
        assert_eq!(c.ticks_per_second(), 50.0);
        c.tick().unwrap();
        c.tick().unwrap();
        assert_eq!((c.step, c.frames.len()), (2, 0));
    }

    #[test]
    fn a_live_session_takes_the_steps_of_a_headless_run() {
        for id in ["CartPole-v0", "Reacher-v0", "Racer-v0"] {
            let mut s = live(id, 5);
            let registry = Registry::with_builtins();
            let mut env = registry.make(id, None).unwrap();
            // The headless side: the same policy, reset with each episode's seed.
            let mut policy = RandomPolicy::new(env.action_space().clone(), 5);
            let (mut obs, info) = env.reset(Some(5), &Info::new()).unwrap();
            policy
                .reset(info["episode_seed"].as_u64().unwrap())
                .unwrap();
            for _ in 0..300 {
                assert_eq!(state_part(s.observation()), &obs, "{id}");
                let done_before = s.done;
                s.advance().unwrap();
                if done_before {
                    let (o, info) = env.reset(None, &Info::new()).unwrap();
                    policy
                        .reset(info["episode_seed"].as_u64().unwrap())
                        .unwrap();
                    obs = o;
                } else {
                    let step = env.step(&policy.act(&obs).unwrap()).unwrap();
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
        let mut policy = RandomPolicy::new(env.action_space().clone(), 1);
        for seed in [11, 12] {
            policy.reset(seed).unwrap();
            let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
            let mut e = Episode::new(seed, obs);
            loop {
                let a = policy.act(&Value::Int(0)).unwrap();
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
    fn a_bare_controller_file_drives_a_state_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.json");
        // Reacher: 10 state values in, 2 torques out; b = (0.5, -0.5), W = 0.
        let mut params = vec![0.0f32; 22];
        params[20] = 0.5;
        params[21] = -0.5;
        let file = serde_json::json!({"in_dream": false, "inputs": 10, "params": params,
            "best_fitness": 0.0, "generations": 1});
        std::fs::write(&path, file.to_string()).unwrap();
        let source = Source::Live {
            env: "Reacher-v0".into(),
            overrides: None,
            policy: path.display().to_string(),
            seed: 2,
            world_model: None,
        };
        let mut s = Session::new(&source, &Registry::with_builtins()).unwrap();
        assert!(s.has_controller());
        s.advance().unwrap();
        let Some(Value::F32(a)) = &s.last_action else {
            panic!("{:?}", s.last_action)
        };
        assert!((a[0] - 0.5f32.tanh()).abs() < 1e-6 && (a[1] + 0.5f32.tanh()).abs() < 1e-6);
        // The same file cannot drive an env with other observations.
        let other = Source::Live {
            env: "CartPole-v0".into(),
            overrides: None,
            policy: path.display().to_string(),
            seed: 2,
            world_model: None,
        };
        let err = Session::new(&other, &Registry::with_builtins())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("cannot use policy"), "{err:#}");
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
                world_model: None,
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

    #[test]
    fn a_world_model_run_drives_the_env_shows_reconstructions_and_dreams() {
        let dir = tempfile::tempdir().unwrap();
        dreamgym_agents::testing::tiny_run(dir.path()).unwrap();
        let registry = Registry::with_builtins();
        let source = Source::Live {
            env: "Racer-v0".into(),
            overrides: Some(serde_json::json!({"obs": "pixels", "width": 16, "height": 16})),
            policy: "random".into(),
            seed: 4,
            world_model: Some(dir.path().to_path_buf()),
        };
        let mut s = Session::new(&source, &registry).unwrap();
        assert!(s.has_controller());
        for _ in 0..5 {
            s.advance().unwrap();
            let (px, w, h) = s.pixels().unwrap();
            let (recon, rw, rh) = s.reconstruction().unwrap();
            assert_eq!((w, h, rw, rh), (16, 16, 16, 16));
            assert_eq!(px.len(), recon.len());
        }
        // C acts as it does headless: the same actions as the pipeline's own policy.
        let run = load_run(&RunDir::new(dir.path())).unwrap();
        let c = run.controller.as_ref().unwrap();
        let mut policy = WorldModelsAgent::new(&run.wm, c).unwrap();
        let mut env = registry
            .make(
                "Racer-v0",
                Some(&serde_json::json!({"obs": "pixels", "width": 16, "height": 16})),
            )
            .unwrap();
        let mut viewed = Session::new(&source, &registry).unwrap();
        let (mut obs, _) = env.reset(Some(4), &Info::new()).unwrap();
        for _ in 0..5 {
            let (a, _) = policy.act_with_latent(&obs).unwrap();
            viewed.advance().unwrap();
            assert_eq!(viewed.last_action.as_ref(), Some(&a));
            obs = env.step(&a).unwrap().obs;
        }

        // The same agent from a policy spec (as `--policy RUN`), without the run attached.
        let by_spec = Source::Live {
            env: "Racer-v0".into(),
            overrides: Some(serde_json::json!({"obs": "pixels", "width": 16, "height": 16})),
            policy: dir.path().display().to_string(),
            seed: 4,
            world_model: None,
        };
        let mut spec = Session::new(&by_spec, &registry).unwrap();
        let mut fresh = Session::new(&source, &registry).unwrap();
        assert!(spec.has_controller() && spec.reconstruction().is_none());
        for _ in 0..5 {
            spec.advance().unwrap();
            fresh.advance().unwrap();
            assert_eq!(spec.last_action, fresh.last_action);
        }
        assert!(spec.policy_description().unwrap().contains("World Models"));
        assert!(spec.hud(1.0, false).contains("policy: World Models agent"));

        // The dream: no 3D scene, V's decoding of M's latent as the picture.
        let mut d = Session::new(
            &Source::Dream {
                run: dir.path().to_path_buf(),
                seed: 1,
            },
            &registry,
        )
        .unwrap();
        assert!(d.scene().is_none());
        let first = d.pixels().unwrap().0.to_vec();
        assert_eq!(first.len(), 16 * 16 * 3);
        d.advance().unwrap();
        assert_ne!(d.pixels().unwrap().0, &first[..], "the dream moves");
        assert!(d.reconstruction().is_none());

        // A folder that is not a run: a clear error.
        let empty = tempfile::tempdir().unwrap();
        let err = Session::new(
            &Source::Dream {
                run: empty.path().to_path_buf(),
                seed: 0,
            },
            &registry,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("data/"), "{err:#}");
    }
}
