//! Preference labels: the records people (or the synthetic labeler) write about pairs of
//! episodes, the log that keeps them, and what they say in aggregate.
//!
//! - [`LabelRecord`]: one line of `labels.jsonl`: the pair, the labeler, the choice (which
//!   episode, A or B, was preferred; equally good; skipped; or an undo), which episode was
//!   shown on the left, the seconds it took and when.
//! - [`LabelLog`]: the append-only log (one fsync per label, a torn last line from a crash
//!   dropped and reported, garbage lines skipped and reported) and the labels in effect once
//!   undos are applied: an undo is a record of its own, never a rewrite.
//! - [`label_stats`]: counts per labeler, agreement (Cohen's κ per pair of labelers, Fleiss' κ
//!   over pairs every labeler labeled), position bias and the median time per label.
//! - [`SyntheticLabeler`]: Bradley–Terry preferences over the verifier's progress of each side,
//!   with a temperature and a flip rate, seeded per pair: labels for automated runs and tests,
//!   stored exactly like a person's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dreamgym_base::{JsonlWriter, read_jsonl_lenient};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One of the two episodes of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Episode A.
    A,
    /// Episode B.
    B,
}

impl Side {
    /// The other episode.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What a labeler said about a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// Episode A is better.
    A,
    /// Episode B is better.
    B,
    /// Both are equally good.
    Equal,
    /// The labeler cannot tell (no preference; the pair counts as seen).
    Skip,
    /// Withdraws this labeler's latest label of the pair still in effect.
    Undo,
}

impl Choice {
    /// The preferred episode, for A or B.
    pub fn preferred(self) -> Option<Side> {
        match self {
            Choice::A => Some(Side::A),
            Choice::B => Some(Side::B),
            _ => None,
        }
    }
}

/// One line of a labels log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    /// The pair's id.
    pub pair: String,
    /// Who labeled (a person's name, or `synthetic`).
    pub labeler: String,
    /// The choice.
    pub choice: Choice,
    /// The episode shown on the left (position bias is measured from it); absent when no
    /// sides were shown (synthetic labels, imports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Side>,
    /// Seconds from the pair's first frame to the choice.
    #[serde(default)]
    pub seconds: f64,
    /// When, in seconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: f64,
}

/// Errors of the labels log.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The log could not be read or written.
    #[error(transparent)]
    Log(#[from] dreamgym_base::JsonlError),
    /// A record that cannot be stored.
    #[error("{0}")]
    Invalid(String),
}

/// A labels log: what it held when opened (lines that did not parse are reported in
/// [`skipped`](Self::skipped), a torn last line in [`torn_bytes`](Self::torn_bytes)), and
/// every record appended since, each fsynced before [`append`](Self::append) returns.
pub struct LabelLog {
    path: PathBuf,
    records: Vec<LabelRecord>,
    writer: Option<JsonlWriter>,
    /// Lines of the file that are not records: (1-based line, why). They stay in the file.
    pub skipped: Vec<(usize, String)>,
    /// Bytes of a torn last line (a crash mid-write), cut when the log is opened for writing.
    pub torn_bytes: usize,
}

impl LabelLog {
    /// Reads the log at `path` (a missing file is an empty log) without writing to it.
    pub fn read(path: &Path) -> Result<Self, LabelError> {
        let read = read_jsonl_lenient::<LabelRecord>(path)?;
        let mut skipped = read.skipped;
        let mut records = Vec::with_capacity(read.records.len());
        for (line, r) in read.lines.into_iter().zip(read.records) {
            match validate(&r) {
                Ok(()) => records.push(r),
                Err(why) => skipped.push((line, why)),
            }
        }
        skipped.sort_by_key(|s| s.0);
        Ok(Self {
            path: path.to_path_buf(),
            records,
            writer: None,
            skipped,
            torn_bytes: read.torn_bytes,
        })
    }

    /// Opens the log at `path` for appending (created if missing; a torn last line cut).
    pub fn open(path: &Path) -> Result<Self, LabelError> {
        let mut log = Self::read(path)?;
        log.writer = Some(JsonlWriter::open(path)?);
        Ok(log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every valid record, in the order written.
    pub fn records(&self) -> &[LabelRecord] {
        &self.records
    }

    /// Appends a record and fsyncs it. An undo with nothing to withdraw is refused.
    pub fn append(&mut self, record: LabelRecord) -> Result<(), LabelError> {
        validate(&record).map_err(LabelError::Invalid)?;
        if record.choice == Choice::Undo
            && !self
                .in_effect()
                .contains_key(&(record.pair.clone(), record.labeler.clone()))
        {
            return Err(LabelError::Invalid(format!(
                "{} has no label of pair {} to undo",
                record.labeler, record.pair
            )));
        }
        let writer = self.writer.as_mut().ok_or_else(|| {
            LabelError::Invalid(format!("{} was opened read-only", self.path.display()))
        })?;
        writer.append(&record)?;
        self.records.push(record);
        Ok(())
    }

    /// The labels in effect: for each (pair, labeler), the latest label not withdrawn by an
    /// undo. Each undo withdraws the latest one still in effect, so undoing twice goes back
    /// two labels.
    pub fn in_effect(&self) -> BTreeMap<(String, String), LabelRecord> {
        let mut stacks: BTreeMap<(String, String), Vec<&LabelRecord>> = BTreeMap::new();
        for r in &self.records {
            let stack = stacks
                .entry((r.pair.clone(), r.labeler.clone()))
                .or_default();
            if r.choice == Choice::Undo {
                stack.pop();
            } else {
                stack.push(r);
            }
        }
        stacks
            .into_iter()
            .filter_map(|(k, s)| s.last().map(|r| (k, (*r).clone())))
            .collect()
    }

    /// The label `labeler` wrote last among those still in effect: what an undo by
    /// `labeler` would withdraw next, whatever pair it is on.
    pub fn latest_in_effect(&self, labeler: &str) -> Option<&LabelRecord> {
        let mut stacks: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.records.iter().enumerate() {
            if r.labeler != labeler {
                continue;
            }
            let stack = stacks.entry(r.pair.as_str()).or_default();
            if r.choice == Choice::Undo {
                stack.pop();
            } else {
                stack.push(i);
            }
        }
        let last = stacks.values().filter_map(|s| s.last()).max()?;
        self.records.get(*last)
    }

    /// The pairs `labeler` has a label of in effect.
    pub fn labeled_by(&self, labeler: &str) -> BTreeSet<String> {
        self.in_effect()
            .into_keys()
            .filter(|(_, l)| l == labeler)
            .map(|(p, _)| p)
            .collect()
    }
}

fn validate(r: &LabelRecord) -> Result<(), String> {
    if r.pair.trim().is_empty() {
        return Err("a label needs a pair id".into());
    }
    if r.labeler.trim().is_empty() {
        return Err(format!("the label of pair {} has no labeler", r.pair));
    }
    if !(r.seconds.is_finite() && r.seconds >= 0.0) {
        return Err(format!(
            "the label of pair {} took {} seconds",
            r.pair, r.seconds
        ));
    }
    Ok(())
}

/// What a set of labels says.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LabelStats {
    /// Labels in effect per labeler and choice.
    pub counts: BTreeMap<String, BTreeMap<Choice, usize>>,
    /// Cohen's κ for each pair of labelers (over the pairs both labeled A, B or equal), with
    /// the number of pairs; `None` when they share none.
    pub cohen: Vec<(String, String, usize, Option<f64>)>,
    /// Fleiss' κ over the pairs every labeler labeled A, B or equal (three labelers or
    /// more), with the number of pairs.
    pub fleiss: Option<(usize, f64)>,
    /// How often the episode shown on the left was preferred, among A/B choices with a side
    /// recorded, and how many those were.
    pub left_wins: Option<(f64, usize)>,
    /// The median seconds per label (undos left out).
    pub median_seconds: Option<f64>,
}

/// The categories agreement is measured over.
const AGREEMENT: [Choice; 3] = [Choice::A, Choice::B, Choice::Equal];

/// Counts, agreement, position bias and time per label of the labels in effect.
pub fn label_stats(labels: &BTreeMap<(String, String), LabelRecord>) -> LabelStats {
    let mut stats = LabelStats::default();
    let mut by_pair: BTreeMap<&str, BTreeMap<&str, Choice>> = BTreeMap::new();
    let mut seconds = Vec::new();
    let (mut sided, mut left) = (0usize, 0usize);
    for ((pair, labeler), r) in labels {
        *stats
            .counts
            .entry(labeler.clone())
            .or_default()
            .entry(r.choice)
            .or_default() += 1;
        if r.seconds > 0.0 {
            seconds.push(r.seconds);
        }
        if AGREEMENT.contains(&r.choice) {
            by_pair.entry(pair).or_default().insert(labeler, r.choice);
        }
        if let (Some(p), Some(l)) = (r.choice.preferred(), r.left) {
            sided += 1;
            left += usize::from(p == l);
        }
    }
    let labelers: Vec<&String> = stats.counts.keys().collect();
    for (i, a) in labelers.iter().enumerate() {
        for b in &labelers[i + 1..] {
            let both: Vec<(Choice, Choice)> = by_pair
                .values()
                .filter_map(|m| Some((*m.get(a.as_str())?, *m.get(b.as_str())?)))
                .collect();
            stats
                .cohen
                .push(((*a).clone(), (*b).clone(), both.len(), cohen_kappa(&both)));
        }
    }
    if labelers.len() >= 3 {
        let items: Vec<[usize; 3]> = by_pair
            .values()
            .filter(|m| m.len() == labelers.len())
            .map(|m| {
                let mut n = [0; 3];
                for c in m.values() {
                    if let Some(k) = AGREEMENT.iter().position(|x| x == c) {
                        n[k] += 1;
                    }
                }
                n
            })
            .collect();
        stats.fleiss = fleiss_kappa(&items).map(|k| (items.len(), k));
    }
    if sided > 0 {
        stats.left_wins = Some((left as f64 / sided as f64, sided));
    }
    seconds.sort_by(f64::total_cmp);
    if !seconds.is_empty() {
        let n = seconds.len();
        stats.median_seconds = Some(if n % 2 == 1 {
            seconds[n / 2]
        } else {
            (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0
        });
    }
    stats
}

/// Cohen's κ of two raters' labels of the same items: `(p_o − p_e) / (1 − p_e)`. `None` for
/// no items; 1 when both always give the same single category (no chance to disagree).
pub fn cohen_kappa(pairs: &[(Choice, Choice)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let share = |pick: fn(&(Choice, Choice)) -> Choice, c: Choice| {
        pairs.iter().filter(|p| pick(p) == c).count() as f64 / n
    };
    let expected: f64 = AGREEMENT
        .iter()
        .map(|&c| share(|p| p.0, c) * share(|p| p.1, c))
        .sum();
    Some(if (1.0 - expected).abs() < 1e-12 {
        1.0
    } else {
        (observed - expected) / (1.0 - expected)
    })
}

/// Fleiss' κ for items each rated by the same number of raters, given as counts per
/// category. `None` for no items or fewer than two raters; 1 when every rating falls in one
/// category.
pub fn fleiss_kappa(items: &[[usize; 3]]) -> Option<f64> {
    let raters = items.first()?.iter().sum::<usize>();
    if raters < 2 || items.iter().any(|i| i.iter().sum::<usize>() != raters) {
        return None;
    }
    let (n, r) = (items.len() as f64, raters as f64);
    let p_bar = items
        .iter()
        .map(|i| (i.iter().map(|&c| (c * c) as f64).sum::<f64>() - r) / (r * (r - 1.0)))
        .sum::<f64>()
        / n;
    let p_e: f64 = (0..3)
        .map(|k| {
            let p = items.iter().map(|i| i[k] as f64).sum::<f64>() / (n * r);
            p * p
        })
        .sum();
    Some(if (1.0 - p_e).abs() < 1e-12 {
        1.0
    } else {
        (p_bar - p_e) / (1.0 - p_e)
    })
}

/// A labeler that prefers the episode that got further: Bradley–Terry over the verifier's
/// progress, `P(A) = σ((progress_A − progress_B) / temperature)`, then a flip with probability
/// `flip`. Episodes with the same progress are labeled equally good (or, with `equal_ties`
/// off, drawn as plain Bradley–Terry draws them: a fair coin). Seeded per pair, so the same
/// pair gets the same label on every run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticLabeler {
    /// Softness of the preference: 0 always prefers the higher progress.
    pub temperature: f64,
    /// The rate at which a drawn preference is flipped, in `[0, 1]`.
    pub flip: f64,
    /// The seed.
    pub seed: u64,
    /// Label episodes with the same progress equally good (else a coin decides).
    #[serde(default = "yes")]
    pub equal_ties: bool,
}

fn yes() -> bool {
    true
}

impl Default for SyntheticLabeler {
    /// A sharp labeler that errs one time in ten: temperature 0.05, flip 0.1.
    fn default() -> Self {
        Self {
            temperature: 0.05,
            flip: 0.1,
            seed: 0,
            equal_ties: true,
        }
    }
}

impl SyntheticLabeler {
    /// The name its labels carry.
    pub const NAME: &'static str = "synthetic";

    /// Refuses a negative or non-finite temperature and a flip rate outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "the temperature must be 0 or more, got {}",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.flip) {
            return Err(format!(
                "the flip rate must be in [0, 1], got {}",
                self.flip
            ));
        }
        Ok(())
    }

    /// The choice for pair `id` whose episodes reached `progress` (A, B).
    pub fn choose(&self, id: &str, progress: (f64, f64)) -> Choice {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(id.as_bytes()));
        let diff = progress.0 - progress.1;
        let tie = diff.abs() < 1e-9;
        // Episodes that got equally far are equally good: a coin flip between them would be
        // a preference with nothing behind it.
        if tie && self.equal_ties {
            return Choice::Equal;
        }
        let p_a = if tie {
            0.5
        } else if self.temperature == 0.0 {
            if diff > 0.0 { 1.0 } else { 0.0 }
        } else {
            1.0 / (1.0 + (-diff / self.temperature).exp())
        };
        let preferred = if rng.random::<f64>() < p_a {
            Side::A
        } else {
            Side::B
        };
        let side = if rng.random::<f64>() < self.flip {
            preferred.other()
        } else {
            preferred
        };
        match side {
            Side::A => Choice::A,
            Side::B => Choice::B,
        }
    }
}

/// FNV-1a: a stable hash of a pair id (std's hasher may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(pair: &str, labeler: &str, choice: Choice) -> LabelRecord {
        LabelRecord {
            pair: pair.into(),
            labeler: labeler.into(),
            choice,
            left: Some(Side::A),
            seconds: 2.0,
            timestamp: 1.0,
        }
    }

    #[test]
    fn labels_survive_reopening_and_undo_is_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        let mut log = LabelLog::open(&path).unwrap();
        log.append(label("p1", "alice", Choice::A)).unwrap();
        log.append(label("p2", "alice", Choice::B)).unwrap();
        log.append(label("p2", "alice", Choice::Undo)).unwrap();
        log.append(label("p1", "bob", Choice::Equal)).unwrap();
        // Nothing left to undo for bob's p2.
        assert!(log.append(label("p2", "bob", Choice::Undo)).is_err());
        drop(log);
        let log = LabelLog::open(&path).unwrap();
        assert_eq!(log.records().len(), 4);
        let effect = log.in_effect();
        assert_eq!(effect.len(), 2);
        assert_eq!(effect[&("p1".into(), "alice".into())].choice, Choice::A);
        assert_eq!(log.labeled_by("alice"), BTreeSet::from(["p1".to_string()]));
        assert_eq!(log.labeled_by("bob"), BTreeSet::from(["p1".to_string()]));
    }

    #[test]
    fn a_torn_line_is_dropped_and_garbage_is_skipped_without_losing_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        let mut log = LabelLog::open(&path).unwrap();
        log.append(label("p1", "alice", Choice::A)).unwrap();
        drop(log);
        // A crash mid-write leaves half a line; a hand edit left garbage and an unknown choice.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n");
        text.push_str("{\"pair\":\"p3\",\"labeler\":\"alice\",\"choice\":\"maybe\"}\n");
        text.push_str("{\"pair\":\"p2\",\"labeler\":\"al");
        std::fs::write(&path, text).unwrap();
        let mut log = LabelLog::open(&path).unwrap();
        assert_eq!(log.records().len(), 1);
        assert_eq!(log.skipped.len(), 2);
        assert!(log.torn_bytes > 0);
        log.append(label("p2", "alice", Choice::B)).unwrap();
        let again = LabelLog::read(&path).unwrap();
        assert_eq!(again.records().len(), 2);
        assert_eq!(again.torn_bytes, 0);
        // The garbage lines are still there for a person to look at.
        assert_eq!(again.skipped.len(), 2);
        // Bad records are refused before they are written.
        let mut bad = label("p4", "", Choice::A);
        assert!(log.append(bad.clone()).is_err());
        bad.labeler = "alice".into();
        bad.seconds = f64::NAN;
        assert!(log.append(bad).is_err());
        assert!(
            LabelLog::read(&path)
                .unwrap()
                .append(label("p5", "x", Choice::A))
                .is_err()
        );
    }

    #[test]
    fn kappas_match_worked_examples() {
        use Choice::{A, B, Equal};
        // Cohen: 10 items, raters agree on 7; marginals A 5/5... computed by hand:
        // rater 1: A A A A A B B B B Equal, rater 2: A A A A B B B A Equal Equal.
        let r1 = [A, A, A, A, A, B, B, B, B, Equal];
        let r2 = [A, A, A, A, B, B, B, A, Equal, Equal];
        let pairs: Vec<_> = r1.iter().copied().zip(r2.iter().copied()).collect();
        // p_o = 0.7; p_e = 0.5·0.5 + 0.4·0.3 + 0.1·0.2 = 0.39; κ = 0.31 / 0.61.
        let k = cohen_kappa(&pairs).unwrap();
        assert!((k - 0.31 / 0.61).abs() < 1e-12, "{k}");
        assert_eq!(cohen_kappa(&[(A, A), (A, A)]), Some(1.0));
        assert_eq!(cohen_kappa(&[]), None);
        // Fleiss (Wikipedia's layout, 3 categories): 4 items, 3 raters.
        let items = [[3, 0, 0], [0, 3, 0], [1, 1, 1], [2, 1, 0]];
        // P_i = 1, 1, 0, 1/3 → P̄ = 7/12; p = (6, 5, 1)/12 → P_e = 62/144.
        let k = fleiss_kappa(&items).unwrap();
        let want = (7.0 / 12.0 - 62.0 / 144.0) / (1.0 - 62.0 / 144.0);
        assert!((k - want).abs() < 1e-12, "{k} vs {want}");
        assert_eq!(fleiss_kappa(&[[2, 0, 0], [1, 0, 0]]), None);
    }

    #[test]
    fn stats_count_agree_and_measure_position_bias() {
        let mut labels = BTreeMap::new();
        for (i, (a, b, c)) in [
            (Choice::A, Choice::A, Choice::A),
            (Choice::B, Choice::B, Choice::A),
            (Choice::A, Choice::B, Choice::Equal),
        ]
        .into_iter()
        .enumerate()
        {
            for (who, choice) in [("alice", a), ("bob", b), ("carol", c)] {
                let mut r = label(&format!("p{i}"), who, choice);
                r.seconds = 1.0 + i as f64;
                labels.insert((r.pair.clone(), who.to_string()), r);
            }
        }
        let s = label_stats(&labels);
        assert_eq!(s.counts["alice"][&Choice::A], 2);
        assert_eq!(s.cohen.len(), 3);
        assert_eq!(s.cohen[0].2, 3);
        assert_eq!(s.fleiss.map(|f| f.0), Some(3));
        // Left is always A: left wins = share of A among A/B choices (5 of 8).
        assert_eq!(s.left_wins, Some((5.0 / 8.0, 8)));
        assert_eq!(s.median_seconds, Some(2.0));
    }

    #[test]
    fn the_synthetic_labeler_follows_progress_flips_and_is_seeded() {
        let sharp = SyntheticLabeler {
            temperature: 0.0,
            flip: 0.0,
            seed: 1,
            equal_ties: true,
        };
        assert_eq!(sharp.choose("p", (1.0, 0.2)), Choice::A);
        assert_eq!(sharp.choose("p", (0.0, 0.2)), Choice::B);
        assert_eq!(sharp.choose("p", (0.5, 0.5)), Choice::Equal);
        // With flips at 10%, about 10% of clear pairs go the other way; the same pair always
        // gets the same label.
        let noisy = SyntheticLabeler { flip: 0.1, ..sharp };
        let flipped = (0..2000)
            .filter(|i| noisy.choose(&format!("p{i}"), (1.0, 0.0)) == Choice::B)
            .count();
        assert!((150..250).contains(&flipped), "{flipped}");
        assert_eq!(
            noisy.choose("p7", (1.0, 0.0)),
            noisy.choose("p7", (1.0, 0.0))
        );
        // Bradley–Terry: a small lead at temperature 0.1 wins about σ(1) = 73% of the time.
        let soft = SyntheticLabeler {
            temperature: 0.1,
            flip: 0.0,
            seed: 2,
            equal_ties: true,
        };
        let wins = (0..4000)
            .filter(|i| soft.choose(&format!("p{i}"), (0.6, 0.5)) == Choice::A)
            .count() as f64
            / 4000.0;
        assert!((wins - 0.731).abs() < 0.03, "{wins}");
        // Equal progress is equally good at any temperature and flip rate.
        let noisy_soft = SyntheticLabeler { flip: 0.3, ..soft };
        assert!((0..200).all(|i| noisy_soft.choose(&format!("p{i}"), (1.0, 1.0)) == Choice::Equal));
        // Without equal ties, a coin: about half each way.
        let coin = SyntheticLabeler {
            equal_ties: false,
            ..sharp
        };
        let a = (0..2000)
            .filter(|i| coin.choose(&format!("p{i}"), (0.5, 0.5)) == Choice::A)
            .count();
        assert!((900..1100).contains(&a), "{a}");
        assert_eq!(coin.choose("p", (1.0, 0.2)), Choice::A);
        assert!(SyntheticLabeler { flip: 1.5, ..sharp }.validate().is_err());
        assert!(
            SyntheticLabeler {
                temperature: -1.0,
                ..sharp
            }
            .validate()
            .is_err()
        );
    }
}
