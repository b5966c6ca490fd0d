//! Errors reported by the world.

/// What can go wrong in a [`World`](crate::World).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// The state became non-finite or ran away; the world should be reset or restored.
    #[error("simulation blew up at step {step}: body `{body}` {what}")]
    BlowUp {
        /// Name of the first offending body.
        body: String,
        /// What went wrong with it (non-finite position, runaway velocity, ...).
        what: String,
        /// Number of steps the world had taken when it was detected.
        step: u64,
    },
    /// A body or joint name that is not in the world.
    #[error("no {kind} named `{name}` in the world")]
    UnknownName {
        /// `"body"` or `"joint"`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A body or joint name used twice.
    #[error("a {kind} named `{name}` already exists")]
    DuplicateName {
        /// `"body"` or `"joint"`.
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A configuration value out of range.
    #[error("invalid world config: {0}")]
    InvalidConfig(String),
    /// A snapshot taken from a differently built world.
    #[error("snapshot does not match this world: {0}")]
    SnapshotMismatch(String),
    /// Rapier refused to create a joint (for instance, a multibody loop).
    #[error("could not create joint `{0}`: rapier refused it (a loop in the multibody?)")]
    JointRejected(String),
    /// A non-finite force, torque or target was passed in.
    #[error("non-finite input for `{0}`")]
    NonFiniteInput(String),
}
