//! Random play: uniformly random actions (the baseline every trained policy is compared with)
//! and a random walk through a Box action space (random play that holds a turn or the gas for
//! a while, which uniform draws rarely do).

use dreamgym_base::derive_seed;
use dreamgym_envs::{Space, Value};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::scripted::normal;
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

/// A random walk through a bounded Box action space ("Brownian" random play, as in the
/// PyTorch reimplementation of World Models by Tallec et al.): each episode starts from a
/// uniform action, and every step adds Gaussian noise of standard deviation `sigma` half-ranges
/// and clips to the bounds. Uniform draws average out within a few steps, so random play never
/// holds a turn or builds up speed; a walk does, and a world model trained on it sees what
/// sustained actions do.
#[derive(Debug, Clone)]
pub struct BrownianPolicy {
    space: Space,
    low: Vec<f32>,
    high: Vec<f32>,
    sigma: f64,
    seed: u64,
    rng: ChaCha8Rng,
    last: Option<Vec<f32>>,
}

impl BrownianPolicy {
    /// The step size the `brownian` spec uses: √(1/50) half-ranges (Tallec et al.'s dt).
    pub const DEFAULT_SIGMA: f64 = 0.141_421_356_237_309_5;

    /// A walk over `space` (a Box of f32 with finite bounds) with steps of `sigma` half-ranges.
    pub fn new(space: Space, sigma: f64, seed: u64) -> Result<Self, PolicyError> {
        let (low, high) = match &space {
            Space::Box(b)
                if b.dtype == dreamgym_envs::Dtype::F32
                    && b.low.iter().chain(&b.high).all(|v| v.is_finite()) =>
            {
                (b.low.clone(), b.high.clone())
            }
            other => {
                return Err(PolicyError::Config(format!(
                    "a random walk needs a bounded Box of floats as its action space, not {other}"
                )));
            }
        };
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(PolicyError::Config(format!(
                "the random walk's step must be a number > 0 (in half-ranges), not {sigma}"
            )));
        }
        Ok(Self {
            space,
            low,
            high,
            sigma,
            seed,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, "policy.actions", 0)),
            last: None,
        })
    }
}

impl Policy for BrownianPolicy {
    fn describe(&self) -> String {
        format!("random walk (steps of {} half-ranges)", self.sigma)
    }

    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.rng =
            ChaCha8Rng::seed_from_u64(derive_seed(self.seed, "policy.actions", episode_seed));
        self.last = None;
        Ok(())
    }

    fn act(&mut self, _obs: &Value) -> Result<Value, PolicyError> {
        let next = match self.last.take() {
            None => match self.space.sample(&mut self.rng) {
                Value::F32(v) => v,
                other => {
                    return Err(PolicyError::Config(format!(
                        "the action space sampled {}, not floats",
                        other.describe()
                    )));
                }
            },
            Some(mut a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    let half = 0.5 * (self.high[i] - self.low[i]) as f64;
                    let y = *x as f64 + self.sigma * half * normal(&mut self.rng);
                    *x = (y as f32).clamp(self.low[i], self.high[i]);
                }
                a
            }
        };
        self.last = Some(next.clone());
        Ok(Value::F32(next))
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

    #[test]
    fn a_random_walk_moves_in_small_clipped_steps_and_repeats_per_episode() {
        let space = Space::Box(BoxSpace {
            shape: vec![3],
            low: vec![-1.0, 0.0, 0.0],
            high: vec![1.0, 1.0, 1.0],
            dtype: dreamgym_envs::Dtype::F32,
        });
        let sigma = BrownianPolicy::DEFAULT_SIGMA;
        let mut p = BrownianPolicy::new(space.clone(), sigma, 4).unwrap();
        let walk = |p: &mut BrownianPolicy, s| -> Vec<Vec<f32>> {
            p.reset(s).unwrap();
            (0..2000)
                .map(|_| match p.act(&Value::Int(0)).unwrap() {
                    Value::F32(v) => v,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let a = walk(&mut p, 1);
        assert!(a.iter().all(|v| space.contains(&Value::F32(v.clone()))));
        assert_eq!(a, walk(&mut p.clone(), 1), "same episode seed, same walk");
        assert_ne!(a, walk(&mut p, 2));
        // Steps: Gaussian with std sigma half-ranges, except where the bound clipped them.
        let (mut sum, mut n) = (0.0, 0);
        for w in a.windows(2) {
            let d = (w[1][0] - w[0][0]) as f64;
            if w[1][0].abs() < 1.0 && w[0][0].abs() < 1.0 {
                sum += d * d;
                n += 1;
            }
        }
        let std = (sum / n as f64).sqrt();
        assert!((std - sigma).abs() < 0.1 * sigma, "{std}");
        // Unlike uniform draws, consecutive actions are close: steering holds its sign.
        let flips = a
            .windows(2)
            .filter(|w| (w[0][0] > 0.0) != (w[1][0] > 0.0))
            .count();
        assert!(flips < 200, "{flips} sign changes in 2000 steps");
        // Only bounded float boxes, and a positive step.
        assert!(
            BrownianPolicy::new(Space::Discrete(dreamgym_envs::Discrete::new(3)), sigma, 0)
                .is_err()
        );
        assert!(BrownianPolicy::new(space.clone(), 0.0, 0).is_err());
        assert!(BrownianPolicy::new(space, f64::NAN, 0).is_err());
        let unbounded = Space::Box(BoxSpace::uniform(vec![2], f32::NEG_INFINITY, 1.0));
        assert!(BrownianPolicy::new(unbounded, sigma, 0).is_err());
    }
}
