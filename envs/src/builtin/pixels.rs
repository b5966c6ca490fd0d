//! Pixel observations shared by the built-in envs: `obs = "state" | "pixels" | "both"`.

use std::collections::BTreeMap;

use dreamgym_sim::{Camera, Frame, Renderer, Scene, World};
use serde::{Deserialize, Serialize};

use crate::{BoxSpace, DictSpace, EnvError, Space, Value};

/// What an env observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObsMode {
    /// The state vector (f32).
    #[default]
    State,
    /// An RGB image, u8 `[height, width, 3]`, from the env's camera.
    Pixels,
    /// Both, as a Dict with keys `pixels` and `state`.
    Both,
}

/// Checks an image size from an env config.
pub(crate) fn check_image_size(width: usize, height: usize) -> Result<(), crate::ConfigError> {
    dreamgym_sim::camera::check_size(width, height).map_err(|e| crate::ConfigError(e.to_string()))
}

/// Renders and packs observations for one env.
pub(crate) struct Pixels {
    pub mode: ObsMode,
    pub width: usize,
    pub height: usize,
    renderer: Renderer,
    frame: Frame,
}

impl Pixels {
    pub fn new(mode: ObsMode, width: usize, height: usize) -> Self {
        Self {
            mode,
            width,
            height,
            renderer: Renderer::new(),
            frame: Frame::default(),
        }
    }

    /// The observation space for a state space.
    pub fn space(&self, state: Space) -> Space {
        let image = Space::Box(BoxSpace::image(self.height, self.width, 3));
        match self.mode {
            ObsMode::State => state,
            ObsMode::Pixels => image,
            ObsMode::Both => Space::Dict(DictSpace {
                spaces: BTreeMap::from([
                    ("pixels".to_string(), image),
                    ("state".to_string(), state),
                ]),
            }),
        }
    }

    /// The observation: the state, the camera's picture, or both.
    pub fn observe(
        &mut self,
        state: Vec<f32>,
        scene: &Scene,
        world: &World,
        camera: &Camera,
    ) -> Result<Value, EnvError> {
        if self.mode == ObsMode::State {
            return Ok(Value::F32(state));
        }
        self.renderer
            .render(scene, world, camera, &mut self.frame)
            .map_err(|e| EnvError::Other(format!("camera: {e}")))?;
        let image = Value::U8(self.frame.rgb.clone());
        Ok(match self.mode {
            ObsMode::Pixels => image,
            _ => Value::Dict(BTreeMap::from([
                ("pixels".to_string(), image),
                ("state".to_string(), Value::F32(state)),
            ])),
        })
    }
}

/// A flat quad in the ground plane (facing +y), for ground and decals.
pub(crate) fn ground_quad(half_x: f32, half_z: f32, y: f32) -> dreamgym_sim::VisualShape {
    dreamgym_sim::VisualShape::Mesh {
        vertices: vec![
            [-half_x, y, -half_z],
            [half_x, y, -half_z],
            [half_x, y, half_z],
            [-half_x, y, half_z],
        ],
        // Counter-clockwise seen from above (+y).
        triangles: vec![[0, 3, 2], [0, 2, 1]],
        double_sided: false,
    }
}

#[cfg(test)]
mod tests {
    use crate::wrappers::TimeLimit;
    use crate::{Env, Info, Registry, Value};
    use dreamgym_sim::{Frame, Renderer};

    /// The trait's camera, rendered by hand from the trait's scene, is the pixel observation,
    /// for every built-in env and through a wrapper.
    #[test]
    fn the_trait_camera_sees_what_pixel_observations_show() {
        let registry = Registry::with_builtins();
        let config = serde_json::json!({ "obs": "pixels", "width": 20, "height": 12 });
        for id in registry.ids() {
            let env = registry.make(&id, Some(&config)).unwrap();
            let mut env = TimeLimit::new(env, 10);
            let (obs, _) = env.reset(Some(4), &Info::new()).unwrap();
            let (world, scene) = env.scene().unwrap();
            let camera = env.camera().unwrap();
            assert_eq!((camera.width, camera.height), (20, 12), "{id}");
            let mut frame = Frame::default();
            Renderer::new()
                .render(scene, world, &camera, &mut frame)
                .unwrap();
            assert_eq!(obs, Value::U8(frame.rgb), "{id}");
        }
    }
}
