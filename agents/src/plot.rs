//! Minimal PNG figures: line charts and image grids (no text; the report carries the numbers).

use std::path::Path;

/// Writes an RGB image.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(rgb)?;
    }
    dreamgym_world_model::nn::write_atomic(path, &bytes)?;
    Ok(())
}

const COLOURS: [[u8; 3]; 4] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
];

/// A line chart of several series (x, y) on shared axes, 640x360, with a light grid at the
/// axes' quarter marks. Returns the (x, y) ranges drawn, for the caption.
pub fn line_chart(
    path: &Path,
    series: &[Vec<(f64, f64)>],
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let (w, h, m) = (640usize, 360usize, 20usize);
    let pts = series
        .iter()
        .flatten()
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let mut img = vec![255u8; w * h * 3];
    let put = |img: &mut [u8], x: i64, y: i64, c: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            let i = (y as usize * w + x as usize) * 3;
            img[i..i + 3].copy_from_slice(&c);
        }
    };
    for q in 0..=4 {
        let gx = m + q * (w - 2 * m) / 4;
        let gy = m + q * (h - 2 * m) / 4;
        let shade = if q == 0 || q == 4 {
            [0, 0, 0]
        } else {
            [220, 220, 220]
        };
        for y in m..h - m {
            put(&mut img, gx as i64, y as i64, shade);
        }
        for x in m..w - m {
            put(&mut img, x as i64, gy as i64, shade);
        }
    }
    let to_px = |x: f64, y: f64| {
        (
            m as f64 + (x - x0) / (x1 - x0) * (w - 2 * m) as f64,
            (h - m) as f64 - (y - y0) / (y1 - y0) * (h - 2 * m) as f64,
        )
    };
    for (si, s) in series.iter().enumerate() {
        let c = COLOURS[si % COLOURS.len()];
        for pair in s.windows(2) {
            let (a, b) = (to_px(pair[0].0, pair[0].1), to_px(pair[1].0, pair[1].1));
            let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1);
            for i in 0..=n {
                let t = i as f64 / n as f64;
                let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                put(&mut img, x as i64, y as i64, c);
                put(&mut img, x as i64, y as i64 + 1, c);
            }
        }
        if s.len() == 1 {
            let p = to_px(s[0].0, s[0].1);
            put(&mut img, p.0 as i64, p.1 as i64, c);
        }
    }
    write_png(path, w, h, &img)?;
    Ok(((x0, x1), (y0, y1)))
}

/// Lays out equally sized RGB images in a grid (`cols` per row), with a 2-pixel gap.
pub fn image_grid(
    path: &Path,
    images: &[Vec<u8>],
    side: usize,
    cols: usize,
    scale: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(!images.is_empty() && cols > 0, "no images to lay out");
    let rows = images.len().div_ceil(cols);
    let cell = side * scale + 2;
    let (w, h) = (cols * cell, rows * cell);
    let mut out = vec![40u8; w * h * 3];
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % cols) * cell + 1, (i / cols) * cell + 1);
        for y in 0..side * scale {
            for x in 0..side * scale {
                let s = ((y / scale) * side + x / scale) * 3;
                let d = ((oy + y) * w + ox + x) * 3;
                out[d..d + 3].copy_from_slice(&img[s..s + 3]);
            }
        }
    }
    write_png(path, w, h, &out)
}
