//! The world: rapier's sets, names, fixed-step stepping, snapshots and blow-up detection.
//!
//! (Over 600 lines: rapier's sets, the name tables, stepping and snapshot/restore must change
//! together; its tests are in `sim/tests/`.)

use std::collections::BTreeMap;

use rapier3d::prelude::*;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// Settings of a [`World`]. Defaults suit small control scenes (a cart-pole, an arm, a car).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldConfig {
    /// Time advanced by one [`World::step`], in seconds.
    pub dt: f32,
    /// Pipeline steps per [`World::step`]; each advances `dt / substeps` seconds.
    pub substeps: usize,
    /// Gravity, in m/s², world frame (y is up).
    pub gravity: [f32; 3],
    /// Rapier solver iterations per pipeline step (rapier's default is 4; joints in reduced
    /// coordinates need 1, contacts want more). Each iteration is a substep of rapier's TGS
    /// solver and recomputes every multibody's dynamics: on the cart-pole, 4 iterations cost
    /// 2.4x the instructions of 1 (callgrind).
    pub solver_iterations: usize,
    /// Rapier's stabilization (position-correction) iterations per solver iteration (its
    /// default is 1). Scenes with no contacts and only multibody joints, which hold exactly,
    /// need none (measured on the cart-pole: under 1% of a step either way).
    pub stabilization_iterations: usize,
    /// A dynamic body faster than this (m/s) is reported as a blow-up.
    pub max_linear_velocity: f32,
    /// A dynamic body spinning faster than this (rad/s) is reported as a blow-up.
    pub max_angular_velocity: f32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            dt: 0.02,
            substeps: 1,
            gravity: [0.0, -9.81, 0.0],
            solver_iterations: 4,
            stabilization_iterations: 1,
            max_linear_velocity: 1.0e4,
            max_angular_velocity: 1.0e4,
        }
    }
}

impl WorldConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |msg: String| Err(SimError::InvalidConfig(msg));
        if !(self.dt.is_finite() && self.dt > 0.0 && self.dt <= 1.0) {
            return bad(format!("dt must be in (0, 1] seconds, got {}", self.dt));
        }
        if self.substeps == 0 || self.substeps > 1000 {
            return bad(format!(
                "substeps must be in 1..=1000, got {}",
                self.substeps
            ));
        }
        if self.solver_iterations == 0 || self.solver_iterations > 1000 {
            return bad(format!(
                "solver_iterations must be in 1..=1000, got {}",
                self.solver_iterations
            ));
        }
        if self.stabilization_iterations > 100 {
            return bad(format!(
                "stabilization_iterations must be at most 100, got {}",
                self.stabilization_iterations
            ));
        }
        if self.gravity.iter().any(|g| !g.is_finite()) {
            return bad(format!("gravity must be finite, got {:?}", self.gravity));
        }
        if !(self.max_linear_velocity > 0.0 && self.max_angular_velocity > 0.0) {
            return bad("velocity limits must be positive".into());
        }
        Ok(())
    }
}

/// A named joint: rapier keeps impulse joints and multibody joints in different sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JointRef {
    /// A joint solved by impulses (maximal coordinates).
    Impulse(ImpulseJointHandle),
    /// A joint of a multibody (reduced coordinates: exact, no drift).
    Multibody(MultibodyJointHandle),
}

/// Everything that evolves when the world steps. Cloning it is a complete snapshot: the
/// solver's warm-start caches and the island manager are included, so that a restored world
/// continues bit-identically.
#[derive(Clone)]
struct State {
    bodies: RigidBodySet,
    colliders: ColliderSet,
    impulse_joints: ImpulseJointSet,
    multibody_joints: MultibodyJointSet,
    soft_bodies: SoftBodySet,
    islands: IslandManager,
    broad_phase: BroadPhaseBvh,
    narrow_phase: NarrowPhase,
    ccd_solver: CCDSolver,
    steps: u64,
}

/// A complete copy of a world's evolving state, from [`World::snapshot`].
#[derive(Clone)]
pub struct Snapshot {
    state: State,
    layout: (usize, usize),
}

impl Snapshot {
    /// Number of steps the world had taken when the snapshot was taken.
    pub fn steps(&self) -> u64 {
        self.state.steps
    }
}

/// A rapier world with named bodies and joints, stepped at a fixed rate.
pub struct World {
    state: State,
    pipeline: PhysicsPipeline,
    params: IntegrationParameters,
    gravity: Vector,
    config: WorldConfig,
    body_names: BTreeMap<String, RigidBodyHandle>,
    joint_names: BTreeMap<String, JointRef>,
    forced: Vec<RigidBodyHandle>,
}

impl World {
    /// An empty world. Panics only if `config` is invalid: use [`World::try_new`] for
    /// configuration that comes from a user.
    pub fn new(config: WorldConfig) -> Self {
        Self::try_new(config).expect("invalid WorldConfig")
    }

    /// An empty world, or an error naming the bad configuration field.
    pub fn try_new(config: WorldConfig) -> Result<Self, SimError> {
        config.validate()?;
        let params = IntegrationParameters {
            dt: config.dt / config.substeps as f32,
            num_solver_iterations: config.solver_iterations,
            num_internal_stabilization_iterations: config.stabilization_iterations,
            ..IntegrationParameters::default()
        };
        Ok(Self {
            state: State {
                bodies: RigidBodySet::new(),
                colliders: ColliderSet::new(),
                impulse_joints: ImpulseJointSet::new(),
                multibody_joints: MultibodyJointSet::new(),
                soft_bodies: SoftBodySet::new(),
                islands: IslandManager::new(),
                broad_phase: BroadPhaseBvh::new(),
                narrow_phase: NarrowPhase::new(),
                ccd_solver: CCDSolver::new(),
                steps: 0,
            },
            pipeline: PhysicsPipeline::new(),
            params,
            gravity: Vector::new(config.gravity[0], config.gravity[1], config.gravity[2]),
            config,
            body_names: BTreeMap::new(),
            joint_names: BTreeMap::new(),
            forced: Vec::new(),
        })
    }

    /// The configuration the world was built with.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// Rapier's integration parameters, for tuning beyond [`WorldConfig`].
    pub fn integration_parameters_mut(&mut self) -> &mut IntegrationParameters {
        &mut self.params
    }

    /// Simulated time in seconds since the world was built.
    pub fn time(&self) -> f64 {
        self.state.steps as f64 * self.config.dt as f64
    }

    /// Steps taken since the world was built.
    pub fn steps(&self) -> u64 {
        self.state.steps
    }

    /// Adds a rigid body under a unique name.
    pub fn add_body(
        &mut self,
        name: &str,
        body: impl Into<RigidBody>,
    ) -> Result<RigidBodyHandle, SimError> {
        if self.body_names.contains_key(name) {
            return Err(SimError::DuplicateName {
                kind: "body",
                name: name.to_string(),
            });
        }
        let handle = self.state.bodies.insert(body);
        self.body_names.insert(name.to_string(), handle);
        Ok(handle)
    }

    /// Attaches a collider to a body (or to nothing, for static geometry).
    pub fn add_collider(
        &mut self,
        collider: impl Into<Collider>,
        parent: Option<RigidBodyHandle>,
    ) -> ColliderHandle {
        match parent {
            Some(parent) => {
                self.state
                    .colliders
                    .insert_with_parent(collider, parent, &mut self.state.bodies)
            }
            None => self.state.colliders.insert(collider),
        }
    }

    /// Adds a named impulse joint between two bodies.
    pub fn add_impulse_joint(
        &mut self,
        name: &str,
        body1: RigidBodyHandle,
        body2: RigidBodyHandle,
        joint: impl Into<GenericJoint>,
    ) -> Result<JointRef, SimError> {
        self.check_joint_name(name)?;
        let handle = self.state.impulse_joints.insert(body1, body2, joint, true);
        let joint = JointRef::Impulse(handle);
        self.joint_names.insert(name.to_string(), joint);
        Ok(joint)
    }

    /// Adds a named multibody joint (reduced coordinates) from `parent` to `child`, with no
    /// damping (rapier's default of 0.1 on angular DOFs is removed).
    pub fn add_multibody_joint(
        &mut self,
        name: &str,
        parent: RigidBodyHandle,
        child: RigidBodyHandle,
        joint: impl Into<GenericJoint>,
    ) -> Result<JointRef, SimError> {
        self.check_joint_name(name)?;
        let handle = self
            .state
            .multibody_joints
            .insert(parent, child, joint, true)
            .ok_or_else(|| SimError::JointRejected(name.to_string()))?;
        // Rapier gives every new angular DOF (the joint's, and a new multibody's root joint's) a
        // damping of 0.1, folded implicitly into the mass matrix: a silent drag (it put a cart-pole 12% off its equations of motion). Joints
        // here start undamped; set damping explicitly through `multibody_mut`.
        if let Some((multibody, link_id)) = self.state.multibody_joints.get_mut(handle)
            && let Some(link) = multibody.link(link_id)
        {
            // A joint that creates the multibody also created its root joint, damped too.
            let (start, ndofs) = if multibody.num_links() == 2 {
                (0, multibody.damping().len())
            } else {
                (link.assembly_id(), link.joint().ndofs())
            };
            multibody.damping_mut().rows_mut(start, ndofs).fill(0.0);
        }
        let joint = JointRef::Multibody(handle);
        self.joint_names.insert(name.to_string(), joint);
        Ok(joint)
    }

    fn check_joint_name(&self, name: &str) -> Result<(), SimError> {
        if self.joint_names.contains_key(name) {
            return Err(SimError::DuplicateName {
                kind: "joint",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The handle of a named body.
    pub fn body_handle(&self, name: &str) -> Result<RigidBodyHandle, SimError> {
        self.body_names
            .get(name)
            .copied()
            .ok_or_else(|| SimError::UnknownName {
                kind: "body",
                name: name.to_string(),
            })
    }

    /// The handle of a named joint.
    pub fn joint(&self, name: &str) -> Result<JointRef, SimError> {
        self.joint_names
            .get(name)
            .copied()
            .ok_or_else(|| SimError::UnknownName {
                kind: "joint",
                name: name.to_string(),
            })
    }

    /// Names of all bodies, sorted, with their handles.
    pub fn body_names(&self) -> impl Iterator<Item = (&str, RigidBodyHandle)> {
        self.body_names.iter().map(|(n, h)| (n.as_str(), *h))
    }

    /// A body by handle. Panics on a handle from another world (a programming error).
    pub fn body(&self, handle: RigidBodyHandle) -> &RigidBody {
        &self.state.bodies[handle]
    }

    /// A body by handle, mutably.
    pub fn body_mut(&mut self, handle: RigidBodyHandle) -> &mut RigidBody {
        &mut self.state.bodies[handle]
    }

    /// All rigid bodies.
    pub fn bodies(&self) -> &RigidBodySet {
        &self.state.bodies
    }

    /// All colliders.
    pub fn colliders(&self) -> &ColliderSet {
        &self.state.colliders
    }

    /// All multibody joints.
    pub fn multibody_joints(&self) -> &MultibodyJointSet {
        &self.state.multibody_joints
    }

    /// All impulse joints.
    pub fn impulse_joints(&self) -> &ImpulseJointSet {
        &self.state.impulse_joints
    }

    /// A read-only query pipeline (ray casts, shape casts) over the current colliders.
    pub fn query_pipeline<'a>(&'a self, filter: QueryFilter<'a>) -> QueryPipeline<'a> {
        self.state.broad_phase.as_query_pipeline(
            self.state.narrow_phase.query_dispatcher(),
            &self.state.bodies,
            &self.state.colliders,
            filter,
        )
    }

    /// A query pipeline with mutable bodies and colliders, as rapier's controllers (the
    /// ray-cast vehicle, the character controller) take it.
    pub fn query_pipeline_mut<'a>(&'a mut self, filter: QueryFilter<'a>) -> QueryPipelineMut<'a> {
        self.state.broad_phase.as_query_pipeline_mut(
            self.state.narrow_phase.query_dispatcher(),
            &mut self.state.bodies,
            &mut self.state.colliders,
            filter,
        )
    }

    /// Adds a force (N, world frame) to a body for the next step only.
    pub fn apply_force(&mut self, handle: RigidBodyHandle, force: Vector) -> Result<(), SimError> {
        if !force.is_finite() {
            return Err(SimError::NonFiniteInput(self.body_name(handle)));
        }
        self.state.bodies[handle].add_force(force, true);
        self.forced.push(handle);
        Ok(())
    }

    /// Adds a torque (N·m, world frame) to a body for the next step only.
    pub fn apply_torque(
        &mut self,
        handle: RigidBodyHandle,
        torque: Vector,
    ) -> Result<(), SimError> {
        if !torque.is_finite() {
            return Err(SimError::NonFiniteInput(self.body_name(handle)));
        }
        self.state.bodies[handle].add_torque(torque, true);
        self.forced.push(handle);
        Ok(())
    }

    /// Sets a joint motor's velocity target on one axis (`factor` is the motor's damping).
    pub fn set_motor_velocity(
        &mut self,
        joint: JointRef,
        axis: JointAxis,
        target_vel: f32,
        factor: f32,
    ) -> Result<(), SimError> {
        if !(target_vel.is_finite() && factor.is_finite()) {
            return Err(SimError::NonFiniteInput(format!("{joint:?}")));
        }
        self.generic_joint_mut(joint)?
            .set_motor_velocity(axis, target_vel, factor);
        Ok(())
    }

    /// Sets a joint motor's position target on one axis, as a spring of the given stiffness
    /// and damping.
    pub fn set_motor_position(
        &mut self,
        joint: JointRef,
        axis: JointAxis,
        target_pos: f32,
        stiffness: f32,
        damping: f32,
    ) -> Result<(), SimError> {
        if !(target_pos.is_finite() && stiffness.is_finite() && damping.is_finite()) {
            return Err(SimError::NonFiniteInput(format!("{joint:?}")));
        }
        self.generic_joint_mut(joint)?
            .set_motor_position(axis, target_pos, stiffness, damping);
        Ok(())
    }

    fn generic_joint_mut(&mut self, joint: JointRef) -> Result<&mut GenericJoint, SimError> {
        let missing = || SimError::UnknownName {
            kind: "joint",
            name: format!("{joint:?}"),
        };
        match joint {
            JointRef::Impulse(h) => self
                .state
                .impulse_joints
                .get_mut(h, true)
                .map(|j| &mut j.data)
                .ok_or_else(missing),
            JointRef::Multibody(h) => {
                let (multibody, link) =
                    self.state.multibody_joints.get_mut(h).ok_or_else(missing)?;
                multibody
                    .link_mut(link)
                    .map(|l| &mut l.joint.data)
                    .ok_or_else(missing)
            }
        }
    }

    /// Position (m or rad) and velocity of a one-degree-of-freedom multibody joint (a
    /// prismatic or revolute joint), read from the exact generalized coordinates.
    pub fn joint_dof(&self, joint: JointRef) -> Result<(f32, f32), SimError> {
        let (multibody, link_id) = self.multibody_link(joint)?;
        let link = multibody.link(link_id).ok_or_else(|| not_one_dof(joint))?;
        let coord = one_dof_index(link.joint())?;
        let vel = multibody.generalized_velocity()[link.assembly_id()];
        Ok((link.joint().coords()[coord], vel))
    }

    /// Sets the position and velocity of one-degree-of-freedom multibody joints, then updates
    /// the poses of the bodies they move. Used to place a system in a sampled start state.
    pub fn set_joint_dofs(&mut self, dofs: &[(JointRef, f32, f32)]) -> Result<(), SimError> {
        for &(joint, pos, vel) in dofs {
            if !(pos.is_finite() && vel.is_finite()) {
                return Err(SimError::NonFiniteInput(format!("{joint:?}")));
            }
            let JointRef::Multibody(h) = joint else {
                return Err(not_one_dof(joint));
            };
            let (multibody, link_id) = self
                .state
                .multibody_joints
                .get_mut(h)
                .ok_or_else(|| not_one_dof(joint))?;
            let link = multibody.link(link_id).ok_or_else(|| not_one_dof(joint))?;
            let coord = one_dof_index(link.joint())?;
            let dof = link.assembly_id();
            let mut disp = vec![0.0; multibody.ndofs()];
            disp[dof] = pos - link.joint().coords()[coord];
            multibody.apply_displacements(&disp);
            multibody.generalized_velocity_mut()[dof] = vel;
            multibody.forward_kinematics(&self.state.bodies, false);
            multibody.update_rigid_bodies(&mut self.state.bodies, true);
        }
        Ok(())
    }

    /// The multibody a joint belongs to and the joint's link index, for per-dof settings
    /// (`armature_mut`, `damping_mut`) that rapier keeps on the multibody.
    pub fn multibody_mut(&mut self, joint: JointRef) -> Option<(&mut Multibody, usize)> {
        let JointRef::Multibody(h) = joint else {
            return None;
        };
        self.state.multibody_joints.get_mut(h)
    }

    fn multibody_link(&self, joint: JointRef) -> Result<(&Multibody, usize), SimError> {
        let JointRef::Multibody(h) = joint else {
            return Err(not_one_dof(joint));
        };
        self.state
            .multibody_joints
            .get(h)
            .ok_or_else(|| not_one_dof(joint))
    }

    fn body_name(&self, handle: RigidBodyHandle) -> String {
        self.body_names
            .iter()
            .find(|(_, h)| **h == handle)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("{handle:?}"))
    }

    /// Advances the world by `dt` (in `substeps` pipeline steps). Forces and torques applied
    /// since the last step act during it and are then cleared. Returns
    /// [`SimError::BlowUp`] if any dynamic body ends non-finite or faster than the limits.
    pub fn step(&mut self) -> Result<(), SimError> {
        for _ in 0..self.config.substeps {
            let s = &mut self.state;
            self.pipeline.step(
                self.gravity,
                &self.params,
                &mut s.islands,
                &mut s.broad_phase,
                &mut s.narrow_phase,
                &mut s.bodies,
                &mut s.colliders,
                &mut s.impulse_joints,
                &mut s.multibody_joints,
                &mut s.soft_bodies,
                &mut s.ccd_solver,
                &(),
                &(),
            );
        }
        self.state.steps += 1;
        for handle in self.forced.drain(..) {
            if let Some(body) = self.state.bodies.get_mut(handle) {
                body.reset_forces(false);
                body.reset_torques(false);
            }
        }
        self.check_blow_up()
    }

    /// Checks every dynamic body for non-finite or runaway state.
    pub fn check_blow_up(&self) -> Result<(), SimError> {
        for (handle, body) in self.state.bodies.iter() {
            if !body.is_dynamic() {
                continue;
            }
            let what = if !(body.translation().is_finite() && body.rotation().is_finite()) {
                Some("has a non-finite position".to_string())
            } else if !(body.linvel().is_finite() && body.angvel().is_finite()) {
                Some("has a non-finite velocity".to_string())
            } else if body.linvel().length() > self.config.max_linear_velocity {
                Some(format!(
                    "moves at {:.3e} m/s (limit {:.3e})",
                    body.linvel().length(),
                    self.config.max_linear_velocity
                ))
            } else if body.angvel().length() > self.config.max_angular_velocity {
                Some(format!(
                    "spins at {:.3e} rad/s (limit {:.3e})",
                    body.angvel().length(),
                    self.config.max_angular_velocity
                ))
            } else {
                None
            };
            if let Some(what) = what {
                return Err(SimError::BlowUp {
                    body: self.body_name(handle),
                    what,
                    step: self.state.steps,
                });
            }
        }
        Ok(())
    }

    /// A complete copy of the evolving state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            layout: self.layout(),
        }
    }

    /// Puts the world back in the state of `snapshot`; the world then continues exactly as it
    /// did after the snapshot was taken. The snapshot must come from a world built the same
    /// way (same bodies and joints).
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<(), SimError> {
        if snapshot.layout != self.layout() {
            return Err(SimError::SnapshotMismatch(format!(
                "snapshot has {:?} (bodies, colliders), world has {:?}",
                snapshot.layout,
                self.layout()
            )));
        }
        self.state.clone_from(&snapshot.state);
        self.forced.clear();
        Ok(())
    }

    fn layout(&self) -> (usize, usize) {
        (self.state.bodies.len(), self.state.colliders.len())
    }
}

fn not_one_dof(joint: JointRef) -> SimError {
    SimError::UnknownName {
        kind: "one-degree-of-freedom multibody joint",
        name: format!("{joint:?}"),
    }
}

/// Index in the joint's 6 coordinates of its only free axis.
fn one_dof_index(joint: &MultibodyJoint) -> Result<usize, SimError> {
    let free = !joint.data.locked_axes.bits() & 0b11_1111;
    if free.count_ones() != 1 {
        return Err(SimError::InvalidConfig(format!(
            "joint has {} free axes; only one-axis joints have a single coordinate",
            free.count_ones()
        )));
    }
    Ok(free.trailing_zeros() as usize)
}
