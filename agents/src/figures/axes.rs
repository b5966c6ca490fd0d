//! Axis ranges and tick positions, chosen the way matplotlib chooses them.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// The view range of one axis: the finite data's extent plus 5% margins, widened around a
/// single value the way matplotlib does, and [0, 1] when there is no data.
pub(super) fn view_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
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
pub(super) fn nice_ticks(lo: f64, hi: f64, nbins: usize) -> (Vec<f64>, f64) {
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
pub(super) enum TickFormat {
    Fixed(usize),
    Sci(usize),
}

impl TickFormat {
    pub(super) fn for_ticks(ticks: &[f64], step: f64) -> Self {
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

    pub(super) fn format(self, v: f64) -> String {
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
pub(super) fn pick_ticks(
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
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
}

impl Axis {
    /// Where `v` falls between `a` (at `lo`) and `b` (at `hi`), unrounded.
    pub(super) fn to_px(&self, v: f64, a: f64, b: f64) -> f64 {
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
pub(super) struct Look {
    pub(super) s: f32,
    pub(super) em: f32,
    pub(super) title_em: f32,
}

impl Look {
    pub(super) fn new(width: u32, height: u32) -> Self {
        let s = (width as f32 / 800.0)
            .min(height as f32 / 450.0)
            .clamp(0.75, 4.0);
        Self {
            s,
            em: 13.9 * s,
            title_em: 16.7 * s,
        }
    }

    pub(super) fn px(&self, v: f32) -> f32 {
        (v * self.s).round()
    }
}

/// One drawable run of finite points of a series.
pub(super) struct Run {
    pub(super) series: usize,
    pub(super) points: Vec<(f64, f64)>,
}
