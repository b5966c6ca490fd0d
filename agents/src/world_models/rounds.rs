//! The paper's iterative training procedure (Ha & Schmidhuber 2018, section 5): the first C
//! was trained on M learned from random play, so M knows little of the states a good C reaches
//! and C learns to exploit M's errors there ("cheating the world model"). Each round records
//! episodes with the latest agent, trains M further on every episode recorded so far, trains C
//! again (starting from the last one), and measures the gap between the dream and the real env.
//!
//! Round `r` lives in `<run>/rounds/<r>/`, a complete run folder of its own (V copied in, its
//! episodes in `data/`, M, C, `eval.json`, `report.md`), so `--policy <run>/rounds/<r>` and the
//! viewer take it like any run. `round.json` records which agent recorded its episodes: when
//! the round before changes, the round is made again, and so is every round after it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dreamgym_base::derive_seed;
use dreamgym_envs::Registry;
use dreamgym_envs::recording::{Dataset, DatasetMeta};
use dreamgym_world_model::MdnRnn;
use serde::{Deserialize, Serialize};

use super::agent::WorldModel;
use super::calibrate::{teacher_forced, values};
use super::data::{PixelData, Series, load_series, start_latents};
use super::encode::encode;
use super::ensemble::train_ensemble;
use super::evaluate::EvalSummary;
use super::pipeline::{Outcome, eval_and_report};
use super::saved::{ControllerFile, load_mdn};
use super::train_controller::train_controller_from;
use super::train_mdn::{MdnStart, train_mdn_from};
use super::{TrainSummary, WorldModelsConfig};
use crate::experiment::record_dataset;
use crate::figures::{LineChart, line_chart_png};
use crate::{CollectConfig, Progress, RunDir, mean_std};

/// One round's numbers (round 0 is the run's own C, trained before any round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// 0 for the first C, then 1, 2, ...
    pub round: usize,
    /// Episodes M had been trained on by the end of this round.
    pub episodes: usize,
    /// Mean return of the episodes the last round's agent recorded for this round (none for
    /// round 0, whose data came from the rollout policy).
    pub recorded_return: Option<f64>,
    /// The real return the last round's M predicted for those episodes, teacher-forced on
    /// their frames and actions: what it knew of the agent's states before learning them.
    pub predicted_return: Option<f64>,
    /// Mean |predicted − real| return per episode of the same episodes.
    pub return_error: Option<f64>,
    /// M's mean training loss in its last epoch (NaN when unknown).
    pub mdn_loss: f64,
    /// CMA-ES's best mean training return (in the dream when C trains there).
    pub best_fitness: f64,
    /// C in the real env on the evaluation seeds: mean, std.
    pub real: (f64, f64),
    /// C in this round's dream on as many seeds: mean, std (when M predicts rewards).
    pub dream: Option<(f64, f64)>,
    /// The round whose C this round's CMA-ES started from (none for round 0): the last
    /// round's, or with `iterate.start_from_best` the best so far.
    #[serde(default)]
    pub started_from: Option<usize>,
    /// Mean real return of the episodes this round's C recorded: the next round's (the last
    /// round's C records them only with `iterate.choose_best`).
    #[serde(default)]
    pub c_return: Option<f64>,
    /// Whether this is the run's chosen C (`iterate.choose_best`: the C whose recorded episodes
    /// returned most).
    #[serde(default)]
    pub chosen: bool,
}

/// `round.json`: what made a round's episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RoundRecord {
    /// The agent that recorded them: its C's parameters and the V and M it acted through.
    collected_with: serde_json::Value,
    /// The fingerprint of the dataset `series.safetensors` was encoded from.
    #[serde(default)]
    encoded: Option<String>,
    /// The last round's M on these episodes before training on them: predicted and real
    /// return per episode.
    #[serde(default)]
    predicted_before: Option<Vec<(f64, f64)>>,
}

/// The folder of round `r` (`r >= 1`).
pub fn round_dir(run: &RunDir, r: usize) -> RunDir {
    RunDir::new(run.root().join("rounds").join(r.to_string()))
}

fn params_crc(file: &ControllerFile) -> anyhow::Result<String> {
    Ok(format!(
        "{:08x}",
        crc32fast::hash(&serde_json::to_vec(&file.params)?)
    ))
}

/// The config a round trains with: the round's epochs and generations, and seeds of its own.
fn round_config(cfg: &WorldModelsConfig, r: usize) -> WorldModelsConfig {
    let mut c = cfg.clone();
    c.seed = derive_seed(cfg.seed, "iterate.round", r as u64);
    c.mdnrnn.epochs = cfg.iterate.mdnrnn_epochs;
    c.controller.generations = cfg.iterate.generations;
    c.iterate.rounds = 0;
    c
}

/// Copies V's weights and sidecar into a round's folder unless it holds them already.
fn copy_vae(run: &RunDir, dir: &RunDir) -> anyhow::Result<()> {
    let same = matches!(
        (
            dreamgym_nn::weights_crc32(&run.checkpoint("vae")),
            dreamgym_nn::weights_crc32(&dir.checkpoint("vae")),
        ),
        (Ok(a), Ok(b)) if a == b
    );
    if same {
        return Ok(());
    }
    // The weights first: until the sidecar (which names their CRC) is written, the copy is
    // not V.
    for ext in ["safetensors", "json"] {
        let src = run.checkpoint("vae").with_extension(ext);
        let bytes =
            std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        dreamgym_base::write_atomic(&dir.checkpoint("vae").with_extension(ext), &bytes)?;
    }
    Ok(())
}

/// M's teacher-forced return for each episode of `series`: the sum of its predicted rewards
/// along the recorded frames and actions, beside the recorded return.
fn predicted_returns(m: &MdnRnn, series: &[Series]) -> anyhow::Result<Option<Vec<(f64, f64)>>> {
    if !m.config().reward_head {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let Some(o) = teacher_forced(m, s)? else {
            continue;
        };
        let pred = o
            .reward
            .context("M has a reward head but predicted no reward")?;
        out.push((
            values(&pred)?.iter().sum(),
            values(&s.rewards)?.iter().sum(),
        ));
    }
    Ok(Some(out))
}

/// Runs the rounds `cfg.iterate` asks for after the run's own C (which must be trained and
/// evaluated), then writes `rounds.json`, `rounds.md` and `figures/rounds.png`. Rounds already
/// done are reported as done; an interrupted round continues from what it saved.
pub fn run_rounds(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    registry: &Registry,
    wm: &WorldModel,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<RoundSummary>> {
    let it = &cfg.iterate;
    let main_series = load_series(&run.file("series.safetensors"))?;
    let main_data = Dataset::open(run.data())
        .with_context(|| format!("cannot open {}", run.data().display()))?;
    let main_fingerprint = main_data.fingerprint();
    let meta = main_data.meta().clone();
    let first: EvalSummary = serde_json::from_slice(
        &std::fs::read(run.file("eval.json")).context("the run's C has not been evaluated")?,
    )?;
    let first_c = ControllerFile::read(&run.file("controller.json"))?;
    let main_loss = read_loss(&run.checkpoint("mdnrnn"));
    let mut rows = vec![RoundSummary {
        round: 0,
        episodes: main_series.len(),
        recorded_return: None,
        predicted_return: None,
        return_error: None,
        mdn_loss: main_loss,
        best_fitness: first_c.best_fitness,
        real: mean_std(&first.controller),
        dream: first.dream.as_deref().map(mean_std),
        started_from: None,
        c_return: None,
        chosen: false,
    }];
    let mut all_series = main_series;
    let mut fingerprints = vec![main_fingerprint];
    for r in 1..=it.rounds {
        let prev = agent_dir(run, r - 1);
        let recorded = record_round(cfg, run, &prev, r, registry, &meta, progress)
            .with_context(|| format!("round {r} of the iterative procedure"))?;
        rows[r - 1].c_return = Some(recorded.mean_return);
        let from = if it.start_from_best {
            best_round(&rows)
        } else {
            r - 1
        };
        let row = run_round(
            cfg,
            run,
            &prev,
            from,
            recorded,
            registry,
            &meta,
            wm,
            &mut all_series,
            &mut fingerprints,
            progress,
        )
        .with_context(|| format!("round {r} of the iterative procedure"))?;
        progress.done(&round_line(&row));
        rows.push(row);
    }
    if it.choose_best && it.rounds > 0 {
        // The last C is measured like every other: on the episodes the next round records.
        let last = it.rounds;
        let recorded = record_round(
            cfg,
            run,
            &agent_dir(run, last),
            last + 1,
            registry,
            &meta,
            progress,
        )
        .with_context(|| format!("measuring round {last}'s C in the real env"))?;
        rows[last].c_return = Some(recorded.mean_return);
        let best = best_round(&rows);
        rows[best].chosen = true;
        progress.done(&format!(
            "chosen C: round {best}'s, whose episodes returned {:.1} in the real env (the most \
             of the {} rounds' Cs); --policy {}",
            rows[best].c_return.unwrap_or(f64::NAN),
            rows.len(),
            agent_dir(run, best).root().display()
        ));
    }
    write_rounds(cfg, run, &rows)?;
    Ok(rows)
}

/// The folder of round `r`'s agent: the run itself for round 0.
fn agent_dir(run: &RunDir, r: usize) -> RunDir {
    if r == 0 {
        run.clone()
    } else {
        round_dir(run, r)
    }
}

/// The round whose C's recorded episodes returned most (the later on a tie; rounds whose C
/// has recorded none yet are passed over). Round 0 when none has.
fn best_round(rows: &[RoundSummary]) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for row in rows {
        if let Some(v) = row.c_return
            && best.is_none_or(|(_, b)| v >= b)
        {
            best = Some((row.round, v));
        }
    }
    best.map_or(0, |(r, _)| r)
}

fn read_loss(stem: &Path) -> f64 {
    dreamgym_nn::read_checkpoint_meta::<serde_json::Value>(stem, "mdnrnn")
        .ok()
        .and_then(|(_, state)| state.get("loss").and_then(|l| l.as_f64()))
        .unwrap_or(f64::NAN)
}

/// A round's episodes, recorded by the last round's agent.
struct Recorded {
    r: usize,
    dir: RunDir,
    record: RoundRecord,
    /// The episodes, decoded.
    data: PixelData,
    /// Their mean return in the real env: what the recording agent scores (with the action
    /// noise it records with).
    mean_return: f64,
}

/// Records round `r`'s episodes with the agent in `prev` (or finds them recorded), making the
/// round again from scratch when its episodes were recorded by another agent.
fn record_round(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    prev: &RunDir,
    r: usize,
    registry: &Registry,
    meta: &DatasetMeta,
    progress: &dyn Progress,
) -> anyhow::Result<Recorded> {
    let it = &cfg.iterate;
    let dir = round_dir(run, r);
    let prev_c = ControllerFile::read(&prev.file("controller.json"))?;
    prev_c.check_fits(prev)?;
    let collected_with = serde_json::json!({
        "controller": params_crc(&prev_c)?,
        "trained_with": prev_c.trained_with,
        "noise": it.noise,
        "episodes": it.episodes,
    });
    let record_path = dir.file("round.json");
    let mut same_agent = false;
    let record = match std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<RoundRecord>(&b).ok())
    {
        Some(rec) if rec.collected_with == collected_with => {
            same_agent = true;
            rec
        }
        other => {
            if dir.root().exists() {
                progress.note(&format!(
                    "round {r}: {}; making it again",
                    if other.is_some() {
                        "its episodes were recorded by another agent than the last round's"
                    } else {
                        "it has no readable round.json"
                    }
                ));
                std::fs::remove_dir_all(dir.root())
                    .with_context(|| format!("cannot remove {}", dir.root().display()))?;
            }
            std::fs::create_dir_all(dir.root())?;
            let rec = RoundRecord {
                collected_with,
                encoded: None,
                predicted_before: None,
            };
            dreamgym_base::write_atomic(&record_path, &serde_json::to_vec_pretty(&rec)?)?;
            rec
        }
    };
    // The latest agent records this round's episodes.
    let prev_spec = prev.root().display().to_string();
    let rollout = CollectConfig {
        env: meta.env_id.clone(),
        env_config: toml::Table::try_from(&meta.env_config)
            .context("the dataset's env config is not a table")?,
        policy: it.noise.spec(&prev_spec),
        episodes: it.episodes,
        num_envs: it.episodes.min(8),
        workers: cfg.controller.workers,
        seed: derive_seed(cfg.seed, "iterate.collect", r as u64),
        ..CollectConfig::default()
    };
    // In a run folder moved or copied elsewhere, the episodes name their agent by its old
    // path; round.json says (by its weights) that it is the same agent.
    if same_agent
        && let Ok(ds) = Dataset::open(dir.data())
        && ds.meta().policy != rollout.policy
    {
        let old = ds.meta().policy.clone();
        progress.note(&format!(
            "round {r}: its episodes were recorded by `{old}`, the same agent as `{}` (the run \
             folder moved)",
            rollout.policy
        ));
        dreamgym_envs::recording::rename_policy(&dir.data(), &old, &rollout.policy)
            .with_context(|| format!("cannot update {}", dir.data().display()))?;
    }
    record_dataset(&rollout, registry, &dir.data(), progress)?;
    let data = PixelData::load(&dir.data(), progress)?;
    let returns: Vec<f64> = data
        .episodes
        .iter()
        .map(|e| e.rewards.iter().map(|&v| v as f64).sum())
        .collect();
    anyhow::ensure!(
        !returns.is_empty(),
        "{} holds no episodes",
        dir.data().display()
    );
    Ok(Recorded {
        r,
        dir,
        record,
        data,
        mean_return: returns.iter().sum::<f64>() / returns.len() as f64,
    })
}

/// Trains round `recorded.r` on its episodes and every one before: M from the last round's
/// (`prev`), its ensemble, and C in the dream from the C in `start`; then evaluates C.
#[allow(clippy::too_many_arguments)]
fn run_round(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    prev: &RunDir,
    start: usize,
    recorded: Recorded,
    registry: &Registry,
    meta: &DatasetMeta,
    wm: &WorldModel,
    all_series: &mut Vec<Series>,
    fingerprints: &mut Vec<String>,
    progress: &dyn Progress,
) -> anyhow::Result<RoundSummary> {
    let Recorded {
        r,
        dir,
        mut record,
        data,
        mean_return: recorded_return,
    } = recorded;
    let rcfg = round_config(cfg, r);
    let record_path = dir.file("round.json");
    let start_c = ControllerFile::read(&agent_dir(run, start).file("controller.json"))?;
    copy_vae(run, &dir)?;
    let series = match record.encoded.as_deref() {
        Some(f) if f == data.fingerprint && dir.file("series.safetensors").exists() => {
            load_series(&dir.file("series.safetensors"))?
        }
        _ => {
            let s = encode(&data, &wm.vae, &dir, progress)?;
            record.encoded = Some(data.fingerprint.clone());
            record.predicted_before = None;
            dreamgym_base::write_atomic(&record_path, &serde_json::to_vec_pretty(&record)?)?;
            s
        }
    };
    // What the last M knew of these episodes before it learns them.
    if record.predicted_before.is_none() {
        let prev_m = load_mdn(prev, wm.vae.device())?;
        record.predicted_before = predicted_returns(&prev_m, &series)?;
        dreamgym_base::write_atomic(&record_path, &serde_json::to_vec_pretty(&record)?)?;
    }
    all_series.extend(series);
    fingerprints.push(data.fingerprint.clone());
    let init = prev.checkpoint("mdnrnn");
    let (mdn, s) = train_mdn_from(
        &rcfg,
        all_series,
        &dir,
        Some(MdnStart {
            init: &init,
            trained_on: serde_json::json!({
                "data": fingerprints,
                "init_crc32": dreamgym_nn::weights_crc32(&init)?,
            }),
        }),
        progress,
    )?;
    progress.done(&mdn_line(r, &s));
    let members = train_ensemble(
        &rcfg,
        all_series,
        &dir,
        Some((prev, serde_json::json!({ "data": fingerprints }))),
        progress,
    )?;
    if members.iter().any(|m| m.steps > 0) {
        progress.done(&format!(
            "round {r}: M's {} other ensemble members, {} epochs each from the last round's",
            members.len(),
            rcfg.mdnrnn.epochs
        ));
    }
    let rwm = WorldModel {
        vae: wm.vae.clone(),
        mdn: Arc::new(mdn),
    };
    let starts = Arc::new(start_latents(all_series)?);
    let (file, ran) = train_controller_from(
        &rcfg,
        meta,
        &rwm,
        &starts,
        &dir,
        registry,
        Some(&start_c.params),
        progress,
    )?;
    if ran {
        progress.done(&format!(
            "round {r}: C, {} generations from round {}'s C, {}",
            file.generations,
            start,
            file.score_line()
        ));
    }
    let c = file.controller(meta)?;
    let mut out = Outcome::default();
    eval_and_report(
        &rcfg, &data, &rwm, &file, &c, &starts, &dir, registry, progress, None, &mut out,
    )?;
    let e = out.eval.context("the round's evaluation is missing")?;
    let held = record.predicted_before.as_deref();
    Ok(RoundSummary {
        round: r,
        started_from: Some(start),
        c_return: None,
        chosen: false,
        episodes: all_series.len(),
        recorded_return: Some(recorded_return),
        predicted_return: held.map(|h| h.iter().map(|p| p.0).sum::<f64>() / h.len().max(1) as f64),
        return_error: held
            .map(|h| h.iter().map(|(p, r)| (p - r).abs()).sum::<f64>() / h.len().max(1) as f64),
        mdn_loss: if s.final_loss.is_finite() {
            s.final_loss
        } else {
            read_loss(&dir.checkpoint("mdnrnn"))
        },
        best_fitness: file.best_fitness,
        real: mean_std(&e.controller),
        dream: e.dream.as_deref().map(mean_std),
    })
}

fn mdn_line(r: usize, s: &TrainSummary) -> String {
    if s.steps == 0 {
        format!(
            "round {r}: M already done (epoch {}, loss {:.4})",
            s.epochs, s.final_loss
        )
    } else {
        format!(
            "round {r}: M, {} epochs from the last M, {} steps, final epoch loss {:.4}, {:.1} s",
            s.epochs, s.steps, s.final_loss, s.seconds
        )
    }
}

fn round_line(row: &RoundSummary) -> String {
    let mut line = format!(
        "round {}: C {:.1} ± {:.1} in the real env",
        row.round, row.real.0, row.real.1
    );
    if let Some((d, ds)) = row.dream {
        line.push_str(&format!(", {d:.1} ± {ds:.1} in its dream"));
    }
    if let (Some(rec), Some(pred)) = (row.recorded_return, row.predicted_return) {
        line.push_str(&format!(
            "; its episodes returned {rec:.1}, the last M predicted {pred:.1}"
        ));
    }
    line
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

/// Writes `rounds.json`, `rounds.md` and `figures/rounds.png`.
fn write_rounds(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    rows: &[RoundSummary],
) -> anyhow::Result<()> {
    dreamgym_base::write_atomic(&run.file("rounds.json"), &serde_json::to_vec_pretty(rows)?)?;
    let real: Vec<(f64, f64)> = rows.iter().map(|r| (r.round as f64, r.real.0)).collect();
    let dream: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.dream.map(|d| (r.round as f64, d.0)))
        .collect();
    let mut chart = LineChart::new(
        "C after each round: real env and dream (mean return)",
        "round",
        "mean return",
    )
    .series("real env", real);
    if !dream.is_empty() {
        chart = chart.series("dream (M's predicted reward)", dream);
    }
    dreamgym_base::write_atomic(&run.figures().join("rounds.png"), &line_chart_png(&chart)?)?;
    let it = &cfg.iterate;
    let mut md = format!(
        "# The iterative procedure\n\n\
         Round 0 is the run's own C. Each round after it records {} episodes with the last \
         round's agent (action noise {}), trains M {} more epochs on every episode recorded so \
         far, trains C {} generations {} starting from {} (\"from\"), and evaluates it on \
         the same {} seeds. Round r's files are in `rounds/r/`.\n\n\
         \"Recorded\" is the mean real return of the episodes the round's agent recorded (with \
         the action noise): \"by its C\" those its own C recorded (the next round's), \"by the \
         last C\" the round's own. \"Predicted\" is what the last round's M expected the \
         round's own to return, teacher-forced on their frames and actions, before it trained \
         on them.\n\n\
         | round | from | episodes M saw | C real | C dream | real / dream | recorded by its C | recorded by the last C | predicted | mean abs. error | M loss | CMA-ES best |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        it.episodes,
        it.noise,
        it.mdnrnn_epochs,
        it.generations,
        if cfg.controller.in_dream {
            "in the dream"
        } else {
            "in the real env"
        },
        if it.start_from_best {
            "the C whose episodes returned most so far"
        } else {
            "the last C"
        },
        cfg.eval.episodes
    );
    for r in rows {
        let (dream, ratio) = match r.dream {
            Some((d, ds)) => (
                format!("{d:.1} ± {ds:.1}"),
                // A ratio to a dream score at or below zero says nothing.
                if d > 1e-9 {
                    format!("{:.2}", r.real.0 / d)
                } else {
                    "–".into()
                },
            ),
            None => ("–".into(), "–".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} ± {:.1} | {dream} | {ratio} | {} | {} | {} | {} | {:.3} | {:.1} |\n",
            if r.chosen {
                format!("**{}**", r.round)
            } else {
                r.round.to_string()
            },
            r.started_from.map_or("–".into(), |f| f.to_string()),
            r.episodes,
            r.real.0,
            r.real.1,
            fmt_opt(r.c_return),
            fmt_opt(r.recorded_return),
            fmt_opt(r.predicted_return),
            fmt_opt(r.return_error),
            r.mdn_loss,
            r.best_fitness,
        ));
    }
    if let Some(c) = rows.iter().find(|r| r.chosen) {
        md.push_str(&format!(
            "\nThe chosen C is round **{}**'s: its episodes returned {} in the real env, the \
             most of all rounds' Cs (it scores {:.1} ± {:.1} on the evaluation seeds).\n",
            c.round,
            fmt_opt(c.c_return),
            c.real.0,
            c.real.1
        ));
    }
    md.push_str("\n![](figures/rounds.png)\n");
    dreamgym_base::write_atomic(&run.file("rounds.md"), md.as_bytes())?;
    Ok(())
}
