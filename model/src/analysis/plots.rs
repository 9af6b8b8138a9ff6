//! The analysis figures, as PNGs written atomically (the font, encoder and rename of
//! `plot.rs`):
//!
//! - `plot_magnitudes`: one panel per head, every eigenvalue's magnitude against t (line r joins
//!   the r-th largest magnitude at each t), dark for the largest, light for the smallest;
//! - `plot_complex`: one panel per head, the eigenvalues in the complex plane, each dot coloured
//!   by its t (viridis, with a colour bar);
//! - `plot_heatmap`: the Lyapunov exponents of every prompt token (x: the token, y: the
//!   exponent's rank), on a diverging square-root scale centred at 0 (blue contracts, red
//!   expands) whose limit the caller picks.
//!
//! Panels are laid out in a grid of ceil(sqrt(n)) columns, `PANEL_HEIGHT` pixels a row.
//!
//! Reference test: `model/tests/analysis_cli.rs` (every file is a PNG of the announced size).

use crate::plot::PlotError;
use crate::plot::{encode_png, register_embedded_font, write_atomically, DrawResult, FONT};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

/// The width of every analysis figure.
pub const FIGURE_WIDTH: u32 = 1000;
/// The height of one row of panels, and of the title band above them.
const PANEL_HEIGHT: u32 = 330;
const TITLE_HEIGHT: u32 = 40;
/// The colour bar's strip on the right of a figure.
const BAR_WIDTH: u32 = 120;
/// Slices the colour bar's gradient is drawn in.
const BAR_SLICES: usize = 120;
/// The share of a range added on either side, so no point sits on the frame.
const MARGIN: f64 = 0.05;
/// Rank colours use viridis up to here: its last tenth is too pale to read on white.
const RANK_COLOUR_MAX: f64 = 0.85;
/// The grid lines behind the data: light enough not to compete with it.
const GRID_COLOUR: RGBColor = RGBColor(225, 225, 225);
/// The exponents' colour scale is a power law of this exponent: a square root.
const EXPONENT_GAMMA: f64 = 0.5;
/// Heat maps at most this many tokens wide get the token text as x labels.
const MAX_TEXT_LABELS: usize = 64;

/// matplotlib's viridis at 0, 1/8, .., 1 (perceptually uniform, readable in grey).
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// ColorBrewer's RdBu, reversed: blue at -1, near white at 0, red at +1.
const DIVERGING: [(u8, u8, u8); 7] = [
    (33, 102, 172),
    (103, 169, 207),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (239, 138, 98),
    (178, 24, 43),
];

/// Linear interpolation in a table of colours evenly spaced on [0, 1].
fn interpolate(table: &[(u8, u8, u8)], x: f64) -> RGBColor {
    let x = if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let pos = x * (table.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    let (a, b) = (table[i], table[(i + 1).min(table.len() - 1)]);
    let mix = |p: u8, q: u8| (p as f64 + f * (q as f64 - p as f64)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// viridis at x in [0, 1].
pub fn viridis(x: f64) -> RGBColor {
    interpolate(&VIRIDIS, x)
}

/// The diverging scale at x in [-1, 1] (0 is white).
pub fn diverging(x: f64) -> RGBColor {
    interpolate(&DIVERGING, 0.5 * (x + 1.0))
}

/// The exponent scale: `diverging` at sign(x) (|x| / limit)^EXPONENT_GAMMA, so that the small
/// exponents of distant tokens still show beside the large ones of the nearest.
pub fn exponent_colour(x: f64, limit: f64) -> RGBColor {
    let u = (x.abs() / limit).min(1.0).powf(EXPONENT_GAMMA);
    diverging(u.copysign(x))
}

/// One panel of `plot_magnitudes`.
pub struct MagnitudePanel {
    pub title: String,
    /// Line r: (t, the r-th largest |λ| at t), r = 0 the largest.
    pub lines: Vec<Vec<(f64, f64)>>,
}

/// One panel of `plot_complex`.
pub struct ScatterPanel {
    pub title: String,
    /// (Re λ, Im λ, t)
    pub points: Vec<(f64, f64, f64)>,
}

/// Magnitudes of eigenvalues against t, one panel per head.
pub fn plot_magnitudes(
    path: &Path,
    title: &str,
    axis: &str,
    panels: &[MagnitudePanel],
) -> Result<(), PlotError> {
    let (w, h) = grid_size(panels.len(), false);
    render(path, (w, h), |root| {
        let root = root.titled(title, (FONT, 20))?;
        let areas = root.split_evenly(grid(panels.len()));
        for (area, panel) in areas.iter().zip(panels) {
            draw_magnitude_panel(area, axis, panel)?;
        }
        Ok(())
    })
}

fn draw_magnitude_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    axis: &str,
    panel: &MagnitudePanel,
) -> DrawResult {
    let points = || panel.lines.iter().flatten().copied();
    let xs = span(points().map(|p| p.0));
    let ys = span(points().map(|p| p.1).chain([0.0]));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(axis)
        .y_desc("|λ|")
        .label_style((FONT, 12))
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID_COLOUR)
        .draw()?;
    let n = panel.lines.len().max(2) - 1;
    for (r, line) in panel.lines.iter().enumerate().rev() {
        let colour = viridis(RANK_COLOUR_MAX * r as f64 / n as f64);
        chart.draw_series(LineSeries::new(
            line.iter().copied(),
            colour.stroke_width(1),
        ))?;
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 2, colour.filled())))?;
    }
    Ok(())
}

/// Eigenvalues in the complex plane, coloured by t over `t_range`, one panel per head.
pub fn plot_complex(
    path: &Path,
    title: &str,
    t_range: Range<f64>,
    panels: &[ScatterPanel],
) -> Result<(), PlotError> {
    let (w, h) = grid_size(panels.len(), true);
    render(path, (w, h), |root| {
        let root = root.titled(title, (FONT, 20))?;
        let (main, bar) = root.split_horizontally(w - BAR_WIDTH);
        let areas = main.split_evenly(grid(panels.len()));
        let unit = |t: f64| unit_in(&t_range, t);
        for (area, panel) in areas.iter().zip(panels) {
            draw_scatter_panel(area, panel, &unit)?;
        }
        draw_colour_bar(&bar, t_range.clone(), &|y| viridis(unit(y)))
    })
}

fn draw_scatter_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    panel: &ScatterPanel,
    unit: &dyn Fn(f64) -> f64,
) -> DrawResult {
    let re = span(panel.points.iter().map(|p| p.0).chain([0.0]));
    let im = span(panel.points.iter().map(|p| p.1).chain([0.0]));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(re, im)?;
    chart
        .configure_mesh()
        .x_desc("Re λ")
        .y_desc("Im λ")
        .label_style((FONT, 12))
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID_COLOUR)
        .draw()?;
    // later times on top: the trend the figure is about is where they end up
    let mut points = panel.points.clone();
    points.sort_by(|a, b| a.2.total_cmp(&b.2));
    let dots = points
        .iter()
        .map(|&(x, y, t)| Circle::new((x, y), 3, viridis(unit(t)).filled()));
    chart.draw_series(dots)?;
    Ok(())
}

/// The exponents of each token (`rows[k]`, largest first), coloured from -limit to +limit
/// (beyond it, the end colours); `labels[k]` names token k.
pub fn plot_heatmap(
    path: &Path,
    title: &str,
    rows: &[Vec<f64>],
    labels: &[String],
    limit: f64,
) -> Result<(), PlotError> {
    let (w, h) = (FIGURE_WIDTH, PANEL_HEIGHT * 2 + TITLE_HEIGHT);
    let limit = if limit > 0.0 { limit } else { 1.0 };
    render(path, (w, h), |root| {
        let root = root.titled(title, (FONT, 20))?;
        let (main, bar) = root.split_horizontally(w - BAR_WIDTH);
        draw_heat(&main, rows, labels, limit)?;
        draw_colour_bar(&bar, -limit..limit, &|y| exponent_colour(y, limit))
    })
}

fn draw_heat(
    area: &DrawingArea<BitMapBackend, Shift>,
    rows: &[Vec<f64>],
    labels: &[String],
    limit: f64,
) -> DrawResult {
    let (tokens, m) = (rows.len(), rows.first().map_or(1, Vec::len));
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..tokens as f64 - 0.5, m as f64 + 0.5..0.5)?;
    let label = |x: &f64| {
        let k = x.round();
        let text = (k >= 0.0 && (k as usize) < labels.len() && (x - k).abs() < 1e-9)
            .then(|| labels[k as usize].clone());
        text.unwrap_or_default()
    };
    let with_text = tokens <= MAX_TEXT_LABELS;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(if with_text { "token" } else { "token position" })
        .y_desc("exponent rank")
        .x_labels(if with_text { tokens } else { 10 })
        .x_label_formatter(&|x| {
            if with_text {
                label(x)
            } else {
                format!("{x:.0}")
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 12))
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID_COLOUR)
        .draw()?;
    let cells = rows.iter().enumerate().flat_map(|(k, row)| {
        row.iter().enumerate().map(move |(c, &v)| {
            let (x, y) = (k as f64, (c + 1) as f64);
            let corners = [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)];
            Rectangle::new(corners, exponent_colour(v, limit).filled())
        })
    });
    chart.draw_series(cells)?;
    Ok(())
}

/// A vertical gradient of `map` over `range`, with its ticks (the figure's title names the
/// quantity).
fn draw_colour_bar(
    area: &DrawingArea<BitMapBackend, Shift>,
    range: Range<f64>,
    map: &dyn Fn(f64) -> RGBColor,
) -> DrawResult {
    let range = if range.start < range.end {
        range
    } else {
        range.start - 0.5..range.end + 0.5
    };
    let mut chart = ChartBuilder::on(area)
        .margin_top(20)
        .margin_bottom(40)
        .margin_left(12)
        .right_y_label_area_size(52)
        .build_cartesian_2d(0.0..1.0, range.clone())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style((FONT, 12))
        .draw()?;
    let step = (range.end - range.start) / BAR_SLICES as f64;
    let slices = (0..BAR_SLICES).map(|i| {
        let y0 = range.start + i as f64 * step;
        let colour = map(y0 + 0.5 * step);
        Rectangle::new([(0.0, y0), (1.0, y0 + step)], colour.filled())
    });
    chart.draw_series(slices)?;
    Ok(())
}

/// Draws with `body` into a `size` RGB buffer and writes it to `path` as a PNG.
fn render(
    path: &Path,
    size: (u32, u32),
    body: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<(), PlotError> {
    let render_error = |reason: String| PlotError::Render {
        path: path.to_path_buf(),
        reason,
    };
    if !register_embedded_font() {
        let reason = "the embedded font DejaVuSans.ttf could not be loaded".into();
        return Err(render_error(reason));
    }
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|()| body(&root))
            .and_then(|()| root.present())
            .map_err(|e| render_error(e.to_string()))?;
    }
    let png = encode_png(&rgb, size.0, size.1).map_err(|e| render_error(e.to_string()))?;
    write_atomically(path, &png).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// (rows, columns) of a grid of n panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols).max(1), cols)
}

/// The pixel size of a figure of n panels (plus a colour bar strip when `bar`).
fn grid_size(n: usize, bar: bool) -> (u32, u32) {
    let rows = grid(n).0 as u32;
    let width = FIGURE_WIDTH + if bar { BAR_WIDTH } else { 0 };
    (width, rows * PANEL_HEIGHT + TITLE_HEIGHT)
}

/// The range of the finite values with a margin either side ([-1, 1] around a single value, and
/// [0, 1] when there are none).
fn span(values: impl Iterator<Item = f64>) -> Range<f64> {
    let mut lo_hi: Option<(f64, f64)> = None;
    for v in values.filter(|v| v.is_finite()) {
        lo_hi = Some(lo_hi.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
    }
    match lo_hi {
        None => 0.0..1.0,
        Some((lo, hi)) if lo == hi => lo - 1.0..hi + 1.0,
        Some((lo, hi)) => {
            let pad = MARGIN * (hi - lo);
            lo - pad..hi + pad
        }
    }
}

/// Where x sits in `range`, as a fraction in [0, 1] (0.5 for an empty range).
fn unit_in(range: &Range<f64>, x: f64) -> f64 {
    if range.end > range.start {
        ((x - range.start) / (range.end - range.start)).clamp(0.0, 1.0)
    } else {
        0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_scales_hit_their_anchors() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(diverging(0.0), RGBColor(247, 247, 247));
        assert_eq!(diverging(-1.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(7.0), RGBColor(178, 24, 43), "clamped");
        // halfway between the first two anchors of viridis (1/16)
        assert_eq!(viridis(1.0 / 16.0), RGBColor(70, 23, 103));
    }

    #[test]
    fn grids_hold_every_panel() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(12), (3, 4));
        assert_eq!(grid(5), (2, 3));
        assert_eq!(span([2.0, 2.0].into_iter()), 1.0..3.0);
        assert_eq!(span([f64::NAN].into_iter()), 0.0..1.0);
    }
}
