//! `--screenshot <png> --frames N`: saves the window after N frames, once something is drawn.
//!
//! Under a software renderer on a busy machine the render pipelines can still be compiling
//! after N frames, and the capture then comes back one flat colour. Such a capture is not
//! saved: another is asked for a few frames later, up to a limit, after which the last one is
//! saved whatever it shows.

use std::path::PathBuf;

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured, save_to_disk};

/// Frames to wait before asking again after a blank capture.
const RETRY_FRAMES: u32 = 5;
/// Blank captures tolerated before the next one is saved as it is.
const MAX_RETRIES: u32 = 120;
/// Frames to wait for a requested capture before giving up.
const TIMEOUT_FRAMES: u32 = 600;

/// When and where to save the screenshot.
#[derive(Resource)]
pub(crate) struct ScreenshotPlan {
    path: PathBuf,
    /// The frame the picture shows: the scene stops ticking there.
    target: u32,
    at_frame: u32,
    frame: u32,
    requested: bool,
    retries: u32,
}

impl ScreenshotPlan {
    /// A screenshot to `path` after `frames` frames.
    pub(crate) fn new(path: PathBuf, frames: u32) -> Self {
        Self {
            path,
            target: frames,
            at_frame: frames,
            frame: 0,
            requested: false,
            retries: 0,
        }
    }

    /// Whether the scene still ticks (one tick a frame, so the picture does not depend on how
    /// fast this machine renders): until the frame the picture shows, and not while a blank
    /// capture is asked for again.
    pub(crate) fn ticking(&self) -> bool {
        self.frame < self.target
    }
}

/// Asks for the capture when its frame comes, and exits once the file is written (or with an
/// error when it never is).
pub(crate) fn screenshot(
    mut commands: Commands,
    mut plan: ResMut<ScreenshotPlan>,
    mut exit: MessageWriter<AppExit>,
) {
    plan.frame += 1;
    if !plan.requested && plan.frame >= plan.at_frame {
        plan.requested = true;
        let mut save = save_to_disk(plan.path.clone());
        commands.spawn(Screenshot::primary_window()).observe(
            move |captured: On<ScreenshotCaptured>, mut plan: ResMut<ScreenshotPlan>| {
                if is_blank(&captured.image) && plan.retries < MAX_RETRIES {
                    if plan.retries == 0 {
                        info!("the capture came back blank (nothing drawn yet): asking again");
                    }
                    plan.retries += 1;
                    plan.requested = false;
                    plan.at_frame = plan.frame + RETRY_FRAMES;
                    return;
                }
                save(captured);
            },
        );
    }
    if plan.requested && plan.path.exists() {
        exit.write(AppExit::Success);
    }
    if plan.frame > plan.at_frame + TIMEOUT_FRAMES {
        exit.write(AppExit::error());
    }
}

/// Whether every pixel of `image` is the same (or it holds no pixels).
fn is_blank(image: &Image) -> bool {
    let size = image
        .texture_descriptor
        .format
        .block_copy_size(None)
        .unwrap_or(4)
        .max(1) as usize;
    match &image.data {
        Some(d) if d.len() >= size => d.chunks_exact(size).all(|p| p == &d[..size]),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::is_blank;
    use bevy::asset::RenderAssetUsages;
    use bevy::prelude::*;
    use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};

    fn image(pixels: &[[u8; 4]]) -> Image {
        Image::new(
            Extent3d {
                width: pixels.len() as u32,
                height: 1,
                depth_or_array_layers: 1,
            },
            TextureDimension::D2,
            pixels.concat(),
            TextureFormat::Bgra8UnormSrgb,
            RenderAssetUsages::default(),
        )
    }

    #[test]
    fn a_flat_capture_is_blank_and_one_with_anything_drawn_is_not() {
        assert!(is_blank(&image(&[[0, 0, 0, 255]; 6])));
        assert!(is_blank(&image(&[[30, 40, 50, 255]; 6])));
        let mut drawn = [[0, 0, 0, 255]; 6];
        drawn[4] = [0, 0, 200, 255];
        assert!(!is_blank(&image(&drawn)));
    }
}
