//! `CartPole-v0`: a pole on a cart, simulated by rapier, with Gymnasium CartPole-v1's rules.
//!
//! ## Description
//! A pole is attached by an un-actuated revolute joint to a cart that moves along a
//! frictionless prismatic joint. The pole starts upright; the goal is to keep it balanced by
//! pushing the cart left or right. The bodies and joints are a rapier multibody (reduced
//! coordinates: the joints hold exactly), integrated at 50 Hz like Gymnasium's `tau = 0.02`.
//! Masses and lengths are Gymnasium's: cart 1.0 kg, pole 0.1 kg, a uniform rod 1.0 m long
//! (half-length 0.5 m), gravity 9.8 m/s², push 10 N. Rapier integrates semi-implicitly
//! (Gymnasium's `kinematics_integrator = "semi-implicit euler"`); a test checks the
//! trajectory against those closed-form equations to 5e-4 (f32).
//!
//! ## Action Space
//! `Discrete(2)`: 0 pushes the cart to the left (−x) with `force_mag` newtons, 1 to the right.
//!
//! ## Observation Space
//! With `obs = "state"` (the default), `Box(4,)` of f32:
//!
//! | index | observation           | min                | max               |
//! |-------|-----------------------|--------------------|-------------------|
//! | 0     | cart position (m)     | -4.8               | 4.8               |
//! | 1     | cart velocity (m/s)   | -f32::MAX          | f32::MAX          |
//! | 2     | pole angle (rad)      | -0.418 (−24°)      | 0.418 (24°)       |
//! | 3     | pole angular velocity (rad/s) | -f32::MAX  | f32::MAX          |
//!
//! The pole angle is positive when the pole leans towards +x.
//!
//! With `obs = "pixels"`, a `width`×`height` RGB image (u8, default 64×64) of the rail, the
//! cart and the pole seen from the side (the whole ±2.4 m track); with `obs = "both"`, a Dict
//! of `pixels` and `state`.
//!
//! ## Rewards
//! +1 for every step taken, including the step that terminates the episode.
//!
//! ## Starting State
//! All four observations uniform in `[-0.05, 0.05]` (the reset options `low` and `high` change
//! the bounds, as in Gymnasium).
//!
//! ## Episode End
//! - Terminated: the pole angle leaves ±12° (±0.2095 rad), or the cart position leaves ±2.4 m.
//! - Truncated: after 500 steps (the registry wraps the env in a `TimeLimit`).
//!
//! ## Arguments
//! See [`CartPoleConfig`].

use dreamgym_sim::rapier::prelude::*;
use dreamgym_sim::{JointRef, Snapshot, World, WorldConfig};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::builtin::pixels::{ObsMode, Pixels, check_image_size};
use crate::builtin::{option_f32, reject_unknown_options};
use crate::{
    BoxSpace, Discrete, Env, EnvError, EpisodeSeeder, EpisodeState, Info, Space, Step, Value,
};
use dreamgym_sim::{Camera, Projection, Scene, Visual, VisualShape};

const ID: &str = "CartPole-v0";
/// Gymnasium's `x_threshold`, m.
const X_THRESHOLD: f32 = 2.4;
/// Gymnasium's `theta_threshold_radians`: 12 degrees.
const THETA_THRESHOLD: f32 = 12.0 * 2.0 * std::f32::consts::PI / 360.0;
/// Cart mass, kg.
const CART_MASS: f32 = 1.0;
/// Pole mass, kg.
const POLE_MASS: f32 = 0.1;
/// Half the pole's length, m.
const POLE_HALF_LENGTH: f32 = 0.5;

/// Settings of `CartPole-v0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CartPoleConfig {
    /// Force of one push, N.
    pub force_mag: f32,
    /// Gravity, m/s² (positive: downwards).
    pub gravity: f32,
    /// Physics substeps per 0.02 s env step.
    pub substeps: usize,
    /// What the agent observes: `state`, `pixels` or `both`.
    pub obs: ObsMode,
    /// Image width, pixels (pixel observations).
    pub width: usize,
    /// Image height, pixels (pixel observations).
    pub height: usize,
}

impl Default for CartPoleConfig {
    fn default() -> Self {
        Self {
            force_mag: 10.0,
            gravity: 9.8,
            substeps: 1,
            obs: ObsMode::State,
            width: 64,
            height: 64,
        }
    }
}

impl crate::EnvConfig for CartPoleConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.force_mag.is_finite() && self.force_mag > 0.0 && self.force_mag <= 1.0e4) {
            return Err(format!("force_mag must be in (0, 1e4] N, got {}", self.force_mag).into());
        }
        if !(self.gravity.is_finite() && self.gravity.abs() <= 1.0e3) {
            return Err(format!(
                "gravity must be finite and at most 1e3, got {}",
                self.gravity
            )
            .into());
        }
        if !(1..=100).contains(&self.substeps) {
            return Err(format!("substeps must be in 1..=100, got {}", self.substeps).into());
        }
        check_image_size(self.width, self.height)
    }
}

/// The cart-pole environment. See the [module docs](self).
pub struct CartPole {
    config: CartPoleConfig,
    world: World,
    initial: Snapshot,
    cart: RigidBodyHandle,
    slider: JointRef,
    hinge: JointRef,
    observation_space: Space,
    action_space: Space,
    seeder: EpisodeSeeder,
    episode: EpisodeState,
    scene: Scene,
    pixels: Pixels,
}

impl CartPole {
    /// Builds the world for `config`.
    pub fn new(config: CartPoleConfig) -> Result<Self, EnvError> {
        crate::EnvConfig::validate(&config).map_err(|message| EnvError::InvalidConfig {
            env: ID.into(),
            message: message.0,
        })?;
        let mut world = World::try_new(WorldConfig {
            dt: 0.02,
            substeps: config.substeps,
            gravity: [0.0, -config.gravity, 0.0],
            // Reduced coordinates need no constraint iterations: nothing here is in contact.
            solver_iterations: 1,
            stabilization_iterations: 0,
            ..WorldConfig::default()
        })?;
        let ground = world.add_body("ground", RigidBodyBuilder::fixed())?;
        let cart = world.add_body(
            "cart",
            RigidBodyBuilder::dynamic()
                .can_sleep(false)
                .additional_mass_properties(MassProperties::new(
                    Vector::ZERO,
                    CART_MASS,
                    Vector::splat(0.1),
                )),
        )?;
        // A uniform rod: I = m (2l)^2 / 12 about its centre, across the rod.
        let rod_inertia = POLE_MASS * (2.0 * POLE_HALF_LENGTH).powi(2) / 12.0;
        let pole = world.add_body(
            "pole",
            RigidBodyBuilder::dynamic()
                .can_sleep(false)
                .translation(Vector::new(0.0, POLE_HALF_LENGTH, 0.0))
                .additional_mass_properties(MassProperties::new(
                    Vector::ZERO,
                    POLE_MASS,
                    Vector::new(rod_inertia, 1.0e-5, rod_inertia),
                )),
        )?;
        let slider = world.add_multibody_joint(
            "slider",
            ground,
            cart,
            PrismaticJointBuilder::new(Vector::X).build(),
        )?;
        // About -z, so that a positive angle leans the pole towards +x (Gymnasium's sign).
        let hinge = world.add_multibody_joint(
            "hinge",
            cart,
            pole,
            RevoluteJointBuilder::new(-Vector::Z)
                .local_anchor2(Vector::new(0.0, -POLE_HALF_LENGTH, 0.0))
                .build(),
        )?;
        let initial = world.snapshot();
        let high = [X_THRESHOLD * 2.0, f32::MAX, THETA_THRESHOLD * 2.0, f32::MAX];
        let mut scene = Scene {
            background: [245, 245, 240],
            ..Scene::default()
        };
        scene.add(
            Visual::new(
                "rail",
                None,
                VisualShape::Cuboid {
                    half: [X_THRESHOLD + 0.3, 0.02, 0.02],
                },
                [40, 40, 40],
                1,
            )
            .at(Pose::from_translation(Vector::new(0.0, -0.02, -0.2))),
        );
        scene.add(Visual::new(
            "cart",
            Some("cart"),
            VisualShape::Cuboid {
                half: [0.25, 0.15, 0.15],
            },
            [30, 30, 30],
            2,
        ));
        scene.add(Visual::new(
            "pole",
            Some("pole"),
            VisualShape::Cuboid {
                half: [0.05, POLE_HALF_LENGTH, 0.05],
            },
            [202, 152, 101],
            3,
        ));
        let pixels = Pixels::new(config.obs, config.width, config.height);
        let state_space = Space::Box(BoxSpace::new(
            high.iter().map(|h| -h).collect(),
            high.to_vec(),
        ));
        Ok(Self {
            config,
            world,
            initial,
            cart,
            slider,
            hinge,
            observation_space: pixels.space(state_space),
            action_space: Space::Discrete(Discrete::new(2)),
            seeder: EpisodeSeeder::default(),
            episode: EpisodeState::default(),
            scene,
            pixels,
        })
    }

    /// A side view of the whole track, from +z.
    pub fn camera(&self) -> Camera {
        let aspect = self.config.width as f32 / self.config.height as f32;
        let centre = Vector::new(0.0, 0.4, 0.0);
        Camera {
            eye: centre + Vector::new(0.0, 0.0, 10.0),
            target: centre,
            up: Vector::Y,
            // Wide enough for x in ±2.7 m whatever the aspect ratio.
            projection: Projection::Orthographic {
                half_height: (2.7 / aspect).max(1.3),
            },
            width: self.config.width,
            height: self.config.height,
            near: 1.0,
            far: 20.0,
        }
    }

    fn observation(&mut self, state: [f32; 4]) -> Result<Value, EnvError> {
        let camera = self.camera();
        self.pixels
            .observe(state.to_vec(), &self.scene, &self.world, &camera)
    }

    /// The underlying world (read-only), for viewers and cameras.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// `[x, x_dot, theta, theta_dot]`.
    pub fn state(&self) -> Result<[f32; 4], EnvError> {
        let (x, x_dot) = self.world.joint_dof(self.slider)?;
        let (theta, theta_dot) = self.world.joint_dof(self.hinge)?;
        Ok([x, x_dot, theta, theta_dot])
    }
}

impl Env for CartPole {
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
        reject_unknown_options(ID, options, &["low", "high"])?;
        let low = option_f32(options, "low")?.unwrap_or(-0.05);
        let high = option_f32(options, "high")?.unwrap_or(0.05);
        if low > high {
            return Err(EnvError::InvalidOption(format!(
                "low ({low}) must not exceed high ({high})"
            )));
        }
        let (episode_seed, mut rng) = self.seeder.next_episode(seed);
        let mut s = [0.0f32; 4];
        for x in &mut s {
            *x = rng.random_range(low..=high);
        }
        self.world.restore(&self.initial)?;
        self.world
            .set_joint_dofs(&[(self.slider, s[0], s[1]), (self.hinge, s[2], s[3])])?;
        self.episode.start();
        let mut info = Info::new();
        info.insert("episode_seed".into(), episode_seed.into());
        let state = self.state()?;
        Ok((self.observation(state)?, info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running(ID)?;
        let push = match action {
            Value::Int(0) => -1.0,
            Value::Int(1) => 1.0,
            other => {
                return Err(EnvError::InvalidAction(format!(
                    "{ID} takes Int(0) or Int(1), got {}",
                    other.describe()
                )));
            }
        };
        self.world.apply_force(
            self.cart,
            Vector::new(push * self.config.force_mag, 0.0, 0.0),
        )?;
        if let Err(e) = self.world.step() {
            self.episode.record(true);
            return Err(e.into());
        }
        let s = self.state()?;
        let terminated = s[0].abs() > X_THRESHOLD || s[2].abs() > THETA_THRESHOLD;
        self.episode.record(terminated);
        Ok(Step {
            obs: self.observation(s)?,
            reward: 1.0,
            terminated,
            truncated: false,
            info: Info::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset_to(env: &mut CartPole, s: [f32; 4]) {
        env.reset(Some(0), &Info::new()).unwrap();
        env.world.restore(&env.initial).unwrap();
        env.world
            .set_joint_dofs(&[(env.slider, s[0], s[1]), (env.hinge, s[2], s[3])])
            .unwrap();
    }

    /// Gymnasium CartPole-v1's equations of motion (Barto, Sutton & Anderson), one Euler step.
    fn gymnasium_step(s: [f64; 4], force: f64) -> [f64; 4] {
        let (g, mc, mp, l) = (9.8, 1.0, 0.1, 0.5);
        let [x, x_dot, th, th_dot] = s;
        let total = mc + mp;
        let temp = (force + mp * l * th_dot * th_dot * th.sin()) / total;
        let th_acc =
            (g * th.sin() - th.cos() * temp) / (l * (4.0 / 3.0 - mp * th.cos().powi(2) / total));
        let x_acc = temp - mp * l * th_acc * th.cos() / total;
        // Semi-implicit Euler, as rapier integrates.
        let x_dot = x_dot + 0.02 * x_acc;
        let th_dot = th_dot + 0.02 * th_acc;
        [x + 0.02 * x_dot, x_dot, th + 0.02 * th_dot, th_dot]
    }

    #[test]
    fn dynamics_match_the_closed_form_equations() {
        let mut env = CartPole::new(CartPoleConfig::default()).unwrap();
        let start = [0.1f32, -0.2, 0.05, 0.3];
        reset_to(&mut env, start);
        let mut reference = start.map(|x| x as f64);
        for step in 0..10 {
            let action = (step % 2) as i64;
            env.step(&Value::Int(action)).unwrap();
            reference = gymnasium_step(reference, if action == 1 { 10.0 } else { -10.0 });
            let s = env.state().unwrap();
            for i in 0..4 {
                assert!(
                    (s[i] as f64 - reference[i]).abs() < 5e-4,
                    "step {step} index {i}: rapier {} vs closed form {}",
                    s[i],
                    reference[i]
                );
            }
        }
    }

    #[test]
    fn terminates_when_the_pole_falls_past_twelve_degrees() {
        let mut env = CartPole::new(CartPoleConfig::default()).unwrap();
        reset_to(&mut env, [0.0, 0.0, THETA_THRESHOLD - 0.001, 2.0]);
        let step = env.step(&Value::Int(0)).unwrap();
        assert!(step.terminated && !step.truncated);
        assert_eq!(step.reward, 1.0);
        assert!(matches!(
            env.step(&Value::Int(0)),
            Err(EnvError::ResetNeeded(_))
        ));
    }

    #[test]
    fn terminates_when_the_cart_leaves_the_track() {
        let mut env = CartPole::new(CartPoleConfig::default()).unwrap();
        reset_to(&mut env, [X_THRESHOLD - 0.01, 3.0, 0.0, 0.0]);
        let step = env.step(&Value::Int(1)).unwrap();
        assert!(step.terminated);
        assert!(step.obs.as_f32().unwrap()[0] > X_THRESHOLD);
    }

    #[test]
    fn balanced_start_does_not_terminate_at_once() {
        let mut env = CartPole::new(CartPoleConfig::default()).unwrap();
        env.reset(Some(3), &Info::new()).unwrap();
        let step = env.step(&Value::Int(1)).unwrap();
        assert!(!step.terminated && !step.truncated);
    }

    #[test]
    fn rejects_bad_actions_and_options() {
        let mut env = CartPole::new(CartPoleConfig::default()).unwrap();
        assert!(matches!(
            env.step(&Value::Int(0)),
            Err(EnvError::ResetNeeded(_))
        ));
        env.reset(Some(0), &Info::new()).unwrap();
        assert!(matches!(
            env.step(&Value::Int(2)),
            Err(EnvError::InvalidAction(_))
        ));
        assert!(matches!(
            env.step(&Value::F32(vec![1.0])),
            Err(EnvError::InvalidAction(_))
        ));
        let mut opts = Info::new();
        opts.insert("lo".into(), 0.1.into());
        assert!(matches!(
            env.reset(None, &opts),
            Err(EnvError::InvalidOption(_))
        ));
        assert!(
            CartPole::new(CartPoleConfig {
                force_mag: f32::NAN,
                ..Default::default()
            })
            .is_err()
        );
    }
}
