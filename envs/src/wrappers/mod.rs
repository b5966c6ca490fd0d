//! Wrappers that change an env's episodes, actions or observations, as Gymnasium's do.

mod clip_action;
mod frame_stack;
mod normalize_observation;
mod record_episode_statistics;
mod rescale_action;
mod time_limit;

pub use clip_action::ClipAction;
pub use frame_stack::FrameStack;
pub use normalize_observation::NormalizeObservation;
pub use record_episode_statistics::RecordEpisodeStatistics;
pub use rescale_action::RescaleAction;
pub use time_limit::TimeLimit;

use crate::{BoxSpace, EnvError, Space};

/// The Box an action-or-observation wrapper works on, or an error naming the wrapper.
pub(crate) fn require_box<'a>(
    space: &'a Space,
    wrapper: &str,
    what: &str,
) -> Result<&'a BoxSpace, EnvError> {
    match space {
        Space::Box(b) if b.dtype == crate::Dtype::F32 => Ok(b),
        other => Err(EnvError::Other(format!(
            "{wrapper} needs an f32 Box {what} space, the env has {other}"
        ))),
    }
}
