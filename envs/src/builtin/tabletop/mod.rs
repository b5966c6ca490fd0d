//! `Tabletop-v0`: coloured objects on a walled table, coloured target zones, a pusher, and an
//! instruction to carry out.
//!
//! ## Description
//! A 100 × 60 cm table with low walls, two or three coloured zones (16 cm squares drawn on
//! the table) and three to five objects: 4 cm cubes, balls of 2 cm radius and upright
//! cylinders, each a different colour–shape pair. A kinematic pusher (a 1.5 cm-radius
//! cylinder) moves over the table and shoves them. Each episode draws a scene and an
//! instruction from a documented grammar (see [`instruction`]), such as "push the red cube
//! into the blue zone" or "sort every ball into the zone of its colour".
//!
//! Table coordinates: x to the right, y away from the viewer, in cm, origin at the table's
//! centre (world x = x/100, world z = −y/100).
//!
//! The env has two modes (`mode`):
//! - `low_level`: Box actions, the pusher's velocity; state, pixel or both observations.
//! - `language`: the observation is text (the instruction and a scene description, plus
//!   pixels when `obs` asks), and the action is text in the action language (see
//!   [`command`]). Each command runs to completion through scripted skills in the physics
//!   (approach the object from behind, push along the line to the target, retreat) before
//!   the next observation.
//!
//! ## Action Space
//! - `low_level`: `Box(-1, 1, (2,), f32)`, the pusher's velocity along x and y as a fraction
//!   of `pusher_speed`. Out-of-range values are clipped and flagged; NaN is an error.
//! - `language`: `Text(0..=4096)`: a program of commands separated by `;` or line breaks.
//!   Text that does not parse, or a command that cannot be carried out (an object or zone
//!   that is not on the table, a point off the table) is not an error: it costs one command
//!   of the budget, the rest of the program is skipped, and the next observation says what
//!   was wrong.
//!
//! ## Observation Space
//! - `low_level`, `obs = "state"`: `Box(-inf, inf, (43,), f32)`, positions in metres:
//!
//!   | index | observation | |
//!   |---|---|---|
//!   | 0, 1 | pusher x, y | |
//!   | 2 + 5i .. 7 + 5i | object slot i (5 slots): present (0/1), x, y, colour index / 5, shape index / 2 | |
//!   | 27 + 4j .. 31 + 4j | zone slot j (3 slots): present, x, y, colour index / 5 | |
//!   | 39, 40 | the goal's current object, x, y (the first object not yet where it should be) | |
//!   | 41, 42 | where the goal wants that object, x, y | |
//!
//!   `obs = "pixels"`: a top-down `width`×`height` RGB image; `"both"`: a Dict of both. The
//!   instruction is in `info["instruction"]`.
//! - `language`, `obs = "state"`: `Text(0..=2048)`, for example:
//!   ```text
//!   pusher: (0, -25)
//!   objects: red cube (12, -5); green ball (-20, 10); blue cylinder (3, 14)
//!   zones: blue (30, 15); yellow (-30, 15)
//!   commands left: 8
//!   last: none
//!   instruction: push the red cube into the blue zone
//!   ```
//!   `last` reports what each command of the previous action did, or the parse error (with
//!   its position) or why a command was impossible. With `obs = "pixels"` or `"both"`, a
//!   Dict of `text` and `pixels`.
//!
//! ## Rewards
//! The change in the instruction's progress, a number in [0, 1] that is 1 on success and
//! otherwise 0.9 × the fraction of the starting distance to the goal covered (see
//! [`Instruction::progress`]). An episode's return is its final progress.
//!
//! ## Starting State
//! Drawn from the episode seed: zones, objects (outside every zone, 9 cm apart), the
//! instruction (one of `families`, in `split`), and the pusher at (0, −25). The reset option
//! `instruction` replaces the drawn instruction with words of the grammar about the same
//! table (an error names words it cannot check).
//!
//! ## Episode End
//! - Terminated: the verifier says the instruction is carried out, or (`language`) the
//!   controller says `done`.
//! - Truncated: (`language`) the command budget `max_commands` is spent; (`low_level`) after
//!   400 steps (20 s), by the registry's `TimeLimit`.
//!
//! ## Arguments
//! See [`TabletopConfig`].

pub mod command;
pub mod instruction;
mod skills;

use std::collections::BTreeMap;

use dreamgym_sim::rapier::prelude::*;
use dreamgym_sim::{Camera, Projection, Scene, Visual, VisualShape, World, WorldConfig};
use serde::{Deserialize, Serialize};

use crate::builtin::pixels::{ObsMode, Pixels, check_image_size, ground_quad};
use crate::builtin::reject_unknown_options;
use crate::{
    BoxSpace, ConfigError, DictSpace, Env, EnvError, EpisodeSeeder, EpisodeState, Info, Space,
    Step, TextSpace, Value,
};

pub use command::{
    Colour, Command, Direction, ObjectRef, ParseError, Place, Relation, Shape, Subject,
    format_program, one_slot_edits, parse_bytes, parse_command, parse_program,
};
pub use instruction::{Family, Goal, Instruction, Reference, SceneState, Split, parse_instruction};
pub use skills::{CommandOutcome, plan};

const ID: &str = "Tabletop-v0";
/// Most characters of a language observation.
pub const MAX_OBSERVATION_CHARS: usize = 2048;
/// Object slots in the state vector.
const OBJECT_SLOTS: usize = 5;
/// Zone slots in the state vector.
const ZONE_SLOTS: usize = 3;
/// Length of the state vector.
pub const STATE_LEN: usize = 2 + 5 * OBJECT_SLOTS + 4 * ZONE_SLOTS + 4;

/// How the env is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Pusher velocities in, numbers or pixels out.
    #[default]
    LowLevel,
    /// Commands as text in, the instruction and scene as text out.
    Language,
}

/// Settings of `Tabletop-v0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TabletopConfig {
    /// `low_level` or `language`.
    pub mode: Mode,
    /// `state` (a vector, or text in language mode), `pixels` or `both`.
    pub obs: ObsMode,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// The instruction families drawn from: `single`, `relation`, `reference`, `sort`,
    /// `number`.
    pub families: Vec<Family>,
    /// `train`, `unseen_combinations`, `unseen_phrasings` or `all`.
    pub split: Split,
    /// Commands per episode in language mode (each command of a program counts, and so does
    /// an action that does not parse).
    pub max_commands: usize,
    /// The pusher's top speed, m/s.
    pub pusher_speed: f32,
    /// Most control steps (0.04 s each) one command may take before it is stopped.
    pub max_skill_steps: usize,
}

impl Default for TabletopConfig {
    fn default() -> Self {
        Self {
            mode: Mode::LowLevel,
            obs: ObsMode::State,
            width: 64,
            height: 64,
            families: Family::ALL.to_vec(),
            split: Split::Train,
            max_commands: 8,
            pusher_speed: 0.25,
            max_skill_steps: 400,
        }
    }
}

impl crate::EnvConfig for TabletopConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.families.is_empty() {
            return Err("families must name at least one instruction family".into());
        }
        if !(1..=64).contains(&self.max_commands) {
            return Err(
                format!("max_commands must be in 1..=64, got {}", self.max_commands).into(),
            );
        }
        if !(self.pusher_speed.is_finite() && self.pusher_speed > 0.0 && self.pusher_speed <= 2.0) {
            return Err(format!(
                "pusher_speed must be in (0, 2] m/s, got {}",
                self.pusher_speed
            )
            .into());
        }
        if !(10..=10_000).contains(&self.max_skill_steps) {
            return Err(format!(
                "max_skill_steps must be in 10..=10000, got {}",
                self.max_skill_steps
            )
            .into());
        }
        check_image_size(self.width, self.height)
    }
}

/// Physics control step, s.
const DT: f32 = 0.04;
/// Pusher radius, cm.
pub const PUSHER_RADIUS: f32 = 1.5;
/// Wall thickness, m.
const WALL: f32 = 0.02;

fn to_world(p: [f32; 2], height: f32) -> Vector {
    Vector::new(p[0] / 100.0, height, -p[1] / 100.0)
}

fn to_table(v: Vector) -> [f32; 2] {
    [v.x * 100.0, -v.z * 100.0]
}

/// The tabletop environment. See the [module docs](self).
pub struct Tabletop {
    config: TabletopConfig,
    world: World,
    scene: Scene,
    pusher: RigidBodyHandle,
    objects: Vec<(ObjectRef, RigidBodyHandle)>,
    zones: Vec<(Colour, [f32; 2])>,
    instruction: Instruction,
    initial: SceneState,
    progress: f64,
    commands_left: usize,
    observation_space: Space,
    action_space: Space,
    action_box: BoxSpace,
    seeder: EpisodeSeeder,
    episode: EpisodeState,
    pixels: Pixels,
    /// Keep the visuals' poses every this many physics steps of a step (0: none).
    motion_every: usize,
    /// Physics steps taken in the current step.
    motion_steps: usize,
    motion: Vec<crate::Motion>,
}

impl Tabletop {
    /// Builds the env for `config` (the first scene is drawn at `reset`).
    pub fn new(config: TabletopConfig) -> Result<Self, EnvError> {
        crate::EnvConfig::validate(&config).map_err(|message| EnvError::InvalidConfig {
            env: ID.into(),
            message: message.0,
        })?;
        let pixels = Pixels::new(config.obs, config.width, config.height);
        let action_box = BoxSpace::new(vec![-1.0; 2], vec![1.0; 2]);
        let (observation_space, action_space) = match config.mode {
            Mode::LowLevel => (
                pixels.space(Space::Box(BoxSpace::uniform(
                    vec![STATE_LEN],
                    f32::NEG_INFINITY,
                    f32::INFINITY,
                ))),
                Space::Box(action_box.clone()),
            ),
            Mode::Language => {
                let text = Space::Text(TextSpace::new(MAX_OBSERVATION_CHARS));
                let obs = match config.obs {
                    ObsMode::State => text,
                    ObsMode::Pixels | ObsMode::Both => Space::Dict(DictSpace {
                        spaces: BTreeMap::from([
                            ("text".to_string(), text),
                            (
                                "pixels".to_string(),
                                Space::Box(BoxSpace::image(config.height, config.width, 3)),
                            ),
                        ]),
                    }),
                };
                (obs, Space::Text(TextSpace::new(command::MAX_PROGRAM_CHARS)))
            }
        };
        let (scene_state, instruction) = {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            instruction::sample(&mut rng, &config.families, config.split)
        };
        let mut env = Self {
            world: World::try_new(world_config())?,
            scene: Scene::default(),
            pusher: RigidBodyHandle::invalid(),
            objects: Vec::new(),
            zones: Vec::new(),
            initial: scene_state.clone(),
            instruction,
            progress: 0.0,
            commands_left: config.max_commands,
            observation_space,
            action_space,
            action_box,
            seeder: EpisodeSeeder::default(),
            episode: EpisodeState::default(),
            pixels,
            motion_every: 0,
            motion_steps: 0,
            motion: Vec::new(),
            config,
        };
        env.build(&scene_state)?;
        Ok(env)
    }

    /// The instruction of the current episode.
    pub fn instruction(&self) -> &Instruction {
        &self.instruction
    }

    /// Where everything is now, in table coordinates.
    pub fn scene_state(&self) -> SceneState {
        SceneState {
            objects: self
                .objects
                .iter()
                .map(|(o, h)| (*o, to_table(self.world.body(*h).translation())))
                .collect(),
            zones: self.zones.clone(),
            pusher: to_table(self.world.body(self.pusher).translation()),
        }
    }

    /// The current progress on the instruction, in [0, 1].
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// The table from above; image up is +y (away from the viewer).
    pub fn camera(&self) -> Camera {
        Camera {
            eye: Vector::new(0.0, 1.5, 0.0),
            target: Vector::ZERO,
            up: -Vector::Z,
            // The whole table, walls included, whatever the image's aspect.
            projection: Projection::Orthographic {
                half_height: 0.33f32
                    .max(0.54 * self.config.height as f32 / self.config.width.max(1) as f32),
            },
            width: self.config.width,
            height: self.config.height,
            near: 0.1,
            far: 3.0,
        }
    }

    /// Builds the world and the scene for a starting state.
    fn build(&mut self, state: &SceneState) -> Result<(), EnvError> {
        let mut world = World::try_new(world_config())?;
        let mut scene = Scene::default();
        let (hx, hy) = (
            instruction::TABLE_HALF_X / 100.0,
            instruction::TABLE_HALF_Y / 100.0,
        );
        world.add_collider(
            ColliderBuilder::cuboid(hx + 0.1, 0.05, hy + 0.1)
                .translation(Vector::new(0.0, -0.05, 0.0))
                .friction(0.5),
            None,
        );
        scene.add(Visual::new(
            "table",
            None,
            ground_quad(hx, hy, 0.0),
            [200, 170, 130],
            1,
        ));
        // Walls along the four edges, 3 cm tall.
        for (i, (x, z, half)) in [
            (0.0, -(hy + WALL), [hx + 2.0 * WALL, 0.015, WALL]),
            (0.0, hy + WALL, [hx + 2.0 * WALL, 0.015, WALL]),
            (-(hx + WALL), 0.0, [WALL, 0.015, hy]),
            (hx + WALL, 0.0, [WALL, 0.015, hy]),
        ]
        .into_iter()
        .enumerate()
        {
            let pose = Vector::new(x, 0.015, z);
            world.add_collider(
                ColliderBuilder::cuboid(half[0], half[1], half[2])
                    .translation(pose)
                    .friction(0.2),
                None,
            );
            scene.add(
                Visual::new(
                    &format!("wall{i}"),
                    None,
                    VisualShape::Cuboid { half },
                    [120, 90, 60],
                    2,
                )
                .at(Pose::from_translation(pose)),
            );
        }
        for (colour, centre) in &state.zones {
            let c = to_world(*centre, 0.0);
            let half = instruction::ZONE_HALF / 100.0;
            scene.add(
                Visual::new(
                    &format!("{} zone", colour.name()),
                    None,
                    ground_quad(half, half, 0.001),
                    lighten(colour.rgb()),
                    3,
                )
                .at(Pose::from_translation(Vector::new(c.x, 0.0, c.z))),
            );
        }
        let mut objects = Vec::new();
        for (k, (object, p)) in state.objects.iter().enumerate() {
            let name = object.to_string();
            let (collider, visual, height) = match object.shape {
                Shape::Cube => (
                    ColliderBuilder::cuboid(0.02, 0.02, 0.02),
                    VisualShape::Cuboid {
                        half: [0.02, 0.02, 0.02],
                    },
                    0.02,
                ),
                Shape::Ball => (
                    ColliderBuilder::ball(0.02),
                    VisualShape::Ball { radius: 0.02 },
                    0.02,
                ),
                Shape::Cylinder => (
                    ColliderBuilder::cylinder(0.02, 0.02),
                    VisualShape::Cylinder {
                        half_height: 0.02,
                        radius: 0.02,
                    },
                    0.02,
                ),
            };
            let handle = world.add_body(
                &name,
                RigidBodyBuilder::dynamic()
                    .translation(to_world(*p, height))
                    .linear_damping(2.0)
                    .angular_damping(4.0)
                    .can_sleep(false),
            )?;
            world.add_collider(collider.density(600.0).friction(0.5), Some(handle));
            scene.add(Visual::new(
                &name,
                Some(&name),
                visual,
                object.colour.rgb(),
                10 + k as u16,
            ));
            objects.push((*object, handle));
        }
        let pusher = world.add_body(
            "pusher",
            RigidBodyBuilder::kinematic_velocity_based()
                .translation(to_world(state.pusher, 0.032))
                .lock_rotations(),
        )?;
        world.add_collider(
            ColliderBuilder::cylinder(0.03, PUSHER_RADIUS / 100.0).friction(0.1),
            Some(pusher),
        );
        scene.add(Visual::new(
            "pusher",
            Some("pusher"),
            VisualShape::Cylinder {
                half_height: 0.03,
                radius: PUSHER_RADIUS / 100.0,
            },
            [60, 60, 60],
            9,
        ));
        self.world = world;
        self.scene = scene;
        self.pusher = pusher;
        self.objects = objects;
        self.zones = state.zones.clone();
        Ok(())
    }

    /// Sets the pusher's velocity (table cm/s), keeping it on the table, and steps once.
    fn drive(&mut self, velocity: [f32; 2]) -> Result<(), EnvError> {
        let at = to_table(self.world.body(self.pusher).translation());
        let limit = [
            instruction::TABLE_HALF_X - PUSHER_RADIUS,
            instruction::TABLE_HALF_Y - PUSHER_RADIUS,
        ];
        let mut v = velocity;
        for i in 0..2 {
            // Never leave the table: stop at the edge.
            let next = at[i] + v[i] * DT;
            if next.abs() > limit[i] {
                v[i] = (limit[i] * next.signum() - at[i]) / DT;
            }
        }
        self.world
            .body_mut(self.pusher)
            .set_linvel(Vector::new(v[0] / 100.0, 0.0, -v[1] / 100.0), true);
        self.world.step()?;
        if self.motion_every > 0 {
            self.motion_steps += 1;
            if self.motion_steps.is_multiple_of(self.motion_every) {
                self.motion.push(self.scene.world_poses(&self.world));
            }
        }
        Ok(())
    }

    fn state_vector(&self) -> Vec<f32> {
        let s = self.scene_state();
        let m = |x: f32| x / 100.0;
        let mut out = vec![m(s.pusher[0]), m(s.pusher[1])];
        for i in 0..OBJECT_SLOTS {
            match s.objects.get(i) {
                Some((o, p)) => out.extend([
                    1.0,
                    m(p[0]),
                    m(p[1]),
                    o.colour as usize as f32 / 5.0,
                    o.shape as usize as f32 / 2.0,
                ]),
                None => out.extend([0.0; 5]),
            }
        }
        for j in 0..ZONE_SLOTS {
            match s.zones.get(j) {
                Some((c, p)) => out.extend([1.0, m(p[0]), m(p[1]), *c as usize as f32 / 5.0]),
                None => out.extend([0.0; 4]),
            }
        }
        let (object, target) = skills::current_subgoal(&self.instruction, &s).unwrap_or_default();
        out.extend([m(object[0]), m(object[1]), m(target[0]), m(target[1])]);
        out
    }

    fn text_observation(&self, last: &str) -> String {
        let s = self.scene_state();
        let objects: Vec<String> = s
            .objects
            .iter()
            .map(|(o, p)| format!("{o} {}", fmt_point(*p)))
            .collect();
        let zones: Vec<String> = s
            .zones
            .iter()
            .map(|(c, p)| format!("{} {}", c.name(), fmt_point(*p)))
            .collect();
        let mut text = format!(
            "pusher: {}\nobjects: {}\nzones: {}\ncommands left: {}\nlast: ",
            fmt_point(s.pusher),
            objects.join("; "),
            zones.join("; "),
            self.commands_left
        );
        // The instruction comes last, nearest the controller's answer. The feedback is cut to
        // keep the observation inside its space whatever it says.
        let instruction = format!("\ninstruction: {}", self.instruction.text);
        let room = MAX_OBSERVATION_CHARS
            .saturating_sub(text.chars().count() + instruction.chars().count());
        text.extend(
            last.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(room),
        );
        text.push_str(&instruction);
        text
    }

    fn observation(&mut self, last: &str) -> Result<Value, EnvError> {
        let camera = self.camera();
        match self.config.mode {
            Mode::LowLevel => {
                let state = self.state_vector();
                self.pixels
                    .observe(state, &self.scene, &self.world, &camera)
            }
            Mode::Language => {
                let text = Value::Text(self.text_observation(last));
                if self.config.obs == ObsMode::State {
                    return Ok(text);
                }
                let image = match self
                    .pixels
                    .observe(vec![], &self.scene, &self.world, &camera)?
                {
                    Value::Dict(mut d) => d.remove("pixels").unwrap_or(Value::U8(vec![])),
                    other => other,
                };
                Ok(Value::Dict(BTreeMap::from([
                    ("pixels".to_string(), image),
                    ("text".to_string(), text),
                ])))
            }
        }
    }

    fn info(&self) -> Info {
        let mut info = Info::new();
        info.insert("instruction".into(), self.instruction.text.clone().into());
        info.insert("family".into(), self.instruction.family.name().into());
        info.insert("progress".into(), self.progress.into());
        info
    }

    /// Runs a language action: parses it and carries out its commands in order.
    fn run_program(&mut self, text: &str) -> Result<(String, bool), EnvError> {
        let program = match parse_program(text) {
            Ok(p) => p,
            Err(e) => {
                self.commands_left = self.commands_left.saturating_sub(1);
                return Ok((format!("error: the action does not parse: {e}"), false));
            }
        };
        if program.is_empty() {
            self.commands_left = self.commands_left.saturating_sub(1);
            return Ok(("error: the action has no command".into(), false));
        }
        let mut report = Vec::new();
        for command in program {
            if self.commands_left == 0 {
                report.push("no commands left".to_string());
                break;
            }
            self.commands_left -= 1;
            if command == Command::Done {
                report.push("done".into());
                return Ok((report.join("; "), true));
            }
            let outcome = skills::execute(self, &command)?;
            report.push(format!("{command}: {}", outcome.describe()));
            if matches!(outcome, CommandOutcome::Impossible(_)) {
                break;
            }
            if self.instruction.succeeded(&self.scene_state()) {
                break;
            }
        }
        Ok((report.join("; "), false))
    }
}

/// Reads a language observation back: the instruction's words and the scene it describes
/// (positions to the centimetre, as written). `None` for text that is not one.
pub fn parse_observation(text: &str) -> Option<(String, SceneState)> {
    let mut instruction = None;
    let mut scene = SceneState {
        objects: vec![],
        zones: vec![],
        pusher: instruction::PUSHER_START,
    };
    let point = |s: &str| -> Option<[f32; 2]> {
        let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
        let (x, y) = inner.split_once(',')?;
        Some([x.trim().parse().ok()?, y.trim().parse().ok()?])
    };
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(": ") else {
            continue;
        };
        match key {
            "instruction" => instruction = Some(rest.to_string()),
            "pusher" => scene.pusher = point(rest)?,
            "objects" => {
                for item in rest.split("; ").filter(|s| !s.is_empty()) {
                    let (name, at) = item.split_once(" (")?;
                    let (colour, shape) = name.split_once(' ')?;
                    let object = ObjectRef {
                        colour: Colour::from_word(colour)?,
                        shape: Shape::from_word(shape)?,
                    };
                    scene.objects.push((object, point(&format!("({at}"))?));
                }
            }
            "zones" => {
                for item in rest.split("; ").filter(|s| !s.is_empty()) {
                    let (colour, at) = item.split_once(" (")?;
                    scene
                        .zones
                        .push((Colour::from_word(colour)?, point(&format!("({at}"))?));
                }
            }
            _ => {}
        }
    }
    Some((instruction?, scene))
}

fn lighten(c: [u8; 3]) -> [u8; 3] {
    c.map(|x| (x as u16 + (255 - x as u16) / 2) as u8)
}

/// A point as the observation writes it: whole centimetres.
pub fn fmt_point(p: [f32; 2]) -> String {
    format!("({}, {})", p[0].round() as i64, p[1].round() as i64)
}

fn world_config() -> WorldConfig {
    WorldConfig {
        dt: DT,
        substeps: 2,
        solver_iterations: 4,
        max_linear_velocity: 50.0,
        max_angular_velocity: 500.0,
        ..WorldConfig::default()
    }
}

impl Env for Tabletop {
    fn observation_space(&self) -> &Space {
        &self.observation_space
    }

    fn action_space(&self) -> &Space {
        &self.action_space
    }

    fn scene(&self) -> Option<(&World, &Scene)> {
        Some((&self.world, &self.scene))
    }

    fn camera(&self) -> Option<Camera> {
        Some(Self::camera(self))
    }

    fn keep_motion(&mut self, every: usize) -> bool {
        self.motion_every = every;
        self.motion.clear();
        true
    }

    fn motion(&self) -> &[crate::Motion] {
        &self.motion
    }

    fn reset(&mut self, seed: Option<u64>, options: &Info) -> Result<(Value, Info), EnvError> {
        reject_unknown_options(ID, options, &["instruction"])?;
        let (episode_seed, mut rng) = self.seeder.next_episode(seed);
        let (state, mut instruction) =
            instruction::sample(&mut rng, &self.config.families, self.config.split);
        if let Some(words) = options.get("instruction") {
            let words = words.as_str().ok_or_else(|| {
                EnvError::InvalidOption(format!("`instruction` must be text, got {words}"))
            })?;
            instruction = parse_instruction(words, &state)
                .filter(|i| i.fits(&state))
                .ok_or_else(|| {
                    EnvError::InvalidOption(format!(
                        "{ID} cannot check {words:?}: instructions follow the grammar of its five \
                     families (for example \"push the red cube into the blue zone\"), and \
                     must name objects and zones on this table"
                    ))
                })?;
        }
        self.build(&state)?;
        // Let the objects settle onto the table.
        for _ in 0..3 {
            self.drive([0.0, 0.0])?;
        }
        self.initial = self.scene_state();
        self.instruction = instruction;
        self.progress = self.instruction.progress(&self.initial, &self.initial);
        self.commands_left = self.config.max_commands;
        self.episode.start();
        // The settling steps are not an action's motion.
        self.motion.clear();
        self.motion_steps = 0;
        let mut info = self.info();
        info.insert("episode_seed".into(), episode_seed.into());
        Ok((self.observation("none")?, info))
    }

    fn step(&mut self, action: &Value) -> Result<Step, EnvError> {
        self.episode.check_running(ID)?;
        self.motion.clear();
        self.motion_steps = 0;
        let before = self.progress;
        let mut info = Info::new();
        let (last, said_done) = match self.config.mode {
            Mode::LowLevel => {
                let mut a = [0.0f32; 2];
                let clipped = self
                    .action_box
                    .clip_into(action, &mut a)
                    .map_err(|e| EnvError::InvalidAction(format!("{ID}: {e}")))?;
                if clipped {
                    info.insert("action_clipped".into(), true.into());
                }
                let speed = self.config.pusher_speed * 100.0;
                if let Err(e) = self.drive([a[0] * speed, a[1] * speed]) {
                    self.episode.record(true);
                    return Err(e);
                }
                (String::new(), false)
            }
            Mode::Language => {
                let Value::Text(text) = action else {
                    return Err(EnvError::InvalidAction(format!(
                        "{ID}: language mode takes text, got {}",
                        action.describe()
                    )));
                };
                match self.run_program(text) {
                    Ok(r) => r,
                    Err(e) => {
                        self.episode.record(true);
                        return Err(e);
                    }
                }
            }
        };
        let now = self.scene_state();
        let success = self.instruction.succeeded(&now);
        self.progress = self.instruction.progress(&now, &self.initial);
        let terminated = success || said_done;
        let truncated =
            !terminated && self.config.mode == Mode::Language && self.commands_left == 0;
        self.episode.record(terminated || truncated);
        info.extend(self.info());
        info.insert("success".into(), success.into());
        if self.config.mode == Mode::Language {
            info.insert("feedback".into(), last.clone().into());
        }
        Ok(Step {
            obs: self.observation(&last)?,
            reward: self.progress - before,
            terminated,
            truncated,
            info,
        })
    }
}
