//! The `[decision_transformer]` section end to end on a small CartPole dataset: it trains,
//! evaluates at several targets, resumes exactly after an interruption, and refuses data it
//! cannot use.

use std::sync::atomic::{AtomicU64, Ordering};

use dreamgym_agents::decision_transformer::{DecisionTransformerStage, run_decision_transformer};
use dreamgym_agents::{OnChange, Progress, RunDir, parse_experiment, run_experiment};
use dreamgym_envs::Registry;

const EXPERIMENT: &str = r#"
name = "dt"
[rollout]
env = "CartPole-v0"
episodes = 24
num_envs = 4
[decision_transformer]
steps = 24
batch_size = 8
warmup_steps = 4
checkpoint_every = 5
baselines = true
eval = { episodes = 2, targets = [20.0, 200.0], max_steps = 50 }
model = { context = 4, max_timestep = 200, return_scale = 100.0, transformer = { n_layer = 1, n_embd = 16, n_head = 2, block_size = 12, positions = "none" } }
"#;

/// Asks to stop once `limit` units of work are done.
struct StopAfter(AtomicU64, u64);

impl Progress for StopAfter {
    fn advance(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }
    fn interrupted(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= self.1
    }
}

fn stage(exp: &dreamgym_agents::Experiment) -> DecisionTransformerStage {
    exp.decision_transformer.clone().unwrap()
}

#[test]
fn trains_evaluates_and_resumes_exactly() {
    let registry = Registry::with_builtins();
    let straight = tempfile::tempdir().unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let mut exp = parse_experiment(EXPERIMENT, "test").unwrap();
    exp.out = Some(straight.path().to_path_buf());
    let out = run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let (trained, eval) = out.decision_transformer.unwrap();
    assert_eq!(trained.steps, 24);
    assert!(trained.final_loss.is_finite());
    assert_eq!(eval.targets.len(), 2);
    assert!(eval.targets.iter().all(|(_, r)| r.len() == 2));
    assert_eq!(eval.random.len(), 2);
    let labels: Vec<&str> = eval.baselines.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["behaviour cloning", "behaviour cloning, best 10%"]);
    assert!(eval.baselines.iter().all(|(_, r)| r.len() == 2));
    let run = RunDir::new(straight.path());
    let report = std::fs::read_to_string(run.file("dt_report.md")).unwrap();
    assert!(
        report.contains("| DT, target 200.0 |") && report.contains("| random |"),
        "{report}"
    );
    let csv = std::fs::read_to_string(run.file("metrics/dt.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 24);

    // The same run stopped at step 12 (between checkpoints: it saves what it has) and run
    // again.
    exp.out = Some(resumed.path().to_path_buf());
    let collect_episodes = 24;
    let err = run_experiment(
        &exp,
        &registry,
        OnChange::Ask,
        &StopAfter(AtomicU64::new(0), collect_episodes + 12),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("run again to resume"),
        "{err:#}"
    );
    let again = RunDir::new(resumed.path());
    let out = run_decision_transformer(&stage(&exp), &again, &registry, &()).unwrap();
    assert_eq!(out.0.resumed_from, 12);
    for file in [
        "dt.safetensors",
        "dt.optimizer.safetensors",
        "metrics/dt.csv",
        "dt_eval.json",
    ] {
        assert_eq!(
            std::fs::read(run.file(file)).unwrap(),
            std::fs::read(again.file(file)).unwrap(),
            "{file} differs after a resume"
        );
    }
    // Done is done, the evaluation included.
    let before = std::fs::metadata(again.file("dt_eval.json"))
        .unwrap()
        .modified()
        .unwrap();
    let out = run_decision_transformer(&stage(&exp), &again, &registry, &()).unwrap();
    assert_eq!(out.0.seconds, 0.0);
    let after = std::fs::metadata(again.file("dt_eval.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the evaluation ran again");
    // --force after a DT-only change redoes the DT and keeps the dataset.
    let chunk = again.data().join("chunk-000000.safetensors");
    let recorded = std::fs::read(&chunk).unwrap();
    let mut changed = exp.clone();
    changed.decision_transformer.as_mut().unwrap().lr = 2e-4;
    let err = format!(
        "{:#}",
        run_experiment(&changed, &registry, OnChange::Resume, &()).unwrap_err()
    );
    assert!(err.contains("decision_transformer.lr"), "{err}");
    run_experiment(&changed, &registry, OnChange::Force, &()).unwrap();
    assert_eq!(std::fs::read(&chunk).unwrap(), recorded);

    // The run folder is a policy, aiming at a given target or at its dataset's best return.
    let mut env = registry.make("CartPole-v0", None).unwrap();
    let (obs, act) = (env.observation_space().clone(), env.action_space().clone());
    let folder = resumed.path().display().to_string();
    let aimed = dreamgym_agents::load_policy(&format!("{folder}@50"), "CartPole-v0", &obs, &act, 0)
        .unwrap();
    assert!(
        aimed.describe().contains("target return 50.0"),
        "{}",
        aimed.describe()
    );
    let mut best = dreamgym_agents::load_policy(&folder, "CartPole-v0", &obs, &act, 0).unwrap();
    assert!(best.describe().contains("decision transformer"));
    let stats = dreamgym_agents::run_episode(env.as_mut(), best.as_mut(), 3, 50).unwrap();
    assert!(stats.steps > 0);
    // Another env's spaces, or a target that is not a number, are refused.
    let reacher = registry.make("Reacher-v0", None).unwrap();
    let err = dreamgym_agents::load_policy(
        &folder,
        "Reacher-v0",
        reacher.observation_space(),
        reacher.action_space(),
        0,
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("floats per observation"),
        "{err:#}"
    );
    let err =
        dreamgym_agents::check_policy_spec(&format!("{folder}@lots"), "CartPole-v0").unwrap_err();
    assert!(
        format!("{err:#}").contains("not a target return"),
        "{err:#}"
    );
}

#[test]
fn data_it_cannot_use_is_a_clear_error() {
    let registry = Registry::with_builtins();
    let dir = tempfile::tempdir().unwrap();
    let mut exp = parse_experiment(EXPERIMENT, "test").unwrap();
    exp.out = Some(dir.path().to_path_buf());
    exp.decision_transformer.as_mut().unwrap().model.context = 150;
    exp.decision_transformer
        .as_mut()
        .unwrap()
        .model
        .transformer
        .block_size = 450;
    // CartPole's random episodes are far shorter than 150 steps.
    let err = format!(
        "{:#}",
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(err.contains("has 150 steps"), "{err}");
    // A NaN target and a context the transformer cannot hold are refused before any work.
    let mut bad = stage(&exp);
    bad.eval.targets = vec![f64::NAN];
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("targets"));
    let mut bad = stage(&exp);
    bad.model.transformer.block_size = 10;
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("block_size"));
}

#[test]
fn pixels_train_through_v_and_the_run_then_acts_on_frames() {
    let registry = Registry::with_builtins();
    let wm = tempfile::tempdir().unwrap();
    dreamgym_agents::testing::tiny_run(wm.path()).unwrap();
    let wm_path = wm.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
name = "dt-pixels"
[rollout]
env = "Racer-v0"
env_config = {{ obs = "pixels", width = 16, height = 16 }}
policy = "{wm_path} | {wm_path}~0.3 | random"
episodes = 4
num_envs = 2
[decision_transformer]
encoder = "{wm_path}"
steps = 6
batch_size = 4
warmup_steps = 2
eval = {{ episodes = 1, targets = [10.0], max_steps = 20, reference = "{wm_path}" }}
model = {{ context = 4, max_timestep = 1024, return_scale = 100.0, transformer = {{ n_layer = 1, n_embd = 16, n_head = 2, block_size = 12, positions = "none" }} }}
"#
    );
    let mut exp = parse_experiment(&text, "test").unwrap();
    exp.out = Some(dir.path().to_path_buf());
    // Without V, pixels are refused with what to set.
    let mut blind = exp.clone();
    blind.decision_transformer.as_mut().unwrap().encoder = String::new();
    let err = format!(
        "{:#}",
        run_experiment(&blind, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(err.contains("decision_transformer.encoder"), "{err}");
    // The refused run saved its config; the encoder is a DT setting, so only the DT is redone.
    let out = run_experiment(&exp, &registry, OnChange::Force, &()).unwrap();
    let (trained, eval) = out.decision_transformer.unwrap();
    assert_eq!(trained.steps, 6);
    let (reference, returns) = eval.reference.expect("the reference was evaluated");
    assert_eq!((reference.as_str(), returns.len()), (wm_path.as_str(), 1));
    // The model reads V's z (4 floats in the tiny V), not 16x16x3 pixels.
    let (cfg, _): (dreamgym_policies::DtCheckpointConfig, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(
            &RunDir::new(dir.path()).checkpoint("dt"),
            dreamgym_policies::DT_CHECKPOINT_KIND,
        )
        .unwrap();
    assert_eq!(cfg.spec.obs_dim(), 4);
    // The run is a policy on pixels: V encodes each frame.
    let overrides: serde_json::Value =
        serde_json::from_str(r#"{"obs": "pixels", "width": 16, "height": 16}"#).unwrap();
    let mut env = registry.make("Racer-v0", Some(&overrides)).unwrap();
    let folder = dir.path().display().to_string();
    let mut policy = dreamgym_agents::load_policy(
        &format!("{folder}@50"),
        "Racer-v0",
        env.observation_space(),
        env.action_space(),
        0,
    )
    .unwrap();
    assert!(policy.describe().contains("V's z"), "{}", policy.describe());
    let stats = dreamgym_agents::run_episode(env.as_mut(), policy.as_mut(), 1, 5).unwrap();
    assert_eq!(stats.steps, 5);
    // Frames of another size than V's are refused by name.
    let big: serde_json::Value =
        serde_json::from_str(r#"{"obs": "pixels", "width": 32, "height": 32}"#).unwrap();
    let env = registry.make("Racer-v0", Some(&big)).unwrap();
    let err = dreamgym_agents::load_policy(
        &folder,
        "Racer-v0",
        env.observation_space(),
        env.action_space(),
        0,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("V expects"), "{err:#}");
    // Ctrl-C while V encodes the frames stops there, saying so.
    let stop = StopAfter(AtomicU64::new(0), 0);
    let err = run_decision_transformer(&stage(&exp), &RunDir::new(dir.path()), &registry, &stop)
        .unwrap_err();
    let interrupted = err
        .downcast_ref::<dreamgym_agents::Interrupted>()
        .expect("an Interrupted error");
    assert_eq!(interrupted.stage, "encode frames with V");
}

#[test]
fn pixels_train_through_the_conv_encoder_and_the_run_acts_on_frames() {
    let registry = Registry::with_builtins();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "dt-conv"
[rollout]
env = "Racer-v0"
env_config = { obs = "pixels", width = 16, height = 16 }
episodes = 3
num_envs = 3
[decision_transformer]
steps = 4
batch_size = 4
warmup_steps = 2
eval = { episodes = 1, targets = [10.0], max_steps = 20 }
model = { context = 4, max_timestep = 1024, return_scale = 100.0, conv = { channels = [4, 8], kernels = [4, 3], strides = [2, 1] }, transformer = { n_layer = 1, n_embd = 16, n_head = 2, block_size = 12, positions = "none" } }
"#;
    let mut exp = parse_experiment(text, "test").unwrap();
    exp.out = Some(dir.path().to_path_buf());
    // V and the conv encoder at once is refused before any work.
    let mut both = stage(&exp);
    both.encoder = "runs/world-models-racer".into();
    let err = format!("{:#}", both.validate().unwrap_err());
    assert!(err.contains("not both"), "{err}");
    let out = run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let (trained, eval) = out.decision_transformer.unwrap();
    assert_eq!(trained.steps, 4);
    assert!(trained.final_loss.is_finite());
    assert_eq!(eval.targets[0].1.len(), 1);
    // The model reads the frames themselves: 16x16x3 bytes through its convolutions.
    let (cfg, _): (dreamgym_policies::DtCheckpointConfig, serde_json::Value) =
        dreamgym_nn::read_checkpoint_meta(
            &RunDir::new(dir.path()).checkpoint("dt"),
            dreamgym_policies::DT_CHECKPOINT_KIND,
        )
        .unwrap();
    assert_eq!(cfg.spec.image, Some([16, 16, 3]));
    assert_eq!(cfg.spec.obs_dim(), 768);
    // Ctrl-C while the frames load stops there too, saying so.
    let stop = StopAfter(AtomicU64::new(0), 0);
    let err = run_decision_transformer(&stage(&exp), &RunDir::new(dir.path()), &registry, &stop)
        .unwrap_err();
    let interrupted = err
        .downcast_ref::<dreamgym_agents::Interrupted>()
        .expect("an Interrupted error");
    assert_eq!(interrupted.stage, "load the dataset");
    // The run is a policy on pixels, in a Dict observation too.
    let folder = dir.path().display().to_string();
    for overrides in [
        r#"{"obs": "pixels", "width": 16, "height": 16}"#,
        r#"{"obs": "both", "width": 16, "height": 16}"#,
    ] {
        let overrides: serde_json::Value = serde_json::from_str(overrides).unwrap();
        let mut env = registry.make("Racer-v0", Some(&overrides)).unwrap();
        let mut policy = dreamgym_agents::load_policy(
            &format!("{folder}@50"),
            "Racer-v0",
            env.observation_space(),
            env.action_space(),
            0,
        )
        .unwrap();
        let stats = dreamgym_agents::run_episode(env.as_mut(), policy.as_mut(), 1, 5).unwrap();
        assert_eq!(stats.steps, 5);
    }
    // Frames of another size, and state observations, are refused by name.
    for (overrides, want) in [
        (r#"{"obs": "pixels", "width": 32, "height": 32}"#, "16x16x3"),
        (r#"{"obs": "state"}"#, "16x16x3"),
    ] {
        let overrides: serde_json::Value = serde_json::from_str(overrides).unwrap();
        let env = registry.make("Racer-v0", Some(&overrides)).unwrap();
        let err = dreamgym_agents::load_policy(
            &folder,
            "Racer-v0",
            env.observation_space(),
            env.action_space(),
            0,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
    // The conv encoder on a dataset of state observations says what it needs.
    let state = tempfile::tempdir().unwrap();
    let mut exp = parse_experiment(EXPERIMENT, "test").unwrap();
    exp.out = Some(state.path().to_path_buf());
    exp.decision_transformer.as_mut().unwrap().model.conv =
        Some(dreamgym_policies::ConvEncoderConfig::default());
    let err = format!(
        "{:#}",
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(err.contains("model.conv reads images"), "{err}");
}
