//! The labeling window: the pair's two episodes side by side, each in a 3D view of its own
//! world (two cameras with viewports, each drawing one render layer), the instruction and the
//! labeler's progress above, each side's actions below, and the keys.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bevy::camera::visibility::RenderLayers;
use bevy::camera::{ClearColorConfig, Viewport};
use bevy::prelude::*;
use bevy::window::PrimaryWindow;
use dreamgym_agents::label_session::Verdict;
use dreamgym_sim::VisualShape;

use crate::app::{due, to_transform, visual_bundle};
use crate::labeling::{Labeling, MOTION_EVERY};

/// Frames of the replay per second at speed 1: real time when the envs keep each action's
/// motion (a kept pose every [`MOTION_EVERY`] steps of 0.02 s); otherwise each frame is a
/// whole action (approach, push, retreat), one a second, which leaves time to read it.
fn frames_per_second(smooth: bool) -> f32 {
    if smooth {
        50.0 / MOTION_EVERY as f32
    } else {
        1.0
    }
}
/// Logical pixels above the views (the header) and below them (the keys).
const HEADER: f32 = 76.0;
const FOOTER: f32 = 44.0;

/// What the labeling app runs.
pub struct LabelSettings {
    /// Window width and height, pixels.
    pub window: (u32, u32),
    /// Save a screenshot after this many frames and exit (one replay frame per frame).
    pub screenshot: Option<(PathBuf, u32)>,
    /// Initial speed multiplier.
    pub speed: f32,
}

#[derive(Resource)]
struct LabelSim {
    /// Shared with [`run`], which reads the counts once the window is gone (bevy's runner
    /// consumes the app's world).
    labeling: Arc<Mutex<Labeling>>,
    speed: f32,
    accumulator: f32,
    error: Arc<Mutex<Option<String>>>,
}

impl LabelSim {
    fn fail(&self, e: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

#[derive(Component)]
struct SideVisual {
    side: usize,
    index: usize,
    shape: VisualShape,
    name: String,
    color: [u8; 3],
}

#[derive(Component)]
struct SideCamera(usize);

#[derive(Component)]
struct Header;

#[derive(Component)]
struct Footer;

#[derive(Component)]
struct SideText(usize);

/// Runs a labeling session until the window closes (or the screenshot is saved). Returns the
/// labels given, and the pairs labeled of all.
pub fn run(labeling: Labeling, settings: LabelSettings) -> anyhow::Result<(usize, usize, usize)> {
    let title = format!(
        "dreamgym label — {} ({})",
        labeling.session().labeler(),
        labeling.env_id()
    );
    let labeling = Arc::new(Mutex::new(labeling));
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
    .insert_resource(ClearColor(Color::srgb(0.12, 0.12, 0.14)))
    .insert_resource(LabelSim {
        labeling: labeling.clone(),
        speed: settings.speed,
        accumulator: 0.0,
        error: error.clone(),
    })
    .add_systems(Startup, setup)
    .add_systems(
        Update,
        (keyboard, play, sync_sides, viewports, update_text).chain(),
    );
    if let Some((path, frames)) = settings.screenshot {
        app.insert_resource(crate::shot::ScreenshotPlan::new(path, frames))
            .add_systems(Update, crate::shot::screenshot.after(update_text));
    }
    app.run();
    drop(app);
    if let Some(err) = error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("{err}");
    }
    if let Some(path) = shot_path {
        anyhow::ensure!(
            path.exists(),
            "the labeling window closed before the screenshot was saved"
        );
    }
    let l = labeling.lock().unwrap_or_else(|e| e.into_inner());
    let (done, total) = l.session().progress();
    Ok((l.session().given(), done, total))
}

fn text_node(text: String, size: f32, node: Node) -> impl Bundle {
    (
        Text::new(text),
        TextFont {
            font_size: FontSize::Px(size),
            ..default()
        },
        TextColor(Color::WHITE),
        BackgroundColor(Color::srgba(0.0, 0.0, 0.0, 0.6)),
        node,
    )
}

fn setup(mut commands: Commands, sim: Res<LabelSim>) {
    // Both worlds are lit alike; each camera draws only its own side's layer.
    commands.spawn((
        DirectionalLight {
            illuminance: 9000.0,
            shadow_maps_enabled: true,
            ..default()
        },
        Transform::default().looking_to(Vec3::new(-0.3, -1.0, -0.45), Vec3::Y),
        RenderLayers::from_layers(&[1, 2]),
    ));
    commands.insert_resource(GlobalAmbientLight {
        color: Color::WHITE,
        brightness: 400.0,
        ..default()
    });
    // The table is 1 m by 0.6 m around the origin: seen from the front and above.
    for side in 0..2 {
        commands.spawn((
            Camera3d::default(),
            Camera {
                order: side as isize,
                clear_color: ClearColorConfig::Custom(Color::srgb(0.53, 0.67, 0.82)),
                ..default()
            },
            Transform::from_xyz(0.0, 1.3, 1.0).looking_at(Vec3::new(0.0, 0.0, 0.06), Vec3::Y),
            RenderLayers::layer(side + 1),
            SideCamera(side),
        ));
    }
    // The text spans the whole window: a camera over both views that draws nothing but it.
    commands.spawn((
        Camera3d::default(),
        Camera {
            order: 2,
            clear_color: ClearColorConfig::None,
            ..default()
        },
        RenderLayers::layer(7),
        IsDefaultUiCamera,
    ));
    let l = sim.labeling.lock().unwrap_or_else(|e| e.into_inner());
    commands.spawn((
        text_node(
            l.header(sim.speed),
            15.0,
            Node {
                position_type: PositionType::Absolute,
                top: px(0),
                left: px(0),
                width: percent(100),
                height: px(HEADER),
                padding: px(6).all(),
                ..default()
            },
        ),
        Header,
    ));
    commands.spawn((
        text_node(
            l.footer(),
            14.0,
            Node {
                position_type: PositionType::Absolute,
                bottom: px(0),
                left: px(0),
                width: percent(100),
                height: px(FOOTER),
                padding: px(6).all(),
                ..default()
            },
        ),
        Footer,
    ));
    for side in 0..2 {
        commands.spawn((
            text_node(
                l.side_text(side),
                13.0,
                Node {
                    position_type: PositionType::Absolute,
                    bottom: px(FOOTER + 6.0),
                    left: percent(50.0 * side as f32 + 0.8),
                    max_width: percent(48),
                    padding: px(4).all(),
                    ..default()
                },
            ),
            SideText(side),
        ));
    }
}

/// Each side's camera draws the window's left or right half between the header and footer.
fn viewports(
    windows: Query<&Window, With<PrimaryWindow>>,
    mut cameras: Query<(&mut Camera, &SideCamera)>,
) {
    let Ok(window) = windows.single() else {
        return;
    };
    let (w, h, scale) = (
        window.physical_width(),
        window.physical_height(),
        window.scale_factor(),
    );
    let top = (HEADER * scale) as u32;
    let bottom = (FOOTER * scale) as u32;
    let height = h.saturating_sub(top + bottom).max(1);
    let half = (w / 2).max(1);
    for (mut camera, side) in &mut cameras {
        let viewport = Viewport {
            physical_position: UVec2::new(half * side.0 as u32 + side.0 as u32 * 2, top),
            physical_size: UVec2::new(half.saturating_sub(2).max(1), height),
            ..default()
        };
        if camera
            .viewport
            .as_ref()
            .map(|v| (v.physical_position, v.physical_size))
            != Some((viewport.physical_position, viewport.physical_size))
        {
            camera.viewport = Some(viewport);
        }
    }
}

fn keyboard(
    keys: Res<ButtonInput<KeyCode>>,
    mut sim: ResMut<LabelSim>,
    mut exit: MessageWriter<AppExit>,
) {
    if keys.just_pressed(KeyCode::Escape) {
        exit.write(AppExit::Success);
    }
    if keys.just_pressed(KeyCode::Equal) || keys.just_pressed(KeyCode::NumpadAdd) {
        sim.speed = (sim.speed * 2.0).min(16.0);
    }
    if keys.just_pressed(KeyCode::Minus) || keys.just_pressed(KeyCode::NumpadSubtract) {
        sim.speed = (sim.speed / 2.0).max(1.0 / 8.0);
    }
    let result = {
        let mut l = sim.labeling.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = if keys.just_pressed(KeyCode::ArrowLeft) {
            Some(Verdict::Left)
        } else if keys.just_pressed(KeyCode::ArrowRight) {
            Some(Verdict::Right)
        } else if keys.just_pressed(KeyCode::ArrowUp) {
            Some(Verdict::Equal)
        } else if keys.just_pressed(KeyCode::ArrowDown) {
            Some(Verdict::Skip)
        } else {
            None
        };
        if let Some(v) = verdict {
            l.label(v)
        } else if keys.just_pressed(KeyCode::KeyU) {
            l.undo()
        } else if keys.just_pressed(KeyCode::Space) {
            l.replay()
        } else {
            Ok(())
        }
    };
    if let Err(e) = result {
        sim.fail(format!("{e:#}"));
        exit.write(AppExit::error());
    }
}

fn play(
    time: Res<Time>,
    mut sim: ResMut<LabelSim>,
    shot: Option<Res<crate::shot::ScreenshotPlan>>,
    mut exit: MessageWriter<AppExit>,
) {
    let smooth = sim
        .labeling
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .smooth();
    // With a screenshot to take, one replay frame per rendered frame up to the one the
    // picture shows, whatever this machine's speed.
    let steps = if let Some(shot) = shot {
        usize::from(shot.ticking())
    } else {
        let ticks = time.delta_secs() * frames_per_second(smooth) * sim.speed;
        due(&mut sim.accumulator, ticks, 200)
    };
    let error = {
        let mut l = sim.labeling.lock().unwrap_or_else(|e| e.into_inner());
        (0..steps).find_map(|_| l.tick().err().map(|e| format!("{e:#}")))
    };
    if let Some(e) = error {
        sim.fail(e);
        exit.write(AppExit::error());
    }
}

/// Spawns the visuals of one side's scene on that side's layer.
fn spawn_side(
    commands: &mut Commands,
    meshes: &mut Assets<Mesh>,
    materials: &mut Assets<StandardMaterial>,
    side: usize,
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
            RenderLayers::layer(side + 1),
            SideVisual {
                side,
                index,
                shape: visual.shape.clone(),
                name: visual.name.clone(),
                color: visual.color,
            },
        ));
    }
}

type SideQuery<'w, 's> = Query<
    'w,
    's,
    (
        Entity,
        &'static SideVisual,
        &'static mut Transform,
        &'static mut Visibility,
    ),
>;

/// Poses each side's visuals as its world is now; a side whose scene changed (a new pair
/// builds new objects) is spawned anew.
fn sync_sides(
    mut commands: Commands,
    sim: Res<LabelSim>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut query: SideQuery,
) {
    let l = sim.labeling.lock().unwrap_or_else(|e| e.into_inner());
    for side in 0..2 {
        let Some((world, scene)) = l.scene(side) else {
            continue;
        };
        let mine = || query.iter().filter(|(_, v, ..)| v.side == side);
        let changed = mine().count() != scene.visuals.len()
            || mine().any(|(_, v, ..)| {
                scene
                    .visuals
                    .get(v.index)
                    .is_none_or(|s| s.name != v.name || s.color != v.color || s.shape != v.shape)
            });
        if changed {
            for (entity, ..) in mine() {
                commands.entity(entity).despawn();
            }
            spawn_side(
                &mut commands,
                &mut meshes,
                &mut materials,
                side,
                world,
                scene,
            );
            continue;
        }
        let poses = match l.poses(side) {
            Some(p) => p.clone(),
            None => scene.world_poses(world),
        };
        for (_, v, mut transform, mut visibility) in &mut query {
            if v.side != side {
                continue;
            }
            match poses.get(v.index).copied().flatten() {
                Some(p) => {
                    *transform = to_transform(&p);
                    *visibility = Visibility::Visible;
                }
                None => *visibility = Visibility::Hidden,
            }
        }
    }
}

type TextQuery<'w, 's> = Query<
    'w,
    's,
    (
        &'static mut Text,
        Option<&'static Header>,
        Option<&'static Footer>,
        Option<&'static SideText>,
    ),
>;

fn update_text(sim: Res<LabelSim>, mut query: TextQuery) {
    let l = sim.labeling.lock().unwrap_or_else(|e| e.into_inner());
    for (mut text, header, footer, side) in &mut query {
        let want = match (header, footer, side) {
            (Some(_), ..) => l.header(sim.speed),
            (_, Some(_), _) => l.footer(),
            (_, _, Some(s)) => l.side_text(s.0),
            _ => continue,
        };
        if text.0 != want {
            text.0 = want;
        }
    }
}
