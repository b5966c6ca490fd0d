//! The `[language_sft]` section end to end on a few planner demonstrations: it trains a tiny
//! tokenizer and model, evaluates the planner, the model and the constrained model with
//! physics, resumes exactly after an interruption, refuses data it cannot use, and the run
//! folder is a policy.

use std::sync::atomic::{AtomicU64, Ordering};

use dreamgym_agents::language::{SftData, run_language_sft};
use dreamgym_agents::{OnChange, Progress, RunDir, parse_experiment, run_experiment};
use dreamgym_envs::{Info, Registry};

const EXPERIMENT: &str = r#"
name = "sft"
[rollout]
env = "Tabletop-v0"
policy = "expert"
episodes = 16
num_envs = 4
env_config = { mode = "language", families = ["single", "number"] }
[language_sft]
vocab_size = 300
steps = 12
packing = true
batch_size = 2
warmup_steps = 2
checkpoint_every = 5
model = { n_layer = 1, n_embd = 16, n_head = 2, n_kv_head = 1, mlp_hidden = 24, block_size = 256 }
eval = { episodes = 2, max_new_tokens = 12, samples = 2 }
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

#[test]
fn fine_tunes_evaluates_and_resumes_exactly() {
    let registry = Registry::with_builtins();
    let straight = tempfile::tempdir().unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let mut exp = parse_experiment(EXPERIMENT, "test").unwrap();
    exp.out = Some(straight.path().to_path_buf());
    let out = run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let (trained, eval) = out.language_sft.unwrap();
    assert_eq!(trained.steps, 12);
    assert!(trained.final_loss.is_finite() && trained.parameters > 0);
    // Three policies on each of the three default splits.
    assert_eq!(eval.results.len(), 9);
    assert!(eval.results.iter().all(|r| r.episodes == 2));
    let planner: Vec<_> = eval
        .results
        .iter()
        .filter(|r| r.policy == "planner")
        .collect();
    assert!(planner.iter().all(|r| r.parse_rate() == 1.0));
    // Constrained decoding only writes what parses.
    for r in eval
        .results
        .iter()
        .filter(|r| r.policy == "SFT, constrained")
    {
        assert_eq!(r.actions.1, r.actions.0, "{r:?}");
    }
    let run = RunDir::new(straight.path());
    let report = std::fs::read_to_string(run.file("lm_report.md")).unwrap();
    assert!(
        report.contains("| SFT, constrained | unseen phrasings |"),
        "{report}"
    );
    assert!(report.contains("## What the model wrote"), "{report}");
    let csv = std::fs::read_to_string(run.file("metrics/lm.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12);
    assert!(run.file("lm.tokenizer.json").exists());

    // The same run stopped at step 7 (between checkpoints: it saves what it has) and run again.
    exp.out = Some(resumed.path().to_path_buf());
    let err = run_experiment(
        &exp,
        &registry,
        OnChange::Ask,
        &StopAfter(AtomicU64::new(0), 16 + 7),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("run again to resume"),
        "{err:#}"
    );
    let again = RunDir::new(resumed.path());
    let stage = exp.language_sft.clone().unwrap();
    let out = run_language_sft(&stage, &again, &registry, &()).unwrap();
    assert_eq!(out.0.resumed_from, 7);
    for file in [
        "lm.safetensors",
        "lm.optimizer.safetensors",
        "lm.tokenizer.json",
        "metrics/lm.csv",
        "lm_eval.json",
    ] {
        assert_eq!(
            std::fs::read(run.file(file)).unwrap(),
            std::fs::read(again.file(file)).unwrap(),
            "{file} differs after a resume"
        );
    }
    // Done is done, the evaluation included.
    let out = run_language_sft(&stage, &again, &registry, &()).unwrap();
    assert_eq!(out.0.seconds, 0.0);

    // The run folder is a policy for the language env, and only for it.
    let config = serde_json::json!({ "mode": "language" });
    let mut env = registry.make("Tabletop-v0", Some(&config)).unwrap();
    let (obs, act) = (env.observation_space().clone(), env.action_space().clone());
    let folder = straight.path().display().to_string();
    let mut policy = dreamgym_agents::load_policy(&folder, "Tabletop-v0", &obs, &act, 0).unwrap();
    assert!(
        policy.describe().contains("language model"),
        "{}",
        policy.describe()
    );
    let (o, _) = env.reset(Some(1), &Info::new()).unwrap();
    policy.reset(1).unwrap();
    let action = policy.act(&o).unwrap();
    assert!(action.as_text().is_some());
    env.step(&action).unwrap();
    let low = registry.make("Tabletop-v0", None).unwrap();
    let err = dreamgym_agents::load_policy(
        &folder,
        "Tabletop-v0",
        low.observation_space(),
        low.action_space(),
        0,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("reads text"), "{err:#}");
}

#[test]
fn data_without_text_is_refused_with_why() {
    let registry = Registry::with_builtins();
    let dir = tempfile::tempdir().unwrap();
    let exp = parse_experiment(
        &format!(
            "name = \"x\"\nout = {:?}\n[rollout]\nenv = \"CartPole-v0\"\nepisodes = 2\nnum_envs = 1\n",
            dir.path().display().to_string()
        ),
        "test",
    )
    .unwrap();
    run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let err = SftData::load(&RunDir::new(dir.path()).data(), true)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("needs text observations"),
        "{err:#}"
    );
}
