//! `dreamgym labels`: what a pairs folder's labels say, synthetic labels, and TRL's preference
//! format out and in.

use std::io::Write;
use std::path::PathBuf;

use dreamgym_agents::labels::{Choice, LabelLog, SyntheticLabeler, label_stats};
use dreamgym_agents::preference::{
    LABELS_FILE, PairRecord, PairsMeta, import_trl, preferences, read_pairs_folder, synth_labels,
    to_trl,
};

/// `dreamgym labels` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Counts per labeler, agreement (Cohen's and Fleiss' kappa), position bias, time per label.
    Stats {
        /// The pairs folder.
        pairs: PathBuf,
    },
    /// Label as a synthetic labeler: Bradley-Terry over the verifier's progress of each side.
    Synth {
        /// The pairs folder.
        pairs: PathBuf,
        /// The rate at which a drawn preference is flipped.
        #[arg(long, default_value_t = 0.1)]
        flip: f64,
        /// Softness of the preference (0: the side that got further always wins).
        #[arg(long, default_value_t = 0.05)]
        temperature: f64,
        /// The seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Episodes that got equally far: `equal` labels them equally good; `coin` draws a
        /// side as plain Bradley-Terry does (probability 1/2 each).
        #[arg(long, default_value = "equal", value_parser = ["equal", "coin"])]
        ties: String,
    },
    /// Write the preferences (pairs labeled A or B whose first actions differ) to stdout.
    Export {
        /// The pairs folder.
        pairs: PathBuf,
        /// The format: `trl` (conversational prompt / chosen / rejected, one JSON a line).
        #[arg(long, default_value = "trl")]
        format: String,
    },
    /// Read preferences in TRL's format back as labels of `--labeler`.
    Import {
        /// The pairs folder.
        pairs: PathBuf,
        /// The JSON-lines file.
        file: PathBuf,
        /// Whose labels they are.
        #[arg(long)]
        labeler: String,
    },
}

fn open_log(pairs: &std::path::Path, write: bool) -> anyhow::Result<LabelLog> {
    let path = pairs.join(LABELS_FILE);
    let log = if write {
        LabelLog::open(&path)?
    } else {
        LabelLog::read(&path)?
    };
    for (line, why) in &log.skipped {
        eprintln!(
            "note: {} line {line} is not a label and was skipped: {why}",
            path.display()
        );
    }
    if log.torn_bytes > 0 {
        eprintln!(
            "note: {} ended in a torn line ({} bytes, a crash mid-write){}",
            path.display(),
            log.torn_bytes,
            if write { "; it was cut" } else { "" }
        );
    }
    Ok(log)
}

/// Reads a pairs folder for a command that does not add pairs to it, with a note on stderr
/// when `pairs.jsonl` ends in a torn line (a `pairs` run killed mid-write): that pair is left
/// out, and the next `pairs` run into the folder makes it again.
pub(crate) fn read_pairs(dir: &std::path::Path) -> anyhow::Result<(PairsMeta, Vec<PairRecord>)> {
    let read = read_pairs_folder(dir)?;
    if read.torn_bytes > 0 {
        eprintln!(
            "note: {} ends in a torn line ({} bytes, a crash mid-write): that pair is left out \
             here; `dreamgym pairs` with the same settings into the folder makes it again",
            dir.join(dreamgym_agents::preference::PAIRS_FILE).display(),
            read.torn_bytes
        );
    }
    Ok((read.meta, read.records))
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Stats { pairs } => {
            let (_, records) = read_pairs(&pairs)?;
            let log = open_log(&pairs, false)?;
            let mut effect = log.in_effect();
            let ids: std::collections::BTreeSet<&str> =
                records.iter().map(|r| r.id.as_str()).collect();
            let before = effect.len();
            effect.retain(|(pair, _), _| ids.contains(pair.as_str()));
            if effect.len() < before {
                eprintln!(
                    "note: {} labels name pairs this folder does not have; left out",
                    before - effect.len()
                );
            }
            let s = label_stats(&effect);
            println!(
                "{} pairs, {} labels in effect ({} records)",
                records.len(),
                effect.len(),
                log.records().len()
            );
            for (who, counts) in &s.counts {
                let get = |c: Choice| counts.get(&c).copied().unwrap_or(0);
                println!(
                    "{who}: {} labels (A {}, B {}, equal {}, skipped {})",
                    counts.values().sum::<usize>(),
                    get(Choice::A),
                    get(Choice::B),
                    get(Choice::Equal),
                    get(Choice::Skip)
                );
            }
            for (a, b, n, k) in &s.cohen {
                match k {
                    Some(k) => println!("Cohen's kappa {a} / {b}: {k:.3} over {n} pairs"),
                    None => println!("Cohen's kappa {a} / {b}: no pair labeled by both"),
                }
            }
            if let Some((n, k)) = s.fleiss {
                println!("Fleiss' kappa: {k:.3} over {n} pairs every labeler labeled");
            }
            match s.left_wins {
                Some((p, n)) => println!(
                    "position bias: the left side won {:.1}% of {n} choices",
                    100.0 * p
                ),
                None => println!("position bias: no label recorded a side"),
            }
            if let Some(m) = s.median_seconds {
                // A time from a broken clock (1e308 s) in exponent form, not 300 digits.
                if m < 1e7 {
                    println!("median time per label: {m:.1} s");
                } else {
                    println!("median time per label: {m:.3e} s");
                }
            }
            Ok(())
        }
        Command::Synth {
            pairs,
            flip,
            temperature,
            seed,
            ties,
        } => {
            let (_, records) = read_pairs(&pairs)?;
            let mut log = open_log(&pairs, true)?;
            let labeler = SyntheticLabeler {
                temperature,
                flip,
                seed,
                equal_ties: ties == "equal",
            };
            let n = synth_labels(&records, &mut log, &labeler)?;
            println!(
                "labeled {n} pairs as `{}` ({} were labeled before)",
                SyntheticLabeler::NAME,
                records.len() - n
            );
            Ok(())
        }
        Command::Export { pairs, format } => {
            anyhow::ensure!(
                format == "trl",
                "unknown format `{format}`: the one format is `trl`"
            );
            let (_, records) = read_pairs(&pairs)?;
            let log = open_log(&pairs, false)?;
            let (prefs, unknown) = preferences(&records, &log);
            if unknown > 0 {
                eprintln!("note: {unknown} labels name pairs this folder does not have; left out");
            }
            anyhow::ensure!(
                !prefs.is_empty(),
                "{} has no labels that prefer one side of a pair with two different first \
                 actions: label it first (`dreamgym labels synth`, or a labeling session)",
                pairs.display()
            );
            let mut out = std::io::stdout().lock();
            for p in &prefs {
                writeln!(out, "{}", serde_json::to_string(&to_trl(p))?)?;
            }
            eprintln!("{} preferences written", prefs.len());
            Ok(())
        }
        Command::Import {
            pairs,
            file,
            labeler,
        } => {
            anyhow::ensure!(!labeler.trim().is_empty(), "--labeler must name someone");
            anyhow::ensure!(
                labeler != dreamgym_agents::labels::SyntheticLabeler::NAME,
                "--labeler {labeler} is the synthetic labeler's name (`dreamgym labels synth` \
                 writes its labels): import under a person's name"
            );
            let (_, records) = read_pairs(&pairs)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            // Some editors begin a UTF-8 file with a byte-order mark.
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let mut lines = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("{} line {}: not JSON: {e}", file.display(), i + 1)
                })?;
                // Every line is checked before any label is written.
                dreamgym_agents::preference::from_trl(&v)
                    .map_err(|e| anyhow::anyhow!("{} line {}: {e}", file.display(), i + 1))?;
                lines.push((i + 1, v));
            }
            let import = import_trl(&records, &lines, &labeler)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
            anyhow::ensure!(
                lines.is_empty() || import.unmatched < lines.len(),
                "{}: none of its {} lines matches a pair of {} (the prompt and the two first \
                 actions): is it from another pairs folder? Nothing was imported",
                file.display(),
                lines.len(),
                pairs.display()
            );
            let mut log = open_log(&pairs, true)?;
            // A label the labeler already has in effect is not written again (importing the
            // same file twice changes nothing); one that differs replaces it, as a relabel.
            let in_effect = log.in_effect();
            let (mut written, mut already, mut changed) = (0, 0, 0);
            for l in import.labels {
                match in_effect.get(&(l.pair.clone(), labeler.clone())) {
                    Some(old) if old.choice == l.choice => {
                        already += 1;
                        continue;
                    }
                    Some(_) => changed += 1,
                    None => {}
                }
                log.append(l)?;
                written += 1;
            }
            println!(
                "imported {written} labels as `{labeler}` ({changed} of them change an earlier \
                 label); {already} were already labeled so, {} lines repeat an earlier line, {} \
                 lines match no pair",
                import.repeated, import.unmatched
            );
            Ok(())
        }
    }
}
