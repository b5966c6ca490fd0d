//! `Racer-v0`: drive a car around a closed track generated from the seed.
//!
//! (Over 600 lines, like every built-in env file: the Gymnasium-style description, the config,
//! the env and a test per termination rule belong together; about 90 lines are tests.)
//!
//! ## Description
//! A rapier rigid-body car (1150 kg, 4 m long) on four ray-cast wheels (rapier's
//! `DynamicRayCastVehicleController`: suspension, tyre friction, rear-wheel drive, brakes on
//! all wheels, aerodynamic drag) on a flat ground. The track is a closed road of `N` tiles,
//! about 4 m long and 12 m wide, generated from the episode seed (see [`Track`]). Rewards and
//! episode ends follow Gymnasium's CarRacing. Physics runs at 50 Hz, one step per env step.
//!
//! ## Action Space
//! `Box([-1, 0, 0], [1, 1, 1], (3,), f32)`: `[steer, gas, brake]`. Steer −1 is full left,
//! +1 full right (front wheels ±0.6 rad); gas drives the rear wheels up to `engine_force`;
//! brake applies up to `brake_impulse` on every wheel. Out-of-range values are clipped and
//! flagged with `info["action_clipped"] = true`; NaN is an error.
//!
//! ## Observation Space
//! With `obs = "state"` (the default), `Box(-inf, inf, (24,), f32)`, in the car's frame
//! (x forward, y left), metres and seconds:
//!
//! | index  | observation                                               |
//! |--------|-----------------------------------------------------------|
//! | 0      | forward speed (m/s)                                       |
//! | 1      | leftward speed (m/s)                                      |
//! | 2      | yaw rate (rad/s, positive turning left)                   |
//! | 3      | front-wheel steering angle (rad, positive left)           |
//! | 4, 5   | sin and cos of the heading relative to the nearest tile   |
//! | 6      | lateral offset from the centre line / road half-width     |
//! | 7..23  | the centre line 2, 4, ..., 16 tiles ahead: (x, y) pairs   |
//! | 23     | fraction of tiles visited                                 |
//!
//! With `obs = "pixels"`, a `width`×`height` RGB image (u8, default 64×64) from a top-down
//! camera that follows the car, car pointing up, like CarRacing's: grass, grey road, red car.
//! With `indicators = true`, the bottom eighth of the image is CarRacing's indicator bar
//! instead: on black, the speed as a white bar from the left (full width at 40 m/s), and below
//! it the steering angle (green, left half) and the yaw rate (red, right half, full at 2 rad/s)
//! as bars from the middle of their half, to the left for left. Without them, pixels cannot
//! tell a car rolling along a straight road from one standing on it (road and grass are
//! uniform), and the tiles it earns depend on that speed.
//! With `obs = "both"`, a Dict of `pixels` and `state`.
//!
//! ## Rewards
//! −0.1 every step, +1000/N for each tile visited for the first time, −100 on leaving the
//! field (CarRacing's).
//!
//! ## Starting State
//! At rest in the middle of the first tile, pointing along the track. The track itself comes from the seed.
//!
//! ## Episode End
//! - Terminated: every tile has been visited (the lap is done); or the car leaves the square
//!   field of half-size `playfield` m, or rolls over (−100 in both cases).
//! - Truncated: after 1000 steps (the registry wraps the env in a `TimeLimit`).
//!
//! ## Arguments
//! See [`RacerConfig`].

use dreamgym_sim::rapier::control::{DynamicRayCastVehicleController, WheelTuning};
use dreamgym_sim::rapier::prelude::*;
use dreamgym_sim::{Snapshot, World, WorldConfig};
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::builtin::pixels::{ObsMode, Pixels, check_image_size, ground_quad};
use crate::builtin::reject_unknown_options;
use crate::builtin::track::{Track, cross_up};
use crate::{BoxSpace, Env, EnvError, EpisodeSeeder, EpisodeState, Info, Space, Step, Value};
use dreamgym_sim::{Camera, Projection, Scene, Visual, VisualShape};

const ID: &str = "Racer-v0";
/// Car mass, kg.
const CAR_MASS: f32 = 1150.0;
/// Half extents of the chassis box (length, height, width), m.
const CHASSIS: [f32; 3] = [2.0, 0.35, 0.9];
/// Height of the chassis centre at the start, m.
const SPAWN_HEIGHT: f32 = 0.95;
/// Largest front-wheel steering angle, rad.
const MAX_STEER: f32 = 0.6;
/// Look-ahead waypoints in the observation.
const WAYPOINTS: usize = 8;
/// Observation length.
const OBS_LEN: usize = 7 + 2 * WAYPOINTS + 1;

/// Settings of `Racer-v0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RacerConfig {
    /// Largest track radius, m (checkpoints lie between a third of it and all of it).
    pub track_radius: f32,
    /// Number of spline checkpoints that shape the track.
    pub checkpoints: usize,
    /// Approximate tile length, m.
    pub tile_length: f32,
    /// Half the road width, m.
    pub track_half_width: f32,
    /// Half-size of the square field, m; leaving it ends the episode with −100.
    pub playfield: f32,
    /// Engine force at full gas, N (shared by the two rear wheels).
    pub engine_force: f32,
    /// Brake impulse per wheel per step at full brake, N·s.
    pub brake_impulse: f32,
    /// Aerodynamic drag coefficient: drag = coefficient · speed², N.
    pub drag: f32,
    /// What the agent observes: `state`, `pixels` or `both`.
    pub obs: ObsMode,
    /// Image width, pixels (pixel observations).
    pub width: usize,
    /// Image height, pixels (pixel observations).
    pub height: usize,
    /// Half the height of the ground area the camera shows, m.
    pub view_half_height: f32,
    /// Draw CarRacing's indicator bar (speed, steering, yaw rate) over the bottom of pixel
    /// observations.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub indicators: bool,
}

/// Speed that fills the indicator bar, m/s.
const INDICATOR_SPEED: f32 = 40.0;
/// Yaw rate that fills half the bottom row of the indicator bar, rad/s.
const INDICATOR_YAW_RATE: f32 = 2.0;

/// Draws the indicator bar into the bottom `max(4, h / 8)` rows of an RGB image `w`×`h`:
/// the speed (white) in the upper half of the bar, the steering angle (green, left half) and
/// the yaw rate (red, right half) in the lower half, as bars from the middle of their half
/// (left for left-turning values).
fn draw_indicators(rgb: &mut [u8], w: usize, h: usize, speed: f32, steering: f32, yaw_rate: f32) {
    let band = (h / 8).max(4).min(h);
    let top = h - band;
    let split = top + band / 2;
    let mut fill = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, c: [u8; 3]| {
        for y in rows {
            for x in cols.clone() {
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
            }
        }
    };
    fill(top..h, 0..w, [0, 0, 0]);
    let span = |v: f32, max: f32, len: usize| -> usize {
        let f = if v.is_finite() {
            (v.abs() / max).min(1.0)
        } else {
            0.0
        };
        (f * len as f32).round() as usize
    };
    // The speed's bar leaves a pixel of black at both ends and a row above and below.
    let inner = w.saturating_sub(2);
    let n = span(speed, INDICATOR_SPEED, inner);
    fill(top + 1..split, 1..1 + n, [255, 255, 255]);
    // Left for positive (left-turning) values, right for negative, from the half's middle.
    let half = w / 2;
    let centred = |v: f32, max: f32, origin: usize| -> std::ops::Range<usize> {
        let n = span(v, max, half / 2);
        if v > 0.0 {
            origin - n..origin
        } else {
            origin..origin + n
        }
    };
    let bottom = split + usize::from(band >= 6)..h - usize::from(band >= 6);
    fill(
        bottom.clone(),
        centred(steering, MAX_STEER, half / 2),
        [0, 255, 0],
    );
    fill(
        bottom,
        centred(yaw_rate, INDICATOR_YAW_RATE, half + half / 2),
        [255, 0, 0],
    );
}

impl Default for RacerConfig {
    fn default() -> Self {
        Self {
            track_radius: 60.0,
            checkpoints: 12,
            tile_length: 4.0,
            track_half_width: 6.0,
            playfield: 120.0,
            engine_force: 12000.0,
            brake_impulse: 45.0,
            drag: 4.0,
            obs: ObsMode::State,
            width: 64,
            height: 64,
            view_half_height: 16.0,
            indicators: false,
        }
    }
}

impl crate::EnvConfig for RacerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("track_radius", self.track_radius),
            ("tile_length", self.tile_length),
            ("track_half_width", self.track_half_width),
            ("playfield", self.playfield),
            ("engine_force", self.engine_force),
            ("brake_impulse", self.brake_impulse),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, got {v}").into());
            }
        }
        check_image_size(self.width, self.height)?;
        if !(self.view_half_height.is_finite() && self.view_half_height > 0.0) {
            return Err(format!(
                "view_half_height must be positive, got {}",
                self.view_half_height
            )
            .into());
        }
        if !(self.drag.is_finite() && self.drag >= 0.0) {
            return Err(format!("drag must be non-negative, got {}", self.drag).into());
        }
        if !(3..=64).contains(&self.checkpoints) {
            return Err(format!("checkpoints must be in 3..=64, got {}", self.checkpoints).into());
        }
        if self.track_radius > 5000.0 || self.tile_length > self.track_radius {
            return Err("track_radius must be at most 5000 m and longer than a tile".into());
        }
        if self.playfield < self.track_radius * 1.2 {
            return Err(format!(
                "playfield ({}) must exceed 1.2 × track_radius ({}) so the track fits",
                self.playfield, self.track_radius
            )
            .into());
        }
        Ok(())
    }
}

/// The racing environment. See the [module docs](self).
pub struct Racer {
    config: RacerConfig,
    world: World,
    initial: Snapshot,
    chassis: RigidBodyHandle,
    vehicle: DynamicRayCastVehicleController,
    initial_vehicle: DynamicRayCastVehicleController,
    track: Track,
    visited: Vec<bool>,
    visited_count: usize,
    nearest: usize,
    observation_space: Space,
    action_space: Space,
    action_box: BoxSpace,
    seeder: EpisodeSeeder,
    episode: EpisodeState,
    scene: Scene,
    road: usize,
    pixels: Pixels,
}

/// CarRacing's grass, road and car colours.
const GRASS: [u8; 3] = [102, 204, 102];
const ROAD: [u8; 3] = [102, 102, 102];
const CAR: [u8; 3] = [204, 0, 0];
const TYRE: [u8; 3] = [20, 20, 20];

impl Racer {
    /// Builds the ground and the car for `config`; the track comes with each reset.
    pub fn new(config: RacerConfig) -> Result<Self, EnvError> {
        crate::EnvConfig::validate(&config).map_err(|message| EnvError::InvalidConfig {
            env: ID.into(),
            message: message.0,
        })?;
        let mut world = World::try_new(WorldConfig {
            dt: 0.02,
            substeps: 1,
            solver_iterations: 2,
            ..WorldConfig::default()
        })?;
        let extent = config.playfield + 50.0;
        world.add_collider(
            ColliderBuilder::cuboid(extent, 0.5, extent)
                .translation(Vector::new(0.0, -0.5, 0.0))
                .friction(1.0),
            None,
        );
        let [l, h, w] = CHASSIS;
        let chassis = world.add_body(
            "car",
            RigidBodyBuilder::dynamic()
                .can_sleep(false)
                .translation(Vector::new(0.0, SPAWN_HEIGHT, 0.0))
                // A low centre of mass keeps the car on its wheels in hard turns.
                .additional_mass_properties(MassProperties::new(
                    Vector::new(0.0, -0.3, 0.0),
                    CAR_MASS,
                    Vector::new(
                        CAR_MASS / 12.0 * (4.0 * h * h + 4.0 * w * w),
                        CAR_MASS / 12.0 * (4.0 * l * l + 4.0 * w * w),
                        CAR_MASS / 12.0 * (4.0 * l * l + 4.0 * h * h),
                    ),
                )),
        )?;
        world.add_collider(ColliderBuilder::cuboid(l, h, w).density(0.0), Some(chassis));
        let mut vehicle = DynamicRayCastVehicleController::new(chassis);
        let tuning = WheelTuning {
            suspension_stiffness: 30.0,
            suspension_compression: 2.0,
            suspension_damping: 2.5,
            max_suspension_travel: 0.3,
            friction_slip: 1.4,
            side_friction_stiffness: 1.0,
            max_suspension_force: 30_000.0,
        };
        for (x, z) in [(1.3, 0.8), (1.3, -0.8), (-1.3, 0.8), (-1.3, -0.8)] {
            vehicle.add_wheel(
                Vector::new(x, -0.15, z),
                -Vector::Y,
                Vector::Z,
                0.4,
                0.35,
                &tuning,
            );
        }
        let initial = world.snapshot();
        let action_box = BoxSpace::new(vec![-1.0, 0.0, 0.0], vec![1.0, 1.0, 1.0]);
        let mut scene = Scene::default();
        scene.add(Visual::new(
            "grass",
            None,
            ground_quad(extent, extent, 0.0),
            GRASS,
            1,
        ));
        let road = scene.add(Visual::new(
            "road",
            None,
            VisualShape::Mesh {
                vertices: Vec::new(),
                triangles: Vec::new(),
                double_sided: true,
            },
            ROAD,
            2,
        ));
        scene.add(Visual::new(
            "car/body",
            Some("car"),
            VisualShape::Cuboid { half: CHASSIS },
            CAR,
            3,
        ));
        for (x, z) in [(1.3, 0.95), (1.3, -0.95), (-1.3, 0.95), (-1.3, -0.95)] {
            // Tyres: cylinders turned to roll about the car's z axis, just outside the body.
            let pose = Pose::from_parts(
                Vector::new(x, -0.5, z),
                Rotation::from_rotation_x(std::f32::consts::FRAC_PI_2),
            );
            scene.add(
                Visual::new(
                    "car/tyre",
                    Some("car"),
                    VisualShape::Cylinder {
                        half_height: 0.15,
                        radius: 0.35,
                    },
                    TYRE,
                    4,
                )
                .at(pose),
            );
        }
        let pixels = Pixels::new(config.obs, config.width, config.height);
        let state_space = Space::Box(BoxSpace::uniform(
            vec![OBS_LEN],
            f32::NEG_INFINITY,
            f32::INFINITY,
        ));
        Ok(Self {
            config,
            world,
            initial,
            chassis,
            initial_vehicle: vehicle.clone(),
            vehicle,
            track: Track {
                center: Vec::new(),
                half_width: 0.0,
            },
            visited: Vec::new(),
            visited_count: 0,
            nearest: 0,
            observation_space: pixels.space(state_space),
            action_space: Space::Box(action_box.clone()),
            action_box,
            seeder: EpisodeSeeder::default(),
            episode: EpisodeState::default(),
            scene,
            road,
            pixels,
        })
    }

    /// The top-down camera that follows the car, car pointing up, placed so the car sits in
    /// the lower part of the picture (as in CarRacing).
    pub fn camera(&self) -> Camera {
        let (f, _) = self.car_axes();
        let p = self.car_position();
        let half = self.config.view_half_height;
        let centre = Vector::new(p[0] + f[0] * half * 0.5, 0.0, p[1] + f[1] * half * 0.5);
        Camera {
            eye: centre + Vector::new(0.0, 50.0, 0.0),
            target: centre,
            up: Vector::new(f[0], 0.0, f[1]),
            projection: Projection::Orthographic { half_height: half },
            width: self.config.width,
            height: self.config.height,
            near: 1.0,
            far: 100.0,
        }
    }

    /// The road as one mesh: two triangles per tile, a few centimetres above the grass.
    fn road_mesh(track: &Track) -> VisualShape {
        let mut vertices = Vec::with_capacity(track.len() * 4);
        let mut triangles = Vec::with_capacity(track.len() * 2);
        for i in 0..track.len() {
            let base = vertices.len() as u32;
            for c in track.quad(i) {
                vertices.push([c[0], 0.02, c[1]]);
            }
            triangles.push([base, base + 1, base + 2]);
            triangles.push([base, base + 2, base + 3]);
        }
        VisualShape::Mesh {
            vertices,
            triangles,
            double_sided: true,
        }
    }

    fn observation(&mut self) -> Result<Value, EnvError> {
        let state = self.observe();
        let (speed, yaw_rate, steering) = (state[0], state[2], state[3]);
        let camera = self.camera();
        let mut obs = self
            .pixels
            .observe(state, &self.scene, &self.world, &camera)?;
        if self.config.indicators {
            let image = match &mut obs {
                Value::U8(v) => Some(v),
                Value::Dict(d) => match d.get_mut("pixels") {
                    Some(Value::U8(v)) => Some(v),
                    _ => None,
                },
                _ => None,
            };
            if let Some(rgb) = image {
                let (w, h) = (self.config.width, self.config.height);
                draw_indicators(rgb, w, h, speed, steering, yaw_rate);
            }
        }
        Ok(obs)
    }

    /// The underlying world (read-only), for viewers and cameras.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// This episode's track.
    pub fn track(&self) -> &Track {
        &self.track
    }

    /// Which tiles have been visited.
    pub fn visited(&self) -> &[bool] {
        &self.visited
    }

    /// The car's position on the ground plane `(x, z)`, m.
    pub fn car_position(&self) -> [f32; 2] {
        let t = self.world.body(self.chassis).translation();
        [t.x, t.z]
    }

    /// Forward and left unit vectors of the car on the ground plane.
    fn car_axes(&self) -> ([f32; 2], [f32; 2]) {
        let rot = self.world.body(self.chassis).rotation();
        let f = *rot * Vector::X;
        let l = *rot * -Vector::Z;
        let norm = |v: Vector| {
            let n = v.x.hypot(v.z).max(1e-6);
            [v.x / n, v.z / n]
        };
        (norm(f), norm(l))
    }

    fn observe(&self) -> Vec<f32> {
        let body = self.world.body(self.chassis);
        let (f, l) = self.car_axes();
        let p = self.car_position();
        let v = body.linvel();
        let dot = |a: [f32; 2], b: [f32; 2]| a[0] * b[0] + a[1] * b[1];
        let vel = [v.x, v.z];
        let mut obs = Vec::with_capacity(OBS_LEN);
        obs.push(dot(vel, f));
        obs.push(dot(vel, l));
        obs.push(body.angvel().y);
        obs.push(self.vehicle.wheels()[0].steering);
        let d = self.track.direction(self.nearest);
        // Heading of the car relative to the track direction (positive: car turned left).
        obs.push(cross_up(d, f));
        obs.push(dot(d, f));
        let (_, lateral) = self.track.project(self.nearest, p);
        obs.push(lateral / self.track.half_width);
        let n = self.track.len();
        for k in 0..WAYPOINTS {
            let w = self.track.center[(self.nearest + 2 * (k + 1)) % n];
            let rel = [w[0] - p[0], w[1] - p[1]];
            obs.push(dot(rel, f));
            obs.push(dot(rel, l));
        }
        obs.push(self.visited_count as f32 / n as f32);
        obs
    }
}

impl Env for Racer {
    fn observation_space(&self) -> &Space {
        &self.observation_space
    }

    fn scene(&self) -> Option<(&World, &Scene)> {
        Some((&self.world, &self.scene))
    }

    fn camera(&self) -> Option<Camera> {
        Some(Self::camera(self))
    }

    fn action_space(&self) -> &Space {
        &self.action_space
    }

    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        reject_unknown_options(ID, options, &[])?;
        let (episode_seed, mut rng) = self.seeder.next_episode(seed);
        let c = &self.config;
        self.track = Track::generate(
            &mut rng,
            c.checkpoints,
            c.track_radius,
            c.tile_length,
            c.track_half_width,
        );
        self.visited = vec![false; self.track.len()];
        self.visited_count = 0;
        self.nearest = 0;
        self.world.restore(&self.initial)?;
        self.vehicle.clone_from(&self.initial_vehicle);
        // The middle of the first tile, so the car touches only that tile.
        let (a, b) = self.track.segment(0);
        let start = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
        let d = self.track.direction(0);
        // Yaw about +y that turns the car's +x onto (d.x, d.z): x' = cos, z' = -sin.
        let yaw = (-d[1]).atan2(d[0]);
        let body = self.world.body_mut(self.chassis);
        body.set_translation(Vector::new(start[0], SPAWN_HEIGHT, start[1]), true);
        body.set_rotation(Rotation::from_rotation_y(yaw), true);
        self.episode.start();
        let mut info = Info::new();
        info.insert("episode_seed".into(), episode_seed.into());
        info.insert("tile_count".into(), self.track.len().into());
        self.scene.visuals[self.road].shape = Self::road_mesh(&self.track);
        Ok((self.observation()?, info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running(ID)?;
        let mut a = [0.0f32; 3];
        let clipped = self
            .action_box
            .clip_into(action, &mut a)
            .map_err(|e| EnvError::InvalidAction(format!("{ID}: {e}")))?;
        let [steer, gas, brake] = a;
        let dt = self.world.config().dt;
        {
            let wheels = self.vehicle.wheels_mut();
            for (i, wheel) in wheels.iter_mut().enumerate() {
                let front = i < 2;
                // Steering about the suspension axis (-y): positive turns right.
                wheel.steering = if front { -steer * MAX_STEER } else { 0.0 };
                wheel.engine_force = if front {
                    0.0
                } else {
                    gas * self.config.engine_force / 2.0
                };
                wheel.brake = brake * self.config.brake_impulse;
            }
        }
        let chassis = self.chassis;
        let filter = QueryFilter::default().exclude_rigid_body(chassis);
        self.vehicle
            .update_vehicle(dt, self.world.query_pipeline_mut(filter));
        let v = self.world.body(chassis).linvel();
        let drag = -v * (self.config.drag * v.length());
        self.world.apply_force(chassis, drag)?;
        if let Err(e) = self.world.step() {
            self.episode.record(true);
            return Err(e.into());
        }

        let p = self.car_position();
        self.nearest = self.track.nearest_tile(p, self.nearest);
        let n = self.track.len();
        let mut reward = -0.1;
        for k in [n - 1, 0, 1] {
            let i = (self.nearest + k) % n;
            if !self.visited[i] && self.track.on_tile(i, p) {
                self.visited[i] = true;
                self.visited_count += 1;
                reward += 1000.0 / n as f64;
            }
        }
        let mut terminated = false;
        let mut info = Info::new();
        let up = *self.world.body(chassis).rotation() * Vector::Y;
        if p[0].abs() > self.config.playfield || p[1].abs() > self.config.playfield {
            terminated = true;
            reward = -100.0;
            info.insert("left_field".into(), true.into());
        } else if up.y < 0.2 {
            terminated = true;
            reward = -100.0;
            info.insert("rolled_over".into(), true.into());
        } else if self.visited_count == n {
            terminated = true;
            info.insert("lap_complete".into(), true.into());
        }
        info.insert("tiles_visited".into(), self.visited_count.into());
        if clipped {
            info.insert("action_clipped".into(), true.into());
        }
        self.episode.record(terminated);
        Ok(Step {
            obs: self.observation()?,
            reward,
            terminated,
            truncated: false,
            info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(env: &mut Racer, action: [f32; 3], steps: usize) -> Vec<Step> {
        (0..steps)
            .map(|_| env.step(&Value::F32(action.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn gas_moves_the_car_forward_and_steering_turns_it() {
        let mut env = Racer::new(RacerConfig::default()).unwrap();
        env.reset(Some(0), &Info::new()).unwrap();
        let steps = drive(&mut env, [0.0, 1.0, 0.0], 50);
        let speed = steps.last().unwrap().obs.as_f32().unwrap()[0];
        assert!(speed > 3.0, "forward speed after 1 s of full gas: {speed}");
        let right = drive(&mut env, [1.0, 0.5, 0.0], 10);
        let yaw_rate = right.last().unwrap().obs.as_f32().unwrap()[2];
        assert!(
            yaw_rate < -0.05,
            "steering right should turn right, yaw rate {yaw_rate}"
        );
        // The first tiles were visited on the way.
        assert!(steps.iter().any(|s| s.reward > 0.0));
    }

    #[test]
    fn the_indicator_bar_shows_speed_steering_and_yaw_rate() {
        let pixels = |indicators| RacerConfig {
            obs: ObsMode::Both,
            indicators,
            ..RacerConfig::default()
        };
        let (mut plain, mut shown) = (
            Racer::new(pixels(false)).unwrap(),
            Racer::new(pixels(true)).unwrap(),
        );
        let split = |v: &Value| -> (Vec<u8>, Vec<f32>) {
            let Value::Dict(d) = v else { panic!("{v:?}") };
            let Value::U8(img) = &d["pixels"] else {
                panic!("no image")
            };
            (img.clone(), d["state"].as_f32().unwrap().to_vec())
        };
        let w = 64;
        let px = |img: &[u8], x: usize, y: usize| -> [u8; 3] {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3]
                .try_into()
                .unwrap()
        };
        let white = |img: &[u8]| (1..w - 1).filter(|&x| px(img, x, 57) == [255; 3]).count();
        let (a, _) = plain.reset(Some(3), &Info::new()).unwrap();
        let (b, _) = shown.reset(Some(3), &Info::new()).unwrap();
        let ((a, _), (b, _)) = (split(&a), split(&b));
        // The bar covers the bottom eighth, black at rest; the rest of the image is the same.
        assert_eq!(a[..56 * w * 3], b[..56 * w * 3]);
        assert!((56..64).all(|y| (0..w).all(|x| px(&b, x, y) == [0; 3])));
        assert_ne!(a[56 * w * 3..], b[56 * w * 3..]);
        // Full gas: the white bar grows with the speed, as long as speed / 40 m/s says.
        let mut last = 0;
        for _ in 0..3 {
            let step = drive(&mut shown, [0.0, 1.0, 0.0], 25).pop().unwrap();
            let (img, state) = split(&step.obs);
            let n = white(&img);
            let want = (state[0] / 40.0 * 62.0).round() as usize;
            assert_eq!(n, want, "speed {}", state[0]);
            assert!(n > last, "{n} after {last}");
            last = n;
        }
        // Steering right: green right of the left half's middle; turning right: red right of
        // the right half's middle; nothing on the other sides.
        let step = drive(&mut shown, [1.0, 1.0, 0.0], 10).pop().unwrap();
        let (img, state) = split(&step.obs);
        assert!(state[3] < 0.0 && state[2] < 0.0, "{state:?}");
        let row = 61;
        assert_eq!(px(&img, 16, row), [0, 255, 0]);
        assert_eq!(px(&img, 15, row), [0; 3]);
        assert_eq!(px(&img, 48, row), [255, 0, 0]);
        assert_eq!(px(&img, 47, row), [0; 3]);
    }

    #[test]
    fn standing_still_costs_a_tenth_per_step_after_the_start_tile() {
        let mut env = Racer::new(RacerConfig::default()).unwrap();
        let (_, info) = env.reset(Some(1), &Info::new()).unwrap();
        let n = info["tile_count"].as_u64().unwrap() as f64;
        let steps = drive(&mut env, [0.0, 0.0, 1.0], 20);
        let total: f64 = steps.iter().map(|s| s.reward).sum();
        // The start tile counts once (+1000/N); every step costs 0.1.
        assert!(
            (total - (1000.0 / n - 2.0)).abs() < 1e-6,
            "total {total}, n {n}"
        );
        assert!(steps.iter().all(|s| !s.terminated && !s.truncated));
    }

    #[test]
    fn leaving_the_field_terminates_with_minus_100() {
        let mut env = Racer::new(RacerConfig::default()).unwrap();
        env.reset(Some(2), &Info::new()).unwrap();
        let edge = env.config.playfield + 1.0;
        env.world
            .body_mut(env.chassis)
            .set_translation(Vector::new(edge, SPAWN_HEIGHT, 0.0), true);
        let step = env.step(&Value::F32(vec![0.0, 0.0, 0.0])).unwrap();
        assert!(step.terminated);
        assert_eq!(step.reward, -100.0);
        assert_eq!(step.info["left_field"], true);
    }

    #[test]
    fn visiting_every_tile_completes_the_lap() {
        let mut env = Racer::new(RacerConfig::default()).unwrap();
        env.reset(Some(3), &Info::new()).unwrap();
        let n = env.track.len();
        env.visited.iter_mut().for_each(|v| *v = true);
        env.visited[1] = false;
        env.visited_count = n - 1;
        // Place the car on tile 1 and step once.
        let (a, b) = env.track.segment(1);
        let mid = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
        env.world
            .body_mut(env.chassis)
            .set_translation(Vector::new(mid[0], SPAWN_HEIGHT, mid[1]), true);
        let step = env.step(&Value::F32(vec![0.0, 0.0, 1.0])).unwrap();
        assert!(step.terminated, "{:?}", step.info);
        assert_eq!(step.info["lap_complete"], true);
        assert!((step.reward - (1000.0 / n as f64 - 0.1)).abs() < 1e-9);
    }

    #[test]
    fn rolling_over_terminates() {
        let mut env = Racer::new(RacerConfig::default()).unwrap();
        env.reset(Some(4), &Info::new()).unwrap();
        let pos = env.world.body(env.chassis).translation();
        let body = env.world.body_mut(env.chassis);
        body.set_translation(Vector::new(pos.x, 2.5, pos.z), true);
        body.set_rotation(Rotation::from_rotation_x(std::f32::consts::PI), true);
        let step = env.step(&Value::F32(vec![0.0, 0.0, 0.0])).unwrap();
        assert!(step.terminated);
        assert_eq!(step.info["rolled_over"], true);
    }
}
