//! A user's own env in Python: the `Pendulum-v1` of `examples/custom_env`, compiled into an
//! extension module of its own. Importing it registers `dreamgym/Pendulum-v1` in Gymnasium.
//!
//! ```text
//! pip install ./python ./examples/custom_env_python
//! python -c 'import gymnasium as gym, pendulum_envs; print(gym.make("dreamgym/Pendulum-v1").reset(seed=0))'
//! ```

#[path = "../../custom_env/pendulum.rs"]
mod pendulum;

use dreamgym_envs::Registry;
use pendulum::{Pendulum, PendulumConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The module Python imports: dreamgym's built-in envs and `Pendulum-v1`.
#[pymodule]
fn pendulum_envs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mut registry = Registry::with_builtins();
    registry
        .register::<PendulumConfig, _>(
            "Pendulum-v1",
            "swing a pendulum up and hold it (a user-defined env)",
            Some(200),
            Pendulum::new,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    dreamgym_python::add_envs(m, registry)
}
