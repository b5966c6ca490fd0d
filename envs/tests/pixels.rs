//! Pixel observations: every built-in env renders on the CPU in `pixels` and `both` modes,
//! passes the checker, draws what its state says, and stays deterministic across workers.

use dreamgym_envs::{
    AutoresetMode, Env, EnvError, Info, Registry, Space, SyncVecEnv, ThreadedVecEnv, Value, VecEnv,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const IDS: [&str; 3] = ["CartPole-v0", "Reacher-v0", "Racer-v0"];

fn make(id: &str, config: serde_json::Value) -> Box<dyn Env> {
    Registry::with_builtins().make(id, Some(&config)).unwrap()
}

fn image(obs: &Value) -> &[u8] {
    match obs {
        Value::U8(v) => v,
        Value::Dict(d) => image(&d["pixels"]),
        other => panic!("no image in {}", other.describe()),
    }
}

#[test]
fn every_env_passes_the_checker_with_pixels_and_with_both() {
    for id in IDS {
        for mode in ["pixels", "both"] {
            let mut env = make(id, json!({"obs": mode, "width": 32, "height": 24}));
            if let Err(e) = dreamgym_envs::check_env(&mut env) {
                panic!("{id} obs={mode}: {e}");
            }
        }
    }
}

#[test]
fn images_have_the_configured_shape_and_are_not_blank() {
    for id in IDS {
        let mut env = make(id, json!({"obs": "pixels", "width": 40, "height": 30}));
        let Space::Box(b) = env.observation_space() else {
            panic!("{id}")
        };
        assert_eq!(b.shape, vec![30, 40, 3]);
        let (obs, _) = env.reset(Some(1), &Info::new()).unwrap();
        let img = image(&obs);
        assert_eq!(img.len(), 30 * 40 * 3);
        let mut colours: Vec<[u8; 3]> = img.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        colours.sort();
        colours.dedup();
        assert!(colours.len() >= 3, "{id}: only {} colours", colours.len());
    }
}

#[test]
fn the_state_half_of_both_is_the_state_observation() {
    for id in IDS {
        let mut state_env = make(id, json!({}));
        let mut both_env = make(id, json!({"obs": "both"}));
        let (s0, _) = state_env.reset(Some(4), &Info::new()).unwrap();
        let (b0, _) = both_env.reset(Some(4), &Info::new()).unwrap();
        let Value::Dict(d) = &b0 else { panic!() };
        assert_eq!(d["state"], s0);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..30 {
            let a = state_env.action_space().sample(&mut rng);
            let s = state_env.step(&a).unwrap();
            let b = both_env.step(&a).unwrap();
            let Value::Dict(d) = &b.obs else { panic!() };
            assert_eq!(d["state"], s.obs, "{id}");
            assert_eq!(s.reward.to_bits(), b.reward.to_bits());
            if s.done() {
                break;
            }
        }
    }
}

#[test]
fn the_racer_picture_shows_the_car_low_in_the_middle_on_the_road() {
    let mut env = make("Racer-v0", json!({"obs": "pixels"}));
    let (obs, _) = env.reset(Some(0), &Info::new()).unwrap();
    let img = image(&obs);
    let px = |x: usize, y: usize| {
        let i = (y * 64 + x) * 3;
        [img[i], img[i + 1], img[i + 2]]
    };
    let red = |c: [u8; 3]| c[0] > 150 && c[1] < 60 && c[2] < 60;
    let grey = |c: [u8; 3]| c[0] == c[1] && c[1] == c[2] && c[0] > 60;
    // The car sits in the lower half, centred horizontally.
    let car: Vec<(usize, usize)> = (0..64)
        .flat_map(|y| (0..64).map(move |x| (x, y)))
        .filter(|&(x, y)| red(px(x, y)))
        .collect();
    assert!(!car.is_empty(), "no car pixels");
    let (cx, cy) = car.iter().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let (cx, cy) = (cx / car.len(), cy / car.len());
    assert!(
        (28..=36).contains(&cx) && (40..=52).contains(&cy),
        "car at ({cx}, {cy})"
    );
    // Road under and ahead of the car.
    assert!(grey(px(32, 30)), "{:?}", px(32, 30));
}

#[test]
fn the_reacher_picture_puts_the_target_where_the_state_says() {
    let mut env = make(
        "Reacher-v0",
        json!({"obs": "both", "width": 92, "height": 92}),
    );
    let (obs, _) = env.reset(Some(7), &Info::new()).unwrap();
    let Value::Dict(d) = &obs else { panic!() };
    let s = d["state"].as_f32().unwrap();
    let (tx, ty) = (s[4], s[5]);
    // The camera shows ±0.23 m; image up is +y.
    let col = ((tx / 0.23 + 1.0) * 0.5 * 92.0) as usize;
    let row = ((1.0 - ty / 0.23) * 0.5 * 92.0) as usize;
    let img = image(&obs);
    let i = (row * 92 + col) * 3;
    let c = [img[i], img[i + 1], img[i + 2]];
    assert!(
        c[0] > 150 && c[1] < 90 && c[2] < 90,
        "target pixel ({col}, {row}) is {c:?}"
    );
}

#[test]
fn pixel_rollouts_are_identical_on_any_number_of_workers() {
    let envs = |n: usize| {
        (0..n)
            .map(|_| {
                make(
                    "Racer-v0",
                    json!({"obs": "pixels", "width": 32, "height": 32}),
                )
            })
            .collect::<Vec<_>>()
    };
    let run = |venv: &mut dyn VecEnv| {
        venv.reset(Some(3), &Info::new()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        (0..40)
            .map(|_| {
                let actions: Vec<Value> = (0..venv.num_envs())
                    .map(|_| venv.single_action_space().sample(&mut rng))
                    .collect();
                venv.step(&actions).unwrap().obs
            })
            .collect::<Vec<_>>()
    };
    let reference = run(&mut SyncVecEnv::new(envs(3), AutoresetMode::NextStep).unwrap());
    let threaded = run(&mut ThreadedVecEnv::new(envs(3), 2, AutoresetMode::NextStep).unwrap());
    assert_eq!(reference, threaded);
}

#[test]
fn zero_or_huge_images_are_config_errors() {
    let registry = Registry::with_builtins();
    for id in IDS {
        for (w, h) in [(0, 64), (64, 0), (100_000, 64)] {
            let err = registry
                .make(id, Some(&json!({"obs": "pixels", "width": w, "height": h})))
                .err()
                .unwrap();
            assert!(
                matches!(&err, EnvError::InvalidConfig { message, .. } if message.contains("image size")),
                "{id}: {err}"
            );
        }
        let err = registry
            .make(id, Some(&json!({"obs": "photos"})))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("photos") && err.to_string().contains("pixels"),
            "{err}"
        );
    }
}
