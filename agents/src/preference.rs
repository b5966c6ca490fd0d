//! Preference data and training for the language controller: pairs of episodes sampled from a
//! model from one start state, labels on them (see [`crate::labels`]), TRL's preference format,
//! and DPO.
//!
//! A pairs folder holds `pairs.json` (what made the pairs: env, config, model, sampling) and
//! `pairs.jsonl` (one [`PairRecord`] per line, fsynced as each pair is done, so an interrupted
//! run goes on where it stopped), and the labels log `labels.jsonl`.
//!
//! Both episodes of a pair start from the env reset with the same seed: resets are
//! deterministic, and the two first observations are compared to prove it (a pair whose
//! starts differ is refused). The preference is over the first action (the prompt both sides
//! share), as ETO pairs trajectories from one instruction: the rest of each episode is the
//! evidence the labeler judges it by.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use dreamgym_base::{JsonlWriter, derive_seed, read_jsonl_lenient};
use dreamgym_envs::{Info, Registry};
use dreamgym_policies::Policy;
use dreamgym_policies::language::{
    LanguageModel, LanguagePolicy, PreferenceLoss, PreferenceMetrics, PreferencePair, Sampling,
    observation_text, preference_loss,
};
use serde::{Deserialize, Serialize};

use crate::labels::{Choice, LabelLog, LabelRecord, SyntheticLabeler};
use crate::{Interrupted, MetricsLog, Progress, RunDir};

/// The pairs file of a pairs folder.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// The labels log of a pairs folder.
pub const LABELS_FILE: &str = "labels.jsonl";
/// What made a pairs folder's pairs.
pub const PAIRS_META: &str = "pairs.json";

/// One step of an episode: what the controller saw, what it wrote, what the env said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// The observation text.
    pub observation: String,
    /// The action text.
    pub action: String,
    /// The env's feedback on it.
    pub feedback: String,
}

/// One episode of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairSide {
    /// The seed the policy sampled with.
    pub sample_seed: u64,
    /// Its steps.
    pub turns: Vec<Turn>,
    /// Whether the instruction's verifier said it succeeded.
    pub success: bool,
    /// The verifier's final progress, 0 to 1.
    pub progress: f64,
}

/// A pair of episodes from one start state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// Its id (`p000042`).
    pub id: String,
    /// The env seed both episodes started from.
    pub seed: u64,
    /// The instruction.
    pub instruction: String,
    /// The instruction's family.
    pub family: String,
    /// Episode A.
    pub a: PairSide,
    /// Episode B.
    pub b: PairSide,
}

impl PairRecord {
    /// The first observation (both sides share it).
    pub fn prompt(&self) -> &str {
        self.a
            .turns
            .first()
            .map(|t| t.observation.as_str())
            .unwrap_or("")
    }

    /// The first action of a side.
    pub fn first_action(&self, b: bool) -> &str {
        let side = if b { &self.b } else { &self.a };
        side.turns.first().map(|t| t.action.as_str()).unwrap_or("")
    }
}

/// What made a pairs folder's pairs (`pairs.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsMeta {
    /// The env id.
    pub env: String,
    /// Its config.
    pub env_config: serde_json::Value,
    /// The model (a run folder or a file).
    pub model: String,
    /// How actions were sampled.
    pub sampling: Sampling,
    /// The first env seed.
    pub seed: u64,
    /// Samples of episode B's first action drawn to find one that differs from A's (1: B is
    /// sampled once, as in folders made before this setting).
    #[serde(default = "one")]
    pub distinct_attempts: usize,
    /// Episode B's first action is episode A's with one decision changed
    /// ([`PairsConfig::edit`]); absent (false) in folders made before this setting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edit: bool,
    /// Episode A is decoded greedily ([`PairsConfig::greedy_a`]); absent (false) in folders
    /// made before this setting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub greedy_a: bool,
    /// Most actions per episode; absent in folders made before it was recorded (those go on
    /// with whatever is asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<usize>,
    /// The model's fingerprint (its weights' CRC-32, or a pretrained file's checksum):
    /// absent in folders made before it was recorded, where the model's path decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
}

fn one() -> usize {
    1
}

/// Settings of [`collect_pairs`].
#[derive(Debug, Clone, PartialEq)]
pub struct PairsConfig {
    /// Pairs wanted in the folder (those already there count).
    pub count: usize,
    /// The env seed of pair 0 (pair `i` starts from `seed + i`).
    pub seed: u64,
    /// How both sides sample (temperature above 0, or the two sides are the same).
    pub sampling: Sampling,
    /// Most actions per episode.
    pub max_turns: usize,
    /// Episode B's first action is sampled up to this many times, each from a seed of its
    /// own, until it differs from A's: a pair whose first actions are the same says nothing
    /// about which action is better. 1 samples once.
    pub distinct_attempts: usize,
    /// Episode B's first action is episode A's with one slot of one command changed to
    /// another value the table offers (Tabletop's action language: another object, zone,
    /// relation or direction; [`one_slot_edits`]), drawn uniformly, instead of a sample: an
    /// answer one decision away from the model's own, which sampling may never reach (the
    /// model's support is all DPO can re-rank). Where A's first action does not parse or has
    /// nothing to change, B is sampled as without it. The rest of B's episode is the model's.
    pub edit: bool,
    /// Episode A is decoded greedily (what the model does when it is evaluated) and only B
    /// samples: every label then says whether the model's own answer or another one is
    /// better, which is what moves greedy decoding. `sampling`'s temperature is B's.
    pub greedy_a: bool,
    /// The model's fingerprint (`language_model_fingerprint`), recorded so that a folder goes
    /// on only with the same model, whatever its path is called, and never with another model
    /// trained since at the same path.
    pub model_fingerprint: Option<String>,
}

/// Reads a pairs folder: its meta and every complete pair (a torn last line from a crash is
/// dropped; a line that is not a pair is an error naming it).
pub fn read_pairs(dir: &Path) -> anyhow::Result<(PairsMeta, Vec<PairRecord>)> {
    let read = read_pairs_folder(dir)?;
    Ok((read.meta, read.records))
}

/// A pairs folder as [`read_pairs_folder`] reads it.
#[derive(Debug, Clone)]
pub struct PairsRead {
    /// `pairs.json`.
    pub meta: PairsMeta,
    /// Every complete pair, in order.
    pub records: Vec<PairRecord>,
    /// Bytes of a torn last line of `pairs.jsonl` (a crash mid-write), left out: the pair it
    /// began is made again by the next `pairs` run into the folder.
    pub torn_bytes: usize,
}

/// [`read_pairs`], saying also how long a torn last line was, so that read-only commands can
/// report it.
pub fn read_pairs_folder(dir: &Path) -> anyhow::Result<PairsRead> {
    let meta_path = dir.join(PAIRS_META);
    let meta: PairsMeta =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).with_context(|| {
            format!("{} is not a pairs folder (no {PAIRS_META})", dir.display())
        })?)
        .with_context(|| format!("cannot read {}", meta_path.display()))?;
    let read = read_jsonl_lenient::<PairRecord>(&dir.join(PAIRS_FILE))?;
    if let Some((line, why)) = read.skipped.first() {
        anyhow::bail!(
            "{}: line {line} is not a pair: {why}",
            dir.join(PAIRS_FILE).display()
        );
    }
    // Labels name pairs by id: two pairs under one id would give one pair's labels to the
    // other.
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for (i, r) in read.records.iter().enumerate() {
        if let Some(earlier) = first_line.insert(&r.id, i + 1) {
            anyhow::bail!(
                "{}: pairs {earlier} and {} both have the id {} (two `pairs` runs wrote into \
                 the folder at once, or its {PAIRS_META} was lost and a new run appended): \
                 labels could not tell them apart; keep the pairs of one run",
                dir.join(PAIRS_FILE).display(),
                i + 1,
                r.id
            );
        }
    }
    Ok(PairsRead {
        meta,
        records: read.records,
        torn_bytes: read.torn_bytes,
    })
}

/// Samples pairs of episodes from `model` into `dir`, from env seeds `seed`, `seed + 1`, ...;
/// pairs already in the folder are kept and the run goes on after them. Returns the pairs.
#[allow(clippy::too_many_arguments)]
pub fn collect_pairs(
    model: Arc<LanguageModel>,
    model_name: &str,
    registry: &Registry,
    env: (&str, &serde_json::Value),
    cfg: &PairsConfig,
    dir: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<PairRecord>> {
    anyhow::ensure!(
        cfg.sampling.temperature > 0.0,
        "pairs need sampling (a temperature above 0): greedy decoding writes the same action twice"
    );
    anyhow::ensure!(cfg.max_turns > 0, "an episode needs at least one turn");
    anyhow::ensure!(
        (1..=1000).contains(&cfg.distinct_attempts),
        "distinct attempts must be in 1..=1000, got {}",
        cfg.distinct_attempts
    );
    let meta = PairsMeta {
        env: env.0.to_string(),
        env_config: env.1.clone(),
        model: model_name.to_string(),
        sampling: cfg.sampling,
        seed: cfg.seed,
        distinct_attempts: cfg.distinct_attempts,
        edit: cfg.edit,
        greedy_a: cfg.greedy_a,
        max_turns: Some(cfg.max_turns),
        model_fingerprint: cfg.model_fingerprint.clone(),
    };
    // The last pair starts from seed + count - 1.
    anyhow::ensure!(
        cfg.seed
            .checked_add(cfg.count.saturating_sub(1) as u64)
            .is_some(),
        "the env seeds {} + 0..{} go past the largest seed (2^64 - 1)",
        cfg.seed,
        cfg.count
    );
    // One writer at a time: two runs into one folder would write every pair twice.
    let _lock = dreamgym_base::FolderLock::acquire(dir).map_err(|e| match e {
        dreamgym_base::LockError::Busy { .. } => anyhow::anyhow!(
            "{}: another `pairs` run is writing into this folder ({e}); wait for it to end",
            dir.display()
        ),
        other => anyhow::Error::from(other),
    })?;
    let meta_path = dir.join(PAIRS_META);
    let mut pairs = if meta_path.exists() {
        let (mut old, pairs) = read_pairs(dir)?;
        // Folders made before `max_turns` was recorded go on with what is asked.
        old.max_turns = old.max_turns.or(meta.max_turns);
        match (&old.model_fingerprint, &meta.model_fingerprint) {
            // The same model, its path spelled otherwise (`./model`, an absolute path).
            (Some(a), Some(b)) if a == b => old.model = meta.model.clone(),
            // Made before fingerprints were recorded: the path decides, as it did.
            (None, _) => old.model_fingerprint = meta.model_fingerprint.clone(),
            // Another model (or none known now): named below as a difference.
            _ => {}
        }
        if old != meta {
            let (a, b) = (serde_json::to_value(&old)?, serde_json::to_value(&meta)?);
            // A setting left out of one side is its default: false for a switch (the other
            // side says it is one), absent otherwise.
            let keys: BTreeSet<&String> = a
                .as_object()
                .into_iter()
                .chain(b.as_object())
                .flat_map(|m| m.keys())
                .collect();
            let shown =
                |v: Option<&serde_json::Value>, other: Option<&serde_json::Value>| match (v, other)
                {
                    (Some(v), _) => v.to_string(),
                    (None, Some(serde_json::Value::Bool(_))) => "false".into(),
                    (None, _) => "absent".into(),
                };
            let differ: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
                .map(|k| {
                    let (there, now) = (a.get(k.as_str()), b.get(k.as_str()));
                    format!(
                        "{k}: {} there, {} now",
                        shown(there, now),
                        shown(now, there)
                    )
                })
                .collect();
            anyhow::bail!(
                "{} holds pairs made otherwise ({}): use another folder, or the same settings \
                 to go on",
                dir.display(),
                differ.join("; ")
            );
        }
        pairs
    } else {
        // A folder that is not (or is no longer) a pairs folder: another command's run, or
        // pairs whose pairs.json was lost, to which new pairs would be appended under ids
        // their labels already use.
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != dreamgym_base::LOCK_FILE)
            .collect();
        anyhow::ensure!(
            foreign.is_empty(),
            "{} is not a pairs folder: it holds {} but no {PAIRS_META}; give `pairs` a new or \
             empty folder",
            dir.display(),
            foreign.join(", ")
        );
        dreamgym_base::write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
        Vec::new()
    };
    let mut writer = JsonlWriter::open(&dir.join(PAIRS_FILE))?;
    let mut e = registry
        .make(env.0, Some(env.1))
        .with_context(|| format!("cannot build {}", env.0))?;
    let mut policy = LanguagePolicy::new(model.clone(), cfg.sampling, model_name);
    let mut greedy = cfg.greedy_a.then(|| {
        let sampling = Sampling {
            temperature: 0.0,
            ..cfg.sampling
        };
        LanguagePolicy::new(model, sampling, model_name)
    });
    progress.begin("pairs", cfg.count as u64);
    progress.advance(pairs.len().min(cfg.count) as u64);
    for i in pairs.len()..cfg.count {
        if progress.interrupted() {
            return Err(Interrupted {
                stage: "pairs".into(),
                saved: format!("{i} pairs are saved; run again to go on"),
            }
            .into());
        }
        let seed = cfg.seed + i as u64;
        let mut sides = Vec::new();
        let mut start: Option<String> = None;
        let mut info0 = Info::new();
        for side in 0..2u64 {
            let (obs, info) = e.reset(Some(seed), &Info::new())?;
            let text = observation_text(&obs).unwrap_or("").to_string();
            match &start {
                None => {
                    start = Some(text);
                    info0 = info;
                }
                Some(s) => anyhow::ensure!(
                    *s == text,
                    "{} did not restart identically from seed {seed}: the two episodes of a \
                     pair must share their start",
                    env.0
                ),
            }
            let mut sample_seed = derive_seed(seed, "pair side", side);
            let edited = if side == 1 && cfg.edit {
                sides.first().and_then(|a: &PairSide| {
                    let first = a.turns.first()?;
                    edit_first_action(&first.observation, &first.action, seed)
                })
            } else {
                None
            };
            if side == 1 && edited.is_none() {
                // B's first action: the first of up to `distinct_attempts` samples that differs
                // from A's (the last one drawn when none does). Sampling is seeded, so the
                // episode below writes that same action first.
                let first_a = sides
                    .first()
                    .map(|a: &PairSide| a.turns.first().map(|t| t.action.clone()))
                    .unwrap_or_default();
                for attempt in 0..cfg.distinct_attempts as u64 {
                    if attempt > 0 {
                        sample_seed = derive_seed(seed, "pair side b attempt", attempt);
                    }
                    policy.reset(sample_seed)?;
                    let first = policy.act(&obs)?;
                    if first.as_text() != first_a.as_deref() {
                        break;
                    }
                }
            }
            let side_policy = match greedy.as_mut() {
                Some(g) if side == 0 => g,
                _ => &mut policy,
            };
            side_policy.reset(sample_seed)?;
            sides.push(run_side(
                e.as_mut(),
                side_policy,
                obs,
                sample_seed,
                cfg.max_turns,
                edited,
            )?);
        }
        let text = |k: &str| {
            info0
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (b, a) = (sides.pop(), sides.pop());
        let (Some(a), Some(b)) = (a, b) else {
            anyhow::bail!("a pair lost a side");
        };
        let record = PairRecord {
            id: format!("p{i:06}"),
            seed,
            instruction: text("instruction"),
            family: text("family"),
            a,
            b,
        };
        writer.append(&record)?;
        pairs.push(record);
        progress.advance(1);
    }
    progress.end();
    Ok(pairs)
}

/// Episode B's first action under [`PairsConfig::edit`]: `action` (A's, on `observation`)
/// with one slot changed, drawn with a seed of the pair; `None` when the observation is not
/// Tabletop's or the action does not parse or has nothing to change.
fn edit_first_action(observation: &str, action: &str, seed: u64) -> Option<String> {
    use dreamgym_envs::builtin::tabletop;
    use rand::{RngExt, SeedableRng};
    let (_, scene) = tabletop::parse_observation(observation)?;
    let program = tabletop::parse_program(action).ok()?;
    let edits = tabletop::one_slot_edits(&program, &scene);
    if edits.is_empty() {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(seed, "pair side b edit", 0));
    let pick = rng.random_range(0..edits.len());
    Some(tabletop::format_program(&edits[pick]))
}

/// Runs one episode of a pair (its first action `first` when given, else the policy's).
fn run_side(
    e: &mut dyn dreamgym_envs::Env,
    policy: &mut LanguagePolicy,
    mut obs: dreamgym_envs::Value,
    sample_seed: u64,
    max_turns: usize,
    mut first: Option<String>,
) -> anyhow::Result<PairSide> {
    let mut turns = Vec::new();
    let mut success = false;
    let mut progress = 0.0;
    for _ in 0..max_turns {
        let observation = observation_text(&obs).unwrap_or("").to_string();
        let action = match first.take() {
            Some(text) => dreamgym_envs::Value::Text(text),
            None => policy.act(&obs)?,
        };
        let step = e.step(&action)?;
        turns.push(Turn {
            observation,
            action: action.as_text().unwrap_or("").to_string(),
            feedback: step
                .info
                .get("feedback")
                .and_then(|f| f.as_str())
                .unwrap_or("")
                .to_string(),
        });
        progress = step
            .info
            .get("progress")
            .and_then(|p| p.as_f64())
            .unwrap_or(progress);
        obs = step.obs;
        if step.terminated || step.truncated {
            success = step.info.get("success") == Some(&true.into());
            break;
        }
    }
    Ok(PairSide {
        sample_seed,
        turns,
        success,
        progress,
    })
}

/// Labels every pair of `pairs` that `labeler` has not labeled yet, appending to `log`.
/// Returns how many it labeled.
pub fn synth_labels(
    pairs: &[PairRecord],
    log: &mut LabelLog,
    labeler: &SyntheticLabeler,
) -> anyhow::Result<usize> {
    labeler.validate().map_err(anyhow::Error::msg)?;
    let done = log.labeled_by(SyntheticLabeler::NAME);
    let mut n = 0;
    for p in pairs.iter().filter(|p| !done.contains(&p.id)) {
        let choice = labeler.choose(&p.id, (p.a.progress, p.b.progress));
        log.append(LabelRecord {
            pair: p.id.clone(),
            labeler: SyntheticLabeler::NAME.into(),
            choice,
            left: None,
            seconds: 0.0,
            timestamp: now(),
        })?;
        n += 1;
    }
    Ok(n)
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One preference as text: the shared prompt (an observation) and the two first actions.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPreference {
    /// The pair.
    pub pair: String,
    /// The observation both sides started from.
    pub prompt: String,
    /// The preferred first action.
    pub chosen: String,
    /// The other.
    pub rejected: String,
}

/// The preferences the labels in effect give: one per (pair, labeler) with a choice of A or B
/// whose first actions differ (equal, skipped and identical-action pairs say nothing to learn).
/// Labels of pairs not in `pairs` are counted in the second value and left out.
pub fn preferences(pairs: &[PairRecord], log: &LabelLog) -> (Vec<TextPreference>, usize) {
    let by_id: std::collections::BTreeMap<&str, &PairRecord> =
        pairs.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut out = Vec::new();
    let mut unknown = 0;
    for ((pair, _), label) in log.in_effect() {
        let Some(p) = by_id.get(pair.as_str()) else {
            unknown += 1;
            continue;
        };
        let Some(side) = label.choice.preferred() else {
            continue;
        };
        let b_wins = side == crate::labels::Side::B;
        let (chosen, rejected) = (p.first_action(b_wins), p.first_action(!b_wins));
        if chosen == rejected {
            continue;
        }
        out.push(TextPreference {
            pair: pair.clone(),
            prompt: p.prompt().to_string(),
            chosen: chosen.to_string(),
            rejected: rejected.to_string(),
        });
    }
    (out, unknown)
}

/// A fingerprint of preferences (their pairs and texts, in order): what a DPO checkpoint or a
/// reward model was trained on.
pub fn preferences_fingerprint(prefs: &[TextPreference]) -> String {
    let mut bytes = Vec::new();
    for p in prefs {
        for field in [&p.pair, &p.prompt, &p.chosen, &p.rejected] {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(0);
        }
    }
    format!("{}:{:016x}", prefs.len(), crate::labels::fnv1a(&bytes))
}

/// A preference in TRL's conversational preference format (`prompt`, `chosen`, `rejected`,
/// each a list of messages), which `datasets.load_dataset("json", ...)` and `DPOTrainer`
/// read as they are.
pub fn to_trl(p: &TextPreference) -> serde_json::Value {
    let msg = |role: &str, content: &str| serde_json::json!([{ "role": role, "content": content }]);
    serde_json::json!({
        "prompt": msg("user", &p.prompt),
        "chosen": msg("assistant", &p.chosen),
        "rejected": msg("assistant", &p.rejected),
    })
}

/// Reads one line of TRL's preference format (conversational, or plain strings) back.
pub fn from_trl(v: &serde_json::Value) -> anyhow::Result<(String, String, String)> {
    let field = |k: &str| -> anyhow::Result<String> {
        let x = v
            .get(k)
            .with_context(|| format!("a TRL preference needs `{k}`"))?;
        if let Some(s) = x.as_str() {
            return Ok(s.to_string());
        }
        let msgs = x
            .as_array()
            .with_context(|| format!("`{k}` is neither text nor a list of messages"))?;
        let texts: Vec<&str> = msgs
            .iter()
            .filter_map(|m| m.get("content").and_then(|c| c.as_str()))
            .collect();
        anyhow::ensure!(
            texts.len() == msgs.len() && !texts.is_empty(),
            "`{k}` has messages without text content"
        );
        Ok(texts.join("\n"))
    };
    Ok((field("prompt")?, field("chosen")?, field("rejected")?))
}

/// What [`import_trl`] made of a TRL file.
#[derive(Debug, Clone, PartialEq)]
pub struct TrlImport {
    /// One label of the labeler per pair the file prefers a side of.
    pub labels: Vec<LabelRecord>,
    /// Lines that match no pair of the folder.
    pub unmatched: usize,
    /// Lines that repeat an earlier line's preference for the same pair.
    pub repeated: usize,
}

/// Labels from TRL-format preferences, `(line number, line)`: each line is matched to the pair
/// whose prompt and first actions it carries, and becomes a label of `labeler`. A line that
/// repeats an earlier one's preference is counted, not labeled twice; two lines that prefer
/// opposite sides of one pair are an error naming both (nothing is imported).
pub fn import_trl(
    pairs: &[PairRecord],
    lines: &[(usize, serde_json::Value)],
    labeler: &str,
) -> anyhow::Result<TrlImport> {
    let mut out = TrlImport {
        labels: Vec::new(),
        unmatched: 0,
        repeated: 0,
    };
    // Pair id -> the line that labeled it, and its choice.
    let mut seen: BTreeMap<&str, (usize, Choice)> = BTreeMap::new();
    for (line, v) in lines {
        let (prompt, chosen, rejected) = from_trl(v).with_context(|| format!("line {line}"))?;
        anyhow::ensure!(
            chosen != rejected,
            "line {line}: its chosen and rejected answers are the same: it prefers nothing \
             (nothing was imported)"
        );
        let found = pairs.iter().find_map(|p| {
            let (a, b) = (p.first_action(false), p.first_action(true));
            if p.prompt() != prompt {
                None
            } else if a == chosen && b == rejected {
                Some((p, Choice::A))
            } else if b == chosen && a == rejected {
                Some((p, Choice::B))
            } else {
                None
            }
        });
        let Some((p, choice)) = found else {
            out.unmatched += 1;
            continue;
        };
        match seen.get(p.id.as_str()) {
            Some(&(_, c)) if c == choice => out.repeated += 1,
            Some(&(first, _)) => anyhow::bail!(
                "lines {first} and {line} prefer opposite sides of pair {}: nothing was imported",
                p.id
            ),
            None => {
                seen.insert(&p.id, (*line, choice));
                out.labels.push(LabelRecord {
                    pair: p.id.clone(),
                    labeler: labeler.to_string(),
                    choice,
                    left: None,
                    seconds: 0.0,
                    timestamp: now(),
                });
            }
        }
    }
    Ok(out)
}

/// Preferences as token ids, with the pair each came from.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    /// The preferences that fit the model's context, in order.
    pub pairs: Vec<PreferencePair>,
    /// The pair id of each of `pairs`.
    pub ids: Vec<String>,
    /// Pairs whose prompt and an answer do not fit the model's context together (an answer
    /// sampled at a high temperature that ran on to the end of the context), left out.
    pub too_long: Vec<String>,
    /// The model's context, in tokens.
    pub context: usize,
}

impl Tokenized {
    /// How many preferences fit.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether none fits.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Says which preferences were left out, if any, through `progress`.
    pub fn note_left_out(&self, progress: &dyn Progress) {
        if let Some(first) = self.too_long.first() {
            progress.note(&format!(
                "{} preference{} left out: a prompt and an answer longer than the model's \
                 context of {} tokens (pair {first}{})",
                self.too_long.len(),
                if self.too_long.len() == 1 { "" } else { "s" },
                self.context,
                if self.too_long.len() > 1 {
                    " and others"
                } else {
                    ""
                }
            ));
        }
    }
}

/// Tokenizes preferences for `model`: the prompt as the model is prompted, each answer with
/// its end token. Preferences that do not fit the model's context are left out and named in
/// [`Tokenized::too_long`]; when there are some and none fits, that is an error.
pub fn tokenize_preferences(
    model: &LanguageModel,
    prefs: &[TextPreference],
) -> anyhow::Result<Tokenized> {
    let tok = model.tokenizer();
    let block = model.config().transformer.block_size;
    let mut out = Tokenized {
        context: block,
        ..Tokenized::default()
    };
    for p in prefs {
        let prompt = model.prompt_ids(&model.prompt(&p.prompt))?;
        let answer = |t: &str| -> anyhow::Result<Vec<u32>> {
            let mut ids = tok.encode(t)?;
            ids.push(tok.eos());
            Ok(ids)
        };
        let (chosen, rejected) = (answer(&p.chosen)?, answer(&p.rejected)?);
        if prompt.len() + chosen.len().max(rejected.len()) > block {
            out.too_long.push(p.pair.clone());
            continue;
        }
        out.pairs.push(PreferencePair {
            prompt,
            chosen,
            rejected,
        });
        out.ids.push(p.pair.clone());
    }
    anyhow::ensure!(
        prefs.is_empty() || !out.is_empty(),
        "none of the {} preferences fits the model's context of {block} tokens",
        prefs.len()
    );
    Ok(out)
}

/// Settings of [`train_dpo`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    /// The loss.
    pub loss: PreferenceLoss,
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// AdamW's learning rate.
    pub lr: f64,
    /// The seed of the batch order.
    pub seed: u64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            loss: PreferenceLoss::default(),
            steps: 200,
            batch_size: 16,
            lr: 1e-4,
            seed: 0,
        }
    }
}

/// The columns of a DPO run's metrics (`metrics/dpo.csv`): TRL's names.
pub const DPO_COLUMNS: [&str; 8] = [
    "step",
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

/// Where [`train_dpo`] keeps its checkpoint: the policy as `lm.*` in `run` (with AdamW's
/// moments and the steps done), and its metrics in `metrics/dpo.csv`, saved every `every`
/// steps, when stopped, and at the end. `made_from` says what is trained (the start model, the
/// preferences, the settings): a checkpoint made from anything else is refused, never resumed.
pub struct DpoCheckpoint<'a> {
    /// The run folder.
    pub run: &'a RunDir,
    /// Steps between saves.
    pub every: usize,
    /// What the training is made from.
    pub made_from: serde_json::Value,
}

impl DpoCheckpoint<'_> {
    fn stem(&self) -> PathBuf {
        self.run.checkpoint(crate::language::LM_CHECKPOINT)
    }

    /// The steps done by the checkpoint in the folder (0 when there is none); an error when
    /// the folder holds a checkpoint of other training.
    pub(crate) fn steps_done(&self) -> anyhow::Result<usize> {
        let Some((state, _)) = crate::language::read_state(&self.stem())? else {
            return Ok(0);
        };
        let dpo = state.get("dpo");
        anyhow::ensure!(
            dpo.and_then(|d| d.get("made_from")) == Some(&self.made_from),
            "{} holds a model that is not a DPO checkpoint of this training (another start \
             model, other preferences or settings): use another folder, or delete it",
            self.run.root().display()
        );
        Ok(dpo
            .and_then(|d| d.get("steps_done"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize)
    }

    fn save(
        &self,
        policy: &LanguageModel,
        opt: &dreamgym_nn::Adam,
        metrics: &mut MetricsLog,
        steps_done: usize,
    ) -> anyhow::Result<()> {
        metrics.commit()?;
        policy.save(
            &self.stem(),
            Some(opt),
            serde_json::json!({
                "dpo": { "steps_done": steps_done, "made_from": self.made_from }
            }),
        )?;
        Ok(())
    }
}

/// DPO (or another [`PreferenceLoss`]) on `pairs`: `policy` trains, `reference` gives the
/// frozen log-probs (computed once). Returns each step's loss and metrics.
///
/// With a [`DpoCheckpoint`], training resumes from the one in its folder (weights, AdamW's
/// moments and the batch order exactly as an uninterrupted run has them, so the result is
/// the same bit for bit) and returns every step's numbers as the metrics file holds them
/// (those before the resume read back from it); a finished checkpoint is loaded and nothing
/// trains.
pub fn train_dpo(
    policy: &LanguageModel,
    reference: &LanguageModel,
    pairs: &[PreferencePair],
    cfg: &DpoConfig,
    checkpoint: Option<&DpoCheckpoint>,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<(f64, PreferenceMetrics)>> {
    cfg.loss.validate()?;
    anyhow::ensure!(!pairs.is_empty(), "DPO needs at least one labeled pair");
    anyhow::ensure!(cfg.batch_size > 0, "batch_size must be at least 1");
    let mut opt = adam(policy.varmap(), cfg.lr)?;
    let start = match checkpoint {
        Some(c) => c.steps_done()?.min(cfg.steps),
        None => 0,
    };
    if let (Some(c), true) = (checkpoint, start > 0) {
        policy.load_trainable(&c.stem())?;
        dreamgym_nn::load_optimizer(&c.stem(), &mut opt)?;
    }
    let mut metrics = match checkpoint {
        Some(c) => Some(MetricsLog::open(
            c.run,
            "dpo",
            &DPO_COLUMNS,
            Some(start as f64 + 0.5),
        )?),
        None => None,
    };
    let mut log: Vec<(f64, PreferenceMetrics)> = metrics
        .as_ref()
        .map(|m| m.rows().iter().filter_map(|r| row_metrics(r)).collect())
        .unwrap_or_default();
    if let (Some(c), true) = (checkpoint, log.len() != start) {
        anyhow::bail!(
            "{} has {} rows of DPO metrics for a checkpoint after {start} steps: delete the \
             folder to train again",
            c.run.root().display(),
            log.len()
        );
    }
    let mut batches = Epochs::new(
        (0..pairs.len()).collect(),
        derive_seed(cfg.seed, "dpo.order", 0),
    );
    // The batch order goes on where the checkpoint stopped.
    for _ in 0..start {
        batches.next(cfg.batch_size);
    }
    if start == cfg.steps {
        return Ok(log);
    }
    if start > 0 {
        progress.note(&format!("DPO: resuming after step {start}"));
    }
    let refs = {
        let mut all = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(cfg.batch_size.max(1)) {
            all.extend(dreamgym_policies::language::reference_logps(
                reference, chunk,
            )?);
        }
        all
    };
    progress.begin("DPO", (cfg.steps - start) as u64);
    for step in start..cfg.steps {
        if progress.interrupted() {
            progress.end();
            if let (Some(c), Some(m)) = (checkpoint, metrics.as_mut())
                && step > start
            {
                c.save(policy, &opt, m, step)?;
                return Err(Interrupted {
                    stage: "DPO".into(),
                    saved: format!("the model is saved after step {step}; run again to resume"),
                }
                .into());
            }
            return Err(stopped("DPO", step, "the model"));
        }
        let batch = batches.next(cfg.batch_size);
        let b: Vec<PreferencePair> = batch.iter().map(|&i| pairs[i].clone()).collect();
        let r: Vec<(f32, f32)> = batch.iter().map(|&i| refs[i]).collect();
        // On rayon's workers: see `dreamgym_nn::on_workers`.
        let (value, m) = dreamgym_nn::on_workers(|| -> anyhow::Result<_> {
            let (loss, m) = preference_loss(policy, &b, &r, &cfg.loss)?;
            let value = loss.to_scalar::<f32>()? as f64;
            anyhow::ensure!(value.is_finite(), "the DPO loss is {value} at step {step}");
            opt.step(loss.backward()?)?;
            Ok((value, m))
        })?;
        match metrics.as_mut() {
            Some(csv) => {
                let row = [
                    step as f64 + 1.0,
                    value,
                    m.rewards_chosen,
                    m.rewards_rejected,
                    m.rewards_accuracies,
                    m.rewards_margins,
                    m.logps_chosen,
                    m.logps_rejected,
                ];
                csv.push(&row)?;
                // The numbers as the file keeps them: a resumed run returns the same.
                log.extend(row_metrics(&row.map(crate::metrics::as_saved)));
            }
            None => log.push((value, m)),
        }
        progress.advance(1);
        if let (Some(c), Some(csv)) = (checkpoint, metrics.as_mut())
            && ((step + 1) % c.every.max(1) == 0 || step + 1 == cfg.steps)
        {
            ensure_finite_weights(policy.varmap(), "DPO", step + 1)?;
            c.save(policy, &opt, csv, step + 1)?;
        }
    }
    progress.end();
    // With a checkpoint, the last step's save above checked the weights already.
    if checkpoint.is_none() {
        ensure_finite_weights(policy.varmap(), "DPO", cfg.steps)?;
    }
    Ok(log)
}

/// A metrics row (in [`DPO_COLUMNS`] order) as the loss and the metrics.
fn row_metrics(r: &[f64]) -> Option<(f64, PreferenceMetrics)> {
    (r.len() == DPO_COLUMNS.len()).then(|| {
        (
            r[1],
            PreferenceMetrics {
                rewards_chosen: r[2],
                rewards_rejected: r[3],
                rewards_accuracies: r[4],
                rewards_margins: r[5],
                logps_chosen: r[6],
                logps_rejected: r[7],
            },
        )
    })
}

/// The pairs folders of a run, one per round (`pairs/round1`, ...).
pub fn round_dir(run: &Path, round: usize) -> PathBuf {
    run.join("pairs").join(format!("round{round}"))
}

/// Pair ids labeled by someone (any choice).
pub fn labeled_pairs(log: &LabelLog) -> BTreeSet<String> {
    log.in_effect().into_keys().map(|(p, _)| p).collect()
}

/// AdamW without weight decay over every variable of `varmap` (in name order, so that runs
/// repeat): the optimiser of DPO, the reward model and RLOO. The learning rate must be in
/// (0, 1]: Adam's steps are about `lr` per weight, and above 1 a model is noise at once.
pub(crate) fn adam(varmap: &candle_nn::VarMap, lr: f64) -> anyhow::Result<dreamgym_nn::Adam> {
    anyhow::ensure!(
        lr.is_finite() && lr > 0.0 && lr <= 1.0,
        "the learning rate must be in (0, 1], got {lr}"
    );
    Ok(dreamgym_nn::Adam::new(
        dreamgym_nn::sorted_vars(varmap),
        dreamgym_nn::AdamConfig {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?)
}

/// An error when a weight of `varmap` is NaN or infinite: training diverged (each step's loss
/// is checked, but the last step's update is not), and such a model must not be saved.
pub(crate) fn ensure_finite_weights(
    varmap: &candle_nn::VarMap,
    what: &str,
    steps: usize,
) -> anyhow::Result<()> {
    for var in varmap.all_vars() {
        let sum = var
            .as_tensor()
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?;
        let sum = sum.to_scalar::<f64>()?;
        anyhow::ensure!(
            sum.is_finite(),
            "{what} diverged: its weights hold NaN or infinite values after {steps} steps (a \
             learning rate too high?); nothing was saved"
        );
    }
    Ok(())
}

/// The error of a training loop stopped by the user after `step` steps (nothing saved).
pub(crate) fn stopped(stage: &str, step: usize, what: &str) -> anyhow::Error {
    Interrupted {
        stage: stage.into(),
        saved: format!("{step} steps done; {what} is not saved"),
    }
    .into()
}

/// Batches drawn from a pool of indices epoch by epoch: each epoch is a fresh shuffle, and a
/// batch that reaches an epoch's end goes on into the next (never more than the pool a batch).
pub(crate) struct Epochs {
    pool: Vec<usize>,
    order: Vec<usize>,
    rng: rand_chacha::ChaCha8Rng,
}

impl Epochs {
    pub(crate) fn new(pool: Vec<usize>, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            pool,
            order: Vec::new(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub(crate) fn next(&mut self, n: usize) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n.min(self.pool.len()) {
            if self.order.is_empty() {
                self.order = self.pool.clone();
                self.order.shuffle(&mut self.rng);
            }
            batch.extend(self.order.pop());
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Side;

    /// A small untrained model: it writes text at random, which is all pairs need.
    fn model() -> LanguageModel {
        crate::testing::tiny_language_model(1).unwrap()
    }

    fn pairs_config(count: usize) -> PairsConfig {
        PairsConfig {
            edit: false,
            greedy_a: false,
            model_fingerprint: None,
            count,
            seed: 5,
            sampling: Sampling {
                temperature: 1.0,
                max_new_tokens: 12,
                ..Sampling::default()
            },
            max_turns: 2,
            distinct_attempts: 1,
        }
    }

    /// Pairs from `m` on Tabletop-v0 with one command per action.
    fn collect_one_command(
        m: &Arc<LanguageModel>,
        cfg: &PairsConfig,
        dir: &Path,
    ) -> anyhow::Result<Vec<PairRecord>> {
        let config = serde_json::json!({ "mode": "language", "max_commands": 1 });
        collect_pairs(
            m.clone(),
            "tiny",
            &Registry::with_builtins(),
            ("Tabletop-v0", &config),
            cfg,
            dir,
            &(),
        )
    }

    #[test]
    fn an_edited_first_action_changes_one_decision_and_repeats_for_its_seed() {
        use dreamgym_envs::builtin::tabletop;
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language" });
        let mut e = registry.make("Tabletop-v0", Some(&config)).unwrap();
        let (obs, _) = e.reset(Some(3), &Info::new()).unwrap();
        let text = observation_text(&obs).unwrap().to_string();
        let (_, scene) = tabletop::parse_observation(&text).unwrap();
        let (object, zone) = (scene.objects[0].0, scene.zones[0].0);
        let action = format!("push the {object} into the {} zone", zone.name());
        let edited = edit_first_action(&text, &action, 7).unwrap();
        assert_eq!(
            edit_first_action(&text, &action, 7).as_deref(),
            Some(&*edited)
        );
        let program = tabletop::parse_program(&action).unwrap();
        let all: Vec<String> = tabletop::one_slot_edits(&program, &scene)
            .iter()
            .map(|p| tabletop::format_program(p))
            .collect();
        assert!(all.contains(&edited), "{edited} is not among {all:?}");
        assert_ne!(edited, tabletop::format_program(&program));
        // Other seeds reach other edits.
        let seen: BTreeSet<String> = (0..40)
            .filter_map(|s| edit_first_action(&text, &action, s))
            .collect();
        assert!(seen.len() > 1);
        // Nothing to edit: an action that does not parse, or `done`.
        assert_eq!(edit_first_action(&text, "push the the", 7), None);
        assert_eq!(edit_first_action(&text, "done", 7), None);
    }

    #[test]
    fn learning_rates_above_one_and_diverged_weights_are_refused() {
        let m = model();
        assert!(adam(m.varmap(), 2.0).is_err());
        assert!(adam(m.varmap(), f64::NAN).is_err());
        assert!(adam(m.varmap(), 1e-3).is_ok());
        ensure_finite_weights(m.varmap(), "DPO", 3).unwrap();
        let var = m.varmap().all_vars()[0].clone();
        var.set(&(var.as_tensor() * f64::NAN).unwrap()).unwrap();
        let err = ensure_finite_weights(m.varmap(), "DPO", 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DPO diverged") && err.contains("3 steps"),
            "{err}"
        );
    }

    #[test]
    fn episode_b_is_resampled_until_its_first_action_differs() {
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language", "max_commands": 1 });
        let m = Arc::new(model());
        let collect = |temperature: f32, attempts: usize| {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = pairs_config(3);
            cfg.sampling.temperature = temperature;
            cfg.distinct_attempts = attempts;
            collect_pairs(
                m.clone(),
                "tiny",
                &registry,
                ("Tabletop-v0", &config),
                &cfg,
                dir.path(),
                &(),
            )
            .unwrap()
        };
        // Near-greedy sampling writes the same action every time: every attempt was drawn,
        // and B kept the last one's seed.
        for p in collect(1e-4, 4) {
            assert_eq!(p.first_action(false), p.first_action(true));
            assert_eq!(
                p.b.sample_seed,
                derive_seed(p.seed, "pair side b attempt", 3)
            );
        }
        // An untrained model at temperature 1 writes something else at once: B's first draw
        // is kept, and the episode starts with the action that was compared.
        for p in collect(1.0, 4) {
            assert_ne!(p.first_action(false), p.first_action(true));
            assert_eq!(p.b.sample_seed, derive_seed(p.seed, "pair side", 1));
        }
    }

    #[test]
    fn constrained_pairs_write_only_actions_that_parse() {
        let m = Arc::new(model());
        let collect = |constrained: bool| {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = pairs_config(4);
            cfg.max_turns = 1;
            cfg.sampling.max_new_tokens = 96;
            cfg.sampling.constrained = constrained;
            let pairs = collect_one_command(&m, &cfg, dir.path()).unwrap();
            // The folder says how its pairs were sampled.
            assert_eq!(
                read_pairs(dir.path()).unwrap().0.sampling.constrained,
                constrained
            );
            pairs
                .iter()
                .flat_map(|p| [&p.a, &p.b])
                .map(|side| side.turns[0].action.clone())
                .collect::<Vec<_>>()
        };
        use dreamgym_envs::builtin::tabletop::command::{is_complete_program, is_viable_prefix};
        // An untrained model writes text at random: unconstrained, next to nothing it writes
        // could even begin a program...
        let free = collect(false);
        let viable = free.iter().filter(|a| is_viable_prefix(a)).count();
        assert!(viable < free.len() / 2, "{free:?}");
        // ...constrained, every action is a program or, where the token budget cut it before
        // its first whole command, the start of one; and some are whole programs.
        let constrained = collect(true);
        assert_eq!(constrained.len(), 8);
        for a in &constrained {
            assert!(is_viable_prefix(a), "`{a}` cannot begin a program");
        }
        assert!(
            constrained.iter().any(|a| is_complete_program(a)),
            "{constrained:?}"
        );
    }

    #[test]
    fn greedy_a_pairs_the_models_own_answer_with_a_sample() {
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language", "max_commands": 1 });
        let m = Arc::new(model());
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = pairs_config(3);
        cfg.greedy_a = true;
        cfg.distinct_attempts = 4;
        let pairs = collect_one_command(&m, &cfg, dir.path()).unwrap();
        assert!(read_pairs(dir.path()).unwrap().0.greedy_a);
        let mut greedy = LanguagePolicy::new(
            m.clone(),
            Sampling {
                temperature: 0.0,
                ..cfg.sampling
            },
            "tiny",
        );
        let mut e = registry.make("Tabletop-v0", Some(&config)).unwrap();
        for p in &pairs {
            let (obs, _) = e.reset(Some(p.seed), &Info::new()).unwrap();
            greedy.reset(0).unwrap();
            let own = greedy.act(&obs).unwrap();
            // A is what greedy decoding writes on that start, whatever A's sample seed; B
            // samples something else.
            assert_eq!(Some(p.first_action(false)), own.as_text());
            assert_ne!(p.first_action(false), p.first_action(true));
        }
        // Without it, A samples too: on these starts at temperature 1 an untrained model
        // writes something other than its greedy answer.
        cfg.greedy_a = false;
        let other = tempfile::tempdir().unwrap();
        let sampled = collect_one_command(&m, &cfg, other.path()).unwrap();
        assert!(
            sampled
                .iter()
                .zip(&pairs)
                .any(|(s, g)| s.first_action(false) != g.first_action(false))
        );
    }

    #[test]
    fn pairs_never_mix_into_a_folder_made_otherwise_or_written_at_once() {
        let m = Arc::new(model());
        let collect = |cfg: &PairsConfig, dir: &Path| {
            collect_one_command(&m, cfg, dir).map_err(|e| format!("{e:#}"))
        };
        let dir = tempfile::tempdir().unwrap();
        let mut edited = pairs_config(2);
        edited.edit = true;
        collect(&edited, dir.path()).unwrap();
        // Going on without a setting the folder was made with names it, both ways.
        let err = collect(&pairs_config(3), dir.path()).unwrap_err();
        assert!(err.contains("edit: true there, false now"), "{err}");
        // Another number of turns per episode is another kind of pair.
        let mut turns = edited.clone();
        turns.max_turns = 5;
        let err = collect(&turns, dir.path()).unwrap_err();
        assert!(err.contains("max_turns: 2 there, 5 now"), "{err}");
        // Another model at the same path is refused; the same model under another spelling
        // of its path goes on.
        let mut retrained = edited.clone();
        retrained.model_fingerprint = Some("crc32:00000001".into());
        let fingerprints = tempfile::tempdir().unwrap();
        let mut first = fingerprints.path().join("fp");
        let mut fp = edited.clone();
        fp.model_fingerprint = Some("crc32:00000000".into());
        collect(&fp, &first).unwrap();
        let err = collect(&retrained, &first).unwrap_err();
        assert!(err.contains("model_fingerprint"), "{err}");
        let respelled = |cfg: &PairsConfig| {
            collect_pairs(
                m.clone(),
                "./tiny",
                &Registry::with_builtins(),
                (
                    "Tabletop-v0",
                    &serde_json::json!({ "mode": "language", "max_commands": 1 }),
                ),
                cfg,
                &first,
                &(),
            )
        };
        assert!(respelled(&fp).is_ok());
        first = fingerprints.path().join("fp-none");
        collect(&edited, &first).unwrap();
        // Made before fingerprints were recorded: the path decides.
        assert!(collect(&fp, &first).is_ok());
        // A folder made before max_turns was recorded goes on.
        let meta_path = dir.path().join(PAIRS_META);
        let mut meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
        meta.as_object_mut().unwrap().remove("max_turns");
        std::fs::write(&meta_path, meta.to_string()).unwrap();
        let mut three = edited.clone();
        three.count = 3;
        assert_eq!(collect(&three, dir.path()).unwrap().len(), 3);
        // While one run writes into the folder, another is refused.
        let held = dreamgym_base::FolderLock::acquire(dir.path()).unwrap();
        let err = collect(&three, dir.path()).unwrap_err();
        assert!(err.contains("another `pairs` run"), "{err}");
        drop(held);
        // Its pairs.json lost, the folder is not appended to: the new pairs would reuse the
        // ids that its labels name.
        std::fs::remove_file(&meta_path).unwrap();
        let err = collect(&three, dir.path()).unwrap_err();
        assert!(
            err.contains("not a pairs folder") && err.contains(PAIRS_FILE),
            "{err}"
        );
        // So is another command's folder.
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join("lm.json"), "{}").unwrap();
        let err = collect(&three, run.path()).unwrap_err();
        assert!(err.contains("lm.json"), "{err}");
        assert!(!run.path().join(PAIRS_META).exists());
        // Two pairs under one id (written by a build without these checks) are refused when
        // read, naming both lines.
        std::fs::write(&meta_path, serde_json::to_string(&meta).unwrap()).unwrap();
        let lines = std::fs::read_to_string(dir.path().join(PAIRS_FILE)).unwrap();
        let first = lines.lines().next().unwrap();
        std::fs::write(dir.path().join(PAIRS_FILE), format!("{lines}{first}\n")).unwrap();
        let err = format!("{:#}", read_pairs(dir.path()).unwrap_err());
        assert!(
            err.contains("pairs 1 and 4 both have the id p000000"),
            "{err}"
        );
    }

    #[test]
    fn pairs_share_their_start_resume_and_refuse_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "mode": "language", "max_commands": 2 });
        let m = Arc::new(model());
        let quiet = ();
        let two = collect_pairs(
            m.clone(),
            "tiny",
            &registry,
            ("Tabletop-v0", &config),
            &pairs_config(2),
            dir.path(),
            &quiet,
        )
        .unwrap();
        assert_eq!(two.len(), 2);
        for p in &two {
            assert_eq!(p.a.turns[0].observation, p.b.turns[0].observation);
            assert_ne!(p.a.sample_seed, p.b.sample_seed);
            assert!(!p.instruction.is_empty() && !p.family.is_empty());
        }
        // Asked for three: the two saved are kept as they are and one is added.
        let three = collect_pairs(
            m.clone(),
            "tiny",
            &registry,
            ("Tabletop-v0", &config),
            &pairs_config(3),
            dir.path(),
            &quiet,
        )
        .unwrap();
        assert_eq!(&three[..2], &two[..]);
        assert_eq!(three[2].seed, 7);
        let (_, read) = read_pairs(dir.path()).unwrap();
        assert_eq!(read, three);
        // Another seed into the same folder is refused; so is greedy decoding.
        let mut other = pairs_config(3);
        other.seed = 9;
        let err = collect_pairs(
            m.clone(),
            "tiny",
            &registry,
            ("Tabletop-v0", &config),
            &other,
            dir.path(),
            &quiet,
        )
        .unwrap_err()
        .to_string();
        // The error says which setting differs.
        assert!(err.contains("seed: 5 there, 9 now"), "{err}");
        // Seeds past 2^64 - 1 are refused, not wrapped around.
        let mut far = pairs_config(3);
        far.seed = u64::MAX - 1;
        let err = collect_pairs(
            m.clone(),
            "tiny",
            &registry,
            ("Tabletop-v0", &config),
            &far,
            dir.path(),
            &quiet,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("largest seed"), "{err}");
        let mut greedy = pairs_config(3);
        greedy.sampling.temperature = 0.0;
        assert!(
            collect_pairs(
                m,
                "tiny",
                &registry,
                ("Tabletop-v0", &config),
                &greedy,
                dir.path(),
                &quiet
            )
            .is_err()
        );
    }

    fn record(id: &str, a: &str, b: &str, progress: (f64, f64)) -> PairRecord {
        let side = |action: &str, p: f64| PairSide {
            sample_seed: 0,
            turns: vec![Turn {
                observation: format!("scene of {id}"),
                action: action.into(),
                feedback: String::new(),
            }],
            success: p >= 1.0,
            progress: p,
        };
        PairRecord {
            id: id.into(),
            seed: 0,
            instruction: "push".into(),
            family: "single".into(),
            a: side(a, progress.0),
            b: side(b, progress.1),
        }
    }

    #[test]
    fn synthetic_labels_export_to_trl_and_import_back() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![
            record("p0", "push red cube to blue zone", "done", (1.0, 0.0)),
            record("p1", "done", "push red cube to blue zone", (0.0, 1.0)),
            // The same action twice teaches nothing.
            record("p2", "done", "done", (0.0, 0.0)),
        ];
        let mut log = LabelLog::open(&dir.path().join(LABELS_FILE)).unwrap();
        let sharp = SyntheticLabeler {
            temperature: 0.0,
            flip: 0.0,
            seed: 0,
            equal_ties: true,
        };
        assert_eq!(synth_labels(&pairs, &mut log, &sharp).unwrap(), 3);
        // Labeled pairs are not labeled again.
        assert_eq!(synth_labels(&pairs, &mut log, &sharp).unwrap(), 0);
        let (prefs, unknown) = preferences(&pairs, &log);
        assert_eq!((prefs.len(), unknown), (2, 0));
        assert!(
            prefs
                .iter()
                .all(|p| p.chosen == "push red cube to blue zone" && p.rejected == "done")
        );
        let lines: Vec<serde_json::Value> = prefs.iter().map(to_trl).collect();
        assert_eq!(lines[0]["prompt"][0]["role"], "user");
        assert_eq!(
            lines[0]["chosen"][0]["content"],
            "push red cube to blue zone"
        );
        let numbered: Vec<(usize, serde_json::Value)> = lines
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect();
        let import = import_trl(&pairs, &numbered, "alice").unwrap();
        assert_eq!((import.unmatched, import.repeated), (0, 0));
        let labels = &import.labels;
        assert_eq!(labels[0].choice, Choice::A);
        assert_eq!(labels[1].choice, Choice::B);
        assert_eq!(labels[1].choice.preferred(), Some(Side::B));
        // A line from elsewhere matches no pair; one without `chosen` is an error that names
        // its line.
        let stranger = serde_json::json!({"prompt": "x", "chosen": "a", "rejected": "b"});
        assert_eq!(
            import_trl(&pairs, &[(1, stranger)], "alice")
                .unwrap()
                .unmatched,
            1
        );
        let err =
            import_trl(&pairs, &[(7, serde_json::json!({"prompt": "x"}))], "alice").unwrap_err();
        assert!(format!("{err:#}").contains("line 7"), "{err:#}");
        // The same preference twice is one label; opposite preferences for one pair are
        // refused with both lines.
        let twice = [numbered[0].clone(), (9, lines[0].clone())];
        let import = import_trl(&pairs, &twice, "alice").unwrap();
        assert_eq!((import.labels.len(), import.repeated), (1, 1));
        let mut flipped = lines[0].clone();
        let chosen = flipped["chosen"].clone();
        flipped["chosen"] = flipped["rejected"].clone();
        flipped["rejected"] = chosen;
        let err = import_trl(&pairs, &[numbered[0].clone(), (4, flipped)], "alice")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lines 1 and 4") && err.contains("p0"), "{err}");
    }

    #[test]
    fn preferences_longer_than_the_context_are_left_out_by_pair() {
        let policy = model();
        let block = policy.config().transformer.block_size;
        let pref = |pair: &str, rejected: String| TextPreference {
            pair: pair.into(),
            prompt: "objects: red cube (1, 3)\ninstruction: push the red cube".into(),
            chosen: "push red cube to blue zone".into(),
            rejected,
        };
        let prefs = vec![
            pref("p0", "done".into()),
            pref("p1", "push ".repeat(block)),
            pref("p2", "done".into()),
        ];
        let t = tokenize_preferences(&policy, &prefs).unwrap();
        assert_eq!(t.ids, ["p0", "p2"]);
        assert_eq!(t.pairs.len(), 2);
        assert_eq!(t.too_long, ["p1"]);
        assert_eq!(t.context, block);
        // What is kept fits.
        for p in &t.pairs {
            assert!(p.prompt.len() + p.chosen.len().max(p.rejected.len()) <= block);
        }
        // Nothing that fits is an error, naming the context; nothing at all is not.
        let err = tokenize_preferences(&policy, &prefs[1..2])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("context of {block} tokens")), "{err}");
        assert!(tokenize_preferences(&policy, &[]).unwrap().is_empty());
    }

    #[test]
    fn dpo_raises_the_chosen_completion_over_the_rejected() {
        let policy = model();
        let reference = model();
        let prefs: Vec<TextPreference> = (0..4)
            .map(|i| TextPreference {
                pair: format!("p{i}"),
                prompt: format!("objects: red cube ({i}, 3)\ninstruction: push the red cube"),
                chosen: "push red cube to blue zone".into(),
                rejected: "done".into(),
            })
            .collect();
        let pairs = tokenize_preferences(&policy, &prefs).unwrap().pairs;
        let cfg = DpoConfig {
            steps: 15,
            batch_size: 4,
            lr: 3e-3,
            ..DpoConfig::default()
        };
        let log = train_dpo(&policy, &reference, &pairs, &cfg, None, &()).unwrap();
        let (first, last) = (log[0], log[log.len() - 1]);
        // The policy starts as the reference: loss ln 2, no margin.
        assert!(
            (first.0 - std::f64::consts::LN_2).abs() < 1e-4,
            "{}",
            first.0
        );
        assert!(last.0 < first.0 - 0.05, "loss {} -> {}", first.0, last.0);
        assert!(last.1.rewards_margins > 0.0 && last.1.rewards_accuracies == 1.0);
        assert!(train_dpo(&policy, &reference, &[], &cfg, None, &()).is_err());
    }

    /// A progress that panics at its `n`-th step, as a process killed there stops: whatever
    /// was saved before stays, nothing after it is written.
    struct KilledAt {
        n: u64,
        seen: std::sync::atomic::AtomicU64,
    }

    impl Progress for KilledAt {
        fn advance(&self, n: u64) {
            let seen = self.seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
            assert!(seen < self.n, "killed");
        }
    }

    #[test]
    fn dpo_killed_mid_run_resumes_to_the_same_model_and_metrics() {
        let prefs: Vec<TextPreference> = (0..6)
            .map(|i| TextPreference {
                pair: format!("p{i}"),
                prompt: format!("objects: red cube ({i}, 3)\ninstruction: push the red cube"),
                chosen: "push red cube to blue zone".into(),
                rejected: if i % 2 == 0 { "done" } else { "push" }.into(),
            })
            .collect();
        let reference = model();
        let pairs = tokenize_preferences(&reference, &prefs).unwrap().pairs;
        let cfg = DpoConfig {
            steps: 7,
            batch_size: 4,
            lr: 3e-3,
            ..DpoConfig::default()
        };
        let made_from = serde_json::json!({ "preferences": preferences_fingerprint(&prefs) });
        let train = |dir: &Path, progress: &dyn Progress| {
            let run = RunDir::new(dir);
            let checkpoint = DpoCheckpoint {
                run: &run,
                every: 2,
                made_from: made_from.clone(),
            };
            let policy = model();
            let log = train_dpo(
                &policy,
                &reference,
                &pairs,
                &cfg,
                Some(&checkpoint),
                progress,
            )?;
            anyhow::Ok((log, policy))
        };
        let whole = tempfile::tempdir().unwrap();
        let (log, _) = train(whole.path(), &()).unwrap();
        let stem = |d: &Path| RunDir::new(d).checkpoint(crate::language::LM_CHECKPOINT);
        let crc = |d: &Path| dreamgym_nn::weights_crc32(&stem(d)).unwrap();
        let csv = |d: &Path| crate::read_csv(&RunDir::new(d).metrics("dpo"));

        // Killed during step 5: the checkpoint after step 4 is on disk, step 5's metrics row
        // may be too.
        let killed = tempfile::tempdir().unwrap();
        let dying = KilledAt {
            n: 5,
            seen: std::sync::atomic::AtomicU64::new(0),
        };
        let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(killed.path(), &dying)
        }));
        assert!(crash.is_err());
        let state = crate::language::read_state(&stem(killed.path()))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(state.pointer("/dpo/steps_done"), Some(&4.into()));
        // Started again, it trains steps 5 to 7 only and ends where the whole run ended.
        let (resumed, _) = train(killed.path(), &()).unwrap();
        assert_eq!(crc(killed.path()), crc(whole.path()));
        assert_eq!(resumed, log);
        assert_eq!(csv(killed.path()), csv(whole.path()));
        assert_eq!(csv(whole.path()).1.len(), 7);
        // Finished: started again, nothing trains and the same numbers come back.
        let (again, policy) = train(killed.path(), &()).unwrap();
        assert_eq!(again, log);
        let copy = tempfile::tempdir().unwrap();
        policy
            .save(&stem(copy.path()), None, serde_json::json!({}))
            .unwrap();
        assert_eq!(crc(copy.path()), crc(whole.path()));
        // A checkpoint of other preferences is refused, not resumed.
        let other = DpoCheckpoint {
            run: &RunDir::new(killed.path()),
            every: 2,
            made_from: serde_json::json!({ "preferences": "other" }),
        };
        let err = train_dpo(&model(), &reference, &pairs, &cfg, Some(&other), &())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a DPO checkpoint of this training"),
            "{err}"
        );
    }
}
