//! `dreamgym-sim`: the deterministic rapier world under every dreamgym environment.
//!
//! A [`World`] owns rapier's sets, names its bodies and joints, steps at a fixed `dt` with a
//! fixed number of substeps, applies forces, torques and joint motor targets, and can be
//! [snapshotted](World::snapshot) and [restored](World::restore) so that a restored world
//! continues bit-identically. A step that blows up (a NaN, or a velocity past the configured
//! limit) returns [`SimError::BlowUp`] instead of panicking.
//!
//! Determinism: rapier3d is built with `enhanced-determinism`, and a world is stepped on the
//! calling thread only, so the same world and the same inputs give the same bits whatever the
//! number of threads the program runs.
//!
//! ```
//! use dreamgym_sim::{World, WorldConfig, rapier::prelude::*};
//!
//! let mut world = World::new(WorldConfig::default());
//! let ball = world.add_body(
//!     "ball",
//!     RigidBodyBuilder::dynamic().translation(Vector::new(0.0, 1.0, 0.0)),
//! ).unwrap();
//! world.step().unwrap();
//! let snapshot = world.snapshot();
//! world.step().unwrap();
//! let y = world.body(ball).translation().y;
//! world.restore(&snapshot).unwrap();
//! world.step().unwrap();
//! assert_eq!(world.body(ball).translation().y.to_bits(), y.to_bits());
//! ```

pub mod camera;
mod error;
pub mod scene;
mod world;

pub use camera::{Camera, CameraError, Frame, Projection, Renderer};
pub use error::SimError;
pub use scene::{Scene, Visual, VisualShape};
pub use world::{JointRef, Snapshot, World, WorldConfig};

/// The rapier3d crate this world is built on, re-exported so that callers use the same version.
pub use rapier3d as rapier;

/// The types most users of the world need.
pub mod prelude {
    pub use crate::{
        Camera, Frame, JointRef, Projection, Renderer, Scene, SimError, Snapshot, Visual,
        VisualShape, World, WorldConfig,
    };
    pub use rapier3d::prelude::*;
}
