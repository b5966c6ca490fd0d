//! Plug your own environment into dreamgym: implement `Env`, register it under an id, and run
//! the `dreamgym` command line with it.
//!
//! ```text
//! cargo run --release --example custom_env -- envs
//! cargo run --release --example custom_env -- check --env Pendulum-v1
//! cargo run --release --example custom_env -- rollout --env Pendulum-v1 --episodes 20 --out data/pendulum
//! cargo run --release --example custom_env -- inspect data/pendulum
//! ```

mod pendulum;

use dreamgym::envs::Registry;
use pendulum::{Pendulum, PendulumConfig};

fn main() {
    let mut registry = Registry::with_builtins();
    if let Err(e) = registry.register::<PendulumConfig, _>(
        "Pendulum-v1",
        "swing a pendulum up and hold it (a user-defined env)",
        Some(200),
        Pendulum::new,
    ) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    std::process::exit(dreamgym::cli::main_with_registry(registry));
}
