//! How long work reports progress: the library calls a [`Progress`]; the CLI draws bars from
//! it, the Python binding forwards it to a callback, tests pass `&()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Receives progress from long work. Every method has a no-op default, and `()` implements it
/// (prints nothing, never stops).
pub trait Progress: Sync {
    /// A stage begins with `total` units of work (batches, episodes, generations).
    fn begin(&self, _stage: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status for the current stage (the latest loss, the best return).
    fn status(&self, _text: &str) {}
    /// The current stage ends.
    fn end(&self) {}
    /// Something the user should know that is not an error (a skipped damaged chunk, a resume).
    fn note(&self, _text: &str) {}
    /// A stage finished; `summary` says what it did in one line (the CLI prints it).
    fn done(&self, _summary: &str) {}
    /// Whether the user asked to stop (Ctrl-C). Work checks it between units, saves what it
    /// has finished, and returns [`Interrupted`].
    fn interrupted(&self) -> bool {
        false
    }
}

impl Progress for () {}

/// The error of work stopped by [`Progress::interrupted`]; what was finished is saved.
#[derive(Debug, thiserror::Error)]
#[error("interrupted during {stage}: {saved}")]
pub struct Interrupted {
    /// The stage that stopped.
    pub stage: String,
    /// What was kept (`V is saved after epoch 3; run again to resume`).
    pub saved: String,
}

/// A stop flag shared between a signal handler and a [`Progress`].
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Raises the flag.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was raised.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Forwards only [`Progress::interrupted`]: for inner loops whose units should not move the
/// outer stage's bar.
pub(crate) struct StopOnly<'a>(pub &'a dyn Progress);

impl Progress for StopOnly<'_> {
    fn interrupted(&self) -> bool {
        self.0.interrupted()
    }
}
