//! The bevy app: draws the session's scene, runs it at a chosen speed, and shows the HUD and
//! the agent's own picture.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bevy::asset::RenderAssetUsages;
use bevy::image::ImageSampler;
use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll};
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use dreamgym_sim::{VisualShape, World};

use crate::session::Session;

/// What the app runs.
pub struct AppSettings {
    /// Window width and height, pixels.
    pub window: (u32, u32),
    /// Save a screenshot after this many frames and exit.
    pub screenshot: Option<(PathBuf, u32)>,
    /// Initial speed multiplier.
    pub speed: f32,
}

#[derive(Resource)]
struct Sim {
    session: Mutex<Session>,
    paused: bool,
    speed: f32,
    accumulator: f32,
    /// Shared with [`run`]: bevy's runner consumes the app's world, so what a system failed
    /// with is read from here once the window is gone.
    error: Arc<Mutex<Option<String>>>,
}

impl Sim {
    fn fail(&self, e: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

#[derive(Resource)]
struct Pip(Handle<Image>);

/// V's reconstruction, shown under the agent's pixels when a World Models run is attached.
#[derive(Resource)]
struct ReconPip(Handle<Image>);

/// The window's height in logical pixels, for sizing the picture-in-picture.
#[derive(Resource)]
struct WindowHeight(f32);

#[derive(Component)]
struct VisualEntity {
    index: usize,
    shape: VisualShape,
    /// The visual's name and colour when spawned: an env that builds a new scene at reset
    /// (Tabletop-v0) changes them, and the entities are then spawned anew.
    name: String,
    color: [u8; 3],
}

#[derive(Component)]
struct Hud;

#[derive(Component)]
struct OrbitCamera {
    yaw: f32,
    pitch: f32,
    distance: f32,
    follow: bool,
    focus: Vec3,
}

/// Runs the viewer until the window closes (or the screenshot is saved).
pub fn run(session: Session, settings: AppSettings) -> anyhow::Result<()> {
    let title = format!("dreamgym — {}", session.env_id());
    let error = Arc::new(Mutex::new(None));
    let shot_path = settings.screenshot.as_ref().map(|(p, _)| p.clone());
    let mut app = App::new();
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title,
            resolution: settings.window.into(),
            ..default()
        }),
        ..default()
    }))
    .insert_resource(ClearColor(Color::srgb(0.53, 0.67, 0.82)))
    .insert_resource(Sim {
        session: Mutex::new(session),
        paused: false,
        speed: settings.speed,
        accumulator: 0.0,
        error: error.clone(),
    })
    .insert_resource(WindowHeight(settings.window.1 as f32))
    .add_systems(Startup, setup)
    .add_systems(
        Update,
        (
            keyboard,
            step_sim,
            sync_visuals,
            orbit_camera,
            update_hud,
            update_pip,
        )
            .chain(),
    );
    if let Some((path, frames)) = settings.screenshot {
        app.insert_resource(crate::shot::ScreenshotPlan::new(path, frames))
            .add_systems(Update, crate::shot::screenshot.after(update_pip));
    }
    app.run();
    drop(app);
    if let Some(err) = error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("{err}");
    }
    if let Some(path) = shot_path {
        anyhow::ensure!(
            path.exists(),
            "the viewer closed before the screenshot was saved"
        );
    }
    Ok(())
}

fn to_vec3(v: dreamgym_sim::rapier::prelude::Vector) -> Vec3 {
    Vec3::new(v.x, v.y, v.z)
}

pub(crate) fn to_transform(p: &dreamgym_sim::rapier::prelude::Pose) -> Transform {
    let r = p.rotation;
    Transform::from_translation(to_vec3(p.translation))
        .with_rotation(Quat::from_xyzw(r.x, r.y, r.z, r.w))
}

fn mesh_of(shape: &VisualShape) -> Mesh {
    match shape {
        VisualShape::Cuboid { half } => {
            Cuboid::new(2.0 * half[0], 2.0 * half[1], 2.0 * half[2]).into()
        }
        VisualShape::Ball { radius } => Sphere::new(*radius).mesh().uv(24, 16),
        VisualShape::Cylinder {
            half_height,
            radius,
        } => Cylinder::new(*radius, 2.0 * half_height).into(),
        VisualShape::Capsule {
            half_height,
            radius,
        } => Capsule3d::new(*radius, 2.0 * half_height).into(),
        VisualShape::Mesh {
            vertices,
            triangles,
            ..
        } => {
            // Flat shading: three vertices per triangle, each with the face normal.
            let mut positions = Vec::with_capacity(triangles.len() * 3);
            let mut normals = Vec::with_capacity(triangles.len() * 3);
            for t in triangles {
                let Some(p) = t
                    .iter()
                    .map(|&k| vertices.get(k as usize).map(|v| Vec3::from(*v)))
                    .collect::<Option<Vec<_>>>()
                else {
                    continue;
                };
                let n = (p[1] - p[0]).cross(p[2] - p[0]).normalize_or_zero();
                for q in &p {
                    positions.push(q.to_array());
                    normals.push(n.to_array());
                }
            }
            let indices = (0..positions.len() as u32).collect();
            Mesh::new(
                PrimitiveTopology::TriangleList,
                RenderAssetUsages::default(),
            )
            .with_inserted_attribute(Mesh::ATTRIBUTE_POSITION, positions)
            .with_inserted_attribute(Mesh::ATTRIBUTE_NORMAL, normals)
            .with_inserted_indices(Indices::U32(indices))
        }
    }
}

fn material_of(color: [u8; 3], shape: &VisualShape) -> StandardMaterial {
    let double_sided = matches!(
        shape,
        VisualShape::Mesh {
            double_sided: true,
            ..
        }
    );
    StandardMaterial {
        base_color: Color::srgb(
            color[0] as f32 / 255.0,
            color[1] as f32 / 255.0,
            color[2] as f32 / 255.0,
        ),
        perceptual_roughness: 0.8,
        double_sided,
        cull_mode: if double_sided {
            None
        } else {
            StandardMaterial::default().cull_mode
        },
        ..default()
    }
}

/// Where the camera looks: the first visual attached to a body (the car, the cart, the arm).
fn focus_point(world: &World, scene: &dreamgym_sim::Scene) -> Vec3 {
    let poses = scene.world_poses(world);
    scene
        .visuals
        .iter()
        .zip(&poses)
        .find(|(v, p)| v.body.is_some() && p.is_some())
        .and_then(|(_, p)| p.map(|p| to_vec3(p.translation)))
        .unwrap_or(Vec3::ZERO)
}

/// A starting distance for the orbit camera that frames the moving parts.
fn initial_distance(env_id: &str) -> f32 {
    match env_id.split("-v").next().unwrap_or("") {
        "Racer" => 28.0,
        "CartPole" => 6.5,
        "Reacher" => 0.65,
        "Tabletop" => 1.3,
        _ => 8.0,
    }
}

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut images: ResMut<Assets<Image>>,
    sim: Res<Sim>,
    window_height: Res<WindowHeight>,
) {
    let session = sim.session.lock().unwrap_or_else(|e| e.into_inner());
    let mut focus = Vec3::ZERO;
    if let Some((world, scene)) = session.scene() {
        focus = focus_point(world, scene);
        spawn_visuals(&mut commands, &mut meshes, &mut materials, world, scene);
    }
    commands.spawn((
        DirectionalLight {
            illuminance: 9000.0,
            shadow_maps_enabled: true,
            ..default()
        },
        Transform::default().looking_to(Vec3::new(-0.3, -1.0, -0.45), Vec3::Y),
    ));
    commands.insert_resource(GlobalAmbientLight {
        color: Color::WHITE,
        brightness: 400.0,
        ..default()
    });
    let distance = initial_distance(session.env_id());
    commands.spawn((
        Camera3d::default(),
        Transform::from_translation(focus + Vec3::new(0.0, distance * 0.6, distance))
            .looking_at(focus, Vec3::Y),
        OrbitCamera {
            yaw: 0.0,
            pitch: 0.55,
            distance,
            follow: true,
            focus,
        },
    ));
    // HUD, top left.
    commands.spawn((
        Text::new(session.hud(sim.speed, sim.paused)),
        TextFont {
            font_size: FontSize::Px(15.0),
            ..default()
        },
        TextColor(Color::WHITE),
        BackgroundColor(Color::srgba(0.0, 0.0, 0.0, 0.55)),
        Node {
            position_type: PositionType::Absolute,
            top: px(8),
            left: px(8),
            padding: px(6).all(),
            ..default()
        },
        Hud,
    ));
    // Picture-in-picture of the agent's own pixels, top right, enlarged without smoothing
    // (a dream has no 3D scene: its decoded frames take most of the window); V's
    // reconstruction below it when a World Models run is attached.
    let big = session.scene().is_none();
    if let Some((_, w, h)) = session.reconstruction() {
        let handle = images.add(pip_image(w, h));
        let side = (window_height.0 * 0.4).clamp(64.0, 320.0);
        let scale = (side / w.max(h) as f32).max(1.0);
        commands.spawn((
            ImageNode::new(handle.clone()),
            Node {
                position_type: PositionType::Absolute,
                top: px(20.0 + h as f32 * scale),
                right: px(8),
                width: px(w as f32 * scale),
                height: px(h as f32 * scale),
                border: px(2).all(),
                ..default()
            },
            BorderColor::all(Color::srgb(1.0, 0.8, 0.2)),
        ));
        commands.insert_resource(ReconPip(handle));
    }
    if let Some((_, w, h)) = session.pixels() {
        let handle = images.add(pip_image(w, h));
        // About a third of the window's height, at least one screen pixel per agent pixel.
        let side = if big {
            window_height.0 * 0.7
        } else {
            (window_height.0 * 0.4).clamp(64.0, 320.0)
        };
        let scale = (side / w.max(h) as f32).max(1.0);
        commands.spawn((
            ImageNode::new(handle.clone()),
            Node {
                position_type: PositionType::Absolute,
                top: px(8),
                right: px(8),
                width: px(w as f32 * scale),
                height: px(h as f32 * scale),
                border: px(2).all(),
                ..default()
            },
            BorderColor::all(Color::WHITE),
        ));
        commands.insert_resource(Pip(handle));
    }
}

fn keyboard(
    keys: Res<ButtonInput<KeyCode>>,
    mut sim: ResMut<Sim>,
    mut cameras: Query<&mut OrbitCamera>,
    mut exit: MessageWriter<AppExit>,
) {
    if keys.just_pressed(KeyCode::Escape) {
        exit.write(AppExit::Success);
    }
    if keys.just_pressed(KeyCode::Space) {
        sim.paused = !sim.paused;
    }
    if keys.just_pressed(KeyCode::Equal) || keys.just_pressed(KeyCode::NumpadAdd) {
        sim.speed = (sim.speed * 2.0).min(64.0);
    }
    if keys.just_pressed(KeyCode::Minus) || keys.just_pressed(KeyCode::NumpadSubtract) {
        sim.speed = (sim.speed / 2.0).max(1.0 / 16.0);
    }
    if keys.just_pressed(KeyCode::KeyF) {
        for mut c in &mut cameras {
            c.follow = !c.follow;
        }
    }
    let shift = keys.pressed(KeyCode::ShiftLeft) || keys.pressed(KeyCode::ShiftRight);
    let jump = if shift { 10 } else { 1 };
    let paused = sim.paused;
    let result = {
        let mut s = sim.session.lock().unwrap_or_else(|e| e.into_inner());
        let (episode, step) = s.position();
        if keys.just_pressed(KeyCode::KeyR) {
            s.reset()
        } else if paused && (keys.just_pressed(KeyCode::Period) || keys.just_pressed(KeyCode::KeyS))
        {
            s.advance()
        } else if keys.just_pressed(KeyCode::KeyN) {
            s.goto_episode(episode as isize + 1)
        } else if keys.just_pressed(KeyCode::KeyP) {
            s.goto_episode(episode as isize - 1)
        } else if keys.just_pressed(KeyCode::ArrowRight) {
            s.seek(step + jump)
        } else if keys.just_pressed(KeyCode::ArrowLeft) {
            s.seek(step.saturating_sub(jump))
        } else {
            Ok(())
        }
    };
    if let Err(e) = result {
        sim.fail(format!("{e:#}"));
        exit.write(AppExit::error());
    }
}

fn step_sim(
    time: Res<Time>,
    mut sim: ResMut<Sim>,
    plan: Option<Res<crate::shot::ScreenshotPlan>>,
    mut exit: MessageWriter<AppExit>,
) {
    if sim.paused {
        return;
    }
    // With a screenshot to take, one tick (an env step, or one kept pose of a step's motion)
    // per frame up to the one the picture shows, so it does not depend on how fast this
    // machine renders.
    let steps = if let Some(plan) = plan {
        usize::from(plan.ticking())
    } else {
        let rate = sim
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ticks_per_second();
        let speed = sim.speed;
        due(&mut sim.accumulator, time.delta_secs() * rate * speed, 1000)
    };
    let error = {
        let mut s = sim.session.lock().unwrap_or_else(|e| e.into_inner());
        (0..steps).find_map(|_| s.tick().err().map(|e| format!("{e:#}")))
    };
    if let Some(e) = error {
        sim.fail(e);
        exit.write(AppExit::error());
    }
}

/// Whole ticks due after `ticks` more (fractional) ticks of time: the remainder stays in
/// `accumulator` for the next frame; at most `cap` at once, so a stall does not snowball.
pub(crate) fn due(accumulator: &mut f32, ticks: f32, cap: usize) -> usize {
    *accumulator += ticks;
    let n = accumulator.floor();
    *accumulator -= n;
    (n as usize).min(cap)
}

/// A visual's mesh, material, pose and visibility (hidden while it has no pose).
pub(crate) fn visual_bundle(
    meshes: &mut Assets<Mesh>,
    materials: &mut Assets<StandardMaterial>,
    visual: &dreamgym_sim::Visual,
    pose: Option<dreamgym_sim::rapier::prelude::Pose>,
) -> impl Bundle {
    (
        Mesh3d(meshes.add(mesh_of(&visual.shape))),
        MeshMaterial3d(materials.add(material_of(visual.color, &visual.shape))),
        pose.map(|p| to_transform(&p)).unwrap_or_default(),
        if pose.is_some() {
            Visibility::Visible
        } else {
            Visibility::Hidden
        },
    )
}

/// One entity per visual of the scene, posed as the world is now.
fn spawn_visuals(
    commands: &mut Commands,
    meshes: &mut Assets<Mesh>,
    materials: &mut Assets<StandardMaterial>,
    world: &dreamgym_sim::World,
    scene: &dreamgym_sim::Scene,
) {
    for (index, (visual, pose)) in scene
        .visuals
        .iter()
        .zip(scene.world_poses(world))
        .enumerate()
    {
        commands.spawn((
            visual_bundle(meshes, materials, visual, pose),
            VisualEntity {
                index,
                shape: visual.shape.clone(),
                name: visual.name.clone(),
                color: visual.color,
            },
        ));
    }
}

fn sync_visuals(
    mut commands: Commands,
    sim: Res<Sim>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut query: Query<(
        Entity,
        &mut VisualEntity,
        &mut Transform,
        &mut Visibility,
        &mut Mesh3d,
    )>,
) {
    let session = sim.session.lock().unwrap_or_else(|e| e.into_inner());
    let Some((world, scene)) = session.scene() else {
        return;
    };
    // A new scene (other objects, or other colours): spawn its visuals anew.
    let changed = query.iter().count() != scene.visuals.len()
        || query.iter().any(|(_, ve, ..)| {
            scene
                .visuals
                .get(ve.index)
                .is_none_or(|v| v.name != ve.name || v.color != ve.color)
        });
    if changed {
        for (entity, ..) in &query {
            commands.entity(entity).despawn();
        }
        spawn_visuals(&mut commands, &mut meshes, &mut materials, world, scene);
        return;
    }
    let poses = match session.poses() {
        Some(p) => p.clone(),
        None => scene.world_poses(world),
    };
    for (_, mut ve, mut transform, mut visibility, mut mesh) in &mut query {
        let Some(visual) = scene.visuals.get(ve.index) else {
            continue;
        };
        if visual.shape != ve.shape {
            ve.shape = visual.shape.clone();
            mesh.0 = meshes.add(mesh_of(&visual.shape));
        }
        match poses.get(ve.index).copied().flatten() {
            Some(p) => {
                *transform = to_transform(&p);
                *visibility = Visibility::Visible;
            }
            None => *visibility = Visibility::Hidden,
        }
    }
}

fn orbit_camera(
    sim: Res<Sim>,
    buttons: Res<ButtonInput<MouseButton>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    mut query: Query<(&mut OrbitCamera, &mut Transform)>,
) {
    let focus = {
        let session = sim.session.lock().unwrap_or_else(|e| e.into_inner());
        session.scene().map(|(w, s)| focus_point(w, s))
    };
    for (mut cam, mut transform) in &mut query {
        if buttons.pressed(MouseButton::Left) {
            cam.yaw -= motion.delta.x * 0.005;
            cam.pitch = (cam.pitch + motion.delta.y * 0.005).clamp(0.05, 1.5);
        }
        if scroll.delta.y != 0.0 {
            cam.distance = (cam.distance * (1.0 - scroll.delta.y * 0.1)).clamp(0.05, 1000.0);
        }
        if cam.follow
            && let Some(f) = focus
        {
            cam.focus = f;
        }
        let offset = Vec3::new(
            cam.yaw.sin() * cam.pitch.cos(),
            cam.pitch.sin(),
            cam.yaw.cos() * cam.pitch.cos(),
        ) * cam.distance;
        *transform = Transform::from_translation(cam.focus + offset).looking_at(cam.focus, Vec3::Y);
    }
}

fn update_hud(sim: Res<Sim>, mut query: Query<&mut Text, With<Hud>>) {
    let text = sim
        .session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hud(sim.speed, sim.paused);
    for mut t in &mut query {
        if t.0 != text {
            t.0.clone_from(&text);
        }
    }
}

/// A black RGBA image shown without smoothing.
fn pip_image(w: usize, h: usize) -> Image {
    let mut image = Image::new_fill(
        Extent3d {
            width: w as u32,
            height: h as u32,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        &[0, 0, 0, 255],
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::default(),
    );
    image.sampler = ImageSampler::nearest();
    image
}

fn update_pip(
    sim: Res<Sim>,
    pip: Option<Res<Pip>>,
    recon: Option<Res<ReconPip>>,
    mut images: ResMut<Assets<Image>>,
) {
    let session = sim.session.lock().unwrap_or_else(|e| e.into_inner());
    let targets = [
        (pip.map(|p| p.0.clone()), session.pixels()),
        (recon.map(|p| p.0.clone()), session.reconstruction()),
    ];
    for (handle, picture) in targets {
        let (Some(handle), Some((rgb, _, _))) = (handle, picture) else {
            continue;
        };
        let Some(mut image) = images.get_mut(&handle) else {
            continue;
        };
        let rgba: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|c| [c[0], c[1], c[2], 255])
            .collect();
        image.data = Some(rgba);
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn ticks_come_due_as_time_adds_up_and_a_stall_is_capped() {
        let mut acc = 0.0;
        // 25 ticks a second at 60 frames a second: 0.4167 a frame.
        let per_frame = 25.0 / 60.0;
        let n: usize = (0..60).map(|_| due(&mut acc, per_frame, 100)).sum();
        assert!((24..=25).contains(&n), "{n} ticks in a second");
        assert!((0.0..1.0).contains(&acc));
        // A long stall (500 ticks due at once) runs `cap` of them; the rest is dropped, not
        // carried into the frames after.
        assert_eq!(due(&mut acc, 500.0, 200), 200);
        assert_eq!(
            due(&mut acc, 0.0, 200),
            0,
            "what was over the cap is dropped"
        );
    }
}
