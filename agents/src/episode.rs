//! One episode of any env driven by any policy: the loop every collector, trainer, evaluator
//! and viewer shares.

use dreamgym_envs::{Env, Info};
use dreamgym_policies::Policy;

/// What an episode did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeStats {
    /// Sum of rewards.
    pub total_return: f64,
    /// Steps taken.
    pub steps: u64,
    /// Whether the task ended (as opposed to a time limit or `max_steps`).
    pub terminated: bool,
}

/// Runs one episode: `env.reset(seed)`, `policy.reset(seed)`, then steps until the episode
/// ends or `max_steps` steps.
pub fn run_episode(
    env: &mut dyn Env,
    policy: &mut dyn Policy,
    seed: u64,
    max_steps: u64,
) -> anyhow::Result<EpisodeStats> {
    let (mut obs, _) = env.reset(Some(seed), &Info::new())?;
    policy.reset(seed)?;
    let mut stats = EpisodeStats {
        total_return: 0.0,
        steps: 0,
        terminated: false,
    };
    while stats.steps < max_steps {
        let action = policy.act(&obs)?;
        let s = env.step(&action)?;
        policy.reward(s.reward);
        stats.total_return += s.reward;
        stats.steps += 1;
        if s.done() {
            stats.terminated = s.terminated;
            break;
        }
        obs = s.obs;
    }
    Ok(stats)
}
