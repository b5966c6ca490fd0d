//! Racer-v0 is drivable: a pure-pursuit driver reading only the observation completes laps,
//! so the observation carries what a policy needs and the rewards add up as in CarRacing.

use dreamgym_envs::{Env, Info, Registry, Value};

const LOOK: usize = 1;

/// Steers at the centre-line point 2·(LOOK+1) tiles ahead, holds a target speed.
fn pursuit(obs: &[f32], target_speed: f32) -> Value {
    let (x, y) = (obs[7 + 2 * LOOK], obs[7 + 2 * LOOK + 1]);
    let heading = y.atan2(x); // positive: the point is to the left
    let steer = (-2.0 * heading).clamp(-1.0, 1.0);
    let speed = obs[0];
    let gas = if speed < target_speed { 1.0 } else { 0.0 };
    let brake = if speed > target_speed + 4.0 { 0.5 } else { 0.0 };
    Value::F32(vec![steer, gas, brake])
}

#[test]
fn a_pursuit_driver_completes_laps_on_several_tracks() {
    let registry = Registry::with_builtins();
    let mut env = registry.make("Racer-v0", None).unwrap();
    let mut laps = 0;
    for seed in 0..4 {
        let (mut obs, info) = env.reset(Some(seed), &Info::new()).unwrap();
        let n = info["tile_count"].as_u64().unwrap() as f64;
        let mut total = 0.0;
        let mut steps = 0;
        loop {
            let s = env.step(&pursuit(obs.as_f32().unwrap(), 16.0)).unwrap();
            total += s.reward;
            steps += 1;
            let done = s.done();
            obs = s.obs.clone();
            if done {
                if s.info.get("lap_complete") == Some(&true.into()) {
                    laps += 1;
                    // Every tile once (+1000 in all) less 0.1 per step.
                    assert!(
                        (total - (1000.0 - 0.1 * steps as f64)).abs() < 1e-6,
                        "seed {seed}: {total}"
                    );
                }
                eprintln!(
                    "seed {seed}: {steps} steps, return {total:.1}, {n} tiles, {:?}",
                    s.info
                );
                break;
            }
        }
    }
    assert_eq!(laps, 4, "only {laps} of 4 laps completed");
}
