//! The wrappers do what Gymnasium's do.

use dreamgym_envs::builtin::{CartPole, CartPoleConfig, Reacher, ReacherConfig};
use dreamgym_envs::wrappers::{
    ClipAction, FrameStack, NormalizeObservation, RecordEpisodeStatistics, RescaleAction, TimeLimit,
};
use dreamgym_envs::{Env, EnvError, Info, Space, Value};

fn reacher() -> Reacher {
    Reacher::new(ReacherConfig::default()).unwrap()
}

#[test]
fn time_limit_truncates_on_the_last_step_and_then_refuses() {
    let mut env = TimeLimit::new(reacher(), 3);
    env.reset(Some(0), &Info::new()).unwrap();
    let a = Value::F32(vec![0.0, 0.0]);
    assert!(!env.step(&a).unwrap().truncated);
    assert!(!env.step(&a).unwrap().truncated);
    let last = env.step(&a).unwrap();
    assert!(last.truncated && !last.terminated);
    assert!(matches!(env.step(&a), Err(EnvError::ResetNeeded(_))));
    env.reset(None, &Info::new()).unwrap();
    assert!(!env.step(&a).unwrap().truncated);
}

#[test]
fn time_limit_lets_termination_win() {
    let mut env = TimeLimit::new(CartPole::new(CartPoleConfig::default()).unwrap(), 1000);
    env.reset(Some(0), &Info::new()).unwrap();
    loop {
        let s = env.step(&Value::Int(1)).unwrap();
        if s.done() {
            assert!(s.terminated && !s.truncated);
            break;
        }
    }
}

#[test]
fn episode_statistics_report_return_and_length() {
    let mut env = RecordEpisodeStatistics::new(TimeLimit::new(reacher(), 5));
    env.reset(Some(1), &Info::new()).unwrap();
    let mut total = 0.0;
    for t in 0..5 {
        let s = env.step(&Value::F32(vec![0.3, 0.3])).unwrap();
        total += s.reward;
        if t < 4 {
            assert!(!s.info.contains_key("episode"));
        } else {
            let ep = &s.info["episode"];
            assert_eq!(ep["l"], 5);
            assert!((ep["r"].as_f64().unwrap() - total).abs() < 1e-12);
        }
    }
}

#[test]
fn rescale_action_maps_the_new_range_onto_the_env_bounds() {
    let mut env = RescaleAction::new(reacher(), 0.0, 1.0).unwrap();
    assert_eq!(env.action_space().as_box().unwrap().low, vec![0.0, 0.0]);
    env.reset(Some(0), &Info::new()).unwrap();
    // 1.0 maps to the env's +1 (ctrl cost 2), 0.5 maps to 0 (ctrl cost 0).
    let full = env.step(&Value::F32(vec![1.0, 1.0])).unwrap();
    assert!((full.info["reward_ctrl"].as_f64().unwrap() + 2.0).abs() < 1e-6);
    let mid = env.step(&Value::F32(vec![0.5, 0.5])).unwrap();
    assert!(mid.info["reward_ctrl"].as_f64().unwrap().abs() < 1e-9);
    assert!(
        RescaleAction::new(CartPole::new(CartPoleConfig::default()).unwrap(), 0.0, 1.0).is_err()
    );
}

#[test]
fn clip_action_clips_silently_but_still_refuses_nan() {
    let mut env = ClipAction::new(reacher()).unwrap();
    assert!(
        env.action_space()
            .contains(&Value::F32(vec![100.0, -100.0]))
    );
    env.reset(Some(0), &Info::new()).unwrap();
    let s = env.step(&Value::F32(vec![100.0, -100.0])).unwrap();
    assert!(!s.info.contains_key("action_clipped"));
    assert!((s.info["reward_ctrl"].as_f64().unwrap() + 2.0).abs() < 1e-6);
    assert!(env.step(&Value::F32(vec![f32::NAN, 0.0])).is_err());
}

#[test]
fn normalize_observation_matches_direct_statistics() {
    let mut env = NormalizeObservation::new(reacher()).unwrap();
    let mut raw_env = reacher();
    let (_, _) = env.reset(Some(2), &Info::new()).unwrap();
    let (raw0, _) = raw_env.reset(Some(2), &Info::new()).unwrap();
    let mut raws = vec![raw0.as_f32().unwrap().to_vec()];
    let mut last = None;
    for t in 0..30 {
        let a = Value::F32(vec![(t as f32 * 0.3).sin(), 0.5]);
        last = Some(env.step(&a).unwrap().obs);
        raws.push(raw_env.step(&a).unwrap().obs.as_f32().unwrap().to_vec());
    }
    let n = raws.len() as f64;
    let last = last.unwrap();
    let got = last.as_f32().unwrap();
    for i in 0..10 {
        let mean = raws.iter().map(|r| r[i] as f64).sum::<f64>() / n;
        let var = raws
            .iter()
            .map(|r| (r[i] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let expected = (raws.last().unwrap()[i] as f64 - mean) / (var + 1e-8).sqrt();
        assert!(
            (got[i] as f64 - expected).abs() < 1e-3,
            "index {i}: {} vs {expected}",
            got[i]
        );
    }
}

#[test]
fn frame_stack_keeps_the_last_n_observations_oldest_first() {
    let mut env = FrameStack::new(reacher(), 3).unwrap();
    let Space::Box(b) = env.observation_space() else {
        panic!()
    };
    assert_eq!(b.shape, vec![3, 10]);
    let (first, _) = env.reset(Some(0), &Info::new()).unwrap();
    let f = first.as_f32().unwrap();
    assert_eq!(&f[0..10], &f[10..20]);
    assert_eq!(&f[10..20], &f[20..30]);
    let s1 = env.step(&Value::F32(vec![0.5, 0.5])).unwrap();
    let s2 = env.step(&Value::F32(vec![0.5, 0.5])).unwrap();
    let a = s1.obs.as_f32().unwrap();
    let b2 = s2.obs.as_f32().unwrap();
    assert_eq!(&b2[0..10], &a[10..20]);
    assert_eq!(&b2[10..20], &a[20..30]);
    assert!(env.observation_space().contains(&s2.obs));
    assert!(FrameStack::new(reacher(), 0).is_err());
}
