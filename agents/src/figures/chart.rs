//! Drawing a line chart: frame, grid, ticks, labels, data lines and legend.

use ab_glyph::FontRef;
use plotters::prelude::*;

use super::text::TextStyle;
use super::*;

/// The plot rectangle: pixel columns `left..=right`, rows `top..=bottom`.
#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) left: i64,
    pub(super) right: i64,
    pub(super) top: i64,
    pub(super) bottom: i64,
}

pub(super) fn draw_line_chart(
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
pub(super) fn draw_runs(
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

pub(super) fn legend_label(chart: &LineChart, i: usize, has_data: bool) -> String {
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
pub(super) fn draw_legend(
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
