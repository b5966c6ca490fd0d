//! dreamgym: agents and reinforcement-learning environments on a deterministic rapier world.
//!
//! This package is the `dreamgym` command line. Its [`cli`] module is public so that a crate
//! with its own environments can register them and run every dreamgym command on them (see
//! `examples/custom_env`).

pub mod cli;

pub use dreamgym_envs as envs;
pub use dreamgym_sim as sim;
