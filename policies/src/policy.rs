//! The `Policy` trait and its batched form.

use dreamgym_envs::Value;

use crate::PolicyError;

/// Anything that acts in an env.
///
/// A policy is used as `reset(episode_seed)` at the start of every episode, then `act(obs)`
/// once per step. Randomness inside a policy (sampling) must come from the seed given to
/// `reset`, so an episode is reproducible from its seed alone, whatever else ran before it.
pub trait Policy: Send {
    /// A short description for logs and the viewer's HUD (`random`, `world-models C`, ...).
    fn describe(&self) -> String;

    /// Starts an episode: forgets recurrent state and reseeds sampling.
    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError>;

    /// The action for `obs`.
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError>;

    /// The reward the last action earned, given after each step and before the next `act`.
    /// Policies conditioned on a return (the Decision Transformer) count it off their target;
    /// the others ignore it.
    fn reward(&mut self, _reward: f64) {}

    /// An independent copy at the start of an episode (shared read-only models are shared,
    /// recurrent state is not), for running one copy per env or per thread.
    fn fork(&self) -> Box<dyn Policy>;
}

impl Policy for Box<dyn Policy> {
    fn describe(&self) -> String {
        self.as_ref().describe()
    }
    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.as_mut().reset(episode_seed)
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        self.as_mut().act(obs)
    }
    fn reward(&mut self, reward: f64) {
        self.as_mut().reward(reward)
    }
    fn fork(&self) -> Box<dyn Policy> {
        self.as_ref().fork()
    }
}

/// The batched form for vector envs: one forked copy per env, each with its own episode
/// state, acting on all envs' observations at once.
pub struct PolicyBatch {
    policies: Vec<Box<dyn Policy>>,
}

impl PolicyBatch {
    /// `n` copies of `policy`.
    pub fn new(policy: &dyn Policy, n: usize) -> Self {
        Self {
            policies: (0..n).map(|_| policy.fork()).collect(),
        }
    }

    /// Number of copies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are no copies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Starts a new episode in env `i`.
    pub fn reset(&mut self, i: usize, episode_seed: u64) -> Result<(), PolicyError> {
        match self.policies.get_mut(i) {
            Some(p) => p.reset(episode_seed),
            None => Err(PolicyError::Config(format!(
                "env {i} is outside a batch of {}",
                self.policies.len()
            ))),
        }
    }

    /// The reward env `i`'s last action earned (see [`Policy::reward`]).
    pub fn reward(&mut self, i: usize, reward: f64) {
        if let Some(p) = self.policies.get_mut(i) {
            p.reward(reward);
        }
    }

    /// One action per env, in order (the observations are borrowed: nothing is copied).
    pub fn act(&mut self, obs: &[&Value]) -> Result<Vec<Value>, PolicyError> {
        if obs.len() != self.policies.len() {
            return Err(PolicyError::Config(format!(
                "{} observations for a batch of {} policies",
                obs.len(),
                self.policies.len()
            )));
        }
        self.policies
            .iter_mut()
            .zip(obs)
            .map(|(p, o)| p.act(o))
            .collect()
    }
}
