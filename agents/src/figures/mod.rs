//! Report figures that read like matplotlib's: line charts with a title, axis labels, ticks,
//! a light grid and a legend, and grids of small RGB images with an optional caption.
//!
//! Everything renders into an in-memory RGB8 buffer and is encoded as PNG with the `png`
//! crate, so the output is deterministic (same input, same bytes) and needs no system fonts.
//!
//! - Data lines are drawn by `plotters` (`BitMapBackend::with_buffer`) at twice the
//!   resolution and averaged down, which anti-aliases them as matplotlib's Agg renderer does.
//! - Grid, ticks and the axes box are pixel-snapped single lines, drawn directly.
//! - Text is laid out and rasterised with `ab_glyph` from DejaVu Sans (matplotlib's default
//!   face), shipped in `assets/` and compiled in. plotters' own `ab_glyph` text path drops
//!   each glyph's left side bearing (letters visibly collide or drift apart: "tr ain"), so
//!   text goes through the small renderer below instead.
//!
//! Bad input never panics: non-finite points are skipped (a line breaks there), an empty or
//! constant chart still gets sensible axes, and sizes that cannot hold a figure give a
//! [`FigureError`].

use std::io::Cursor;
use std::sync::OnceLock;

mod axes;
mod chart;
mod text;

use axes::*;
use chart::*;
use text::TextStyle;
use text::*;

/// DejaVu Sans, the font matplotlib uses by default (Bitstream Vera licence, see
/// `assets/DejaVuSans-LICENSE.txt`).
pub(super) static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// matplotlib's `tab10` palette, in its order.
pub(super) const TAB10: [[u8; 3]; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

pub(super) const WHITE_RGB: [u8; 3] = [255, 255, 255];
pub(super) const INK: [u8; 3] = [0x1a, 0x1a, 0x1a];
pub(super) const GRID: [u8; 3] = [0xe5, 0xe5, 0xe5];
pub(super) const LEGEND_EDGE: [u8; 3] = [0xcc, 0xcc, 0xcc];

/// The largest width or height accepted, in pixels.
pub(super) const MAX_SIDE: usize = 16_384;
/// The largest image accepted, in pixels (width × height).
pub(super) const MAX_PIXELS: usize = 1 << 26;
/// The smallest line chart that still holds axes, ticks and labels.
pub(super) const MIN_CHART: (u32, u32) = (160, 120);

/// Why a figure could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// A width or height is zero, too small for the figure's layout, or too large.
    #[error("invalid figure size {width}x{height}: {reason}")]
    InvalidSize {
        /// The requested width in pixels.
        width: u64,
        /// The requested height in pixels.
        height: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An RGB buffer's length does not match its stated size.
    #[error("image {index}: expected {expected} bytes (RGB8), got {actual}")]
    BufferSize {
        /// Which image (0 for a single buffer).
        index: usize,
        /// The length the size implies.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// An argument is out of its range (no images, zero columns, zero scale...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The embedded font could not be parsed.
    #[error("the embedded font could not be loaded")]
    Font,
    /// plotters failed while drawing.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// One labelled line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend text (may be empty).
    pub label: String,
    /// The (x, y) points in drawing order; non-finite points are skipped and break the line.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: title, axis labels with units, legend (when more than one series or any label
/// non-empty), ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// The title above the axes (may be empty).
    pub title: String,
    /// The x axis label, with its unit, e.g. `"step"` or `"time (s)"`.
    pub x_label: String,
    /// The y axis label, with its unit.
    pub y_label: String,
    /// The lines, drawn in order with matplotlib's tab10 colours.
    pub series: Vec<Series>,
    /// The image width in pixels.
    pub width: u32,
    /// The image height in pixels.
    pub height: u32,
}

impl LineChart {
    /// A chart with no series, 800x450 pixels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            width: 800,
            height: 450,
        }
    }

    /// Adds a series (builder style).
    pub fn series(mut self, label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            label: label.into(),
            points,
        });
        self
    }
}

/// Renders to PNG bytes (RGB8), deterministic: same input, same bytes.
pub fn line_chart_png(chart: &LineChart) -> Result<Vec<u8>, FigureError> {
    let (w, h) = checked_size(chart.width as usize, chart.height as usize)?;
    if chart.width < MIN_CHART.0 || chart.height < MIN_CHART.1 {
        return Err(FigureError::InvalidSize {
            width: chart.width.into(),
            height: chart.height.into(),
            reason: "a line chart needs at least 160x120 pixels",
        });
    }
    let font = font()?;
    let mut rgb = vec![255u8; w * h * 3];
    let mut canvas = Canvas {
        rgb: &mut rgb,
        w,
        h,
    };
    draw_line_chart(&mut canvas, font, chart)?;
    encode_png(chart.width, chart.height, &rgb)
}

/// Lays out equally sized square RGB images (each side*side*3 u8) in a grid, `cols` per row,
/// each scaled by `scale`, 2-pixel gaps, optional caption row of text under the grid (pass ""
/// for none). Returns PNG bytes.
pub fn image_grid_png(
    images: &[Vec<u8>],
    side: usize,
    cols: usize,
    scale: usize,
    caption: &str,
) -> Result<Vec<u8>, FigureError> {
    const GAP: usize = 2;
    if images.is_empty() {
        return Err(FigureError::InvalidArgument("no images to lay out"));
    }
    if side == 0 || cols == 0 || scale == 0 {
        return Err(FigureError::InvalidArgument(
            "side, cols and scale must all be at least 1",
        ));
    }
    let expected = side
        .checked_mul(side)
        .and_then(|n| n.checked_mul(3))
        .ok_or(FigureError::InvalidArgument("side is too large"))?;
    if let Some((index, img)) = images.iter().enumerate().find(|(_, i)| i.len() != expected) {
        return Err(FigureError::BufferSize {
            index,
            expected,
            actual: img.len(),
        });
    }
    let cols = cols.min(images.len());
    let rows = images.len().div_ceil(cols);
    let cell = side
        .checked_mul(scale)
        .ok_or(FigureError::InvalidArgument("side * scale is too large"))?;
    let span = |n: usize| {
        cell.checked_add(GAP)
            .and_then(|c| c.checked_mul(n))
            .and_then(|v| v.checked_add(GAP))
    };
    let (Some(grid_w), Some(grid_h)) = (span(cols), span(rows)) else {
        return Err(FigureError::InvalidArgument("the grid is too large"));
    };
    checked_size(grid_w, grid_h)?;

    // The caption wraps at the grid's width; a single word wider than that widens the image.
    let caption = caption.trim();
    let em = 13.9;
    let pad = 8;
    let mut lines: Vec<(String, f32)> = Vec::new();
    let mut font_ref = None;
    if !caption.is_empty() {
        let f = font()?;
        let measure = |s: &str| text_width(f, em, s);
        lines = wrap_words(
            caption,
            grid_w.saturating_sub(2 * pad).max(1) as f32,
            &measure,
        )
        .into_iter()
        .map(|l| {
            let wd = measure(&l);
            (l, wd)
        })
        .collect();
        font_ref = Some(f);
    }
    let widest = lines.iter().map(|l| l.1.ceil() as usize).max().unwrap_or(0);
    let width = grid_w.max(widest + 2 * pad);
    let line_h = (em * 1.3).ceil() as usize;
    let caption_h = if lines.is_empty() {
        0
    } else {
        lines.len() * line_h + 10
    };
    let (width, height) = checked_size(width, grid_h + caption_h)?;

    let mut rgb = vec![255u8; width * height * 3];
    let x_off = (width - grid_w) / 2;
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let x0 = x_off + GAP + c * (cell + GAP);
        let y0 = GAP + r * (cell + GAP);
        for y in 0..cell {
            let src_row = &img[(y / scale) * side * 3..][..side * 3];
            let dst = &mut rgb[((y0 + y) * width + x0) * 3..][..cell * 3];
            for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&src_row[(x / scale) * 3..][..3]);
            }
        }
    }
    if let Some(f) = font_ref {
        let mut canvas = Canvas {
            rgb: &mut rgb,
            w: width,
            h: height,
        };
        for (k, (line, _)) in lines.iter().enumerate() {
            let y = (grid_h + 6 + k * line_h) as f32;
            let style = TextStyle {
                em,
                color: [0x22, 0x22, 0x22],
                h: HAlign::Center,
                v: VAlign::Top,
            };
            canvas.text(f, line, width as f32 / 2.0, y, style, false);
        }
    }
    encode_png(width as u32, height as u32, &rgb)
}

/// Encodes an RGB8 buffer as PNG.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, FigureError> {
    let (w, h) = checked_size(width as usize, height as usize)?;
    let expected = w * h * 3;
    if rgb.len() != expected {
        return Err(FigureError::BufferSize {
            index: 0,
            expected,
            actual: rgb.len(),
        });
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(Cursor::new(&mut out), width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Checks a size is non-empty and within bounds.
pub(super) fn checked_size(width: usize, height: usize) -> Result<(usize, usize), FigureError> {
    let err = |reason| FigureError::InvalidSize {
        width: width as u64,
        height: height as u64,
        reason,
    };
    if width == 0 || height == 0 {
        return Err(err("width and height must be at least 1"));
    }
    if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
        return Err(err("larger than 16384 pixels a side or 64 Mpixels"));
    }
    Ok((width, height))
}

pub(super) fn draw_err(e: impl std::fmt::Display) -> FigureError {
    FigureError::Draw(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(Cursor::new(png_bytes));
        let mut reader = dec.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn sample() -> LineChart {
        let xs: Vec<f64> = (0..60).map(f64::from).collect();
        LineChart::new("Training loss", "epoch", "loss (nats)")
            .series(
                "train",
                xs.iter()
                    .map(|&x| (x, 2.0 * (-x / 15.0).exp() + 0.1))
                    .collect(),
            )
            .series(
                "validation",
                xs.iter()
                    .map(|&x| (x, 2.1 * (-x / 18.0).exp() + 0.15))
                    .collect(),
            )
    }

    fn count_color(rgb: &[u8], c: [u8; 3], tol: i32) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| {
                p.iter()
                    .zip(c)
                    .all(|(a, b)| (*a as i32 - b as i32).abs() <= tol)
            })
            .count()
    }

    #[test]
    fn chart_decodes_and_is_not_blank() {
        let bytes = line_chart_png(&sample()).unwrap();
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (800, 450));
        assert!(count_color(&rgb, TAB10[0], 12) > 300, "first series colour");
        assert!(
            count_color(&rgb, TAB10[1], 12) > 300,
            "second series colour"
        );
        // Dark text pixels in the title band (top 35 rows, middle half).
        let dark = (0..35)
            .flat_map(|y| (200..600).map(move |x| (y * 800 + x) * 3))
            .filter(|&i| rgb[i] < 90 && rgb[i + 1] < 90 && rgb[i + 2] < 90)
            .count();
        assert!(dark > 50, "title text, got {dark} dark pixels");
    }

    #[test]
    fn chart_is_deterministic() {
        let a = line_chart_png(&sample()).unwrap();
        let b = line_chart_png(&sample()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn degenerate_charts_render() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let charts = [
            LineChart::new("", "", ""),
            LineChart::new("empty", "x", "y").series("a", vec![]),
            LineChart::new("nan", "x", "y").series("a", vec![(nan, nan), (1.0, nan)]),
            LineChart::new("inf", "x", "y").series("a", vec![(inf, 1.0), (0.0, -inf)]),
            LineChart::new("one", "x", "y").series("", vec![(3.0, 4.0)]),
            LineChart::new("const", "x", "y").series("c", vec![(0.0, 0.0), (1.0, 0.0)]),
            LineChart::new("const x", "x", "y").series("c", vec![(5.0, 1.0), (5.0, 2.0)]),
            LineChart::new("gaps", "x", "y")
                .series("g", vec![(0.0, 1.0), (1.0, nan), (2.0, 3.0), (3.0, 2.0)]),
            LineChart::new("huge", "x", "y").series("h", vec![(0.0, 1e300), (1e-300, -1e300)]),
            LineChart::new("max", "x", "y")
                .series("m", vec![(f64::MIN, f64::MAX), (f64::MAX, 0.0)]),
            LineChart::new("tiny", "x", "y").series("t", vec![(0.0, 1e-310), (1.0, 2e-310)]),
            LineChart::new("big", "x", "y").series("b", vec![(1e6, 1e-7), (3e6, 5e-7)]),
        ];
        for c in &charts {
            let bytes = line_chart_png(c).unwrap_or_else(|e| panic!("{}: {e}", c.title));
            let (w, h, _) = decode(&bytes);
            assert_eq!((w, h), (800, 450));
        }
    }

    #[test]
    fn bad_sizes_are_errors_and_odd_sizes_work() {
        for (w, h) in [(0, 450), (800, 0), (0, 0), (10, 10), (100_000, 10)] {
            let mut c = sample();
            c.width = w;
            c.height = h;
            assert!(line_chart_png(&c).is_err(), "{w}x{h}");
        }
        for (w, h) in [(160, 120), (161, 133), (320, 180), (1600, 900)] {
            let mut c = sample();
            c.width = w;
            c.height = h;
            let (dw, dh, _) = decode(&line_chart_png(&c).unwrap());
            assert_eq!((dw, dh), (w, h));
        }
    }

    #[test]
    fn grid_lays_out_and_scales() {
        let side = 4;
        let imgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i * 40; side * side * 3]).collect();
        let (w, h, rgb) = decode(&image_grid_png(&imgs, side, 3, 2, "").unwrap());
        assert_eq!((w, h), (2 + 3 * (8 + 2), 2 + 2 * (8 + 2)));
        // Image 4 (row 1, col 1) covers (12..20, 12..20) with value 160.
        let at = |x: usize, y: usize| rgb[(y * w as usize + x) * 3];
        assert_eq!(at(12, 12), 160);
        assert_eq!(at(19, 19), 160);
        assert_eq!(at(20, 12), 255, "gap");
        let captioned = image_grid_png(&imgs, side, 3, 2, "left: real, right: dream").unwrap();
        let (cw, ch, crgb) = decode(&captioned);
        assert!(ch > h && cw >= w);
        let dark = crgb[(h as usize * cw as usize) * 3..]
            .chunks_exact(3)
            .filter(|p| p[0] < 100)
            .count();
        assert!(dark > 10, "caption text");
    }

    #[test]
    fn grid_bad_input_is_an_error() {
        let ok = vec![0u8; 2 * 2 * 3];
        let one = std::slice::from_ref(&ok);
        assert!(image_grid_png(&[], 2, 2, 1, "").is_err());
        assert!(image_grid_png(&[ok.clone(), vec![0; 5]], 2, 2, 1, "").is_err());
        assert!(image_grid_png(one, 0, 2, 1, "").is_err());
        assert!(image_grid_png(one, 2, 0, 1, "").is_err());
        assert!(image_grid_png(one, 2, 2, 0, "").is_err());
        assert!(image_grid_png(&[vec![0; 3]], usize::MAX, 1, 1, "").is_err());
        assert!(image_grid_png(&[vec![0; 12]], 2, 1, usize::MAX / 2, "").is_err());
        assert!(image_grid_png(&[vec![0; 12]], 2, 1, 10_000, "").is_err());
        assert!(image_grid_png(one, 2, 9, 1, "a caption much wider than the grid").is_ok());
    }

    #[test]
    fn encode_png_checks_sizes() {
        assert!(encode_png(0, 1, &[]).is_err());
        assert!(encode_png(2, 2, &[0; 11]).is_err());
        let (w, h, rgb) = decode(&encode_png(2, 1, &[1, 2, 3, 4, 5, 6]).unwrap());
        assert_eq!((w, h, rgb), (2, 1, vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn tick_labels_read_well() {
        let labels = |lo, hi, n| {
            let (t, s) = nice_ticks(lo, hi, n);
            let f = TickFormat::for_ticks(&t, s);
            t.iter().map(|v| f.format(*v)).collect::<Vec<_>>()
        };
        assert_eq!(labels(-0.1, 2.1, 5), ["0.0", "0.5", "1.0", "1.5", "2.0"]);
        assert_eq!(
            labels(-0.1, 2.1, 9),
            [
                "0.00", "0.25", "0.50", "0.75", "1.00", "1.25", "1.50", "1.75", "2.00"
            ]
        );
        assert_eq!(
            labels(-2.95, 61.95, 9),
            ["0", "10", "20", "30", "40", "50", "60"]
        );
        assert_eq!(
            labels(-1.0, 1.0, 4),
            ["\u{2212}1.0", "\u{2212}0.5", "0.0", "0.5", "1.0"]
        );
        assert_eq!(labels(0.0, 3e6, 3), ["0", "1e6", "2e6", "3e6"]);
        assert_eq!(TickFormat::Fixed(1).format(-0.0), "0.0");
        assert_eq!(TickFormat::Fixed(0).format(-3.0), "\u{2212}3");
    }
}
