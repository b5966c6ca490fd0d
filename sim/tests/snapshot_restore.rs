//! A restored world continues bit-identically, contacts and joints included; blow-ups and bad
//! inputs are errors, not panics.

use dreamgym_sim::prelude::*;

/// A pile of boxes on the ground and a swinging chain of impulse joints: contacts with
/// warm-started impulses, joints, islands.
fn busy_world() -> (World, Vec<RigidBodyHandle>) {
    let mut world = World::new(WorldConfig::default());
    world.add_collider(
        ColliderBuilder::cuboid(20.0, 0.5, 20.0).translation(Vector::new(0.0, -0.5, 0.0)),
        None,
    );
    let mut handles = Vec::new();
    for i in 0..12 {
        let h = world
            .add_body(
                &format!("box{i}"),
                RigidBodyBuilder::dynamic()
                    .translation(Vector::new(
                        (i % 3) as f32 * 0.3,
                        0.6 + i as f32 * 0.9,
                        (i % 2) as f32 * 0.2,
                    ))
                    .rotation(Vector::new(0.1 * i as f32, 0.2, 0.0)),
            )
            .unwrap();
        world.add_collider(ColliderBuilder::cuboid(0.4, 0.4, 0.4), Some(h));
        handles.push(h);
    }
    let anchor = world
        .add_body(
            "anchor",
            RigidBodyBuilder::fixed().translation(Vector::new(5.0, 6.0, 0.0)),
        )
        .unwrap();
    let mut parent = anchor;
    for i in 0..4 {
        let link = world
            .add_body(
                &format!("link{i}"),
                RigidBodyBuilder::dynamic().translation(Vector::new(
                    5.0 + (i + 1) as f32,
                    6.0,
                    0.0,
                )),
            )
            .unwrap();
        world.add_collider(ColliderBuilder::ball(0.2), Some(link));
        world
            .add_impulse_joint(
                &format!("joint{i}"),
                parent,
                link,
                SphericalJointBuilder::new()
                    .local_anchor2(Vector::new(-1.0, 0.0, 0.0))
                    .build(),
            )
            .unwrap();
        handles.push(link);
        parent = link;
    }
    (world, handles)
}

fn fingerprint(world: &World, handles: &[RigidBodyHandle]) -> Vec<u32> {
    handles
        .iter()
        .flat_map(|&h| {
            let b = world.body(h);
            let t = b.translation();
            let v = b.linvel();
            let r = *b.rotation();
            [t.x, t.y, t.z, v.x, v.y, v.z, r.x, r.y, r.z, r.w]
        })
        .map(f32::to_bits)
        .collect()
}

#[test]
fn restored_world_continues_bit_identically() {
    let (mut world, handles) = busy_world();
    for _ in 0..60 {
        world.step().unwrap();
    }
    let snapshot = world.snapshot();
    let mut first = Vec::new();
    for i in 0..120 {
        world
            .apply_force(handles[i % handles.len()], Vector::new(3.0, 0.0, -1.0))
            .unwrap();
        world.step().unwrap();
        first.push(fingerprint(&world, &handles));
    }
    world.restore(&snapshot).unwrap();
    assert_eq!(world.steps(), 60);
    for (i, expected) in first.iter().enumerate() {
        world
            .apply_force(handles[i % handles.len()], Vector::new(3.0, 0.0, -1.0))
            .unwrap();
        world.step().unwrap();
        assert_eq!(
            &fingerprint(&world, &handles),
            expected,
            "diverged at step {i}"
        );
    }
    // The boxes did interact: something moved sideways from the contacts.
    assert!(first[0] != first[119]);
}

#[test]
fn two_worlds_built_alike_agree_bit_for_bit_on_any_thread() {
    let run = || {
        let (mut world, handles) = busy_world();
        for _ in 0..100 {
            world.step().unwrap();
        }
        fingerprint(&world, &handles)
    };
    let here = run();
    let there = std::thread::spawn(run).join().unwrap();
    assert_eq!(here, there);
}

#[test]
fn runaway_velocity_is_reported_as_a_blow_up() {
    let mut world = World::new(WorldConfig {
        max_linear_velocity: 100.0,
        ..WorldConfig::default()
    });
    let b = world
        .add_body("rocket", RigidBodyBuilder::dynamic())
        .unwrap();
    world.add_collider(ColliderBuilder::ball(0.5), Some(b));
    world.apply_force(b, Vector::new(1.0e9, 0.0, 0.0)).unwrap();
    match world.step() {
        Err(SimError::BlowUp { body, .. }) => assert_eq!(body, "rocket"),
        other => panic!("expected a blow-up, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut world = World::new(WorldConfig::default());
    let b = world.add_body("a", RigidBodyBuilder::dynamic()).unwrap();
    assert!(matches!(
        world.apply_force(b, Vector::new(f32::NAN, 0.0, 0.0)),
        Err(SimError::NonFiniteInput(_))
    ));
    assert!(matches!(
        world.add_body("a", RigidBodyBuilder::dynamic()),
        Err(SimError::DuplicateName { .. })
    ));
    assert!(matches!(
        world.body_handle("b"),
        Err(SimError::UnknownName { .. })
    ));
    assert!(
        World::try_new(WorldConfig {
            dt: 0.0,
            ..WorldConfig::default()
        })
        .is_err()
    );
    assert!(
        World::try_new(WorldConfig {
            substeps: 0,
            ..WorldConfig::default()
        })
        .is_err()
    );
    let other = World::new(WorldConfig::default()).snapshot();
    assert!(matches!(
        world.restore(&other),
        Err(SimError::SnapshotMismatch(_))
    ));
    // A NaN force was refused, so the world still steps cleanly.
    world.step().unwrap();
}

#[test]
fn multibody_joints_start_undamped() {
    let mut world = World::new(WorldConfig::default());
    let base = world.add_body("base", RigidBodyBuilder::fixed()).unwrap();
    let arm = world
        .add_body(
            "arm",
            RigidBodyBuilder::dynamic().translation(Vector::new(1.0, 0.0, 0.0)),
        )
        .unwrap();
    let hinge = world
        .add_multibody_joint(
            "hinge",
            base,
            arm,
            RevoluteJointBuilder::new(Vector::Z)
                .local_anchor2(Vector::new(-1.0, 0.0, 0.0))
                .build(),
        )
        .unwrap();
    let (multibody, _) = world.multibody_mut(hinge).unwrap();
    assert!(
        multibody.damping().iter().all(|&d| d == 0.0),
        "{:?}",
        multibody.damping()
    );
    // Spinning freely without gravity, the hinge keeps its speed.
    let mut world = World::new(WorldConfig {
        gravity: [0.0; 3],
        solver_iterations: 1,
        ..WorldConfig::default()
    });
    let base = world.add_body("base", RigidBodyBuilder::fixed()).unwrap();
    let arm = world
        .add_body(
            "arm",
            RigidBodyBuilder::dynamic()
                .additional_mass(1.0)
                .translation(Vector::new(1.0, 0.0, 0.0)),
        )
        .unwrap();
    let hinge = world
        .add_multibody_joint(
            "hinge",
            base,
            arm,
            RevoluteJointBuilder::new(Vector::Z)
                .local_anchor2(Vector::new(-1.0, 0.0, 0.0))
                .build(),
        )
        .unwrap();
    world.set_joint_dofs(&[(hinge, 0.0, 2.0)]).unwrap();
    for _ in 0..50 {
        world.step().unwrap();
    }
    let (_, speed) = world.joint_dof(hinge).unwrap();
    assert!((speed - 2.0).abs() < 1e-4, "hinge speed {speed}");
}
