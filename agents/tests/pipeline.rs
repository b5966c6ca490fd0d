//! The whole World Models pipeline on a tiny dataset and tiny models: every stage writes what
//! the next reads, resumes exactly, refuses bad input, and is deterministic for a seed.

use std::sync::atomic::{AtomicU64, Ordering};

use dreamgym_agents::testing::{record, tiny_config};
use dreamgym_agents::world_models::{ActionNoise, Stage, run_world_models};
use dreamgym_agents::{Progress, RunDir, WorldModelsConfig};
use dreamgym_envs::Registry;
use dreamgym_world_model::VaeConfig;

fn stage(
    cfg: &WorldModelsConfig,
    run: &RunDir,
    which: Stage,
) -> anyhow::Result<dreamgym_agents::world_models::Outcome> {
    run_world_models(cfg, run, &Registry::with_builtins(), which, &(), None)
}

#[test]
fn the_pipeline_runs_end_to_end_resumes_and_is_deterministic() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    record(&run.data(), 4, 30).unwrap();
    let mut cfg = tiny_config();

    let v = stage(&cfg, &run, Stage::Vae).unwrap().vae.unwrap();
    assert!(v.final_loss.is_finite() && v.steps > 0);
    let first = std::fs::read(run.file("vae.safetensors")).unwrap();
    // Done already: a second call resumes after the last epoch and takes no step.
    assert_eq!(stage(&cfg, &run, Stage::Vae).unwrap().vae.unwrap().steps, 0);
    // Asking for more epochs resumes from the checkpoint instead of starting over.
    cfg.vae.epochs = 3;
    let more = stage(&cfg, &run, Stage::Vae).unwrap().vae.unwrap();
    assert_eq!(more.steps, v.steps / 2, "one more epoch only");
    assert_eq!(more.resumed_from, 2);
    cfg.vae.epochs = 2;

    let m = stage(&cfg, &run, Stage::Mdn).unwrap();
    assert_eq!(m.encoded_frames, Some(4 * 31));
    let m = m.mdn.unwrap();
    assert!(m.final_loss.is_finite() && m.steps > 0);
    let c = stage(&cfg, &run, Stage::Controller)
        .unwrap()
        .controller
        .unwrap();
    assert_eq!(c.params.len(), (4 + 8) * 3 + 3);
    let out = stage(&cfg, &run, Stage::Eval).unwrap();
    let e = out.eval.unwrap();
    assert_eq!(e.controller.len(), 3);
    assert_eq!(e.random.len(), 3);
    assert_eq!(e.dream.as_ref().map(|d| d.len()), Some(3));
    let text = std::fs::read_to_string(out.report.unwrap()).unwrap();
    for needle in [
        "reconstructions.png",
        "dream.png",
        "vae_loss.png",
        "mdnrnn_loss.png",
        "controller.png",
        "| random |",
    ] {
        assert!(text.contains(needle), "report lacks {needle}");
    }
    for f in [
        "reconstructions",
        "dream",
        "vae_loss",
        "mdnrnn_loss",
        "controller",
    ] {
        assert!(run.figures().join(format!("{f}.png")).exists(), "{f}.png");
    }
    // Every stage's metrics are also TensorBoard event files.
    for s in ["vae", "mdnrnn", "controller"] {
        let files: Vec<_> = std::fs::read_dir(run.tensorboard(s)).unwrap().collect();
        assert_eq!(files.len(), 1, "{s}");
    }

    // Same seed, fresh folder: the same V bytes (2 epochs).
    let other = tempfile::tempdir().unwrap();
    let other = RunDir::new(other.path());
    record(&other.data(), 4, 30).unwrap();
    stage(&cfg, &other, Stage::Vae).unwrap();
    let again = std::fs::read(other.file("vae.safetensors")).unwrap();
    assert_eq!(first, again, "same seed, same V");

    // The controller can also train in the dream (after the C trained in the real env is
    // discarded: it is not overwritten unasked).
    cfg.controller.in_dream = true;
    let err = format!("{:#}", stage(&cfg, &run, Stage::Controller).unwrap_err());
    assert!(err.contains("in_dream") && err.contains("--force"), "{err}");
    std::fs::remove_file(run.file("controller.state.json")).unwrap();
    let d = stage(&cfg, &run, Stage::Controller)
        .unwrap()
        .controller
        .unwrap();
    assert!(d.in_dream && d.best_fitness.is_finite());

    // A V of another z_size is not trained over the old one unasked...
    cfg.vae.model.z_size = 5;
    let err = format!("{:#}", stage(&cfg, &run, Stage::Vae).unwrap_err());
    assert!(err.contains("--force"), "{err}");
    // ...and one retrained after the old was removed no longer fits M: a clear error, not a
    // shape panic.
    std::fs::remove_file(run.file("vae.json")).unwrap();
    stage(&cfg, &run, Stage::Vae).unwrap();
    let err = format!("{:#}", stage(&cfg, &run, Stage::Controller).unwrap_err());
    assert!(err.contains("z_size"), "{err}");
}

/// Asks to stop once `limit` units of work are done (Ctrl-C at a known moment).
struct StopAfter {
    done: AtomicU64,
    limit: u64,
}

impl Progress for StopAfter {
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
    }
    fn interrupted(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.limit
    }
}

#[test]
fn a_training_stage_killed_mid_epoch_resumes_bit_identically() {
    let cfg = {
        let mut c = tiny_config();
        c.vae.epochs = 3;
        c.mdnrnn.epochs = 3;
        c
    };
    let registry = Registry::with_builtins();
    let straight = tempfile::tempdir().unwrap();
    let straight = RunDir::new(straight.path());
    let resumed = tempfile::tempdir().unwrap();
    let resumed = RunDir::new(resumed.path());
    for run in [&straight, &resumed] {
        record(&run.data(), 4, 30).unwrap();
    }
    for which in [Stage::Vae, Stage::Mdn] {
        stage(&cfg, &straight, which).unwrap();
        // Stopped one batch into the second epoch (V: 8 batches per epoch; M: 3; the encode
        // stage's 4 episodes come first for M).
        let limit = if which == Stage::Vae {
            8 + 1
        } else {
            4 + 3 + 1
        };
        let stop = StopAfter {
            done: AtomicU64::new(0),
            limit,
        };
        let err = run_world_models(&cfg, &resumed, &registry, which, &stop, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("after epoch 1"),
            "{which:?}: {err:#}"
        );
        let out = run_world_models(&cfg, &resumed, &registry, which, &(), None).unwrap();
        let summary = out.vae.or(out.mdn).unwrap();
        assert_eq!(summary.resumed_from, 1, "{which:?}");
    }
    for file in [
        "vae.safetensors",
        "vae.optimizer.safetensors",
        "metrics/vae.csv",
        "mdnrnn.safetensors",
        "mdnrnn.optimizer.safetensors",
        "metrics/mdnrnn.csv",
    ] {
        let (a, b) = (
            std::fs::read(straight.file(file)).unwrap(),
            std::fs::read(resumed.file(file)).unwrap(),
        );
        assert!(a == b, "{file} differs after a resume");
    }
}

#[test]
fn stages_refuse_bad_input_with_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    let cfg = tiny_config();
    // No dataset.
    let err = format!("{:#}", stage(&cfg, &run, Stage::Vae).unwrap_err());
    assert!(err.contains("cannot open dataset"), "{err}");
    // Stages out of order name what is missing.
    record(&run.data(), 2, 12).unwrap();
    let err = format!("{:#}", stage(&cfg, &run, Stage::Mdn).unwrap_err());
    assert!(err.contains("vae"), "{err}");
    let err = format!("{:#}", stage(&cfg, &run, Stage::Eval).unwrap_err());
    assert!(err.contains("vae"), "{err}");
    // V sized for other images.
    let mut big = tiny_config();
    big.vae.model = VaeConfig::default();
    let err = format!("{:#}", stage(&big, &run, Stage::Vae).unwrap_err());
    assert!(err.contains("[16, 16, 3]") && err.contains("64"), "{err}");
    // Episodes shorter than M's sequences.
    stage(&cfg, &run, Stage::Vae).unwrap();
    let mut long = tiny_config();
    long.mdnrnn.seq_len = 500;
    let err = format!("{:#}", stage(&long, &run, Stage::Mdn).unwrap_err());
    assert!(err.contains("seq_len"), "{err}");
    // A damaged checkpoint is named, not a panic.
    let path = run.file("vae.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", stage(&cfg, &run, Stage::Mdn).unwrap_err());
    assert!(err.contains("damaged"), "{err}");
    // Config ranges.
    let mut bad = tiny_config();
    bad.controller.workers = 0;
    assert!(bad.validate().is_err());
    bad = tiny_config();
    bad.device = "tpu".into();
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("unknown device"));
}

#[test]
fn a_trained_run_is_a_policy_that_drives_rollouts() {
    let root = tempfile::tempdir().unwrap();
    dreamgym_agents::testing::tiny_run(root.path()).unwrap();
    let run = RunDir::new(root.path());
    let registry = Registry::with_builtins();
    let meta = dreamgym_agents::world_models::dataset_meta(&run.data()).unwrap();
    let config = dreamgym_agents::CollectConfig {
        env: "Racer-v0".into(),
        env_config: toml::Table::try_from(meta.env_config.clone()).unwrap(),
        policy: root.path().display().to_string(),
        episodes: 3,
        num_envs: 2,
        workers: 2,
        seed: 7,
        ..Default::default()
    };
    let out = root.path().join("expert");
    let summary = dreamgym_agents::collect(&registry, &config, &out, &()).unwrap();
    assert_eq!(summary.episodes, 3);
    // The recorded actions are the agent's: replaying episode 0 through the agent gives them.
    let ds = dreamgym_envs::recording::Dataset::open(&out)
        .unwrap()
        .load();
    let ep = &ds.episodes[0];
    let mut agent = dreamgym_agents::load_policy(
        &config.policy,
        &meta.env_id,
        &meta.observation_space,
        &meta.action_space,
        7,
    )
    .unwrap();
    agent.reset(ep.seed).unwrap();
    for (obs, action) in ep.observations.iter().zip(&ep.actions).take(5) {
        assert_eq!(&agent.act(obs).unwrap(), action);
    }
    // A policy for another env is refused with the reason.
    let err = dreamgym_agents::load_policy(
        &config.policy,
        &meta.env_id,
        &meta.observation_space,
        &dreamgym_envs::Space::Discrete(dreamgym_envs::Discrete::new(2)),
        0,
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("trained on Racer-v0"),
        "{err:#}"
    );
}

#[test]
fn stages_trained_on_an_older_v_are_retrained_or_refused() {
    let root = tempfile::tempdir().unwrap();
    dreamgym_agents::testing::tiny_run(root.path()).unwrap();
    let run = RunDir::new(root.path());
    let mut cfg = tiny_config();
    // M is done and resumes to nothing while V is unchanged.
    assert_eq!(stage(&cfg, &run, Stage::Mdn).unwrap().mdn.unwrap().steps, 0);
    // One more epoch of V changes V.
    cfg.vae.epochs = 3;
    stage(&cfg, &run, Stage::Vae).unwrap();
    // C was trained with the old V and M: evaluating it or driving with it is refused.
    let err = format!("{:#}", stage(&cfg, &run, Stage::Eval).unwrap_err());
    assert!(err.contains("train-controller"), "{err}");
    let meta = dreamgym_agents::world_models::dataset_meta(&run.data()).unwrap();
    let spec = root.path().display().to_string();
    let err = dreamgym_agents::load_policy(
        &spec,
        &meta.env_id,
        &meta.observation_space,
        &meta.action_space,
        0,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("another V or M"), "{err:#}");
    // M, trained on the old V's latents, starts over instead of being reported done.
    let m = stage(&cfg, &run, Stage::Mdn).unwrap().mdn.unwrap();
    assert_eq!(m.resumed_from, 0);
    assert!(m.steps > 0);
    // With C retrained on the new pair, everything fits again.
    stage(&cfg, &run, Stage::Controller).unwrap();
    assert!(stage(&cfg, &run, Stage::Eval).unwrap().eval.is_some());
}

/// Copies the folder `from` into `to`, files and subfolders.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Keeps every note and summary line a stage reports.
#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<String>>);

impl Progress for Lines {
    fn note(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
    fn done(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

impl Lines {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A run folder at `root` with 4 random episodes, and a tiny config with C in the dream and
/// two rounds of 2 episodes each.
fn two_tiny_rounds(root: &std::path::Path) -> (RunDir, WorldModelsConfig) {
    let run = RunDir::new(root);
    record(&run.data(), 4, 30).unwrap();
    let mut cfg = tiny_config();
    cfg.controller.in_dream = true;
    cfg.eval.max_steps = 20;
    cfg.iterate = dreamgym_agents::world_models::IterateStage {
        rounds: 2,
        episodes: 2,
        noise: ActionNoise::Level(0.1),
        mdnrnn_epochs: 1,
        generations: 1,
        ..Default::default()
    };
    (run, cfg)
}

#[test]
fn iterative_rounds_record_with_the_last_agent_retrain_and_are_runs_of_their_own() {
    use dreamgym_agents::world_models::{load_run, round_dir};
    let root = tempfile::tempdir().unwrap();
    let (run, cfg) = two_tiny_rounds(root.path());
    let registry = Registry::with_builtins();
    let lines = Lines::default();
    let all = |lines: &Lines| {
        run_world_models(&cfg, &run, &registry, Stage::All, lines, None)
            .unwrap()
            .rounds
            .unwrap()
    };
    let rows = all(&lines);
    assert_eq!(rows.iter().map(|r| r.round).collect::<Vec<_>>(), [0, 1, 2]);
    // M learns from every episode recorded so far: 4 random ones, then 2 more per round.
    assert_eq!(
        rows.iter().map(|r| r.episodes).collect::<Vec<_>>(),
        [4, 6, 8]
    );
    assert!(rows[0].recorded_return.is_none());
    for r in &rows[1..] {
        assert!(r.recorded_return.unwrap().is_finite());
        assert!(r.predicted_return.unwrap().is_finite());
        assert!(r.return_error.unwrap() >= 0.0);
        assert!(r.real.0.is_finite() && r.dream.unwrap().0.is_finite());
        assert!(r.mdn_loss.is_finite());
    }
    for r in 1..=2 {
        let dir = round_dir(&run, r);
        // A round is a run folder like any: V, M and C load and fit together.
        let loaded = load_run(&dir).unwrap();
        assert!(loaded.controller.is_some());
        assert_eq!(
            loaded.starts.len(),
            2,
            "the round's own episodes are encoded"
        );
        // Its episodes were recorded by the last round's agent, with action noise.
        let ds = dreamgym_envs::recording::Dataset::open(dir.data()).unwrap();
        let prev = if r == 1 {
            run.clone()
        } else {
            round_dir(&run, 1)
        };
        assert_eq!(ds.meta().policy, format!("{}~0.1", prev.root().display()));
        assert_eq!(ds.load().episodes.len(), 2);
        // M was trained further, so it differs from the last round's M.
        assert_ne!(
            dreamgym_nn::weights_crc32(&dir.checkpoint("mdnrnn")).unwrap(),
            dreamgym_nn::weights_crc32(&prev.checkpoint("mdnrnn")).unwrap()
        );
        assert!(dir.file("report.md").exists());
    }
    let md = std::fs::read_to_string(run.file("rounds.md")).unwrap();
    assert!(md.contains("| 2 | 1 | 8 |"), "{md}");
    assert!(run.figures().join("rounds.png").exists());
    let saved: Vec<dreamgym_agents::world_models::RoundSummary> =
        serde_json::from_slice(&std::fs::read(run.file("rounds.json")).unwrap()).unwrap();
    assert_eq!(saved, rows);

    // Run again: every round is already done, and gives the same numbers.
    lines.take();
    assert_eq!(all(&lines), rows);
    let said = lines.take();
    let reused = format!(
        "collect: already done (2 episodes in {})",
        round_dir(&run, 2).data().display()
    );
    assert!(said.contains(&reused), "{said:?}");
    assert!(
        said.iter()
            .any(|l| l.starts_with("round 2: M already done")),
        "{said:?}"
    );

    // The run folder copied elsewhere resumes there: its rounds' episodes name their agent
    // by its old path, but the agent (by its weights) is the same, so every round is done.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(root.path(), copy.path());
    let copied = RunDir::new(copy.path());
    let moved = run_world_models(&cfg, &copied, &registry, Stage::All, &lines, None)
        .unwrap()
        .rounds
        .unwrap();
    assert_eq!(moved, rows);
    let said = lines.take();
    assert!(
        said.iter().all(|l| !l.contains("making it again")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("round 2: M already done")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("round 2: its episodes were recorded by")),
        "{said:?}"
    );
    let ds = dreamgym_envs::recording::Dataset::open(round_dir(&copied, 2).data()).unwrap();
    assert_eq!(
        ds.meta().policy,
        format!("{}~0.1", round_dir(&copied, 1).root().display())
    );

    // Round 1's C changes: round 2's episodes were recorded by another agent, so round 2 is
    // made again from scratch (round 1 itself keeps its M).
    let c1 = round_dir(&run, 1).file("controller.json");
    let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&c1).unwrap()).unwrap();
    file["params"][0] = serde_json::json!(0.75);
    std::fs::write(&c1, serde_json::to_vec(&file).unwrap()).unwrap();
    let again = all(&lines);
    let said = lines.take();
    assert!(
        said.iter()
            .any(|l| l.contains("round 2") && l.contains("recorded by another agent")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("round 1: M already done")),
        "{said:?}"
    );
    assert_eq!(again[1].mdn_loss, rows[1].mdn_loss);
    assert_eq!(again.len(), 3);
}

#[test]
fn rounds_can_start_from_the_c_whose_episodes_returned_most_and_choose_one() {
    use dreamgym_agents::world_models::{RoundSummary, round_dir};
    let root = tempfile::tempdir().unwrap();
    let (run, mut cfg) = two_tiny_rounds(root.path());
    cfg.iterate.choose_best = true;
    cfg.iterate.start_from_best = true;
    let registry = Registry::with_builtins();
    let lines = Lines::default();
    let all = |cfg: &WorldModelsConfig, lines: &Lines| {
        run_world_models(cfg, &run, &registry, Stage::All, lines, None)
            .unwrap()
            .rounds
            .unwrap()
    };
    let rows = all(&cfg, &lines);
    let said = lines.take();
    // Every C is measured on the episodes it records: each round's, and for the last C the
    // next round's, recorded into rounds/3 by round 2's agent.
    for r in 0..2 {
        assert_eq!(rows[r].c_return, rows[r + 1].recorded_return);
    }
    let check = dreamgym_envs::recording::Dataset::open(round_dir(&run, 3).data()).unwrap();
    assert_eq!(
        check.meta().policy,
        format!("{}~0.1", round_dir(&run, 2).root().display())
    );
    // (Rewards as the world model reads them: f32.)
    let returns: Vec<f64> = check
        .load()
        .episodes
        .iter()
        .map(|e| e.rewards.iter().map(|&v| v as f32 as f64).sum())
        .collect();
    assert_eq!(returns.len(), 2);
    let last = rows[2].c_return.unwrap();
    assert!((last - returns.iter().sum::<f64>() / 2.0).abs() < 1e-9);
    // Each round starts from the best C of the rounds before it, by those returns.
    let argmax = |rows: &[RoundSummary]| {
        let mut best = 0;
        for (i, r) in rows.iter().enumerate() {
            if r.c_return.unwrap() >= rows[best].c_return.unwrap() {
                best = i;
            }
        }
        best
    };
    for r in 1..=2 {
        let from = rows[r].started_from.unwrap();
        assert_eq!(from, argmax(&rows[..r]), "{rows:?}");
        // ... and its CMA-ES's first mean was that C.
        let start = if from == 0 {
            run.clone()
        } else {
            round_dir(&run, from)
        };
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(start.file("controller.json")).unwrap()).unwrap();
        let params: Vec<f32> = serde_json::from_value(c["params"].clone()).unwrap();
        let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(round_dir(&run, r).file("controller.state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            state["made_by"]["init_crc32"],
            format!("{:08x}", crc32fast::hash(&bytes))
        );
    }
    // One C is chosen: the one whose episodes returned most.
    let chosen: Vec<usize> = rows.iter().filter(|r| r.chosen).map(|r| r.round).collect();
    assert_eq!(chosen, [argmax(&rows)]);
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("chosen C: round {}'s", chosen[0]))),
        "{said:?}"
    );
    let md = std::fs::read_to_string(run.file("rounds.md")).unwrap();
    assert!(
        md.contains(&format!("The chosen C is round **{}**'s", chosen[0])),
        "{md}"
    );

    // Run again: everything is done, the last C's episodes included.
    assert_eq!(all(&cfg, &lines), rows);
    let said = lines.take();
    let reused = format!(
        "collect: already done (2 episodes in {})",
        round_dir(&run, 3).data().display()
    );
    assert!(said.contains(&reused), "{said:?}");

    // Starting each round from the last C, round 2 starts from round 1's: its C is trained
    // again unless it started there already. The choice is made among the new Cs.
    cfg.iterate.start_from_best = false;
    let plain = all(&cfg, &lines);
    let said = lines.take();
    assert_eq!(plain[2].started_from, Some(1));
    let retrained = said
        .iter()
        .any(|l| l.contains("round 2: C, 1 generations from round 1's C"));
    assert_eq!(retrained, rows[2].started_from != Some(1), "{said:?}");
    if retrained {
        assert!(
            said.iter().any(|l| l.contains("started from another C")),
            "{said:?}"
        );
    }
    let chosen: Vec<usize> = plain.iter().filter(|r| r.chosen).map(|r| r.round).collect();
    assert_eq!(chosen, [argmax(&plain)]);
    // Without choose_best no C is chosen.
    cfg.iterate.choose_best = false;
    assert!(all(&cfg, &lines).iter().all(|r| !r.chosen));
}

#[test]
fn m_is_calibrated_on_held_out_episodes_and_the_dream_reads_it() {
    use dreamgym_agents::world_models::CalibrationFile;
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    record(&run.data(), 4, 30).unwrap();
    let mut cfg = tiny_config();
    // Calibrating needs held-out episodes: a clear error without them.
    cfg.controller.in_dream = true;
    cfg.controller.dream.calibrated = true;
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("mdnrnn.held_out"), "{err}");
    cfg.mdnrnn.held_out = 0.25;
    cfg.mdnrnn.batch_size = 3;
    let out = stage(&cfg, &run, Stage::All).unwrap();
    let c: CalibrationFile =
        serde_json::from_slice(&std::fs::read(run.file("calibration.json")).unwrap()).unwrap();
    // One episode in four (the fourth) is held out: 30 steps.
    assert_eq!((c.episodes, c.steps), (1, 30));
    assert_eq!(
        c.mdnrnn_crc32,
        dreamgym_nn::weights_crc32(&run.checkpoint("mdnrnn")).unwrap()
    );
    assert!(c.calibration.is_finite());
    // Fitted on those episodes, the calibration cannot do worse on them than the raw heads.
    assert!(
        c.calibrated.reward_rmse <= c.raw.reward_rmse + 1e-9,
        "{c:?}"
    );
    assert!(c.calibrated.done_bce <= c.raw.done_bce + 1e-6, "{c:?}");
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    assert!(report.contains("held-out episodes") && report.contains("reads the heads through it"));
    // The held-out episode is not trained on: 3 episodes of 30 steps make 9 windows of 8, 3
    // batches of 3 per epoch (12 windows, 4 batches, with it).
    assert_eq!(out.mdn.unwrap().steps, 3 * cfg.mdnrnn.epochs);
    // A calibration of another M is refused, not silently used.
    let mut bad = c.clone();
    bad.mdnrnn_crc32 ^= 1;
    std::fs::write(
        run.file("calibration.json"),
        serde_json::to_vec(&bad).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(run.file("controller.state.json")).unwrap();
    let err = format!("{:#}", stage(&cfg, &run, Stage::Controller).unwrap_err());
    assert!(err.contains("another M"), "{err}");
}

#[test]
fn an_ensemble_of_ms_is_trained_measured_on_held_out_steps_and_halts_the_dream() {
    use dreamgym_agents::world_models::{EnsembleFile, IterateStage, round_dir};
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    record(&run.data(), 4, 30).unwrap();
    let mut cfg = tiny_config();
    cfg.controller.in_dream = true;
    cfg.controller.dream.halt_quantile = 0.5;
    cfg.controller.dream.halt_reward = -7.0;
    // Halting needs members and held-out episodes to measure them on: clear errors.
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("mdnrnn.ensemble"), "{err}");
    cfg.mdnrnn.ensemble = 3;
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("mdnrnn.held_out"), "{err}");
    cfg.mdnrnn.held_out = 0.25;
    cfg.mdnrnn.batch_size = 3;
    cfg.eval.max_steps = 20;
    // Each episode of the round is recorded by the agent as it acts or with noise 0.5.
    cfg.iterate = IterateStage {
        rounds: 1,
        episodes: 2,
        noise: ActionNoise::Mixture(vec![0.0, 0.5]),
        mdnrnn_epochs: 1,
        generations: 1,
        choose_best: false,
        start_from_best: false,
    };
    let lines = Lines::default();
    let rows = run_world_models(
        &cfg,
        &run,
        &Registry::with_builtins(),
        Stage::All,
        &lines,
        None,
    )
    .unwrap()
    .rounds
    .unwrap();
    assert_eq!(rows.len(), 2);
    let ds = dreamgym_envs::recording::Dataset::open(round_dir(&run, 1).data()).unwrap();
    let agent = run.root().display();
    assert_eq!(ds.meta().policy, format!("{agent} | {agent}~0.5"));
    let said = lines.take();
    assert!(
        said.iter()
            .any(|l| l.contains("the dream ends where M's 3 members disagree")),
        "{said:?}"
    );
    for dir in [run.clone(), round_dir(&run, 1)] {
        let file: EnsembleFile =
            serde_json::from_slice(&std::fs::read(dir.file("ensemble.json")).unwrap()).unwrap();
        let crc = |stem: &std::path::Path| dreamgym_nn::weights_crc32(stem).unwrap();
        let members: Vec<u32> = std::iter::once(crc(&dir.checkpoint("mdnrnn")))
            .chain((1..3).map(|k| {
                crc(
                    &RunDir::new(dir.root().join("ensemble").join(k.to_string()))
                        .checkpoint("mdnrnn"),
                )
            }))
            .collect();
        assert_eq!(file.members_crc32, members);
        // Three Ms from three seeds: three different sets of weights, which disagree.
        assert!(members[0] != members[1] && members[1] != members[2]);
        // Measured on the held-out episode(s): the 4th of the first 4 (30 steps); in the
        // round, 6 episodes, still one held out.
        assert_eq!((file.episodes, file.steps), (1, 30));
        assert_eq!(file.quantiles.len(), 1001);
        assert!(file.quantiles.windows(2).all(|w| w[0] <= w[1]));
        assert!(file.quantile(0.5) > 0.0);
    }
    // An ensemble file that describes other Ms is refused, not silently used.
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.file("ensemble.json")).unwrap()).unwrap();
    file["members_crc32"][1] = serde_json::json!(1);
    std::fs::write(
        run.file("ensemble.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(run.file("controller.state.json")).unwrap();
    let err = format!("{:#}", stage(&cfg, &run, Stage::Controller).unwrap_err());
    assert!(err.contains("other Ms"), "{err}");
}
