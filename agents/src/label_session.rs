//! A labeling session: one labeler going through a pairs folder pair by pair, as
//! `dreamgym label` runs it in the viewer. No drawing here: the viewer shows what the session
//! says and passes the labeler's keys back.
//!
//! - Order: the pairs in the folder's order, skipping those this labeler already has a label
//!   of in effect. A session killed at any moment and opened again starts at the next
//!   unlabeled pair: every label was fsynced as it was given, and none is written twice.
//! - Sides: which episode (A or B) is shown on the left is drawn per (labeler, pair) from a
//!   hash, so about half the pairs show A on the left, the same pair shows the same way after
//!   a restart, and each label records the side (position bias is measured from it).
//! - Keys: left or right prefers that side's episode, equal says both are as good, skip says
//!   the labeler cannot tell; undo withdraws the labeler's latest label in effect (an undo
//!   record is appended; nothing is rewritten) and shows that pair again.
//! - Several labelers label the same folder, each in a session of their own.

use std::path::Path;

use anyhow::Context;

use crate::labels::{Choice, LabelLog, LabelRecord, Side, SyntheticLabeler, fnv1a};
use crate::preference::{LABELS_FILE, PairRecord, PairsMeta, now, read_pairs};

/// What the labeler said with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The episode on the left is better.
    Left,
    /// The episode on the right is better.
    Right,
    /// Both are equally good.
    Equal,
    /// Cannot tell.
    Skip,
}

/// Which episode of `pair` is shown on the left to `labeler`.
pub fn side_shown_left(labeler: &str, pair: &str) -> Side {
    // FNV-1a alone mixes the last bytes poorly (ids differ only there): splitmix64's
    // finaliser spreads them over every bit.
    let mut h = fnv1a(format!("{labeler}\u{0}{pair}").as_bytes());
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    if h >> 63 == 0 { Side::A } else { Side::B }
}

/// The choice a verdict is, given the episode shown on the left.
pub fn choice_of(verdict: Verdict, left: Side) -> Choice {
    let side = |s: Side| match s {
        Side::A => Choice::A,
        Side::B => Choice::B,
    };
    match verdict {
        Verdict::Left => side(left),
        Verdict::Right => side(left.other()),
        Verdict::Equal => Choice::Equal,
        Verdict::Skip => Choice::Skip,
    }
}

/// One labeler's session over a pairs folder.
pub struct LabelSession {
    labeler: String,
    meta: PairsMeta,
    pairs: Vec<PairRecord>,
    log: LabelLog,
    /// The index of the pair on screen; `None` when every pair is labeled.
    current: Option<usize>,
    /// Labels given in this session (undos take one back).
    given: usize,
}

impl LabelSession {
    /// Opens the pairs folder `dir` for `labeler`: reads its pairs and opens its labels log
    /// for appending (a torn last line from a crash is cut and reported in
    /// [`log`](Self::log)). The name `synthetic` is the synthetic labeler's and is refused.
    pub fn open(dir: &Path, labeler: &str) -> anyhow::Result<Self> {
        let labeler = labeler.trim();
        anyhow::ensure!(
            !labeler.is_empty(),
            "a labeler needs a name (--labeler NAME)"
        );
        anyhow::ensure!(
            labeler != SyntheticLabeler::NAME,
            "`{labeler}` is the synthetic labeler's name: choose another"
        );
        let (meta, pairs) = read_pairs(dir)?;
        anyhow::ensure!(
            !pairs.is_empty(),
            "{} holds no pairs yet (make some with `dreamgym pairs`)",
            dir.display()
        );
        let log = LabelLog::open(&dir.join(LABELS_FILE))
            .with_context(|| format!("cannot open the labels of {}", dir.display()))?;
        let mut s = Self {
            labeler: labeler.to_string(),
            meta,
            pairs,
            log,
            current: None,
            given: 0,
        };
        s.current = s.next_unlabeled();
        Ok(s)
    }

    fn next_unlabeled(&self) -> Option<usize> {
        let done = self.log.labeled_by(&self.labeler);
        self.pairs.iter().position(|p| !done.contains(&p.id))
    }

    /// The labeler.
    pub fn labeler(&self) -> &str {
        &self.labeler
    }

    /// What made the pairs (the env and its config replay them).
    pub fn meta(&self) -> &PairsMeta {
        &self.meta
    }

    /// The labels log (its skipped lines and torn bytes say what opening it found).
    pub fn log(&self) -> &LabelLog {
        &self.log
    }

    /// The pair to label now, and the episode shown on its left; `None` when every pair is
    /// labeled.
    pub fn current(&self) -> Option<(&PairRecord, Side)> {
        let p = self.pairs.get(self.current?)?;
        Some((p, side_shown_left(&self.labeler, &p.id)))
    }

    /// Pairs this labeler has a label of in effect, and pairs in the folder.
    pub fn progress(&self) -> (usize, usize) {
        let done = self.log.labeled_by(&self.labeler);
        let n = self.pairs.iter().filter(|p| done.contains(&p.id)).count();
        (n, self.pairs.len())
    }

    /// Labels given in this session, undos deducted.
    pub fn given(&self) -> usize {
        self.given
    }

    /// Labels the pair on screen (`seconds`: how long it was shown), fsyncs the label and
    /// moves to the next unlabeled pair. Returns the label, or `None` when there is no pair
    /// left to label.
    pub fn label(&mut self, verdict: Verdict, seconds: f64) -> anyhow::Result<Option<Choice>> {
        let Some((pair, left)) = self.current() else {
            return Ok(None);
        };
        let choice = choice_of(verdict, left);
        let record = LabelRecord {
            pair: pair.id.clone(),
            labeler: self.labeler.clone(),
            choice,
            left: Some(left),
            seconds: if seconds.is_finite() {
                seconds.max(0.0)
            } else {
                0.0
            },
            timestamp: now(),
        };
        self.log.append(record)?;
        self.given += 1;
        self.current = self.next_unlabeled();
        Ok(Some(choice))
    }

    /// Withdraws this labeler's latest label in effect (from this session or an earlier one)
    /// and shows its pair again. Returns the pair's id, or `None` when there is nothing to
    /// undo.
    pub fn undo(&mut self) -> anyhow::Result<Option<String>> {
        let Some(last) = self.log.latest_in_effect(&self.labeler) else {
            return Ok(None);
        };
        let pair = last.pair.clone();
        self.log.append(LabelRecord {
            pair: pair.clone(),
            labeler: self.labeler.clone(),
            choice: Choice::Undo,
            left: last.left,
            seconds: 0.0,
            timestamp: now(),
        })?;
        self.given = self.given.saturating_sub(1);
        // A pair the folder no longer holds cannot be shown: go on with the next unlabeled.
        self.current = self
            .pairs
            .iter()
            .position(|p| p.id == pair)
            .or_else(|| self.next_unlabeled());
        Ok(Some(pair))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::{PAIRS_FILE, PAIRS_META, PairSide, Turn};
    use dreamgym_policies::language::Sampling;

    fn side(action: &str, progress: f64) -> PairSide {
        PairSide {
            sample_seed: 1,
            turns: vec![Turn {
                observation: "instruction: push the red cube into the blue zone".into(),
                action: action.into(),
                feedback: "ok".into(),
            }],
            success: progress >= 1.0,
            progress,
        }
    }

    /// A pairs folder of `n` pairs, written as `dreamgym pairs` writes one.
    fn folder(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let meta = PairsMeta {
            env: "Tabletop-v0".into(),
            env_config: serde_json::json!({ "mode": "language" }),
            model: "test".into(),
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
        let mut w = dreamgym_base::JsonlWriter::open(&dir.path().join(PAIRS_FILE)).unwrap();
        for i in 0..n {
            w.append(&PairRecord {
                id: format!("p{i:06}"),
                seed: i as u64,
                instruction: "push the red cube into the blue zone".into(),
                family: "single".into(),
                a: side("push red cube to blue zone", 1.0),
                b: side("push red cube to green zone", 0.2),
            })
            .unwrap();
        }
        dir
    }

    fn current_id(s: &LabelSession) -> Option<String> {
        s.current().map(|(p, _)| p.id.clone())
    }

    #[test]
    fn keys_prefer_the_side_shown_and_sides_are_mixed() {
        let dir = folder(40);
        let mut s = LabelSession::open(dir.path(), "alice").unwrap();
        let mut lefts = [0usize; 2];
        while let Some((p, left)) = s.current() {
            let id = p.id.clone();
            lefts[usize::from(left == Side::B)] += 1;
            assert_eq!(
                s.label(Verdict::Left, 1.5).unwrap(),
                Some(choice_of(Verdict::Left, left))
            );
            let r = s.log().in_effect()[&(id, "alice".to_string())].clone();
            assert_eq!(r.left, Some(left));
            assert_eq!(r.choice.preferred(), Some(left), "left key, left episode");
            assert_eq!(r.seconds, 1.5);
        }
        // 40 fair coins: both sides well represented.
        assert!(lefts[0] >= 8 && lefts[1] >= 8, "{lefts:?}");
        assert_eq!(s.progress(), (40, 40));
        assert_eq!(s.label(Verdict::Right, 1.0).unwrap(), None);
        assert_eq!(choice_of(Verdict::Right, Side::A), Choice::B);
        assert_eq!(choice_of(Verdict::Right, Side::B), Choice::A);
        assert_eq!(choice_of(Verdict::Equal, Side::B), Choice::Equal);
        assert_eq!(choice_of(Verdict::Skip, Side::A), Choice::Skip);
    }

    #[test]
    fn a_restarted_session_goes_on_with_nothing_lost_or_duplicated() {
        let dir = folder(5);
        {
            let mut s = LabelSession::open(dir.path(), "alice").unwrap();
            s.label(Verdict::Left, 1.0).unwrap();
            s.label(Verdict::Equal, 1.0).unwrap();
            // Killed here: no close, no flush beyond the per-label fsync.
        }
        // A crash mid-write leaves a torn line behind.
        let log = dir.path().join(LABELS_FILE);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(b"{\"pair\":\"p0000");
        std::fs::write(&log, bytes).unwrap();
        let mut s = LabelSession::open(dir.path(), "alice").unwrap();
        assert!(s.log().torn_bytes > 0);
        assert_eq!(s.progress(), (2, 5));
        assert_eq!(current_id(&s).as_deref(), Some("p000002"));
        while s.label(Verdict::Right, 1.0).unwrap().is_some() {}
        let s = LabelSession::open(dir.path(), "alice").unwrap();
        assert_eq!(s.current().map(|_| ()), None);
        let records = s.log().records();
        assert_eq!(records.len(), 5, "one line per label");
        let ids: std::collections::BTreeSet<_> = records.iter().map(|r| &r.pair).collect();
        assert_eq!(ids.len(), 5);
    }

    #[test]
    fn undo_withdraws_the_latest_label_and_shows_its_pair_again() {
        let dir = folder(4);
        let mut s = LabelSession::open(dir.path(), "bob").unwrap();
        assert_eq!(s.undo().unwrap(), None, "nothing to undo yet");
        s.label(Verdict::Left, 1.0).unwrap();
        s.label(Verdict::Right, 1.0).unwrap();
        assert_eq!(s.undo().unwrap().as_deref(), Some("p000001"));
        assert_eq!(current_id(&s).as_deref(), Some("p000001"));
        assert_eq!((s.progress(), s.given()), ((1, 4), 1));
        assert_eq!(s.undo().unwrap().as_deref(), Some("p000000"));
        assert_eq!(current_id(&s).as_deref(), Some("p000000"));
        assert!(s.log().labeled_by("bob").is_empty());
        s.label(Verdict::Skip, 1.0).unwrap();
        // p000001 was withdrawn: it comes next.
        assert_eq!(current_id(&s).as_deref(), Some("p000001"));
        // Undo reaches labels of an earlier session too.
        drop(s);
        let mut s = LabelSession::open(dir.path(), "bob").unwrap();
        assert_eq!(s.undo().unwrap().as_deref(), Some("p000000"));
        assert_eq!(s.progress(), (0, 4));
    }

    #[test]
    fn labelers_keep_their_own_sessions_and_bad_names_are_refused() {
        let dir = folder(3);
        let mut a = LabelSession::open(dir.path(), "alice").unwrap();
        a.label(Verdict::Left, 1.0).unwrap();
        let mut b = LabelSession::open(dir.path(), "bob").unwrap();
        assert_eq!(current_id(&b).as_deref(), Some("p000000"));
        b.label(Verdict::Left, 1.0).unwrap();
        // Bob's undo leaves Alice's label alone.
        b.undo().unwrap();
        drop((a, b));
        let s = LabelSession::open(dir.path(), "carol").unwrap();
        assert_eq!(s.log().labeled_by("alice").len(), 1);
        assert!(s.log().labeled_by("bob").is_empty());
        for bad in ["", "  ", "synthetic"] {
            assert!(LabelSession::open(dir.path(), bad).is_err(), "{bad:?}");
        }
        let empty = tempfile::tempdir().unwrap();
        let e = LabelSession::open(empty.path(), "alice").err().unwrap();
        assert!(format!("{e:#}").contains("not a pairs folder"), "{e:#}");
    }
}
