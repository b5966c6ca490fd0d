//! What a labeling session shows, without bevy: the two episodes of the pair on screen,
//! re-simulated side by side from their shared start and recorded actions, in step, plus the
//! text around them. The labels themselves go through
//! [`LabelSession`](dreamgym_agents::label_session::LabelSession), which fsyncs each one.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use dreamgym_agents::label_session::{LabelSession, Verdict};
use dreamgym_agents::labels::{Choice, Side};
use dreamgym_agents::preference::PairSide;
use dreamgym_envs::{Env, Info, Motion, Registry, Value};
use dreamgym_sim::{Scene, World};

use crate::session::{ellipsize, observation_text};

/// One episode of the pair on screen, replayed through its own env.
struct SideReplay {
    env: Box<dyn Env>,
    /// Which episode of the pair (A or B) this side shows.
    episode: Side,
    /// The env keeps each action's motion.
    smooth: bool,
    actions: Vec<String>,
    feedback: Vec<String>,
    /// Actions taken so far.
    step: usize,
    /// The env ended the episode (or the recorded actions ran out).
    done: bool,
    /// The re-simulation disagreed with the recording.
    diverged: bool,
    /// The poses of the last action's motion (when the env keeps them), and how many of
    /// them have been shown.
    frames: Vec<Motion>,
    shown: usize,
}

impl SideReplay {
    fn restart(&mut self, seed: u64, prompt: &str) -> anyhow::Result<()> {
        let (obs, _) = self.env.reset(Some(seed), &Info::new())?;
        self.frames.clear();
        self.shown = 0;
        self.step = 0;
        self.done = self.actions.is_empty();
        self.diverged = observation_text(&obs).is_some_and(|t| t != prompt);
        Ok(())
    }

    fn advance(&mut self) -> anyhow::Result<()> {
        if self.done {
            return Ok(());
        }
        let step = self
            .env
            .step(&Value::Text(self.actions[self.step].clone()))?;
        let said = step
            .info
            .get("feedback")
            .and_then(|f| f.as_str())
            .unwrap_or("");
        if said != self.feedback[self.step] {
            self.diverged = true;
        }
        self.step += 1;
        self.done = step.done() || self.step >= self.actions.len();
        self.frames.clear();
        self.frames.extend_from_slice(self.env.motion());
        self.shown = 0;
        Ok(())
    }

    /// Whether the last action's motion is still being shown.
    fn moving(&self) -> bool {
        self.shown < self.frames.len()
    }
}

/// Physics steps between two kept poses of an action's motion.
pub const MOTION_EVERY: usize = 2;

/// A labeling session on screen: the session and the replay of its current pair.
pub struct Labeling {
    session: LabelSession,
    /// Left and right.
    sides: [SideReplay; 2],
    instruction: String,
    /// When the pair came on screen (the label's time is measured from it).
    shown: Instant,
    started: Instant,
    /// What the last key did, for the HUD.
    last: String,
}

impl Labeling {
    /// Opens the pairs folder `dir` for `labeler` and shows its first unlabeled pair.
    pub fn open(dir: &Path, labeler: &str, registry: &Registry) -> anyhow::Result<Self> {
        let session = LabelSession::open(dir, labeler)?;
        let meta = session.meta();
        let make = || {
            registry
                .make(&meta.env, Some(&meta.env_config))
                .with_context(|| format!("cannot rebuild {} to replay the pairs", meta.env))
        };
        let side = |mut env: Box<dyn Env>| SideReplay {
            // Where the env keeps an action's motion, each action plays out in the views.
            smooth: env.keep_motion(MOTION_EVERY),
            env,
            episode: Side::A,
            actions: Vec::new(),
            feedback: Vec::new(),
            step: 0,
            done: true,
            diverged: false,
            frames: Vec::new(),
            shown: 0,
        };
        let mut l = Self {
            sides: [side(make()?), side(make()?)],
            session,
            instruction: String::new(),
            shown: Instant::now(),
            started: Instant::now(),
            last: String::new(),
        };
        let notes = opening_notes(&l.session);
        l.show_current()?;
        l.last = notes;
        Ok(l)
    }

    /// Loads the current pair into both sides, at their start.
    fn show_current(&mut self) -> anyhow::Result<()> {
        self.shown = Instant::now();
        let Some((pair, left)) = self.session.current() else {
            self.instruction.clear();
            return Ok(());
        };
        let (seed, prompt) = (pair.seed, pair.prompt().to_string());
        self.instruction = pair.instruction.clone();
        let episodes = [left, left.other()];
        let recorded: [&PairSide; 2] = episodes.map(|e| match e {
            Side::A => &pair.a,
            Side::B => &pair.b,
        });
        let turns: Vec<(Vec<String>, Vec<String>)> = recorded
            .iter()
            .map(|r| {
                (
                    r.turns.iter().map(|t| t.action.clone()).collect(),
                    r.turns.iter().map(|t| t.feedback.clone()).collect(),
                )
            })
            .collect();
        for ((s, e), (actions, feedback)) in self.sides.iter_mut().zip(episodes).zip(turns) {
            s.episode = e;
            s.actions = actions;
            s.feedback = feedback;
            s.restart(seed, &prompt)?;
        }
        Ok(())
    }

    /// One action on each side still running (both sides move in step), the motion of the
    /// previous one cut short.
    pub fn advance(&mut self) -> anyhow::Result<()> {
        for s in &mut self.sides {
            s.advance()?;
        }
        Ok(())
    }

    /// One frame of the replay: the motion of the current actions moves on by one kept pose
    /// ([`MOTION_EVERY`] physics steps) on each side; once both sides have shown all of it,
    /// the next action starts on both.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if self.sides.iter().any(SideReplay::moving) {
            for s in &mut self.sides {
                s.shown = (s.shown + 1).min(s.frames.len());
            }
            return Ok(());
        }
        self.advance()
    }

    /// Whether the envs keep their actions' motion (else each action jumps to its end).
    pub fn smooth(&self) -> bool {
        self.sides.iter().all(|s| s.smooth)
    }

    /// The poses to draw on a side mid-action, when its motion is being shown (else the
    /// world's own poses).
    pub fn poses(&self, side: usize) -> Option<&Motion> {
        let s = self.sides.get(side)?;
        if s.moving() {
            s.frames.get(s.shown)
        } else {
            None
        }
    }

    /// Whether both episodes have been played to their end.
    pub fn played(&self) -> bool {
        self.sides.iter().all(|s| s.done && !s.moving())
    }

    /// Plays the pair again from its start.
    pub fn replay(&mut self) -> anyhow::Result<()> {
        let Some((pair, _)) = self.session.current() else {
            return Ok(());
        };
        let (seed, prompt) = (pair.seed, pair.prompt().to_string());
        for s in &mut self.sides {
            s.restart(seed, &prompt)?;
        }
        Ok(())
    }

    /// Labels the pair on screen and moves to the next unlabeled one.
    pub fn label(&mut self, verdict: Verdict) -> anyhow::Result<()> {
        let seconds = self.shown.elapsed().as_secs_f64();
        let Some((pair, _)) = self.session.current() else {
            return Ok(());
        };
        let id = pair.id.clone();
        if let Some(choice) = self.session.label(verdict, seconds)? {
            self.last = format!("{id}: {} (saved)", describe(choice));
        }
        self.show_current()
    }

    /// Withdraws the latest label and shows its pair again.
    pub fn undo(&mut self) -> anyhow::Result<()> {
        self.last = match self.session.undo()? {
            Some(id) => format!("{id}: label withdrawn"),
            None => "nothing to undo".into(),
        };
        self.show_current()
    }

    /// Whether every pair has this labeler's label.
    pub fn finished(&self) -> bool {
        self.session.current().is_none()
    }

    /// The world and scene of side 0 (left) or 1 (right).
    pub fn scene(&self, side: usize) -> Option<(&World, &Scene)> {
        self.sides.get(side)?.env.scene()
    }

    /// The env id.
    pub fn env_id(&self) -> &str {
        &self.session.meta().env
    }

    /// The session.
    pub fn session(&self) -> &LabelSession {
        &self.session
    }

    /// The text above both views: the pair, the labeler's progress and rate, the instruction.
    pub fn header(&self, speed: f32) -> String {
        let (done, total) = self.session.progress();
        let minutes = self.started.elapsed().as_secs_f64() / 60.0;
        let rate = if minutes > 0.0 && self.session.given() > 0 {
            format!("{:.1} labels/min", self.session.given() as f64 / minutes)
        } else {
            "- labels/min".into()
        };
        let pair = match self.session.current() {
            Some((p, _)) => p.id.clone(),
            None => "done".into(),
        };
        let body = if self.finished() {
            format!(
                "every pair has a label from {}: press esc to quit",
                self.session.labeler()
            )
        } else {
            format!("instruction: {}", self.instruction)
        };
        format!(
            "{}  labeler {}  {done} of {total} labeled  {rate}  speed {speed}x  pair {pair}\n{}\n{body}",
            self.env_id(),
            self.session.labeler(),
            progress_bar(done, total, 40),
        )
    }

    /// The text under one view: that episode's actions so far (the latest marked) and what the
    /// env said of each.
    pub fn side_text(&self, side: usize) -> String {
        let Some(s) = self.sides.get(side) else {
            return String::new();
        };
        if self.finished() {
            return String::new();
        }
        let mut out = format!(
            "{}  action {}/{}{}{}\n",
            if side == 0 { "LEFT [<-]" } else { "RIGHT [->]" },
            s.step,
            s.actions.len(),
            if s.done && !s.moving() {
                "  finished"
            } else {
                ""
            },
            if s.diverged {
                "  replay diverged from the recording"
            } else {
                ""
            },
        );
        for (i, (a, f)) in s.actions.iter().zip(&s.feedback).enumerate().take(s.step) {
            // The default font has no arrows: `>` marks the latest action.
            let mark = if i + 1 == s.step { ">" } else { " " };
            out.push_str(&format!(
                "{mark} {}\n    {}\n",
                ellipsize(a, 70),
                ellipsize(f, 70)
            ));
        }
        out
    }

    /// The keys, and what the last one did.
    pub fn footer(&self) -> String {
        format!(
            "<- left better | -> right better | up: equally good | down: can't tell | u: undo | space: replay | +/-: speed | esc: quit\n{}",
            self.last
        )
    }
}

fn describe(choice: Choice) -> &'static str {
    match choice {
        Choice::A => "episode A preferred",
        Choice::B => "episode B preferred",
        Choice::Equal => "equally good",
        Choice::Skip => "skipped",
        Choice::Undo => "undone",
    }
}

/// What opening the labels log found, for the footer and the terminal.
pub fn opening_notes(session: &LabelSession) -> String {
    let log = session.log();
    let mut notes = Vec::new();
    if log.torn_bytes > 0 {
        notes.push(format!(
            "a torn last line ({} bytes, a crash mid-write) was cut from {}",
            log.torn_bytes,
            log.path().display()
        ));
    }
    if !log.skipped.is_empty() {
        notes.push(format!(
            "{} line(s) of {} are not labels and were skipped",
            log.skipped.len(),
            log.path().display()
        ));
    }
    let (done, total) = session.progress();
    if done > 0 {
        notes.push(format!("resumed: {done} of {total} already labeled"));
    }
    notes.join("; ")
}

/// `[#####.....]`.
fn progress_bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_agents::preference::{PAIRS_FILE, PAIRS_META, PairRecord, PairsMeta, Turn};
    use dreamgym_policies::Policy;
    use dreamgym_policies::language::Sampling;

    /// A pairs folder whose two episodes are the scripted planner's and a wrong one, recorded
    /// through the env as `dreamgym pairs` records them.
    fn folder(n: usize) -> tempfile::TempDir {
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language" });
        let dir = tempfile::tempdir().unwrap();
        let meta = PairsMeta {
            env: "Tabletop-v0".into(),
            env_config: config.clone(),
            model: "expert".into(),
            sampling: Sampling::default(),
            seed: 0,
            distinct_attempts: 1,
            edit: false,
            greedy_a: false,
            max_turns: None,
            model_fingerprint: None,
        };
        std::fs::write(
            dir.path().join(PAIRS_META),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        let mut env = registry.make("Tabletop-v0", Some(&config)).unwrap();
        let mut w = dreamgym_base::JsonlWriter::open(&dir.path().join(PAIRS_FILE)).unwrap();
        for i in 0..n as u64 {
            let mut record = |actions: Option<&str>| {
                let (mut obs, _) = env.reset(Some(i), &Info::new()).unwrap();
                let mut expert = dreamgym_agents::load_policy(
                    "expert",
                    "Tabletop-v0",
                    env.observation_space(),
                    env.action_space(),
                    0,
                )
                .unwrap();
                let mut turns = Vec::new();
                let mut progress = 0.0;
                for _ in 0..3 {
                    let action = match actions {
                        Some(a) => Value::Text(a.into()),
                        None => expert.act(&obs).unwrap(),
                    };
                    let step = env.step(&action).unwrap();
                    turns.push(Turn {
                        observation: observation_text(&obs).unwrap().into(),
                        action: action.as_text().unwrap().into(),
                        feedback: step.info["feedback"].as_str().unwrap().into(),
                    });
                    progress = step.info["progress"].as_f64().unwrap();
                    let done = step.done();
                    obs = step.obs;
                    if done {
                        break;
                    }
                }
                PairSide {
                    sample_seed: 0,
                    turns,
                    success: progress >= 1.0,
                    progress,
                }
            };
            let a = record(None);
            let b = record(Some("retreat"));
            let info = env.reset(Some(i), &Info::new()).unwrap().1;
            w.append(&PairRecord {
                id: format!("p{i:06}"),
                seed: i,
                instruction: info["instruction"].as_str().unwrap().into(),
                family: info["family"].as_str().unwrap().into(),
                a,
                b,
            })
            .unwrap();
        }
        dir
    }

    #[test]
    fn both_episodes_replay_in_step_without_diverging_and_labels_are_saved() {
        let dir = folder(2);
        let registry = Registry::with_builtins();
        let mut l = Labeling::open(dir.path(), "alice", &registry).unwrap();
        let header = l.header(1.0);
        assert!(header.contains("0 of 2 labeled"), "{header}");
        assert!(header.contains("instruction: "), "{header}");
        let mut steps = 0;
        while !l.sides.iter().all(|s| s.done) {
            l.advance().unwrap();
            steps += 1;
            assert!(steps < 10, "a replay that never ends");
            assert_eq!(
                l.sides[0].step.min(l.sides[1].step),
                steps
                    .min(l.sides[0].actions.len())
                    .min(l.sides[1].actions.len()),
                "both sides move in step"
            );
        }
        for side in 0..2 {
            let text = l.side_text(side);
            assert!(!l.sides[side].diverged, "{text}");
            assert!(text.contains("\n> "), "{text}");
            assert!(l.scene(side).is_some());
        }
        // The side showing episode B carries the recorded "retreat".
        let b = l.sides.iter().position(|s| s.episode == Side::B).unwrap();
        assert!(l.side_text(b).contains("retreat"), "{}", l.side_text(b));
        // Replay starts both again.
        l.replay().unwrap();
        assert_eq!((l.sides[0].step, l.sides[1].step), (0, 0));
        // The left key prefers the episode shown on the left.
        let left = l.sides[0].episode;
        l.label(Verdict::Left).unwrap();
        let r = &l.session().log().records()[0];
        assert_eq!(
            (r.pair.as_str(), r.choice.preferred(), r.left),
            ("p000000", Some(left), Some(left))
        );
        assert!(l.header(1.0).contains("1 of 2 labeled"));
        assert!(l.footer().contains("p000000"), "{}", l.footer());
        l.undo().unwrap();
        assert!(l.header(1.0).contains("pair p000000"));
        l.label(Verdict::Equal).unwrap();
        l.label(Verdict::Skip).unwrap();
        assert!(l.finished());
        assert!(
            l.header(1.0).contains("every pair has a label"),
            "{}",
            l.header(1.0)
        );
        // Opened again: nothing left, and the log kept every line.
        let l = Labeling::open(dir.path(), "alice", &registry).unwrap();
        assert!(l.finished());
        assert_eq!(l.session().log().records().len(), 4);
        assert!(l.footer().contains("resumed: 2 of 2"), "{}", l.footer());
    }

    #[test]
    fn ticks_play_each_action_s_motion_on_both_sides_before_the_next() {
        let dir = folder(1);
        let mut l = Labeling::open(dir.path(), "alice", &Registry::with_builtins()).unwrap();
        assert!(l.smooth());
        assert!(
            l.poses(0).is_none(),
            "at the start the world's own poses are drawn"
        );
        l.tick().unwrap();
        assert_eq!((l.sides[0].step, l.sides[1].step), (1, 1));
        let n = l.sides.iter().map(|s| s.frames.len()).max().unwrap();
        assert!(n >= 5, "{n} frames of motion");
        let first = l.poses(0).cloned();
        let mut ticks = 1;
        while l.sides.iter().any(SideReplay::moving) {
            assert_eq!(
                (l.sides[0].step, l.sides[1].step),
                (1, 1),
                "still the first action"
            );
            l.tick().unwrap();
            ticks += 1;
        }
        assert_eq!(ticks, n + 1);
        assert!(first.is_some() && l.poses(0).is_none());
        let mut guard = 0;
        while !l.played() {
            l.tick().unwrap();
            guard += 1;
            assert!(guard < 10_000);
        }
        assert!(!l.sides[0].diverged && !l.sides[1].diverged);
    }

    #[test]
    fn progress_bars_fill_in_proportion() {
        assert_eq!(progress_bar(0, 4, 8), "[........]");
        assert_eq!(progress_bar(1, 4, 8), "[##......]");
        assert_eq!(progress_bar(4, 4, 8), "[########]");
        assert_eq!(progress_bar(0, 0, 4), "[....]");
    }
}
