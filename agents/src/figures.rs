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
use std::ops::Range;
use std::sync::OnceLock;

use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _, point};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// DejaVu Sans, the font matplotlib uses by default (Bitstream Vera licence, see
/// `assets/DejaVuSans-LICENSE.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// matplotlib's `tab10` palette, in its order.
const TAB10: [[u8; 3]; 10] = [
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

const WHITE_RGB: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [0x1a, 0x1a, 0x1a];
const GRID: [u8; 3] = [0xe5, 0xe5, 0xe5];
const LEGEND_EDGE: [u8; 3] = [0xcc, 0xcc, 0xcc];

/// The largest width or height accepted, in pixels.
const MAX_SIDE: usize = 16_384;
/// The largest image accepted, in pixels (width × height).
const MAX_PIXELS: usize = 1 << 26;
/// The smallest line chart that still holds axes, ticks and labels.
const MIN_CHART: (u32, u32) = (160, 120);

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
fn checked_size(width: usize, height: usize) -> Result<(usize, usize), FigureError> {
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

fn draw_err(e: impl std::fmt::Display) -> FigureError {
    FigureError::Draw(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Text

/// The embedded font, parsed once per process.
fn font() -> Result<&'static FontRef<'static>, FigureError> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or(FigureError::Font)
}

/// ab_glyph's scale for a font size given, like matplotlib's, as the em size in pixels.
fn px_scale(font: &FontRef<'_>, em: f32) -> PxScale {
    let upem = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(em * font.height_unscaled() / upem)
}

/// Horizontal anchor of a text.
#[derive(Clone, Copy)]
enum HAlign {
    Left,
    Center,
    Right,
}

/// Vertical anchor of a text.
#[derive(Clone, Copy)]
enum VAlign {
    /// The top of the font's ascent.
    Top,
    /// Halfway up a digit (how tick labels sit against their tick).
    Center,
    /// The bottom of the font's descent.
    Bottom,
}

/// How to draw one text.
#[derive(Clone, Copy)]
struct TextStyle {
    em: f32,
    color: [u8; 3],
    h: HAlign,
    v: VAlign,
}

/// The advance width of `text` in pixels.
fn text_width(font: &FontRef<'_>, em: f32, text: &str) -> f32 {
    let sf = font.as_scaled(px_scale(font, em));
    let mut caret = 0.0;
    let mut prev = None;
    for c in text.chars().filter(|c| !c.is_control()) {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            caret += sf.kern(p, id);
        }
        caret += sf.h_advance(id);
        prev = Some(id);
    }
    caret
}

/// The height from the bottom of the descent to the top of the ascent, in pixels.
fn text_height(font: &FontRef<'_>, em: f32) -> f32 {
    let sf = font.as_scaled(px_scale(font, em));
    sf.ascent() - sf.descent()
}

/// A rasterised line of text: coverage in [0, 1], row-major.
struct Raster {
    w: usize,
    h: usize,
    cov: Vec<f32>,
    /// Where the pen started, from the raster's left edge.
    origin_x: f32,
    /// The baseline, from the raster's top edge.
    baseline: f32,
    /// The advance width.
    advance: f32,
    ascent: f32,
    descent: f32,
}

fn rasterize(font: &FontRef<'_>, em: f32, text: &str) -> Raster {
    let scale = px_scale(font, em);
    let sf = font.as_scaled(scale);
    let (ascent, descent) = (sf.ascent(), sf.descent());
    let origin_x = (em * 0.25).ceil() + 1.0;
    let baseline = ascent.ceil() + 1.0;
    let advance = text_width(font, em, text);
    let w = (origin_x * 2.0 + advance).ceil() as usize;
    let h = (baseline - descent.floor()) as usize + 2;
    let mut cov = vec![0f32; w * h];
    let mut caret = origin_x;
    let mut prev = None;
    for c in text.chars().filter(|c| !c.is_control()) {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            caret += sf.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, c| {
                let x = b.min.x as i64 + i64::from(gx);
                let y = b.min.y as i64 + i64::from(gy);
                if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
                    let v = &mut cov[y as usize * w + x as usize];
                    *v = (*v + c).min(1.0);
                }
            });
        }
        caret += sf.h_advance(id);
        prev = Some(id);
    }
    Raster {
        w,
        h,
        cov,
        origin_x,
        baseline,
        advance,
        ascent,
        descent,
    }
}

/// An RGB8 image being drawn on.
struct Canvas<'a> {
    rgb: &'a mut [u8],
    w: usize,
    h: usize,
}

impl Canvas<'_> {
    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
        if alpha <= 0.0 || x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let a = alpha.min(1.0);
        let i = (y as usize * self.w + x as usize) * 3;
        for (d, s) in self.rgb[i..i + 3].iter_mut().zip(color) {
            *d = (f32::from(*d) * (1.0 - a) + f32::from(s) * a).round() as u8;
        }
    }

    /// Fills the pixels `[x0, x1) × [y0, y1)`.
    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3], alpha: f32) {
        for y in y0.max(0)..y1.min(self.h as i64) {
            for x in x0.max(0)..x1.min(self.w as i64) {
                self.blend(x, y, color, alpha);
            }
        }
    }

    /// Draws `text` anchored at (x, y); rotated texts read bottom to top, anchored by their
    /// own (unrotated) alignment.
    fn text(
        &mut self,
        font: &FontRef<'_>,
        text: &str,
        x: f32,
        y: f32,
        style: TextStyle,
        rotated: bool,
    ) {
        if text.is_empty() {
            return;
        }
        let r = rasterize(font, style.em, text);
        // Pen position along the text's own axes, relative to the anchor.
        let along = match style.h {
            HAlign::Left => 0.0,
            HAlign::Center => -r.advance / 2.0,
            HAlign::Right => -r.advance,
        };
        let digit_h = 0.729 * style.em;
        let base = match style.v {
            VAlign::Top => r.ascent,
            VAlign::Center => digit_h / 2.0,
            VAlign::Bottom => r.descent,
        };
        for ty in 0..r.h {
            for tx in 0..r.w {
                let c = r.cov[ty * r.w + tx];
                if c <= 0.0 {
                    continue;
                }
                // Offsets from the pen origin on the baseline.
                let dx = tx as f32 - r.origin_x + along;
                let dy = ty as f32 - r.baseline + base;
                let (px, py) = if rotated {
                    (x + dy, y - dx)
                } else {
                    (x + dx, y + dy)
                };
                self.blend(px.round() as i64, py.round() as i64, style.color, c);
            }
        }
    }
}

/// Splits `text` into lines no wider than `max_w` where word breaks allow.
fn wrap_words(text: &str, max_w: f32, measure: &dyn Fn(&str) -> f32) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.lines() {
        let mut line = String::new();
        for word in para.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if line.is_empty() || measure(&candidate) <= max_w {
                line = candidate;
            } else {
                lines.push(std::mem::replace(&mut line, word.to_string()));
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Axes and ticks

/// The view range of one axis: the finite data's extent plus 5% margins, widened around a
/// single value the way matplotlib does, and [0, 1] when there is no data.
fn view_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(hi.abs()) || span < f64::MIN_POSITIVE {
        let mid = 0.5 * (lo + hi);
        let d = if mid == 0.0 { 0.05 } else { 0.05 * mid.abs() };
        return (mid - d, mid + d);
    }
    let m = 0.05 * span;
    let (a, b) = (lo - m, hi + m);
    if a.is_finite() && b.is_finite() && (b - a).is_finite() {
        (a, b)
    } else {
        (lo, hi)
    }
}

/// Tick positions inside `[lo, hi]` at a "nice" step (1, 2, 2.5, 5 × 10^k) with at most
/// `nbins` intervals, like matplotlib's `MaxNLocator`; returns the ticks and the step.
fn nice_ticks(lo: f64, hi: f64, nbins: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / nbins.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return (vec![lo], 1.0);
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let first = (lo / step - 1e-9).ceil();
    let last = (hi / step + 1e-9).floor();
    let n = (last - first).clamp(-1.0, 100.0) as i64 + 1;
    let ticks = (0..n)
        .map(|k| {
            let t = (first + k as f64) * step;
            // Snap float noise to zero so "-0" or "1e-17" never shows.
            if t.abs() < step * 1e-9 { 0.0 } else { t }
        })
        .filter(|t| *t >= lo && *t <= hi)
        .collect();
    (ticks, step)
}

/// How tick values are written.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TickFormat {
    Fixed(usize),
    Sci(usize),
}

impl TickFormat {
    fn for_ticks(ticks: &[f64], step: f64) -> Self {
        let big = ticks.iter().fold(0f64, |m, t| m.max(t.abs()));
        let decimals = |s: f64| {
            (0..=12)
                .find(|d| {
                    let v = s * 10f64.powi(*d);
                    (v - v.round()).abs() < 1e-6 * v.abs().max(1.0)
                })
                .unwrap_or(12)
        };
        if big >= 1e6 || (big > 0.0 && big < 1e-4) {
            let exp = big.log10().floor();
            TickFormat::Sci(decimals(step / 10f64.powf(exp)).min(6) as usize)
        } else {
            TickFormat::Fixed(decimals(step) as usize)
        }
    }

    fn format(self, v: f64) -> String {
        let s = match self {
            TickFormat::Fixed(d) => format!("{v:.d$}"),
            TickFormat::Sci(_) if v == 0.0 => "0".to_string(),
            TickFormat::Sci(d) => format!("{v:.d$e}"),
        };
        // Never print "-0"; use a real minus sign, as matplotlib does.
        let negative_zero = s.starts_with('-')
            && s[1..]
                .split('e')
                .next()
                .is_some_and(|m| m.chars().all(|c| matches!(c, '0' | '.')));
        let s = if negative_zero { &s[1..] } else { &s[..] };
        s.replace('-', "\u{2212}")
    }
}

/// Ticks for one axis, like matplotlib's `MaxNLocator("auto")`: at most 9 intervals and
/// about one per `spacing_px`, the most whose labels `fit`, preferring two ticks or more.
fn pick_ticks(
    lo: f64,
    hi: f64,
    length_px: f32,
    spacing_px: f32,
    fits: impl Fn(&[String]) -> bool,
) -> (Vec<f64>, Vec<String>) {
    let max_bins = ((length_px / spacing_px.max(1.0)) as usize).clamp(1, 9);
    let mut fallback = None;
    for nbins in (1..=max_bins).rev() {
        let (ticks, step) = nice_ticks(lo, hi, nbins);
        let fmt = TickFormat::for_ticks(&ticks, step);
        let labels: Vec<String> = ticks.iter().map(|t| fmt.format(*t)).collect();
        if fits(&labels) {
            if ticks.len() >= 2 {
                return (ticks, labels);
            }
            fallback.get_or_insert((ticks, labels));
        } else if nbins == 1 {
            fallback.get_or_insert((ticks, labels));
        }
    }
    fallback.unwrap_or_default()
}

/// A linear plotters axis over `lo..hi` (no ticks of its own: they are drawn directly).
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
}

impl Axis {
    /// Where `v` falls between `a` (at `lo`) and `b` (at `hi`), unrounded.
    fn to_px(&self, v: f64, a: f64, b: f64) -> f64 {
        let t = (v - self.lo) / (self.hi - self.lo);
        if t.is_finite() {
            a + t * (b - a)
        } else {
            (a + b) / 2.0
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        // `as` saturates, so far-out values stay far out instead of wrapping.
        self.to_px(*v, f64::from(limit.0), f64::from(limit.1))
            .round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        Vec::new()
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

// ---------------------------------------------------------------------------------------------
// Line chart

/// Sizes for one chart, in pixels, following matplotlib's defaults at 100 dpi
/// (10 pt text, 12 pt title, 3.5 pt ticks), scaled with the figure.
struct Look {
    s: f32,
    em: f32,
    title_em: f32,
}

impl Look {
    fn new(width: u32, height: u32) -> Self {
        let s = (width as f32 / 800.0)
            .min(height as f32 / 450.0)
            .clamp(0.75, 4.0);
        Self {
            s,
            em: 13.9 * s,
            title_em: 16.7 * s,
        }
    }

    fn px(&self, v: f32) -> f32 {
        (v * self.s).round()
    }
}

/// One drawable run of finite points of a series.
struct Run {
    series: usize,
    points: Vec<(f64, f64)>,
}

/// The plot rectangle: pixel columns `left..=right`, rows `top..=bottom`.
#[derive(Clone, Copy)]
struct Frame {
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
}

fn draw_line_chart(
    canvas: &mut Canvas<'_>,
    font: &FontRef<'static>,
    chart: &LineChart,
) -> Result<(), FigureError> {
    let look = Look::new(chart.width, chart.height);
    let (w, h) = (chart.width as f32, chart.height as f32);

    // Finite runs: a non-finite point breaks its line.
    let mut runs: Vec<Run> = Vec::new();
    for (i, s) in chart.series.iter().enumerate() {
        let mut cur = Vec::new();
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                cur.push((x, y));
            } else if !cur.is_empty() {
                runs.push(Run {
                    series: i,
                    points: std::mem::take(&mut cur),
                });
            }
        }
        if !cur.is_empty() {
            runs.push(Run {
                series: i,
                points: cur,
            });
        }
    }
    let all = || runs.iter().flat_map(|r| r.points.iter());
    let (x0, x1) = view_range(all().map(|p| p.0));
    let (y0, y1) = view_range(all().map(|p| p.1));
    let xa = Axis { lo: x0, hi: x1 };
    let ya = Axis { lo: y0, hi: y1 };

    // Layout, from the outside in.
    let outer = look.px(8.0);
    let tick_len = look.px(4.9).max(2.0);
    let tick_pad = look.px(4.9);
    let label_pad = look.px(5.6);
    let text_h = text_height(font, look.em);
    let title = chart.title.trim();
    let x_label = chart.x_label.trim();
    let y_label = chart.y_label.trim();
    let top = if title.is_empty() {
        outer + look.px(8.0)
    } else {
        outer + text_height(font, look.title_em) + look.px(8.3)
    };
    let bottom_band = tick_len
        + tick_pad
        + text_h
        + if x_label.is_empty() {
            0.0
        } else {
            label_pad + text_h
        }
        + outer;
    let plot_h = h - top - bottom_band;
    let width_of = |l: &String| text_width(font, look.em, l);
    let (y_ticks, y_labels) = pick_ticks(y0, y1, plot_h, 2.0 * look.em, |labels| {
        labels.len() as f32 * text_h * 1.8 <= plot_h
    });
    let y_tick_w = y_labels.iter().map(width_of).fold(0f32, f32::max);
    let left = outer
        + if y_label.is_empty() {
            0.0
        } else {
            text_h + label_pad
        }
        + y_tick_w
        + tick_pad
        + tick_len;
    let right_guess = look.px(20.0);
    let plot_w = w - left - right_guess;
    let (x_ticks, x_labels) = pick_ticks(x0, x1, plot_w, 3.0 * look.em, |labels| {
        let widest = labels.iter().map(width_of).fold(0f32, f32::max);
        labels.len() as f32 * (widest + look.em) <= plot_w
    });
    let last_half = x_labels.last().map(|l| width_of(l) / 2.0).unwrap_or(0.0);
    let right_margin = right_guess.max(last_half + look.px(4.0));
    let frame = Frame {
        left: left.round() as i64,
        right: (w - right_margin).round() as i64 - 1,
        top: top.round() as i64,
        bottom: (h - bottom_band).round() as i64 - 1,
    };
    if frame.right - frame.left < 20 || frame.bottom - frame.top < 20 {
        return Err(FigureError::InvalidSize {
            width: chart.width.into(),
            height: chart.height.into(),
            reason: "too small for the axes, ticks and labels",
        });
    }
    let px_x = |v: f64| xa.to_px(v, frame.left as f64, frame.right as f64);
    let px_y = |v: f64| ya.to_px(v, frame.bottom as f64, frame.top as f64);

    // Grid under everything.
    for &t in &x_ticks {
        let x = px_x(t).round() as i64;
        canvas.fill(x, frame.top, x + 1, frame.bottom + 1, GRID, 1.0);
    }
    for &t in &y_ticks {
        let y = px_y(t).round() as i64;
        canvas.fill(frame.left, y, frame.right + 1, y + 1, GRID, 1.0);
    }

    // The lines, anti-aliased.
    let line_w = look.px(2.0).max(1.0);
    draw_runs(canvas, frame, &xa, &ya, &runs, line_w)?;

    // Axes box, ticks and tick labels.
    let (l, r, t, b) = (frame.left, frame.right, frame.top, frame.bottom);
    canvas.fill(l, t, r + 1, t + 1, INK, 1.0);
    canvas.fill(l, b, r + 1, b + 1, INK, 1.0);
    canvas.fill(l, t, l + 1, b + 1, INK, 1.0);
    canvas.fill(r, t, r + 1, b + 1, INK, 1.0);
    let tl = tick_len as i64;
    let tick_style = |h, v| TextStyle {
        em: look.em,
        color: INK,
        h,
        v,
    };
    for (&tv, label) in x_ticks.iter().zip(&x_labels) {
        let x = px_x(tv).round() as i64;
        canvas.fill(x, b + 1, x + 1, b + 1 + tl, INK, 1.0);
        let y = (b + 1) as f32 + tick_len + tick_pad;
        let style = tick_style(HAlign::Center, VAlign::Top);
        canvas.text(font, label, x as f32 + 0.5, y, style, false);
    }
    for (&tv, label) in y_ticks.iter().zip(&y_labels) {
        let y = px_y(tv).round() as i64;
        canvas.fill(l - tl, y, l, y + 1, INK, 1.0);
        let x = l as f32 - tick_len - tick_pad;
        let style = tick_style(HAlign::Right, VAlign::Center);
        canvas.text(font, label, x, y as f32 + 0.5, style, false);
    }

    // Axis labels and title, centred on the axes as in matplotlib.
    let mid_x = (l + r) as f32 / 2.0 + 0.5;
    let mid_y = (t + b) as f32 / 2.0 + 0.5;
    let label_style = |h, v| TextStyle {
        em: look.em,
        color: INK,
        h,
        v,
    };
    if !x_label.is_empty() {
        let y = (b + 1) as f32 + tick_len + tick_pad + text_h + label_pad;
        let style = label_style(HAlign::Center, VAlign::Top);
        canvas.text(font, x_label, mid_x, y, style, false);
    }
    if !y_label.is_empty() {
        let x = l as f32 - tick_len - tick_pad - y_tick_w - label_pad;
        // Rotated: the text's bottom (descent side) faces the axes.
        let style = label_style(HAlign::Center, VAlign::Bottom);
        canvas.text(font, y_label, x, mid_y, style, true);
    }
    if !title.is_empty() {
        let style = TextStyle {
            em: look.title_em,
            color: INK,
            h: HAlign::Center,
            v: VAlign::Bottom,
        };
        canvas.text(font, title, mid_x, t as f32 - look.px(8.3), style, false);
    }
    if runs.is_empty() {
        let style = TextStyle {
            em: look.em,
            color: [0x80, 0x80, 0x80],
            h: HAlign::Center,
            v: VAlign::Center,
        };
        canvas.text(font, "no data", mid_x, mid_y, style, false);
    }

    let show_legend = chart.series.len() > 1 || chart.series.iter().any(|s| !s.label.is_empty());
    if show_legend {
        draw_legend(
            canvas, font, &look, chart, &runs, frame, line_w, &px_x, &px_y,
        );
    }
    Ok(())
}

/// Draws the runs with plotters at twice the resolution, then averages 2×2 blocks back into
/// the canvas: anti-aliased lines over the grid already there.
fn draw_runs(
    canvas: &mut Canvas<'_>,
    frame: Frame,
    xa: &Axis,
    ya: &Axis,
    runs: &[Run],
    line_w: f32,
) -> Result<(), FigureError> {
    if runs.is_empty() {
        return Ok(());
    }
    // Only the plot rectangle, plus room for line ends, is supersampled.
    let pad = (line_w.ceil() as i64) + 2;
    let rx0 = (frame.left - pad).max(0) as usize;
    let ry0 = (frame.top - pad).max(0) as usize;
    let rx1 = ((frame.right + 1 + pad) as usize).min(canvas.w);
    let ry1 = ((frame.bottom + 1 + pad) as usize).min(canvas.h);
    let (rw, rh) = (rx1 - rx0, ry1 - ry0);
    let (bw, bh) = (rw * 2, rh * 2);
    let mut big = vec![0u8; bw * bh * 3];
    for y in 0..bh {
        let src = &canvas.rgb[((ry0 + y / 2) * canvas.w + rx0) * 3..][..rw * 3];
        let dst = &mut big[y * bw * 3..][..bw * 3];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&src[(x / 2) * 3..][..3]);
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut big, (bw as u32, bh as u32)).into_drawing_area();
        // Pixel centres: 1x column c is 2x columns 2c and 2c + 1.
        let sx = |c: i64| (2 * (c - rx0 as i64)) as i32;
        let sy = |c: i64| (2 * (c - ry0 as i64)) as i32;
        let area = root.apply_coord_spec(Cartesian2d::<Axis, Axis>::new(
            xa.clone(),
            ya.clone(),
            (
                sx(frame.left)..sx(frame.right) + 1,
                sy(frame.bottom) + 1..sy(frame.top),
            ),
        ));
        let stroke = (2.0 * line_w).round().max(1.0) as u32;
        for run in runs {
            let [r, g, b] = TAB10[run.series % TAB10.len()];
            let color = RGBColor(r, g, b);
            if run.points.len() == 1 {
                let dot = Circle::new(run.points[0], stroke + 2, color.filled());
                area.draw(&dot).map_err(draw_err)?;
            } else {
                let series =
                    LineSeries::new(run.points.iter().copied(), color.stroke_width(stroke));
                for element in series {
                    area.draw(&element).map_err(draw_err)?;
                }
            }
        }
        root.present().map_err(draw_err)?;
    }
    for y in 0..rh {
        for x in 0..rw {
            let o = ((ry0 + y) * canvas.w + rx0 + x) * 3;
            for ch in 0..3 {
                let at = |yy: usize, xx: usize| u32::from(big[(yy * bw + xx) * 3 + ch]);
                let sum = at(2 * y, 2 * x)
                    + at(2 * y, 2 * x + 1)
                    + at(2 * y + 1, 2 * x)
                    + at(2 * y + 1, 2 * x + 1);
                canvas.rgb[o + ch] = ((sum + 2) / 4) as u8;
            }
        }
    }
    Ok(())
}

fn legend_label(chart: &LineChart, i: usize, has_data: bool) -> String {
    let l = chart.series[i].label.trim();
    let l = if l.is_empty() {
        format!("series {}", i + 1)
    } else {
        l.to_string()
    };
    if has_data {
        l
    } else {
        format!("{l} (no data)")
    }
}

/// matplotlib's legend (white at 80% opacity, light grey edge, 2-em line samples), in the
/// corner that hides the fewest line pixels, trying the upper right first (`loc="best"`
/// restricted to the corners).
#[allow(clippy::too_many_arguments)]
fn draw_legend(
    canvas: &mut Canvas<'_>,
    font: &FontRef<'static>,
    look: &Look,
    chart: &LineChart,
    runs: &[Run],
    frame: Frame,
    line_w: f32,
    px_x: &dyn Fn(f64) -> f64,
    px_y: &dyn Fn(f64) -> f64,
) {
    let em = look.em;
    let labels: Vec<String> = (0..chart.series.len())
        .map(|i| legend_label(chart, i, runs.iter().any(|r| r.series == i)))
        .collect();
    let border = (0.4 * em).round();
    let handle = (2.0 * em).round();
    let handle_pad = (0.8 * em).round();
    let row = text_height(font, em);
    let spacing = (0.5 * em).round();
    let text_w = labels
        .iter()
        .map(|l| text_width(font, em, l))
        .fold(0f32, f32::max);
    let bw = (2.0 * border + handle + handle_pad + text_w).ceil() as i64;
    let n = labels.len() as f32;
    let bh = (2.0 * border + n * row + (n - 1.0) * spacing).ceil() as i64;
    let inset = (0.5 * em).round() as i64;
    let f = frame;
    let corners = [
        (f.right - inset - bw, f.top + inset),
        (f.left + inset, f.top + inset),
        (f.left + inset, f.bottom - inset - bh),
        (f.right - inset - bw, f.bottom - inset - bh),
    ];
    let mut hits = [0usize; 4];
    for run in runs {
        let pts: Vec<(f64, f64)> = run.points.iter().map(|p| (px_x(p.0), px_y(p.1))).collect();
        let mut visit = |(x, y): (f64, f64)| {
            for (k, &(cx, cy)) in corners.iter().enumerate() {
                if x >= cx as f64
                    && x <= (cx + bw) as f64
                    && y >= cy as f64
                    && y <= (cy + bh) as f64
                {
                    hits[k] += 1;
                }
            }
        };
        for seg in pts.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) / 2.0).clamp(1.0, 4000.0) as usize;
            for k in 0..n {
                let t = k as f64 / n as f64;
                visit((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
            }
        }
        if let Some(&p) = pts.last() {
            visit(p);
        }
    }
    let best = (0..4).min_by_key(|&k| (hits[k], k)).unwrap_or(0);
    let (bx, by) = corners[best];

    canvas.fill(bx, by, bx + bw, by + bh, WHITE_RGB, 0.8);
    canvas.fill(bx, by, bx + bw, by + 1, LEGEND_EDGE, 1.0);
    canvas.fill(bx, by + bh - 1, bx + bw, by + bh, LEGEND_EDGE, 1.0);
    canvas.fill(bx, by, bx + 1, by + bh, LEGEND_EDGE, 1.0);
    canvas.fill(bx + bw - 1, by, bx + bw, by + bh, LEGEND_EDGE, 1.0);
    let lw = line_w.round().max(1.0) as i64;
    for (i, label) in labels.iter().enumerate() {
        let mid = by as f32 + border + i as f32 * (row + spacing) + row / 2.0;
        let x0 = bx + border as i64;
        let y0 = mid.round() as i64 - lw / 2;
        canvas.fill(
            x0,
            y0,
            x0 + handle as i64,
            y0 + lw,
            TAB10[i % TAB10.len()],
            1.0,
        );
        let style = TextStyle {
            em,
            color: INK,
            h: HAlign::Left,
            v: VAlign::Center,
        };
        let tx = x0 as f32 + handle + handle_pad;
        canvas.text(font, label, tx, mid, style, false);
    }
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
