//! What the world looks like: shapes, colours and where they are. The CPU camera renders a
//! [`Scene`], and the viewer reads the same description, so the agent's picture and the
//! viewer show the same world.

use rapier3d::prelude::*;
use serde::{Deserialize, Serialize};

use crate::World;

/// A shape to draw, in its own frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VisualShape {
    /// A box with these half extents, m.
    Cuboid {
        /// Half extents along x, y, z.
        half: [f32; 3],
    },
    /// A sphere.
    Ball {
        /// Radius, m.
        radius: f32,
    },
    /// A cylinder along the local y axis.
    Cylinder {
        /// Half the height, m.
        half_height: f32,
        /// Radius, m.
        radius: f32,
    },
    /// A capsule along the local y axis.
    Capsule {
        /// Half the height of the cylindrical part, m.
        half_height: f32,
        /// Radius, m.
        radius: f32,
    },
    /// Triangles (counter-clockwise seen from their front), for ground, roads and decals.
    Mesh {
        /// Vertex positions.
        vertices: Vec<[f32; 3]>,
        /// Vertex indices, three per triangle.
        triangles: Vec<[u32; 3]>,
        /// Whether back faces are drawn too (flat decals seen from either side).
        double_sided: bool,
    },
}

/// One drawable thing: a shape, its colour, and the body it moves with (if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visual {
    /// A name, for the viewer and for debugging.
    pub name: String,
    /// The named body this visual is attached to; `None` for static scenery.
    pub body: Option<String>,
    /// Pose relative to the body (or to the world for static scenery).
    pub pose: Pose,
    /// The shape.
    pub shape: VisualShape,
    /// Base colour, sRGB.
    pub color: [u8; 3],
    /// Label in segmentation images (0 is the background).
    pub segment: u16,
    /// Whether the visual is drawn.
    pub visible: bool,
}

impl Visual {
    /// A visible visual.
    pub fn new(
        name: &str,
        body: Option<&str>,
        shape: VisualShape,
        color: [u8; 3],
        segment: u16,
    ) -> Self {
        Self {
            name: name.into(),
            body: body.map(str::to_string),
            pose: Pose::IDENTITY,
            shape,
            color,
            segment,
            visible: true,
        }
    }

    /// The same visual at `pose` relative to its body (or the world).
    pub fn at(mut self, pose: Pose) -> Self {
        self.pose = pose;
        self
    }
}

/// Everything to draw, plus the light.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// The visuals, drawn in any order (depth decides).
    pub visuals: Vec<Visual>,
    /// Colour where nothing is drawn.
    pub background: [u8; 3],
    /// Direction the light travels (towards the ground for a sun), world frame.
    pub light_direction: [f32; 3],
    /// Fraction of the colour lit regardless of orientation, in `[0, 1]`.
    pub ambient: f32,
}

impl Default for Scene {
    fn default() -> Self {
        Self {
            visuals: Vec::new(),
            background: [135, 170, 210],
            light_direction: [-0.3, -1.0, -0.45],
            ambient: 0.45,
        }
    }
}

impl Scene {
    /// Adds a visual, returning its index.
    pub fn add(&mut self, visual: Visual) -> usize {
        self.visuals.push(visual);
        self.visuals.len() - 1
    }

    /// The index of the visual named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.visuals.iter().position(|v| v.name == name)
    }

    /// Visuals for every collider attached to a named body of `world`, in `color`, with the
    /// collider's shape (cuboids, balls, cylinders and capsules; other shapes are skipped).
    pub fn from_colliders(world: &World, body: &str, color: [u8; 3], segment: u16) -> Vec<Visual> {
        let Ok(handle) = world.body_handle(body) else {
            return Vec::new();
        };
        let rb = world.body(handle);
        rb.colliders()
            .iter()
            .filter_map(|&c| {
                let collider = world.colliders().get(c)?;
                let shape = visual_shape(collider.shape())?;
                let local = collider
                    .position_wrt_parent()
                    .copied()
                    .unwrap_or(Pose::IDENTITY);
                Some(
                    Visual::new(
                        &format!("{body}/collider"),
                        Some(body),
                        shape,
                        color,
                        segment,
                    )
                    .at(local),
                )
            })
            .collect()
    }

    /// The world pose of each visual (its body's pose times its own), `None` for hidden ones
    /// and for visuals whose body is not in `world`.
    pub fn world_poses(&self, world: &World) -> Vec<Option<Pose>> {
        self.visuals
            .iter()
            .map(|v| {
                if !v.visible {
                    return None;
                }
                match &v.body {
                    None => Some(v.pose),
                    Some(name) => {
                        let handle = world.body_handle(name).ok()?;
                        Some(*world.body(handle).position() * v.pose)
                    }
                }
            })
            .collect()
    }
}

/// The visual shape of a collider shape, for the shapes the camera draws.
pub fn visual_shape(shape: &dyn Shape) -> Option<VisualShape> {
    if let Some(c) = shape.as_cuboid() {
        let h = c.half_extents;
        return Some(VisualShape::Cuboid {
            half: [h.x, h.y, h.z],
        });
    }
    if let Some(b) = shape.as_ball() {
        return Some(VisualShape::Ball { radius: b.radius });
    }
    if let Some(c) = shape.as_cylinder() {
        return Some(VisualShape::Cylinder {
            half_height: c.half_height,
            radius: c.radius,
        });
    }
    if let Some(c) = shape.as_capsule() {
        return Some(VisualShape::Capsule {
            half_height: c.half_height(),
            radius: c.radius,
        });
    }
    None
}
