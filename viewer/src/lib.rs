//! dreamgym's bevy viewer.
