//! The viewer binary: clear errors without a display or with bad input, and (with a display,
//! as CI provides through xvfb-run) a screenshot that shows the scene.

use std::path::Path;
use std::process::{Command, Output};

fn viewer(args: &[&str], display: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dreamgym-viewer"));
    cmd.args(args);
    if !display {
        cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    }
    cmd.output().expect("run dreamgym-viewer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn without_a_display_it_says_how_to_run_headless() {
    let o = viewer(&["--env", "CartPole-v0"], false);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("no display") && t.contains("xvfb-run") && t.contains("--screenshot"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn bad_input_is_a_clear_error_before_any_window() {
    for (args, needle) in [
        (vec!["--env", "Nope-v0"], "CartPole-v0"),
        (
            vec!["--replay", "/nonexistent/replay"],
            "cannot open the replay",
        ),
        (vec!["--env", "Racer-v0", "--width", "0"], "window size"),
        (
            vec![
                "--env",
                "Racer-v0",
                "--set",
                "width=0",
                "--set",
                "obs=pixels",
            ],
            "image size",
        ),
        (
            vec!["--env", "Racer-v0", "--policy", "genius"],
            "unknown policy",
        ),
    ] {
        let o = viewer(&args, false);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains(needle), "{args:?}: expected `{needle}` in {t}");
        assert!(!t.contains("panicked"), "{t}");
    }
}

/// Reads an RGB(A) PNG into (width, height, rgb).
fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width as usize, info.height as usize, rgb)
}

#[test]
#[ignore = "needs a display: CI runs it under xvfb-run with --include-ignored"]
fn a_screenshot_shows_the_car_on_the_road_and_the_agents_view() {
    let dir = std::env::temp_dir().join(format!("dreamgym-viewer-shot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("racer.png");
    let o = viewer(
        &[
            "--env",
            "Racer-v0",
            "--seed",
            "1",
            "--screenshot",
            shot.to_str().unwrap(),
            "--frames",
            "30",
            "--width",
            "640",
            "--height",
            "360",
        ],
        true,
    );
    assert!(o.status.success(), "{}", text(&o));
    let (w, h, rgb) = read_png(&shot);
    assert_eq!((w, h), (640, 360));
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        [rgb[i] as i32, rgb[i + 1] as i32, rgb[i + 2] as i32]
    };
    let reddish = |c: [i32; 3]| c[0] > 90 && c[0] > 2 * c[1] && c[0] > 2 * c[2];
    let greenish = |c: [i32; 3]| c[1] > c[0] + 20 && c[1] > c[2] + 20;
    let greyish = |c: [i32; 3]| {
        (c[0] - c[1]).abs() < 12 && (c[1] - c[2]).abs() < 12 && c[0] > 40 && c[0] < 200
    };
    // The camera follows the car: red pixels near the centre.
    let centre_red = (w / 2 - 60..w / 2 + 60)
        .flat_map(|x| (h / 2 - 50..h / 2 + 50).map(move |y| (x, y)))
        .filter(|&(x, y)| reddish(px(x, y)))
        .count();
    assert!(centre_red > 20, "{centre_red} red pixels near the centre");
    // The scene around it: road and grass, not a blank or single-colour image.
    let all: Vec<[i32; 3]> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| px(x, y))
        .collect();
    assert!(
        all.iter().filter(|c| greenish(**c)).count() > w * h / 20,
        "too little grass"
    );
    assert!(
        all.iter().filter(|c| greyish(**c)).count() > w * h / 50,
        "too little road"
    );
    // The agent's 64x64 view, enlarged in the top-right corner (0.4 of the window's height),
    // shows grass and road too.
    let side = (h as f32 * 0.4) as usize;
    let pip: Vec<[i32; 3]> = (12..side)
        .flat_map(|y| (w - side..w - 12).map(move |x| (x, y)))
        .map(|(x, y)| px(x, y))
        .collect();
    let (green, grey) = (
        pip.iter().filter(|c| greenish(**c)).count(),
        pip.iter().filter(|c| greyish(**c)).count(),
    );
    assert!(
        green > pip.len() / 10 && grey > pip.len() / 20,
        "picture-in-picture: {green} grass and {grey} road of {} pixels",
        pip.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
