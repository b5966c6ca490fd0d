//! Controllers and their optimisers: World Models' linear controller C and CMA-ES.

pub mod cmaes;
pub mod linear;

pub use cmaes::{CmaEs, CmaEsConfig};
pub use linear::LinearController;
