//! A conformance checker for environments, after Gymnasium's `check_env`.
//!
//! [`check_env`] exercises an env and reports every rule it breaks: well-formed spaces,
//! observations inside the observation space, reproducible seeding (the same seed gives the
//! same reset and first steps, different seeds differ), finite rewards, Gymnasium's
//! terminated/truncated protocol, clear errors for bad actions, and a harmless double close.
//! A panic inside the env is caught and reported as a failure.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Env, EnvError, Info, Space, Step, Value};

/// Settings of the checker.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Steps taken in the determinism check.
    pub steps: usize,
    /// Most steps to run looking for the end of an episode.
    pub max_episode_steps: usize,
    /// Whether different seeds must give different first observations.
    pub require_seed_variation: bool,
    /// The seed for the checker's action sampling and resets.
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            steps: 20,
            max_episode_steps: 2_000,
            require_seed_variation: true,
            seed: 42,
        }
    }
}

/// What the checker found wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("env failed {} conformance check(s):\n  - {}", failures.len(), failures.join("\n  - "))]
pub struct CheckError {
    /// One line per broken rule.
    pub failures: Vec<String>,
}

/// Checks `env` with default options.
pub fn check_env(env: &mut dyn Env) -> Result<(), CheckError> {
    check_env_with(env, &CheckOptions::default())
}

/// Checks `env`, returning every failure found.
pub fn check_env_with(env: &mut dyn Env, options: &CheckOptions) -> Result<(), CheckError> {
    let mut failures = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| run_checks(env, options, &mut failures)));
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        failures.push(format!("the env panicked: {msg}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CheckError { failures })
    }
}

fn run_checks(env: &mut dyn Env, o: &CheckOptions, failures: &mut Vec<String>) {
    let mut fail = |m: String| failures.push(m);
    let obs_space = env.observation_space().clone();
    let act_space = env.action_space().clone();
    if let Err(e) = obs_space.validate() {
        fail(format!("observation space is malformed: {e}"));
    }
    if let Err(e) = act_space.validate() {
        fail(format!("action space is malformed: {e}"));
    }
    let no_options = Info::new();

    // Step before reset must be refused, not panic.
    let first = act_space.sample(&mut ChaCha8Rng::seed_from_u64(o.seed));
    if env.step(&first).is_ok() {
        fail("step before the first reset succeeded; it must return an error".into());
    }

    // Reset: observation in space, seeded determinism over reset and the first steps.
    let rollout = |env: &mut dyn Env, seed: u64| -> Result<(Value, Vec<Step>), EnvError> {
        let (obs, _) = env.reset(Some(seed), &no_options)?;
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let mut steps = Vec::new();
        for _ in 0..o.steps {
            let step = env.step(&act_space.sample(&mut rng))?;
            let done = step.done();
            steps.push(step);
            if done {
                break;
            }
        }
        Ok((obs, steps))
    };
    let a = rollout(env, o.seed);
    let b = rollout(env, o.seed);
    match (&a, &b) {
        (Ok((obs_a, steps_a)), Ok((obs_b, steps_b))) => {
            if !obs_space.contains(obs_a) {
                fail(format!(
                    "reset observation is outside the observation space: {obs_a:?}"
                ));
            }
            if obs_a != obs_b {
                fail("the same seed gave different reset observations".into());
            }
            let same = steps_a.len() == steps_b.len()
                && steps_a.iter().zip(steps_b).all(|(x, y)| {
                    x.obs == y.obs
                        && x.reward.to_bits() == y.reward.to_bits()
                        && x.terminated == y.terminated
                        && x.truncated == y.truncated
                });
            if !same {
                fail("the same seed and actions gave different steps".into());
            }
            for (t, s) in steps_a.iter().enumerate() {
                if !obs_space.contains(&s.obs) {
                    fail(format!(
                        "step {t}: observation outside the observation space"
                    ));
                    break;
                }
                if !s.reward.is_finite() {
                    fail(format!("step {t}: reward {} is not finite", s.reward));
                    break;
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => fail(format!("reset or step failed: {e}")),
    }
    if o.require_seed_variation
        && let (Ok((obs_a, _)), Ok((obs_c, _))) = (&a, &rollout(env, o.seed.wrapping_add(1)))
        && obs_a == obs_c
    {
        fail("different seeds gave the same reset observation".into());
    }

    // Unseeded resets continue the seeded stream: reproducible after a seeded reset.
    let unseeded = |env: &mut dyn Env| -> Option<Value> {
        env.reset(Some(o.seed), &no_options).ok()?;
        env.reset(None, &no_options).ok().map(|(obs, _)| obs)
    };
    if unseeded(env) != unseeded(env) {
        fail("reset(None) after reset(Some(seed)) is not reproducible".into());
    }

    // Bad actions are errors, not panics, and do not end the episode.
    if env.reset(Some(o.seed), &no_options).is_ok() {
        for bad in bad_actions(&act_space) {
            if env.step(&bad).is_ok() {
                fail(format!(
                    "step accepted an invalid action: {}",
                    bad.describe()
                ));
            }
        }
        if env.step(&first).is_err() {
            fail("after a rejected action, a valid action failed".into());
        }
    }

    // Run an episode to its end; then step must be refused until reset.
    if env.reset(Some(o.seed), &no_options).is_ok() {
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ 1);
        for _ in 0..o.max_episode_steps {
            match env.step(&act_space.sample(&mut rng)) {
                Ok(step) if step.done() => {
                    if env.step(&act_space.sample(&mut rng)).is_ok() {
                        fail("step after the episode ended (without reset) succeeded".into());
                    }
                    if env.reset(None, &no_options).is_err() {
                        fail("reset after the end of an episode failed".into());
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    fail(format!("step failed mid-episode on a valid action: {e}"));
                    break;
                }
            }
        }
    }

    env.close();
    env.close();
}

/// Actions that every env must refuse: the wrong kind, the wrong length, NaN.
fn bad_actions(space: &Space) -> Vec<Value> {
    match space {
        Space::Box(b) => {
            let mut nan = vec![0.0; b.len()];
            if let Some(x) = nan.first_mut() {
                *x = f32::NAN;
            }
            vec![
                Value::F32(vec![0.0; b.len() + 1]),
                Value::F32(nan),
                Value::Int(0),
            ]
        }
        Space::Discrete(d) => vec![
            Value::Int(d.start + d.n as i64),
            Value::Int(d.start - 1),
            Value::F32(vec![0.0]),
        ],
        Space::MultiDiscrete(m) => vec![Value::Ints(vec![0; m.nvec.len() + 1]), Value::Int(0)],
        Space::Dict(_) => vec![Value::Int(0)],
        Space::Text(_) => vec![Value::Int(0), Value::F32(vec![0.0])],
    }
}
