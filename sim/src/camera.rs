//! A CPU camera: renders a [`Scene`] of the world into RGB, depth and segmentation images,
//! with no GPU and no window.
//!
//! It is a small z-buffered triangle rasterizer: each visual's shape is tessellated once (and
//! again only when the shape changes), visuals outside the view are culled by their bounding
//! sphere, triangles are clipped against the near plane, and each covered pixel centre takes
//! the flat-shaded (Lambert plus ambient) colour of the nearest triangle. Everything is plain
//! f32 arithmetic on one thread in a fixed order, so the same world gives the same bytes.
//!
//! Why a rasterizer rather than one ray per pixel: a 64×64 image is 4,096 rays, and a rapier
//! ray cast costs about 0.3 µs even against a handful of shapes (about 800 frames/s measured
//! for the Racer scene), while the scenes here are a few hundred triangles, of which a
//! rasterizer touches only the visible ones.

use rapier3d::prelude::*;

use crate::World;
use crate::scene::{Scene, VisualShape};

/// How the camera projects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Projection {
    /// A pinhole camera with this vertical field of view, rad.
    Perspective {
        /// Vertical field of view, rad.
        fov_y: f32,
    },
    /// A parallel projection showing `half_height` metres above and below the centre.
    Orthographic {
        /// Half the visible height, m.
        half_height: f32,
    },
}

/// Where a camera is and what it sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// Camera position, world frame.
    pub eye: Vector,
    /// A point the camera looks at.
    pub target: Vector,
    /// Which way is up in the image (need not be exactly perpendicular to the view).
    pub up: Vector,
    /// The projection.
    pub projection: Projection,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// Nothing nearer than this is drawn, m.
    pub near: f32,
    /// Nothing farther than this is drawn, m.
    pub far: f32,
}

/// The largest image side the camera accepts.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Why a camera cannot render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CameraError {
    /// The image size is zero or too large.
    #[error("image size {width}x{height} is invalid: each side must be in 1..={MAX_IMAGE_SIDE}")]
    BadSize {
        /// Requested width.
        width: usize,
        /// Requested height.
        height: usize,
    },
    /// The pose or projection is degenerate (eye on target, up along the view, bad angles).
    #[error("camera is degenerate: {0}")]
    Degenerate(String),
}

impl Camera {
    /// Checks the size, the pose and the projection.
    pub fn validate(&self) -> Result<(), CameraError> {
        check_size(self.width, self.height)?;
        let forward = self.target - self.eye;
        if !(forward.is_finite() && self.up.is_finite()) || forward.length() < 1e-6 {
            return Err(CameraError::Degenerate(
                "eye and target must be finite and distinct".into(),
            ));
        }
        if forward.normalize().cross(self.up).length() < 1e-6 {
            return Err(CameraError::Degenerate(
                "up must not be parallel to the view".into(),
            ));
        }
        if !(self.near > 0.0 && self.far > self.near && self.far.is_finite()) {
            return Err(CameraError::Degenerate(format!(
                "need 0 < near < far, got {} and {}",
                self.near, self.far
            )));
        }
        match self.projection {
            Projection::Perspective { fov_y } if !(fov_y > 0.01 && fov_y < 3.1) => Err(
                CameraError::Degenerate(format!("fov_y must be in (0.01, 3.1) rad, got {fov_y}")),
            ),
            Projection::Orthographic { half_height }
                if !(half_height > 0.0 && half_height.is_finite()) =>
            {
                Err(CameraError::Degenerate(format!(
                    "half_height must be positive, got {half_height}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Checks an image size.
pub fn check_size(width: usize, height: usize) -> Result<(), CameraError> {
    if (1..=MAX_IMAGE_SIDE).contains(&width) && (1..=MAX_IMAGE_SIDE).contains(&height) {
        Ok(())
    } else {
        Err(CameraError::BadSize { width, height })
    }
}

/// A rendered image: RGB (row-major, top row first, 3 bytes a pixel), depth along the view
/// axis in metres (`f32::INFINITY` where nothing was drawn), and the segment of each pixel
/// (0 for the background).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    /// Width, pixels.
    pub width: usize,
    /// Height, pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// `width * height` distances, m.
    pub depth: Vec<f32>,
    /// `width * height` segment labels.
    pub segmentation: Vec<u16>,
}

impl Frame {
    /// The colour at pixel `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A visual's triangles in its own frame, and its bounding sphere.
#[derive(Debug, Clone)]
struct Tessellation {
    shape: VisualShape,
    segments: usize,
    vertices: Vec<Vector>,
    triangles: Vec<[u32; 3]>,
    double_sided: bool,
    center: Vector,
    radius: f32,
}

/// Renders scenes; keeps tessellations and buffers between frames.
#[derive(Debug, Default)]
pub struct Renderer {
    cache: Vec<Option<Tessellation>>,
    inv_depth: Vec<f32>,
}

/// A vertex in view space.
#[derive(Debug, Clone, Copy)]
struct ViewVertex {
    p: Vector,
}

impl Renderer {
    /// A renderer with empty caches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders `scene` as `world` is now, seen by `camera`, into `frame` (resized as needed).
    pub fn render(
        &mut self,
        scene: &Scene,
        world: &World,
        camera: &Camera,
        frame: &mut Frame,
    ) -> Result<(), CameraError> {
        camera.validate()?;
        let (w, h) = (camera.width, camera.height);
        let n = w * h;
        frame.width = w;
        frame.height = h;
        frame.rgb.clear();
        frame
            .rgb
            .extend(std::iter::repeat_n(scene.background, n).flatten());
        frame.depth.clear();
        frame.depth.resize(n, f32::INFINITY);
        frame.segmentation.clear();
        frame.segmentation.resize(n, 0);
        self.inv_depth.clear();
        self.inv_depth.resize(n, f32::NEG_INFINITY);

        // Camera basis: x right, y up, z forward (into the scene).
        let forward = (camera.target - camera.eye).normalize();
        let right = forward.cross(camera.up).normalize();
        let up = right.cross(forward);
        let aspect = w as f32 / h as f32;
        let (sx, sy, perspective) = match camera.projection {
            Projection::Perspective { fov_y } => {
                let t = (fov_y * 0.5).tan();
                (1.0 / (t * aspect), 1.0 / t, true)
            }
            Projection::Orthographic { half_height } => {
                (1.0 / (half_height * aspect), 1.0 / half_height, false)
            }
        };
        let light = Vector::from(scene.light_direction).normalize_or_zero();
        let ambient = scene.ambient.clamp(0.0, 1.0);

        if self.cache.len() < scene.visuals.len() {
            self.cache.resize(scene.visuals.len(), None);
        }
        let poses = scene.world_poses(world);
        for (i, visual) in scene.visuals.iter().enumerate() {
            let Some(pose) = poses[i] else { continue };
            // Round shapes get as many segments as their size on screen needs.
            let segments = match visual.shape {
                VisualShape::Ball { radius }
                | VisualShape::Cylinder { radius, .. }
                | VisualShape::Capsule { radius, .. } => {
                    let d = (pose.translation - camera.eye)
                        .dot(forward)
                        .max(camera.near);
                    let pixels = radius * sy * h as f32 * 0.5 / if perspective { d } else { 1.0 };
                    lod_segments(pixels)
                }
                _ => 0,
            };
            if self.cache[i]
                .as_ref()
                .is_none_or(|t| t.shape != visual.shape || t.segments != segments)
            {
                self.cache[i] = Some(tessellate(&visual.shape, segments));
            }
            let Some(tess) = self.cache[i].as_ref() else {
                continue;
            };
            // Cull the whole visual by its bounding sphere.
            let c = pose.transform_point(tess.center) - camera.eye;
            let (cx, cy, cz) = (c.dot(right), c.dot(up), c.dot(forward));
            let r = tess.radius;
            if cz + r < camera.near || cz - r > camera.far {
                continue;
            }
            if perspective {
                let depth = cz.max(camera.near);
                if (cx.abs() - r) * sx > depth || (cy.abs() - r) * sy > depth {
                    continue;
                }
            } else if (cx.abs() - r) * sx > 1.0 || (cy.abs() - r) * sy > 1.0 {
                continue;
            }
            let view: Vec<ViewVertex> = tess
                .vertices
                .iter()
                .map(|&v| {
                    let d = pose.transform_point(v) - camera.eye;
                    ViewVertex {
                        p: Vector::new(d.dot(right), d.dot(up), d.dot(forward)),
                    }
                })
                .collect();
            let light_view = Vector::new(light.dot(right), light.dot(up), light.dot(forward));
            for tri in &tess.triangles {
                let [a, b, c] = tri.map(|k| view[k as usize].p);
                // (right, up, forward) is a left-handed basis: the outward normal of a
                // counter-clockwise triangle is (c - a) × (b - a) here.
                let normal = (c - a).cross(b - a);
                if normal.length_squared() == 0.0 {
                    continue;
                }
                let mut normal = normal.normalize();
                // Facing: towards the eye (perspective) or towards -z (orthographic).
                let facing = if perspective { normal.dot(a) } else { normal.z };
                if facing > 0.0 {
                    if !tess.double_sided {
                        continue;
                    }
                    normal = -normal;
                }
                let lit = ambient + (1.0 - ambient) * (-normal.dot(light_view)).max(0.0);
                let color = visual
                    .color
                    .map(|ch| (ch as f32 * lit).round().clamp(0.0, 255.0) as u8);
                let mut poly = [a, b, c, Vector::ZERO];
                let count = clip_near(&mut poly, camera.near);
                for k in 1..count.saturating_sub(1) {
                    let corners = [poly[0], poly[k], poly[k + 1]];
                    let screen = corners.map(|p| {
                        let (x, y) = if perspective {
                            (p.x * sx / p.z, p.y * sy / p.z)
                        } else {
                            (p.x * sx, p.y * sy)
                        };
                        let key = if perspective { 1.0 / p.z } else { -p.z };
                        [(x + 1.0) * 0.5 * w as f32, (1.0 - y) * 0.5 * h as f32, key]
                    });
                    fill(
                        &mut self.inv_depth,
                        frame,
                        screen,
                        color,
                        visual.segment,
                        perspective,
                        camera.far,
                    );
                }
            }
        }
        Ok(())
    }
}

/// Fills one screen-space triangle (x, y in pixels; the third value is affine in screen space
/// and larger when nearer), keeping the nearest per pixel.
fn fill(
    inv_depth: &mut [f32],
    frame: &mut Frame,
    t: [[f32; 3]; 3],
    color: [u8; 3],
    segment: u16,
    perspective: bool,
    far: f32,
) {
    let (w, h) = (frame.width, frame.height);
    let area =
        (t[1][0] - t[0][0]) * (t[2][1] - t[0][1]) - (t[1][1] - t[0][1]) * (t[2][0] - t[0][0]);
    if area == 0.0 || !area.is_finite() {
        return;
    }
    let min_x = t
        .iter()
        .map(|v| v[0])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let max_x = t
        .iter()
        .map(|v| v[0])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .min(w as f32) as usize;
    let min_y = t
        .iter()
        .map(|v| v[1])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let max_y = t
        .iter()
        .map(|v| v[1])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .min(h as f32) as usize;
    let inv_area = 1.0 / area;
    let edge = |a: [f32; 3], b: [f32; 3], px: f32, py: f32| {
        (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])
    };
    for y in min_y..max_y {
        let py = y as f32 + 0.5;
        for x in min_x..max_x {
            let px = x as f32 + 0.5;
            let w0 = edge(t[1], t[2], px, py) * inv_area;
            let w1 = edge(t[2], t[0], px, py) * inv_area;
            let w2 = edge(t[0], t[1], px, py) * inv_area;
            if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                continue;
            }
            let key = w0 * t[0][2] + w1 * t[1][2] + w2 * t[2][2];
            let depth = if perspective { 1.0 / key } else { -key };
            let i = y * w + x;
            if key <= inv_depth[i] || depth > far {
                continue;
            }
            inv_depth[i] = key;
            frame.depth[i] = depth;
            frame.segmentation[i] = segment;
            frame.rgb[i * 3..i * 3 + 3].copy_from_slice(&color);
        }
    }
}

/// Clips the triangle `poly[..3]` against `z >= near`, in place; returns the vertex count
/// (0, 3 or 4).
fn clip_near(poly: &mut [Vector; 4], near: f32) -> usize {
    let input = [poly[0], poly[1], poly[2]];
    let inside = input.map(|p| p.z >= near);
    if inside.iter().all(|&b| b) {
        return 3;
    }
    let mut out = [Vector::ZERO; 4];
    let mut n = 0;
    for i in 0..3 {
        let (a, b) = (input[i], input[(i + 1) % 3]);
        let (ia, ib) = (inside[i], inside[(i + 1) % 3]);
        if ia {
            out[n] = a;
            n += 1;
        }
        if ia != ib {
            let t = (near - a.z) / (b.z - a.z);
            out[n] = a + (b - a) * t;
            n += 1;
        }
    }
    poly[..n].copy_from_slice(&out[..n]);
    n
}

/// Segments around a circle for a round shape whose radius covers `pixels` on screen:
/// 6, 8, 12, 16 or 24, so that tessellations are reused from frame to frame.
fn lod_segments(pixels: f32) -> usize {
    match pixels {
        p if p < 2.0 => 6,
        p if p < 4.0 => 8,
        p if p < 12.0 => 12,
        p if p < 40.0 => 16,
        _ => 24,
    }
}

fn tessellate(shape: &VisualShape, segments: usize) -> Tessellation {
    let round = segments.max(6);
    let mut vertices = Vec::new();
    let mut triangles: Vec<[u32; 3]> = Vec::new();
    let mut double_sided = false;
    match shape {
        VisualShape::Cuboid { half } => {
            let [x, y, z] = *half;
            for i in 0..8 {
                vertices.push(Vector::new(
                    if i & 1 == 0 { -x } else { x },
                    if i & 2 == 0 { -y } else { y },
                    if i & 4 == 0 { -z } else { z },
                ));
            }
            // Counter-clockwise seen from outside.
            for q in [
                [0, 2, 3, 1],
                [4, 5, 7, 6],
                [0, 1, 5, 4],
                [2, 6, 7, 3],
                [0, 4, 6, 2],
                [1, 3, 7, 5],
            ] {
                triangles.push([q[0], q[1], q[2]]);
                triangles.push([q[0], q[2], q[3]]);
            }
        }
        VisualShape::Ball { radius } => sphere(&mut vertices, &mut triangles, *radius, 0.0, round),
        VisualShape::Capsule {
            half_height,
            radius,
        } => sphere(&mut vertices, &mut triangles, *radius, *half_height, round),
        VisualShape::Cylinder {
            half_height,
            radius,
        } => {
            let (hh, r) = (*half_height, *radius);
            for k in 0..round {
                let a = std::f32::consts::TAU * k as f32 / round as f32;
                vertices.push(Vector::new(r * a.cos(), -hh, r * a.sin()));
                vertices.push(Vector::new(r * a.cos(), hh, r * a.sin()));
            }
            let bottom = vertices.len() as u32;
            vertices.push(Vector::new(0.0, -hh, 0.0));
            vertices.push(Vector::new(0.0, hh, 0.0));
            for k in 0..round as u32 {
                let (b0, t0) = (2 * k, 2 * k + 1);
                let (b1, t1) = (
                    2 * ((k + 1) % round as u32),
                    2 * ((k + 1) % round as u32) + 1,
                );
                triangles.push([b0, t0, t1]);
                triangles.push([b0, t1, b1]);
                triangles.push([bottom, b0, b1]);
                triangles.push([bottom + 1, t1, t0]);
            }
        }
        VisualShape::Mesh {
            vertices: v,
            triangles: t,
            double_sided: ds,
        } => {
            vertices.extend(v.iter().map(|p| Vector::from(*p)));
            let n = v.len() as u32;
            triangles.extend(t.iter().filter(|tri| tri.iter().all(|&k| k < n)).copied());
            double_sided = *ds;
        }
    }
    let (lo, hi) = vertices.iter().fold(
        (
            Vector::splat(f32::INFINITY),
            Vector::splat(f32::NEG_INFINITY),
        ),
        |(lo, hi), v| (lo.min(*v), hi.max(*v)),
    );
    let center = if vertices.is_empty() {
        Vector::ZERO
    } else {
        (lo + hi) * 0.5
    };
    let radius = vertices
        .iter()
        .map(|v| (*v - center).length())
        .fold(0.0, f32::max);
    Tessellation {
        shape: shape.clone(),
        vertices,
        triangles,
        double_sided,
        segments,
        center,
        radius,
    }
}

/// A UV sphere of `radius`, its two halves pushed `half_height` apart along y (a capsule).
fn sphere(
    vertices: &mut Vec<Vector>,
    triangles: &mut Vec<[u32; 3]>,
    radius: f32,
    half_height: f32,
    round: usize,
) {
    let rings = round / 2;
    for i in 0..=rings {
        let phi = std::f32::consts::PI * i as f32 / rings as f32;
        let shift = if i <= rings / 2 {
            half_height
        } else {
            -half_height
        };
        for k in 0..round {
            let theta = std::f32::consts::TAU * k as f32 / round as f32;
            vertices.push(Vector::new(
                radius * phi.sin() * theta.cos(),
                radius * phi.cos() + shift,
                radius * phi.sin() * theta.sin(),
            ));
        }
    }
    let ring = round as u32;
    for i in 0..rings as u32 {
        for k in 0..ring {
            let a = i * ring + k;
            let b = i * ring + (k + 1) % ring;
            let c = (i + 1) * ring + k;
            let d = (i + 1) * ring + (k + 1) % ring;
            triangles.push([a, b, d]);
            triangles.push([a, d, c]);
        }
    }
}
