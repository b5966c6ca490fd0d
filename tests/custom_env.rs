//! A user-defined env (the `custom_env` example) works with the registry, the checker and the
//! rollout recorder exactly like a built-in one.

#[path = "../examples/custom_env/pendulum.rs"]
#[allow(dead_code)]
mod pendulum;

use dreamgym::cli::{CollectConfig, collect};
use dreamgym::envs::recording::Dataset;
use dreamgym::envs::{Registry, check_env};
use pendulum::{Pendulum, PendulumConfig};

fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    r.register::<PendulumConfig, _>("Pendulum-v1", "pendulum", Some(200), Pendulum::new)
        .unwrap();
    r
}

#[test]
fn a_custom_env_passes_the_checker_and_records() {
    let r = registry();
    let mut env = r.make("Pendulum-v1", None).unwrap();
    check_env(&mut env).unwrap();
    assert!(
        r.make("Pendulum-v1", Some(&serde_json::json!({"g": -1.0})))
            .is_err()
    );

    let dir = tempfile::tempdir().unwrap();
    let config = CollectConfig {
        env: "Pendulum-v1".into(),
        episodes: 6,
        num_envs: 3,
        workers: 2,
        ..CollectConfig::default()
    };
    let summary = collect(&r, &config, &dir.path().join("data"), &()).unwrap();
    assert_eq!((summary.episodes, summary.steps), (6, 1200));
    let report = Dataset::open(dir.path().join("data")).unwrap().load();
    assert_eq!(report.episodes.len(), 6);
    assert!(
        report
            .episodes
            .iter()
            .all(|e| e.truncated.last() == Some(&true))
    );
}
