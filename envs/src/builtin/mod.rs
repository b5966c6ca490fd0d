//! dreamgym's built-in environments, one per file.

mod cartpole;
mod pixels;
mod racer;
mod reacher;
pub mod tabletop;
mod track;

pub use cartpole::{CartPole, CartPoleConfig};
pub use pixels::ObsMode;
pub use racer::{Racer, RacerConfig};
pub use reacher::{Reacher, ReacherConfig};
pub use tabletop::{Tabletop, TabletopConfig};
pub use track::Track;

use crate::{EnvError, Info, Registry};

/// Registers `CartPole-v0`, `Reacher-v0`, `Racer-v0` and `Tabletop-v0`.
pub fn register_builtins(registry: &mut Registry) {
    let result = registry
        .register::<CartPoleConfig, _>(
            "CartPole-v0",
            "balance a pole on a cart (rapier multibody; Gymnasium CartPole-v1 rules)",
            Some(500),
            CartPole::new,
        )
        .and_then(|_| {
            registry.register::<ReacherConfig, _>(
                "Reacher-v0",
                "move a two-link arm's fingertip to a random target (Gymnasium Reacher rewards)",
                Some(50),
                Reacher::new,
            )
        })
        .and_then(|_| {
            registry.register::<RacerConfig, _>(
                "Racer-v0",
                "drive a ray-cast vehicle around a seeded closed track (CarRacing rewards)",
                Some(1000),
                Racer::new,
            )
        })
        .and_then(|_| {
            registry.register::<TabletopConfig, _>(
                "Tabletop-v0",
                "push coloured objects into zones as instructed; low-level or language mode",
                Some(400),
                Tabletop::new,
            )
        });
    // The ids above are distinct and well formed; a failure here is a bug in this file.
    result.expect("built-in env registration");
}

/// Errors on reset options other than `allowed`.
pub(crate) fn reject_unknown_options(
    env: &str,
    options: &Info,
    allowed: &[&str],
) -> Result<(), EnvError> {
    for key in options.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(EnvError::InvalidOption(format!(
                "{env} does not take the reset option `{key}` (it takes: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// A finite number option, if present.
pub(crate) fn option_f32(options: &Info, key: &str) -> Result<Option<f32>, EnvError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| Some(x as f32))
            .ok_or_else(|| {
                EnvError::InvalidOption(format!("`{key}` must be a finite number, got {v}"))
            }),
    }
}
