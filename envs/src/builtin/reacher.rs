//! `Reacher-v0`: a two-link planar arm moves its fingertip to a random target.
//!
//! ## Description
//! MuJoCo's Reacher rebuilt on rapier: a horizontal arm of two capsule links (0.1 m and
//! 0.11 m to the fingertip) on revolute joints about the vertical axis, as a rapier multibody
//! with MuJoCo's joint armature (1 kg·m²) and damping (1 N·m·s/rad). Each env step is two
//! 0.01 s physics substeps (MuJoCo's `frame_skip = 2`). Motors apply `gear · action` N·m.
//!
//! ## Action Space
//! `Box(-1, 1, (2,), f32)`: torque commands for the shoulder and the elbow. Values outside
//! the box are clipped and flagged with `info["action_clipped"] = true`; NaN is an error.
//!
//! ## Observation Space
//! `Box(-inf, inf, (10,), f32)`, the layout of Gymnasium's Reacher-v5:
//!
//! | index | observation                                  | min  | max |
//! |-------|----------------------------------------------|------|-----|
//! | 0, 1  | cos of the shoulder and elbow angles         | -1   | 1   |
//! | 2, 3  | sin of the shoulder and elbow angles         | -1   | 1   |
//! | 4, 5  | target x, y (m)                              | -0.2 | 0.2 |
//! | 6, 7  | shoulder and elbow angular velocity (rad/s)  | -inf | inf |
//! | 8, 9  | fingertip minus target, x and y (m)          | -inf | inf |
//!
//! That is with `obs = "state"` (the default). With `obs = "pixels"`, a `width`×`height` RGB
//! image (u8, default 64×64) of the arena seen from above: the arm, its fingertip and the
//! target; with `obs = "both"`, a Dict of `pixels` and `state`.
//!
//! ## Rewards
//! `reward = -dist_weight · ‖fingertip − target‖ − control_weight · ‖action‖²`, measured after
//! the step; `info` carries `reward_dist` and `reward_ctrl`.
//!
//! ## Starting State
//! Joint angles uniform in ±0.1 rad, joint velocities uniform in ±0.005 rad/s; the target
//! uniform in the disc of radius 0.2 m (rejection sampling in the square, as Gymnasium).
//!
//! ## Episode End
//! - Terminated: never.
//! - Truncated: after 50 steps (the registry wraps the env in a `TimeLimit`).
//!
//! ## Arguments
//! See [`ReacherConfig`].

use dreamgym_sim::rapier::prelude::*;
use dreamgym_sim::{JointRef, Snapshot, World, WorldConfig};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::builtin::pixels::{ObsMode, Pixels, check_image_size, ground_quad};
use crate::builtin::reject_unknown_options;
use crate::{BoxSpace, Env, EnvError, EpisodeSeeder, EpisodeState, Info, Space, Step, Value};
use dreamgym_sim::{Camera, Projection, Scene, Visual, VisualShape};

const ID: &str = "Reacher-v0";
/// Shoulder-to-elbow length, m.
const LINK0: f32 = 0.1;
/// Elbow-to-fingertip length, m.
const LINK1: f32 = 0.11;
/// Mass of a capsule link (radius 0.01 m, length 0.1 m, density 1000 kg/m³), kg.
const LINK_MASS: f32 = 0.0356;
/// The elbow's range of motion, rad.
const ELBOW_LIMIT: f32 = 3.0;

/// Settings of `Reacher-v0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReacherConfig {
    /// Torque per unit of action, N·m (MuJoCo's `gear`).
    pub gear: f32,
    /// Weight of the distance term.
    pub reward_dist_weight: f64,
    /// Weight of the control cost.
    pub reward_control_weight: f64,
    /// Physics substeps per 0.02 s env step (MuJoCo's `frame_skip`).
    pub substeps: usize,
    /// What the agent observes: `state`, `pixels` or `both`.
    pub obs: ObsMode,
    /// Image width, pixels (pixel observations).
    pub width: usize,
    /// Image height, pixels (pixel observations).
    pub height: usize,
}

impl Default for ReacherConfig {
    fn default() -> Self {
        Self {
            gear: 200.0,
            reward_dist_weight: 1.0,
            reward_control_weight: 1.0,
            substeps: 2,
            obs: ObsMode::State,
            width: 64,
            height: 64,
        }
    }
}

impl crate::EnvConfig for ReacherConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.gear.is_finite() && self.gear > 0.0 && self.gear <= 1.0e4) {
            return Err(format!("gear must be in (0, 1e4] N·m, got {}", self.gear).into());
        }
        for (name, w) in [
            ("reward_dist_weight", self.reward_dist_weight),
            ("reward_control_weight", self.reward_control_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("{name} must be a finite non-negative number, got {w}").into());
            }
        }
        if !(1..=100).contains(&self.substeps) {
            return Err(format!("substeps must be in 1..=100, got {}", self.substeps).into());
        }
        check_image_size(self.width, self.height)
    }
}

/// The reacher environment. See the [module docs](self).
pub struct Reacher {
    config: ReacherConfig,
    world: World,
    initial: Snapshot,
    links: [RigidBodyHandle; 2],
    joints: [JointRef; 2],
    target: [f32; 2],
    observation_space: Space,
    action_space: Space,
    action_box: BoxSpace,
    seeder: EpisodeSeeder,
    episode: EpisodeState,
    scene: Scene,
    target_visual: usize,
    pixels: Pixels,
}

impl Reacher {
    /// Builds the arm for `config`.
    pub fn new(config: ReacherConfig) -> Result<Self, EnvError> {
        crate::EnvConfig::validate(&config).map_err(|message| EnvError::InvalidConfig {
            env: ID.into(),
            message: message.0,
        })?;
        let mut world = World::try_new(WorldConfig {
            dt: 0.02,
            substeps: config.substeps,
            solver_iterations: 1,
            ..WorldConfig::default()
        })?;
        let base = world.add_body("base", RigidBodyBuilder::fixed())?;
        let link = |len: f32, x: f32| {
            let rod = LINK_MASS * len * len / 12.0;
            RigidBodyBuilder::dynamic()
                .can_sleep(false)
                .translation(Vector::new(x, 0.0, 0.0))
                .additional_mass_properties(MassProperties::new(
                    Vector::new(len / 2.0, 0.0, 0.0),
                    LINK_MASS,
                    Vector::new(1.0e-6, rod, rod),
                ))
        };
        let upper = world.add_body("upper_arm", link(LINK0, 0.0))?;
        let fore = world.add_body("forearm", link(LINK1, LINK0))?;
        let shoulder = world.add_multibody_joint(
            "shoulder",
            base,
            upper,
            RevoluteJointBuilder::new(Vector::Y).build(),
        )?;
        let elbow = world.add_multibody_joint(
            "elbow",
            upper,
            fore,
            RevoluteJointBuilder::new(Vector::Y)
                .local_anchor1(Vector::new(LINK0, 0.0, 0.0))
                .limits([-ELBOW_LIMIT, ELBOW_LIMIT])
                .build(),
        )?;
        if let Some((multibody, _)) = world.multibody_mut(shoulder) {
            multibody.armature_mut().fill(1.0);
            multibody.damping_mut().fill(1.0);
        }
        let initial = world.snapshot();
        let action_box = BoxSpace::new(vec![-1.0; 2], vec![1.0; 2]);
        let mut scene = Scene::default();
        scene.add(Visual::new(
            "arena",
            None,
            ground_quad(0.3, 0.3, -0.02),
            [230, 230, 230],
            1,
        ));
        scene.add(Visual::new(
            "root",
            None,
            VisualShape::Cylinder {
                half_height: 0.01,
                radius: 0.011,
            },
            [230, 102, 153],
            2,
        ));
        // Links are capsules along their own x axis: turn the y-aligned capsule by 90° about z.
        let along_x = |len: f32| {
            Pose::from_parts(
                Vector::new(len / 2.0, 0.0, 0.0),
                Rotation::from_rotation_z(std::f32::consts::FRAC_PI_2),
            )
        };
        scene.add(
            Visual::new(
                "upper_arm",
                Some("upper_arm"),
                VisualShape::Capsule {
                    half_height: LINK0 / 2.0,
                    radius: 0.01,
                },
                [0, 102, 153],
                3,
            )
            .at(along_x(LINK0)),
        );
        scene.add(
            Visual::new(
                "forearm",
                Some("forearm"),
                VisualShape::Capsule {
                    half_height: 0.05,
                    radius: 0.01,
                },
                [0, 102, 153],
                3,
            )
            .at(along_x(0.1)),
        );
        scene.add(
            Visual::new(
                "fingertip",
                Some("forearm"),
                VisualShape::Ball { radius: 0.01 },
                [0, 204, 153],
                4,
            )
            .at(Pose::from_translation(Vector::new(LINK1, 0.0, 0.0))),
        );
        let target_visual = scene.add(Visual::new(
            "target",
            None,
            VisualShape::Ball { radius: 0.009 },
            [230, 50, 50],
            5,
        ));
        let pixels = Pixels::new(config.obs, config.width, config.height);
        let state_space = Space::Box(BoxSpace::uniform(
            vec![10],
            f32::NEG_INFINITY,
            f32::INFINITY,
        ));
        Ok(Self {
            config,
            world,
            initial,
            links: [upper, fore],
            joints: [shoulder, elbow],
            target: [0.0; 2],
            observation_space: pixels.space(state_space),
            action_space: Space::Box(action_box.clone()),
            action_box,
            seeder: EpisodeSeeder::default(),
            episode: EpisodeState::default(),
            scene,
            target_visual,
            pixels,
        })
    }

    /// The arena from above; image up is the arm plane's +y (world -z).
    pub fn camera(&self) -> Camera {
        Camera {
            eye: Vector::new(0.0, 1.0, 0.0),
            target: Vector::ZERO,
            up: -Vector::Z,
            projection: Projection::Orthographic { half_height: 0.23 },
            width: self.config.width,
            height: self.config.height,
            near: 0.1,
            far: 2.0,
        }
    }

    fn observation(&mut self) -> Result<Value, EnvError> {
        let state = self.observe()?;
        let camera = self.camera();
        self.pixels
            .observe(state, &self.scene, &self.world, &camera)
    }

    /// The underlying world (read-only), for viewers and cameras.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The target's position in the arm's plane, m.
    pub fn target(&self) -> [f32; 2] {
        self.target
    }

    /// Joint angles and velocities `[q0, q1, qd0, qd1]`.
    fn joint_state(&self) -> Result<[f32; 4], EnvError> {
        let (q0, qd0) = self.world.joint_dof(self.joints[0])?;
        let (q1, qd1) = self.world.joint_dof(self.joints[1])?;
        Ok([q0, q1, qd0, qd1])
    }

    /// The fingertip's position in the arm's plane, m, from the joint angles.
    pub fn fingertip(&self) -> Result<[f32; 2], EnvError> {
        let [q0, q1, ..] = self.joint_state()?;
        Ok([
            LINK0 * q0.cos() + LINK1 * (q0 + q1).cos(),
            LINK0 * q0.sin() + LINK1 * (q0 + q1).sin(),
        ])
    }

    fn observe(&self) -> Result<Vec<f32>, EnvError> {
        let [q0, q1, qd0, qd1] = self.joint_state()?;
        let tip = self.fingertip()?;
        Ok(vec![
            q0.cos(),
            q1.cos(),
            q0.sin(),
            q1.sin(),
            self.target[0],
            self.target[1],
            qd0,
            qd1,
            tip[0] - self.target[0],
            tip[1] - self.target[1],
        ])
    }
}

impl Env for Reacher {
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
        let q: [f32; 2] = [rng.random_range(-0.1..=0.1), rng.random_range(-0.1..=0.1)];
        let target = loop {
            let t: [f32; 2] = [rng.random_range(-0.2..=0.2), rng.random_range(-0.2..=0.2)];
            if t[0].hypot(t[1]) < 0.2 {
                break t;
            }
        };
        let qd: [f32; 2] = [
            rng.random_range(-0.005..=0.005),
            rng.random_range(-0.005..=0.005),
        ];
        self.world.restore(&self.initial)?;
        self.world
            .set_joint_dofs(&[(self.joints[0], q[0], qd[0]), (self.joints[1], q[1], qd[1])])?;
        self.target = target;
        // The arm's plane (x, y) is the world's (x, -z).
        self.scene.visuals[self.target_visual].pose =
            Pose::from_translation(Vector::new(target[0], 0.0, -target[1]));
        self.episode.start();
        let mut info = Info::new();
        info.insert("episode_seed".into(), episode_seed.into());
        Ok((self.observation()?, info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running(ID)?;
        let mut a = [0.0f32; 2];
        let clipped = self
            .action_box
            .clip_into(action, &mut a)
            .map_err(|e| EnvError::InvalidAction(format!("{ID}: {e}")))?;
        // Joint torques as body torques: the elbow's torque acts on the forearm and, equal and
        // opposite, on the upper arm. A rotation about +y raises the angles.
        let (t0, t1) = (a[0] * self.config.gear, a[1] * self.config.gear);
        self.world
            .apply_torque(self.links[0], Vector::new(0.0, t0 - t1, 0.0))?;
        self.world
            .apply_torque(self.links[1], Vector::new(0.0, t1, 0.0))?;
        if let Err(e) = self.world.step() {
            self.episode.record(true);
            return Err(e.into());
        }
        let state = self.observe()?;
        let reward_dist = -(state[8] as f64).hypot(state[9] as f64);
        let reward_ctrl = -((a[0] as f64).powi(2) + (a[1] as f64).powi(2));
        let reward = self.config.reward_dist_weight * reward_dist
            + self.config.reward_control_weight * reward_ctrl;
        self.episode.record(false);
        let mut info = Info::new();
        info.insert("reward_dist".into(), reward_dist.into());
        info.insert("reward_ctrl".into(), reward_ctrl.into());
        if clipped {
            info.insert("action_clipped".into(), true.into());
        }
        let camera = self.camera();
        Ok(Step {
            obs: self
                .pixels
                .observe(state, &self.scene, &self.world, &camera)?,
            reward,
            terminated: false,
            truncated: false,
            info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torque_turns_the_shoulder_the_expected_way() {
        let mut env = Reacher::new(ReacherConfig::default()).unwrap();
        env.reset(Some(1), &Info::new()).unwrap();
        let before = env.joint_state().unwrap();
        env.step(&Value::F32(vec![0.05, 0.0])).unwrap();
        let after = env.joint_state().unwrap();
        // Inertia is dominated by the armature (1 kg·m² per joint): qd grows by about
        // gear · a · dt = 200 · 0.05 · 0.02 = 0.2 rad/s, less damping.
        let dqd = after[2] - before[2];
        assert!(dqd > 0.1 && dqd < 0.25, "shoulder velocity change {dqd}");
    }

    #[test]
    fn never_terminates_and_rewards_closeness() {
        let mut env = Reacher::new(ReacherConfig::default()).unwrap();
        let (obs, _) = env.reset(Some(4), &Info::new()).unwrap();
        let o = obs.as_f32().unwrap();
        for _ in 0..30 {
            let step = env.step(&Value::F32(vec![0.0, 0.0])).unwrap();
            assert!(!step.terminated && !step.truncated);
            let o = step.obs.as_f32().unwrap();
            let dist = (o[8] as f64).hypot(o[9] as f64);
            assert!((step.reward + dist).abs() < 1e-9);
        }
        assert!(o[4].hypot(o[5]) < 0.2);
    }

    #[test]
    fn clips_out_of_range_actions_and_flags_them_but_rejects_nan() {
        let mut env = Reacher::new(ReacherConfig::default()).unwrap();
        env.reset(Some(0), &Info::new()).unwrap();
        let snapshot = env.world.snapshot();
        let step = env.step(&Value::F32(vec![5.0, -5.0])).unwrap();
        assert_eq!(step.info.get("action_clipped"), Some(&true.into()));
        assert!((step.info["reward_ctrl"].as_f64().unwrap() + 2.0).abs() < 1e-9);
        let err = env.step(&Value::F32(vec![f32::NAN, 0.0])).unwrap_err();
        assert!(matches!(err, EnvError::InvalidAction(_)));
        assert!(matches!(
            env.step(&Value::F32(vec![0.0])),
            Err(EnvError::InvalidAction(_))
        ));
        // A rejected action leaves the world untouched.
        env.world.restore(&snapshot).unwrap();
    }
}
