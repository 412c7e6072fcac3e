//! Plot primitives: the embedded font, the colours, PNG rendering, and the two kinds of chart a
//! report draws ([`line_chart`], [`frontier_chart`]) with their ranges, legends and ticks.

use super::html::format_number;
use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use std::fs;
use std::path::Path;

/// The font family every text style below asks for (registered by [`register_fonts`]).
const FONT: &str = "sans-serif";

// Tableau 10 colours: distinct, and readable on white.
pub(super) const BLUE: RGBColor = RGBColor(31, 119, 180);
pub(super) const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub(super) const GREEN: RGBColor = RGBColor(44, 160, 44);
pub(super) const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const BROWN: RGBColor = RGBColor(140, 86, 75);
const PINK: RGBColor = RGBColor(227, 119, 194);
const OLIVE: RGBColor = RGBColor(188, 189, 34);
const CYAN: RGBColor = RGBColor(23, 190, 207);
const PALETTE: [RGBColor; 9] = [BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, OLIVE, CYAN];
pub(super) const GREY: RGBColor = RGBColor(127, 127, 127);

/// The `i`-th colour of the palette, starting over after the last.
pub(super) fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Accuracies are fractions: keep the whole [0, 1] in view, with a little room for the lines.
pub(super) const UNIT_RANGE: Option<(f64, f64)> = Some((-0.03, 1.03));

/// Makes DejaVu Sans (embedded) the `sans-serif` family of plotters, once per process.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fonts = [(FontStyle::Normal, dejavu::sans::regular()), (FontStyle::Bold, dejavu::sans::bold())];
        for (style, bytes) in fonts {
            assert!(
                plotters::style::register_font(FONT, style, bytes).is_ok(),
                "the embedded DejaVu font does not parse"
            );
        }
    });
}

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart on an [`Area`], both axes `f64`.
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// Renders `path` (a PNG of `size` pixels, white background) with `draw`. The image is written to
/// a temporary sibling and renamed into place, so a reader never sees half a PNG.
pub(super) fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    register_fonts();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The extension stays `.png`: the encoder picks the format from it.
    let tmp = path.with_file_name(format!(".tmp-{}-{name}", std::process::id()));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
        drop(root);
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// A named line of a chart; `markers` draws a dot at every point (evaluation series, which have few).
pub(super) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub markers: bool,
}

/// The range of `values` widened by `pad` of its span on each side (a unit span around a single value).
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(1.0) {
        let half = (lo.abs() * 0.1).max(0.5);
        return (lo - half, hi + half);
    }
    (lo - pad * span, hi + pad * span)
}

/// The corner of the plot where the legend hides the fewest points.
fn legend_corner(points: impl Iterator<Item = (f64, f64)>, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    for (px, py) in points {
        let fx = (px - x.0) / (x.1 - x.0);
        let fy = (py - y.0) / (y.1 - y.0);
        let right = fx > 0.55;
        let left = fx < 0.45;
        let upper = fy > 0.6;
        let lower = fy < 0.4;
        for (i, hit) in [upper && right, upper && left, lower && right, lower && left].into_iter().enumerate() {
            counts[i] += hit as usize;
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    vec![
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ]
    .swap_remove(best)
}

/// What [`legend_sample`] draws: a line and a dot.
type LegendSample<DB> = ComposedElement<(i32, i32), DB, PathElement<(i32, i32)>, Circle<(i32, i32), i32>>;

/// The legend sample of a series at `at`: a short line with a dot of radius `marker_size` (0 for
/// a series without markers: hidden under the line, which keeps one element type for both).
fn legend_sample<DB: DrawingBackend>(color: RGBColor, marker_size: i32, at: (i32, i32)) -> LegendSample<DB> {
    EmptyElement::at(at)
        + PathElement::new(vec![(0, 0), (22, 0)], color.stroke_width(3))
        + Circle::new((11, 0), marker_size, color.filled())
}

/// The frame every chart starts from: `title` above, the data ranges `x` and `y`, axes labelled
/// `x_desc` and `y_desc`, a light grid and tick labels by [`format_tick`].
fn axes<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 24))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .max_light_lines(4)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// Draws the legend of the labelled series of `chart` in the corner of `x` × `y` where it hides
/// the fewest of `points` (see [`legend_corner`]).
fn draw_legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    points: impl Iterator<Item = (f64, f64)>,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(legend_corner(points, x, y))
        .margin(12)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(190, 190, 190))
        .draw()
        .map_err(plot_err)
}

/// Draws a line chart of `series` on `area`: a title, labelled axes, light grid, one line per
/// series (dots where it has markers or a single point) and a legend in the emptiest corner.
/// `y_range` fixes the y axis; otherwise it fits the data.
pub(super) fn line_chart(
    area: &Area,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    y_range: Option<(f64, f64)>,
    series: &[Series],
) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let x = padded_range(all().map(|p| p.0), 0.02);
    let y = y_range.unwrap_or_else(|| padded_range(all().map(|p| p.1), 0.08));
    let mut chart = axes(area, title, (x_desc, y_desc), x, y)?;
    for s in series {
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), s.color.stroke_width(2)))
            .map_err(plot_err)?
            .label(s.name.as_str())
            .legend(move |at| legend_sample(s.color, if s.markers { 4 } else { 0 }, at));
        if s.markers || s.points.len() == 1 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, s.color.filled()))).map_err(plot_err)?;
        }
    }
    draw_legend(&mut chart, all(), x, y)
}

/// A tick label: short, without float noise (`0.30000000000000004` → `0.3`).
fn format_tick(v: f64) -> String {
    let s = format_number((v * 1e6).round() / 1e6);
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// One model on the reward/KL plane.
pub(super) struct FrontierPoint {
    pub label: String,
    pub kl: f64,
    pub mean: f64,
    pub ci95: f64,
    pub color: RGBColor,
}

/// Judge reward (mean with a 95% CI bar) against KL(policy ‖ reference), one labelled point per
/// model, joined in order of KL by a thin grey line.
pub(super) fn frontier_chart(area: &Area, points: &[FrontierPoint]) -> Result<()> {
    let max_kl = points.iter().map(|p| p.kl).fold(0.0, f64::max);
    let span = if max_kl > 0.0 { max_kl } else { 1.0 };
    let x = (-0.06 * span, max_kl.max(0.0) + 0.18 * span);
    let ends = points.iter().flat_map(|p| [p.mean - p.ci95, p.mean + p.ci95]);
    let y = padded_range(ends, 0.12);
    let descs = ("KL(policy ‖ reference), nats", "judge reward (mean ± 95% CI)");
    let mut chart = axes(area, "Judge reward against KL from the reference", descs, x, y)?;
    let mut by_kl: Vec<(f64, f64)> = points.iter().map(|p| (p.kl, p.mean)).collect();
    by_kl.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(by_kl, RGBColor(200, 200, 200).stroke_width(1))).map_err(plot_err)?;
    for p in points {
        let style = p.color.stroke_width(2);
        chart
            .draw_series([ErrorBar::new_vertical(p.kl, p.mean - p.ci95, p.mean, p.mean + p.ci95, style, 12)])
            .map_err(plot_err)?;
        chart
            .draw_series([EmptyElement::at((p.kl, p.mean))
                + Circle::new((0, 0), 6, p.color.filled())
                + Text::new(p.label.clone(), (10, -20), (FONT, 16).into_font().color(&p.color))])
            .map_err(plot_err)?
            .label(p.label.as_str())
            .legend(move |at| legend_sample(p.color, 4, at));
    }
    draw_legend(&mut chart, points.iter().map(|p| (p.kl, p.mean)), x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_drop_float_noise() {
        assert_eq!(format_tick(0.1 + 0.2), "0.3");
    }
}
