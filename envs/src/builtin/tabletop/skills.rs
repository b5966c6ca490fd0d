//! The scripted skills that carry out commands in the physics (approach an object from
//! behind, push it along the line to its target, retreat), and the scripted planner that
//! writes commands for an instruction.

use super::command::{Command, ObjectRef, Place, Subject};
use super::instruction::{
    Goal, Instruction, SceneState, TABLE_HALF_X, TABLE_HALF_Y, displace_target, relation_target,
};
use super::{PUSHER_RADIUS, Tabletop};
use crate::EnvError;

/// How far from the table's centre a target may be, cm (objects keep clear of the walls).
pub const REACH_X: f32 = TABLE_HALF_X - 4.0;
/// See [`REACH_X`].
pub const REACH_Y: f32 = TABLE_HALF_Y - 4.0;
/// A push ends when the object's centre is this close to its target, cm.
const ARRIVED: f32 = 1.0;
/// Object radius plus pusher radius for contact, cm (a cube's corner is 2.8 cm out).
const CONTACT: f32 = 2.9 + PUSHER_RADIUS;

/// What one command did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// It reached its target.
    Reached,
    /// It ran out of time this far (cm) from its target.
    Short(f32),
    /// It could not be carried out, for this reason; nothing moved.
    Impossible(String),
}

impl CommandOutcome {
    /// A few words for the observation.
    pub fn describe(&self) -> String {
        match self {
            CommandOutcome::Reached => "ok".into(),
            CommandOutcome::Short(cm) => format!("stopped {cm:.0} cm short"),
            CommandOutcome::Impossible(why) => format!("impossible: {why}"),
        }
    }
}

fn on_table(p: [f32; 2]) -> Result<(), String> {
    if p[0].abs() <= REACH_X && p[1].abs() <= REACH_Y {
        Ok(())
    } else {
        Err(format!(
            "{} is off the table (x must be within ±{REACH_X} cm and y within ±{REACH_Y} cm)",
            super::fmt_point(p)
        ))
    }
}

fn sub(a: [f32; 2], b: [f32; 2]) -> [f32; 2] {
    [a[0] - b[0], a[1] - b[1]]
}

fn norm(a: [f32; 2]) -> f32 {
    a[0].hypot(a[1])
}

/// Where a command sends its object (or the pusher), or why it cannot.
fn resolve(command: &Command, scene: &SceneState) -> Result<(Option<ObjectRef>, [f32; 2]), String> {
    let find = |o: ObjectRef| {
        scene
            .position(o)
            .ok_or_else(|| format!("there is no {o} on the table"))
    };
    // A selector picks its object on the table as it is now.
    let pick = |s: Subject| match s {
        Subject::Named(o) => Ok(o),
        Subject::Selected(r) => r
            .resolve(scene)
            .ok_or_else(|| format!("no object is the {}", r.words())),
    };
    match *command {
        Command::Done => Ok((None, scene.pusher)),
        Command::MoveTo { point } => {
            on_table(point)?;
            Ok((None, point))
        }
        Command::Push { object, to } => {
            let object = pick(object)?;
            find(object)?;
            let target = match to {
                Place::Zone(c) => scene
                    .zone(c)
                    .ok_or_else(|| format!("there is no {} zone", c.name()))?,
                Place::Point(p) => p,
                Place::Relation(r, other) => {
                    if other == object {
                        return Err(format!("the {object} cannot go {} itself", r.words()));
                    }
                    relation_target(find(other)?, r)
                }
            };
            on_table(target)?;
            Ok((Some(object), target))
        }
        Command::PushBy {
            object,
            direction,
            cm,
        } => {
            if !(cm > 0.0 && cm <= 100.0) {
                return Err(format!("a push distance must be in (0, 100] cm, not {cm}"));
            }
            let object = pick(object)?;
            let target = displace_target(find(object)?, direction, cm);
            on_table(target)?;
            Ok((Some(object), target))
        }
    }
}

/// Carries out one command in `env`'s physics.
pub(crate) fn execute(env: &mut Tabletop, command: &Command) -> Result<CommandOutcome, EnvError> {
    let scene = env.scene_state();
    let (object, target) = match resolve(command, &scene) {
        Ok(r) => r,
        Err(why) => return Ok(CommandOutcome::Impossible(why)),
    };
    let outcome = match object {
        None => move_pusher(env, target)?,
        Some(o) => {
            // A push whose straight line would run into another object goes round it: first
            // to a point beside the first object in the way, then on to the target.
            if let Some(way) = scene
                .position(o)
                .and_then(|from| detour(&scene, o, from, target))
            {
                push(env, o, way)?;
            }
            push(env, o, target)?
        }
    };
    // Stop and let things settle.
    for _ in 0..3 {
        env.drive([0.0, 0.0])?;
    }
    Ok(outcome)
}

fn speed_limit(env: &Tabletop) -> f32 {
    env.config.pusher_speed * 100.0
}

fn move_pusher(env: &mut Tabletop, target: [f32; 2]) -> Result<CommandOutcome, EnvError> {
    let top = speed_limit(env);
    for _ in 0..env.config.max_skill_steps {
        let d = sub(target, env.scene_state().pusher);
        let dist = norm(d);
        if dist < 0.5 {
            return Ok(CommandOutcome::Reached);
        }
        let speed = top.min(dist / super::DT);
        env.drive([d[0] / dist * speed, d[1] / dist * speed])?;
    }
    Ok(CommandOutcome::Short(norm(sub(
        target,
        env.scene_state().pusher,
    ))))
}

fn push(
    env: &mut Tabletop,
    object: ObjectRef,
    target: [f32; 2],
) -> Result<CommandOutcome, EnvError> {
    let top = speed_limit(env);
    let mut pushing = false;
    let mut last_u = [0.0f32, 1.0];
    for _ in 0..env.config.max_skill_steps {
        let scene = env.scene_state();
        let (Some(p), q) = (scene.position(object), scene.pusher) else {
            return Ok(CommandOutcome::Impossible(format!("the {object} is gone")));
        };
        let d = sub(target, p);
        let dist = norm(d);
        if dist < ARRIVED {
            // Back off along the line it came.
            for _ in 0..4 {
                env.drive([-last_u[0] * top, -last_u[1] * top])?;
            }
            return Ok(CommandOutcome::Reached);
        }
        let u = [d[0] / dist, d[1] / dist];
        last_u = u;
        let perp = [-u[1], u[0]];
        let e = sub(q, p);
        let behind = -(e[0] * u[0] + e[1] * u[1]);
        let lateral = e[0] * perp[0] + e[1] * perp[1];
        let (lat_ok, far) = if pushing {
            (2.0, CONTACT + 8.0)
        } else {
            (1.0, CONTACT + 6.0)
        };
        pushing = behind > 0.0 && lateral.abs() < lat_ok && behind < far;
        let v = if pushing {
            let speed = top * (dist / 6.0).clamp(0.25, 1.0);
            let correct = (-3.0 * lateral / super::DT * 0.1).clamp(-top, top);
            [
                u[0] * speed + perp[0] * correct,
                u[1] * speed + perp[1] * correct,
            ]
        } else {
            let staging = [p[0] - u[0] * (CONTACT + 3.0), p[1] - u[1] * (CONTACT + 3.0)];
            // Go round the object rather than through it.
            let way = if passes_near(q, staging, p, CONTACT + 0.5) {
                let side = if lateral >= 0.0 { 1.0 } else { -1.0 };
                [
                    p[0] + perp[0] * side * (CONTACT + 4.0),
                    p[1] + perp[1] * side * (CONTACT + 4.0),
                ]
            } else {
                staging
            };
            let w = sub(way, q);
            let n = norm(w).max(1e-6);
            let speed = top.min(n / super::DT);
            [w[0] / n * speed, w[1] / n * speed]
        };
        env.drive(v)?;
    }
    let left = env
        .scene_state()
        .position(object)
        .map_or(f32::INFINITY, |p| norm(sub(target, p)));
    Ok(CommandOutcome::Short(left))
}

/// Whether the segment from `a` to `b` passes within `r` of `c`.
fn passes_near(a: [f32; 2], b: [f32; 2], c: [f32; 2], r: f32) -> bool {
    let ab = sub(b, a);
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        (((c[0] - a[0]) * ab[0] + (c[1] - a[1]) * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    norm(sub([a[0] + t * ab[0], a[1] + t * ab[1]], c)) < r
}

/// The object the goal still needs moved, and where it should go.
pub(crate) fn current_subgoal(
    instruction: &Instruction,
    scene: &SceneState,
) -> Option<([f32; 2], [f32; 2])> {
    match instruction.goal {
        Goal::Place { object, zone } => Some((scene.position(object)?, scene.zone(zone)?)),
        Goal::Relation {
            object,
            relation,
            reference,
        } => Some((
            scene.position(object)?,
            relation_target(scene.position(reference)?, relation),
        )),
        Goal::Sort { shape } => scene
            .objects
            .iter()
            .find(|(o, p)| o.shape == shape && !scene.in_zone(*p, o.colour))
            .and_then(|(o, p)| Some((*p, scene.zone(o.colour)?))),
        Goal::Displace {
            object,
            direction,
            cm,
        } => Some((
            scene.position(object)?,
            displace_target(instruction.start?, direction, cm),
        )),
    }
}

/// The scripted planner: the commands that carry out `instruction` from `scene`, empty when
/// there is nothing left to do. It names objects and places only: the push skill finds its own
/// way round objects in its path.
pub fn plan(instruction: &Instruction, scene: &SceneState) -> Vec<Command> {
    if instruction.succeeded(scene) {
        return vec![];
    }
    let mut out = Vec::new();
    // A `reference` instruction's object is named by its selector while the selector still
    // picks it (it may not once objects have moved).
    let subject = |object: ObjectRef| match instruction.reference {
        Some(r) if r.resolve(scene) == Some(object) => Subject::Selected(r),
        _ => Subject::Named(object),
    };
    let push = |object: ObjectRef, to: Place, out: &mut Vec<Command>| {
        if scene.position(object).is_some() {
            out.push(Command::Push {
                object: subject(object),
                to,
            });
        }
    };
    match instruction.goal {
        Goal::Place { object, zone } => {
            if scene.zone(zone).is_some() {
                push(object, Place::Zone(zone), &mut out);
            }
        }
        Goal::Relation {
            object,
            relation,
            reference,
        } => {
            if scene.position(reference).is_some() {
                push(object, Place::Relation(relation, reference), &mut out);
            }
        }
        Goal::Sort { shape } => {
            for (o, p) in &scene.objects {
                if o.shape == shape
                    && !scene.in_zone(*p, o.colour)
                    && scene.zone(o.colour).is_some()
                {
                    push(*o, Place::Zone(o.colour), &mut out);
                }
            }
        }
        Goal::Displace {
            object,
            direction,
            cm,
        } => {
            if let (Some(start), Some(now)) = (instruction.start, scene.position(object)) {
                if norm(sub(now, start)) < 0.5 {
                    out.push(Command::PushBy {
                        object: object.into(),
                        direction,
                        cm,
                    });
                } else {
                    let t = displace_target(start, direction, cm);
                    out.push(Command::Push {
                        object: object.into(),
                        to: Place::Point([t[0].round(), t[1].round()]),
                    });
                }
            }
        }
    }
    out
}

/// A waypoint (whole cm) beside the first object that the straight push from `from` to
/// `target` would hit, if any.
fn detour(
    scene: &SceneState,
    moved: ObjectRef,
    from: [f32; 2],
    target: [f32; 2],
) -> Option<[f32; 2]> {
    let d = sub(target, from);
    let len = norm(d);
    if len < 1.0 {
        return None;
    }
    let u = [d[0] / len, d[1] / len];
    let perp = [-u[1], u[0]];
    let blocker = scene
        .objects
        .iter()
        .filter(|(o, p)| {
            *o != moved && passes_near(from, target, *p, 7.0) && norm(sub(*p, target)) > 6.0
        })
        .map(|(_, p)| *p)
        .min_by(|a, b| norm(sub(*a, from)).total_cmp(&norm(sub(*b, from))))?;
    let e = sub(blocker, from);
    let side = if e[0] * perp[0] + e[1] * perp[1] > 0.0 {
        -1.0
    } else {
        1.0
    };
    let way = [
        (blocker[0] + perp[0] * side * 10.0)
            .clamp(-REACH_X, REACH_X)
            .round(),
        (blocker[1] + perp[1] * side * 10.0)
            .clamp(-REACH_Y, REACH_Y)
            .round(),
    ];
    Some(way)
}
