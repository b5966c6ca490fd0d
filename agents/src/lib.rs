//! The World Models pipeline (Ha & Schmidhuber, 2018) over recorded pixel episodes:
//! train V → encode the dataset → train M → train C with CMA-ES (in the real env or in M's
//! dream) → evaluate over many seeds against a random policy → write a report.
//!
//! Every stage reads and writes files in one run folder, so each can also run alone; training
//! stages checkpoint atomically after every epoch (or generation) and resume from there.

pub mod agent;
pub mod config;
pub mod plot;
pub mod stages;
pub mod testing;

pub use config::WorldModelsConfig;
