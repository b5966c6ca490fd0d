//! Every registered env passes the conformance checker; broken envs are rejected.

use dreamgym_envs::{
    BoxSpace, Discrete, Env, EnvError, EpisodeSeeder, Info, Registry, Space, Step, Value, check_env,
};

#[test]
fn every_registered_env_passes() {
    let registry = Registry::with_builtins();
    assert!(registry.ids().len() >= 3);
    for id in registry.ids() {
        let mut env = registry.make(&id, None).unwrap();
        if let Err(e) = check_env(&mut env) {
            panic!("{id}: {e}");
        }
    }
}

/// A deliberately broken env; each flag breaks one rule.
#[derive(Default)]
struct Broken {
    obs_outside_space: bool,
    ignore_seed: bool,
    accept_anything: bool,
    panic_on_step: bool,
    counter: u64,
    seeder: EpisodeSeeder,
    running: bool,
    obs_space: Option<Space>,
    act_space: Option<Space>,
}

impl Broken {
    fn new() -> Self {
        Self {
            obs_space: Some(Space::Box(BoxSpace::new(vec![-1.0], vec![1.0]))),
            act_space: Some(Space::Discrete(Discrete::new(2))),
            ..Self::default()
        }
    }
}

impl Env for Broken {
    fn observation_space(&self) -> &Space {
        self.obs_space.as_ref().unwrap()
    }
    fn action_space(&self) -> &Space {
        self.act_space.as_ref().unwrap()
    }
    fn reset(&mut self, seed: Option<u64>, _: &Info) -> Result<(Value, Info), EnvError> {
        self.counter += 1;
        let s = if self.ignore_seed {
            self.counter
        } else {
            self.seeder.next_seed(seed)
        };
        self.running = true;
        let x = (s % 100) as f32 / 100.0;
        Ok((
            Value::F32(vec![if self.obs_outside_space { 5.0 } else { x }]),
            Info::new(),
        ))
    }
    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        if self.panic_on_step {
            panic!("boom");
        }
        if !self.accept_anything {
            if !self.running {
                return Err(EnvError::ResetNeeded("reset first".into()));
            }
            if !self.action_space().contains(action) {
                return Err(EnvError::InvalidAction("no".into()));
            }
        }
        self.running = false;
        Ok(Step {
            obs: Value::F32(vec![0.0]),
            reward: 0.0,
            terminated: true,
            truncated: false,
            info: Info::new(),
        })
    }
}

fn failures(env: Broken) -> Vec<String> {
    let mut env = env;
    check_env(&mut env)
        .map(|_| Vec::new())
        .unwrap_or_else(|e| e.failures)
}

#[test]
fn a_correct_env_of_the_same_shape_passes() {
    assert_eq!(failures(Broken::new()), Vec::<String>::new());
}

#[test]
fn observations_outside_the_space_are_caught() {
    let f = failures(Broken {
        obs_outside_space: true,
        ..Broken::new()
    });
    assert!(
        f.iter()
            .any(|m| m.contains("outside the observation space")),
        "{f:?}"
    );
}

#[test]
fn ignoring_the_seed_is_caught() {
    let f = failures(Broken {
        ignore_seed: true,
        ..Broken::new()
    });
    assert!(f.iter().any(|m| m.contains("same seed")), "{f:?}");
}

#[test]
fn accepting_invalid_actions_and_steps_out_of_order_is_caught() {
    let f = failures(Broken {
        accept_anything: true,
        ..Broken::new()
    });
    assert!(
        f.iter().any(|m| m.contains("before the first reset")),
        "{f:?}"
    );
    assert!(f.iter().any(|m| m.contains("invalid action")), "{f:?}");
    assert!(
        f.iter().any(|m| m.contains("after the episode ended")),
        "{f:?}"
    );
}

#[test]
fn a_panicking_env_is_reported_not_propagated() {
    let f = failures(Broken {
        panic_on_step: true,
        ..Broken::new()
    });
    assert!(
        f.iter()
            .any(|m| m.contains("panicked") && m.contains("boom")),
        "{f:?}"
    );
}

#[test]
fn malformed_spaces_are_caught() {
    let mut env = Broken::new();
    env.obs_space = Some(Space::Box(BoxSpace::new(vec![1.0], vec![-1.0])));
    let f = failures(env);
    assert!(
        f.iter()
            .any(|m| m.contains("observation space is malformed")),
        "{f:?}"
    );
}
