//! Uniformly random actions: the baseline every trained policy is compared with.

use dreamgym_base::derive_seed;
use dreamgym_envs::{Space, Value};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Policy, PolicyError};

/// Samples the action space uniformly. Each episode's actions come from
/// `derive_seed(seed, "policy.actions", episode_seed)`: a stream of its own, never the env's.
#[derive(Debug, Clone)]
pub struct RandomPolicy {
    space: Space,
    seed: u64,
    rng: ChaCha8Rng,
}

impl RandomPolicy {
    /// A random policy over `space`, its streams derived from `seed`.
    pub fn new(space: Space, seed: u64) -> Self {
        Self {
            space,
            seed,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, "policy.actions", 0)),
        }
    }
}

impl Policy for RandomPolicy {
    fn describe(&self) -> String {
        "random".into()
    }

    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.rng =
            ChaCha8Rng::seed_from_u64(derive_seed(self.seed, "policy.actions", episode_seed));
        Ok(())
    }

    fn act(&mut self, _obs: &Value) -> Result<Value, PolicyError> {
        Ok(self.space.sample(&mut self.rng))
    }

    fn fork(&self) -> Box<dyn Policy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_envs::BoxSpace;

    #[test]
    fn episodes_repeat_from_their_seed_and_differ_between_seeds() {
        let space = Space::Box(BoxSpace::uniform(vec![3], -1.0, 1.0));
        let mut p = RandomPolicy::new(space.clone(), 9);
        let run = |p: &mut RandomPolicy, s| {
            p.reset(s).unwrap();
            (0..5)
                .map(|_| p.act(&Value::Int(0)).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(&mut p, 1);
        let b = run(&mut p, 2);
        let mut fork = p.fork();
        fork.reset(1).unwrap();
        let c: Vec<_> = (0..5).map(|_| fork.act(&Value::Int(0)).unwrap()).collect();
        assert_eq!(a, c, "same episode seed, same actions, whatever ran before");
        assert_ne!(a, b);
        assert!(a.iter().all(|v| space.contains(v)));
    }
}
