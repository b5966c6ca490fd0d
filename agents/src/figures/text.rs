//! Text for figures: layout and rasterisation with `ab_glyph` from the embedded font, onto
//! an RGB canvas.

use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _, point};

use super::*;

/// The embedded font, parsed once per process.
pub(super) fn font() -> Result<&'static FontRef<'static>, FigureError> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or(FigureError::Font)
}

/// ab_glyph's scale for a font size given, like matplotlib's, as the em size in pixels.
pub(super) fn px_scale(font: &FontRef<'_>, em: f32) -> PxScale {
    let upem = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(em * font.height_unscaled() / upem)
}

/// Horizontal anchor of a text.
#[derive(Clone, Copy)]
pub(super) enum HAlign {
    Left,
    Center,
    Right,
}

/// Vertical anchor of a text.
#[derive(Clone, Copy)]
pub(super) enum VAlign {
    /// The top of the font's ascent.
    Top,
    /// Halfway up a digit (how tick labels sit against their tick).
    Center,
    /// The bottom of the font's descent.
    Bottom,
}

/// How to draw one text.
#[derive(Clone, Copy)]
pub(super) struct TextStyle {
    pub(super) em: f32,
    pub(super) color: [u8; 3],
    pub(super) h: HAlign,
    pub(super) v: VAlign,
}

/// The advance width of `text` in pixels.
pub(super) fn text_width(font: &FontRef<'_>, em: f32, text: &str) -> f32 {
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
pub(super) fn text_height(font: &FontRef<'_>, em: f32) -> f32 {
    let sf = font.as_scaled(px_scale(font, em));
    sf.ascent() - sf.descent()
}

/// A rasterised line of text: coverage in [0, 1], row-major.
pub(super) struct Raster {
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) cov: Vec<f32>,
    /// Where the pen started, from the raster's left edge.
    pub(super) origin_x: f32,
    /// The baseline, from the raster's top edge.
    pub(super) baseline: f32,
    /// The advance width.
    pub(super) advance: f32,
    pub(super) ascent: f32,
    pub(super) descent: f32,
}

pub(super) fn rasterize(font: &FontRef<'_>, em: f32, text: &str) -> Raster {
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
pub(super) struct Canvas<'a> {
    pub(super) rgb: &'a mut [u8],
    pub(super) w: usize,
    pub(super) h: usize,
}

impl Canvas<'_> {
    pub(super) fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
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
    pub(super) fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3], alpha: f32) {
        for y in y0.max(0)..y1.min(self.h as i64) {
            for x in x0.max(0)..x1.min(self.w as i64) {
                self.blend(x, y, color, alpha);
            }
        }
    }

    /// Draws `text` anchored at (x, y); rotated texts read bottom to top, anchored by their
    /// own (unrotated) alignment.
    pub(super) fn text(
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
pub(super) fn wrap_words(text: &str, max_w: f32, measure: &dyn Fn(&str) -> f32) -> Vec<String> {
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
