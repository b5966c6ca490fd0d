//! Vector envs: the threaded env returns exactly what the synchronous one does, for any number
//! of workers; Gymnasium's autoreset semantics; bad batches rejected before any env moves.

use dreamgym_envs::{
    AutoresetMode, Env, EnvError, Info, Registry, SyncVecEnv, ThreadedVecEnv, Value, VecEnv,
    VecStep,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn make(id: &str, n: usize) -> Vec<Box<dyn Env>> {
    let r = Registry::with_builtins();
    (0..n).map(|_| r.make(id, None).unwrap()).collect()
}

fn bits(s: &VecStep) -> Vec<u64> {
    let mut out = Vec::new();
    for o in &s.obs {
        out.extend(o.as_f32().unwrap().iter().map(|x| x.to_bits() as u64));
    }
    out.extend(s.rewards.iter().map(|r| r.to_bits()));
    out.extend(
        s.terminated
            .iter()
            .chain(&s.truncated)
            .chain(&s.autoreset)
            .map(|&b| b as u64),
    );
    out
}

fn trajectory(venv: &mut dyn VecEnv, steps: usize, seed: u64) -> Vec<Vec<u64>> {
    venv.reset(Some(seed), &Info::new()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let actions: Vec<Value> = (0..venv.num_envs())
                .map(|_| venv.single_action_space().sample(&mut rng))
                .collect();
            bits(&venv.step(&actions).unwrap())
        })
        .collect()
}

#[test]
fn threaded_equals_sync_for_every_env_and_worker_count() {
    for (id, steps) in [("CartPole-v0", 300), ("Reacher-v0", 120), ("Racer-v0", 150)] {
        let n = 5;
        let reference = trajectory(
            &mut SyncVecEnv::new(make(id, n), AutoresetMode::NextStep).unwrap(),
            steps,
            7,
        );
        for workers in [1, 2, 3] {
            let mut venv =
                ThreadedVecEnv::new(make(id, n), workers, AutoresetMode::NextStep).unwrap();
            assert_eq!(
                trajectory(&mut venv, steps, 7),
                reference,
                "{id} with {workers} workers"
            );
        }
        // Episodes did end and autoreset within the run (except Racer, whose episodes are long).
        if id != "Racer-v0" {
            assert!(
                reference
                    .iter()
                    .any(|b| b.iter().rev().take(n).any(|&x| x == 1)),
                "{id}: no autoreset seen"
            );
        }
    }
}

#[test]
fn different_seeds_give_different_trajectories() {
    let a = trajectory(
        &mut SyncVecEnv::new(make("Reacher-v0", 2), AutoresetMode::NextStep).unwrap(),
        10,
        1,
    );
    let b = trajectory(
        &mut SyncVecEnv::new(make("Reacher-v0", 2), AutoresetMode::NextStep).unwrap(),
        10,
        2,
    );
    assert_ne!(a, b);
}

#[test]
fn next_step_autoreset_follows_gymnasium() {
    let mut venv = SyncVecEnv::new(make("CartPole-v0", 1), AutoresetMode::NextStep).unwrap();
    venv.reset(Some(3), &Info::new()).unwrap();
    let mut last = None;
    for _ in 0..600 {
        let s = venv.step(&[Value::Int(1)]).unwrap();
        if s.terminated[0] || s.truncated[0] {
            last = Some(s);
            break;
        }
    }
    let ended = last.expect("pushing one way ends a cart-pole episode");
    // The final observation is the observation of the ending step.
    let final_obs = ended.obs[0].as_f32().unwrap().to_vec();
    assert!(final_obs[2].abs() > 0.2 || final_obs[0].abs() > 2.4);
    assert!(ended.final_obs[0].is_none());
    // The next step resets: reward 0, not done, the action ignored, a fresh observation.
    let next = venv.step(&[Value::Int(0)]).unwrap();
    assert!(next.autoreset[0]);
    assert_eq!(next.rewards[0], 0.0);
    assert!(!next.terminated[0] && !next.truncated[0]);
    assert!(
        next.obs[0]
            .as_f32()
            .unwrap()
            .iter()
            .all(|x| x.abs() <= 0.05)
    );
    assert!(next.infos[0].contains_key("episode_seed"));
}

#[test]
fn same_step_autoreset_hands_over_the_final_observation() {
    let mut venv = SyncVecEnv::new(make("CartPole-v0", 1), AutoresetMode::SameStep).unwrap();
    venv.reset(Some(3), &Info::new()).unwrap();
    for _ in 0..600 {
        let s = venv.step(&[Value::Int(1)]).unwrap();
        if s.terminated[0] {
            let final_obs = s.final_obs[0].as_ref().unwrap().as_f32().unwrap();
            assert!(final_obs[2].abs() > 0.2 || final_obs[0].abs() > 2.4);
            assert!(s.obs[0].as_f32().unwrap().iter().all(|x| x.abs() <= 0.05));
            assert!(s.final_info[0].is_some());
            assert_eq!(s.rewards[0], 1.0);
            return;
        }
    }
    panic!("no episode ended");
}

#[test]
fn bad_batches_are_rejected_before_any_env_moves() {
    for threaded in [false, true] {
        let mut venv: Box<dyn VecEnv> = if threaded {
            Box::new(
                ThreadedVecEnv::new(make("Reacher-v0", 4), 2, AutoresetMode::NextStep).unwrap(),
            )
        } else {
            Box::new(SyncVecEnv::new(make("Reacher-v0", 4), AutoresetMode::NextStep).unwrap())
        };
        let mut clean = SyncVecEnv::new(make("Reacher-v0", 4), AutoresetMode::NextStep).unwrap();
        venv.reset(Some(0), &Info::new()).unwrap();
        clean.reset(Some(0), &Info::new()).unwrap();
        let good = vec![Value::F32(vec![0.1, -0.2]); 4];
        let mut bad = good.clone();
        bad[3] = Value::F32(vec![f32::NAN, 0.0]);
        assert!(matches!(venv.step(&bad), Err(EnvError::InvalidAction(m)) if m.contains("env 3")));
        assert!(matches!(
            venv.step(&good[..3]),
            Err(EnvError::InvalidAction(_))
        ));
        bad[3] = Value::Int(1);
        assert!(venv.step(&bad).is_err());
        // Nothing moved: the next good step matches an env that never saw the bad batches.
        assert_eq!(
            bits(&venv.step(&good).unwrap()),
            bits(&clean.step(&good).unwrap())
        );
        venv.close();
        venv.close();
    }
}

#[test]
fn envs_with_different_spaces_cannot_share_a_vector_env() {
    let r = Registry::with_builtins();
    let envs = vec![
        r.make("CartPole-v0", None).unwrap(),
        r.make("Reacher-v0", None).unwrap(),
    ];
    assert!(SyncVecEnv::new(envs, AutoresetMode::NextStep).is_err());
    assert!(ThreadedVecEnv::new(Vec::new(), 2, AutoresetMode::NextStep).is_err());
}
