//! The CPU camera: what it draws where, occlusion, determinism, bad input, and its depth image
//! against rapier's own ray casts (an independent reference).

use dreamgym_sim::CameraError;
use dreamgym_sim::prelude::*;
use dreamgym_sim::scene::visual_shape;

const RED: [u8; 3] = [220, 30, 30];
const BLUE: [u8; 3] = [30, 30, 220];
const GREEN: [u8; 3] = [40, 160, 40];

/// A ground slab, a red box at the origin and a blue ball behind it, with colliders matching
/// the visuals.
fn world_and_scene() -> (World, Scene) {
    let mut world = World::new(WorldConfig::default());
    let ground = world
        .add_body(
            "ground",
            RigidBodyBuilder::fixed().translation(Vector::new(0.0, -0.5, 0.0)),
        )
        .unwrap();
    world.add_collider(ColliderBuilder::cuboid(20.0, 0.5, 20.0), Some(ground));
    let red = world
        .add_body(
            "box",
            RigidBodyBuilder::fixed().translation(Vector::new(0.0, 0.5, 0.0)),
        )
        .unwrap();
    world.add_collider(ColliderBuilder::cuboid(0.5, 0.5, 0.5), Some(red));
    let blue = world
        .add_body(
            "ball",
            RigidBodyBuilder::fixed().translation(Vector::new(0.0, 1.0, -4.0)),
        )
        .unwrap();
    world.add_collider(ColliderBuilder::ball(1.0), Some(blue));
    world.step().unwrap();
    let mut scene = Scene::default();
    for v in Scene::from_colliders(&world, "ground", GREEN, 1) {
        scene.add(v);
    }
    for v in Scene::from_colliders(&world, "box", RED, 2) {
        scene.add(v);
    }
    for v in Scene::from_colliders(&world, "ball", BLUE, 3) {
        scene.add(v);
    }
    (world, scene)
}

fn camera(width: usize, height: usize) -> Camera {
    Camera {
        eye: Vector::new(0.0, 1.5, 5.0),
        target: Vector::new(0.0, 0.5, 0.0),
        up: Vector::Y,
        projection: Projection::Perspective { fov_y: 0.8 },
        width,
        height,
        near: 0.05,
        far: 100.0,
    }
}

fn render(world: &World, scene: &Scene, cam: &Camera) -> Frame {
    let mut frame = Frame::default();
    Renderer::new()
        .render(scene, world, cam, &mut frame)
        .unwrap();
    frame
}

fn is_reddish(c: [u8; 3]) -> bool {
    c[0] > 2 * c[1] && c[0] > 2 * c[2]
}

#[test]
fn draws_the_box_in_the_middle_over_the_ground_and_sky() {
    let (world, scene) = world_and_scene();
    let f = render(&world, &scene, &camera(64, 64));
    assert!(is_reddish(f.pixel(32, 32)), "{:?}", f.pixel(32, 32));
    assert_eq!(f.segmentation[32 * 64 + 32], 2);
    assert_eq!(f.pixel(32, 0), scene.background, "the top row is sky");
    assert_eq!(
        f.segmentation[63 * 64 + 2],
        1,
        "the bottom corner is ground"
    );
    // The box's front face is at z = 0.5: about 4.5 m along the view axis at the centre.
    let d = f.depth[32 * 64 + 32];
    assert!(d > 4.2 && d < 4.7, "depth {d}");
    assert!(f.depth[0].is_infinite());
}

#[test]
fn nearer_things_hide_farther_ones() {
    let (world, scene) = world_and_scene();
    let f = render(&world, &scene, &camera(64, 64));
    let count = |seg: u16| f.segmentation.iter().filter(|&&s| s == seg).count();
    // The ball is behind the box and bigger: partly hidden, still visible around it.
    assert!(count(3) > 20, "ball pixels {}", count(3));
    assert_eq!(f.segmentation[32 * 64 + 32], 2);
}

#[test]
fn depth_matches_rapier_ray_casts() {
    let (world, scene) = world_and_scene();
    let cam = camera(48, 36);
    let f = render(&world, &scene, &cam);
    let forward = (cam.target - cam.eye).normalize();
    let right = forward.cross(cam.up).normalize();
    let up = right.cross(forward);
    let Projection::Perspective { fov_y } = cam.projection else {
        unreachable!()
    };
    let t = (fov_y / 2.0).tan();
    let aspect = cam.width as f32 / cam.height as f32;
    let query = world.query_pipeline(QueryFilter::default());
    let (mut compared, mut bad) = (0, 0);
    for y in 0..cam.height {
        for x in 0..cam.width {
            let ndc_x = (x as f32 + 0.5) / cam.width as f32 * 2.0 - 1.0;
            let ndc_y = 1.0 - (y as f32 + 0.5) / cam.height as f32 * 2.0;
            let dir = (forward + right * (ndc_x * t * aspect) + up * (ndc_y * t)).normalize();
            let ray = Ray::new(cam.eye, dir);
            let expected = query
                .cast_ray(&ray, 1000.0, true)
                .map(|(_, toi)| toi * dir.dot(forward));
            let got = f.depth[y * cam.width + x];
            match expected {
                None => assert!(
                    got.is_infinite(),
                    "pixel ({x}, {y}): drew {got} where the ray hits nothing"
                ),
                Some(e) => {
                    compared += 1;
                    // The ball is a tessellated sphere: allow its facets' sagitta.
                    if (got - e).abs() > 0.02 * e.max(1.0) {
                        bad += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 1000);
    assert!(
        bad * 100 <= compared,
        "{bad} of {compared} pixels disagree with the ray casts"
    );
}

#[test]
fn orthographic_top_down_view() {
    let (world, scene) = world_and_scene();
    let cam = Camera {
        eye: Vector::new(0.0, 10.0, 0.0),
        target: Vector::ZERO,
        up: -Vector::Z,
        projection: Projection::Orthographic { half_height: 4.0 },
        ..camera(64, 64)
    };
    let f = render(&world, &scene, &cam);
    // The box covers x, z in [-0.5, 0.5]: 8 of 64 pixels across the 8 m view.
    let boxes = f.segmentation.iter().filter(|&&s| s == 2).count();
    assert!((56..=72).contains(&boxes), "{boxes} box pixels");
    assert_eq!(f.segmentation[0], 1, "ground everywhere else");
    // The ball is at z = -4, the top edge of the view (up is -z).
    assert_eq!(f.segmentation[32], 3);
}

#[test]
fn rendering_is_deterministic_across_renderers_and_threads() {
    let (world, scene) = world_and_scene();
    let a = render(&world, &scene, &camera(64, 64));
    let cam = camera(64, 64);
    let b = std::thread::scope(|s| s.spawn(|| render(&world, &scene, &cam)).join().unwrap());
    assert_eq!(a, b);
    // A renderer reused across frames gives the same bytes as a fresh one.
    let mut r = Renderer::new();
    let mut f = Frame::default();
    r.render(&scene, &world, &camera(32, 16), &mut f).unwrap();
    r.render(&scene, &world, &cam, &mut f).unwrap();
    assert_eq!(f, a);
}

#[test]
fn a_ground_plane_reaching_behind_the_camera_is_clipped_not_smeared() {
    let (world, scene) = world_and_scene();
    let cam = Camera {
        eye: Vector::new(0.0, 0.3, 8.0),
        target: Vector::new(0.0, 0.3, 0.0),
        ..camera(64, 64)
    };
    let f = render(&world, &scene, &cam);
    for x in 0..64 {
        assert_eq!(f.segmentation[63 * 64 + x], 1, "bottom row is ground");
        assert_eq!(f.segmentation[x], 0, "top row is sky");
    }
}

#[test]
fn bad_sizes_and_degenerate_cameras_are_errors() {
    let (world, scene) = world_and_scene();
    let mut f = Frame::default();
    let mut r = Renderer::new();
    for (w, h) in [(0, 64), (64, 0), (5000, 64)] {
        let err = r.render(&scene, &world, &camera(w, h), &mut f).unwrap_err();
        assert!(matches!(err, CameraError::BadSize { .. }), "{err}");
    }
    let same = Camera {
        target: Vector::new(0.0, 1.5, 5.0),
        ..camera(8, 8)
    };
    assert!(r.render(&scene, &world, &same, &mut f).is_err());
    let up_along_view = Camera {
        up: Vector::new(0.0, -0.2, -1.0),
        ..camera(8, 8)
    };
    assert!(r.render(&scene, &world, &up_along_view, &mut f).is_err());
    let fov = Camera {
        projection: Projection::Perspective { fov_y: 0.0 },
        ..camera(8, 8)
    };
    assert!(r.render(&scene, &world, &fov, &mut f).is_err());
}

#[test]
fn shapes_of_every_collider_kind_tessellate() {
    for shape in [
        SharedShape::cuboid(1.0, 2.0, 3.0),
        SharedShape::ball(1.0),
        SharedShape::cylinder(1.0, 0.5),
        SharedShape::capsule_y(1.0, 0.5),
    ] {
        assert!(visual_shape(&*shape).is_some());
    }
}
