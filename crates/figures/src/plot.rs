//! Plots with plotters, written as PNG and SVG side by side. Text is rendered with the
//! bundled DejaVu Sans (no system fonts needed).

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::FigureError;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// One curve: (x, y, optional ± error) points, drawn as a line with markers.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, Option<f64>)>,
    /// Draw markers only (no connecting line).
    pub scatter: bool,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points: points.into_iter().map(|(x, y)| (x, y, None)).collect(),
            scatter: false,
        }
    }

    pub fn with_errors(label: impl Into<String>, points: Vec<(f64, f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points: points
                .into_iter()
                .map(|(x, y, e)| (x, y, Some(e)))
                .collect(),
            scatter: false,
        }
    }

    pub fn scatter(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            scatter: true,
            ..Series::line(label, points)
        }
    }
}

/// Values against their rank k = 1, 2, … (spectra drawn over k).
pub fn by_rank(values: &[f64]) -> Vec<(f64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64, *v))
        .collect()
}

/// One chart.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// Horizontal reference lines (value, label).
    pub hlines: Vec<(f64, String)>,
    /// Fixed y range; otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
}

/// A 2-D scalar field drawn as a heat map, with trajectories and curves on top.
#[derive(Clone, Debug)]
pub struct FieldPanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Values on a `res × res` grid, row-major from the bottom-left; shaded by rank.
    pub field: Vec<f64>,
    pub res: usize,
    pub paths: Vec<Series>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes `stem.png` and `stem.svg` with the panels in a grid of `cols` columns.
pub fn save(
    stem: &Path,
    panels: &[Panel],
    cols: usize,
    panel_size: (u32, u32),
) -> Result<(), FigureError> {
    let rows = panels.len().div_ceil(cols.max(1)) as u32;
    let size = (panel_size.0 * cols as u32, panel_size.1 * rows);
    write_both(
        stem,
        size,
        |r| draw_grid(r, panels, cols),
        |r| draw_grid(r, panels, cols),
    )
}

/// Writes `stem.png` and `stem.svg` with field panels side by side.
pub fn save_fields(
    stem: &Path,
    panels: &[FieldPanel],
    panel_size: (u32, u32),
) -> Result<(), FigureError> {
    let size = (panel_size.0 * panels.len() as u32, panel_size.1);
    write_both(
        stem,
        size,
        |r| draw_fields(r, panels),
        |r| draw_fields(r, panels),
    )
}

/// Draws the same picture into `stem.png` and `stem.svg`. Each file is drawn under a
/// temporary name in the same folder and renamed into place, so a killed run never
/// leaves a half-drawn figure.
fn write_both(
    stem: &Path,
    size: (u32, u32),
    png_draw: impl for<'a, 'b> Fn(
        &'a DrawingArea<BitMapBackend<'b>, Shift>,
    ) -> DrawResult<BitMapBackend<'b>>,
    svg_draw: impl for<'a, 'b> Fn(&'a DrawingArea<SVGBackend<'b>, Shift>) -> DrawResult<SVGBackend<'b>>,
) -> Result<(), FigureError> {
    register_font();
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| FigureError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let (png_tmp, svg_tmp) = (
        stem.with_extension("partial.png"),
        stem.with_extension("partial.svg"),
    );
    {
        let root = BitMapBackend::new(&png_tmp, size).into_drawing_area();
        png_draw(&root).map_err(|e| plot_err(&png, e))?;
        root.present().map_err(|e| plot_err(&png, e))?;
    }
    {
        let root = SVGBackend::new(&svg_tmp, size).into_drawing_area();
        svg_draw(&root).map_err(|e| plot_err(&svg, e))?;
        root.present().map_err(|e| plot_err(&svg, e))?;
    }
    for (from, to) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
        std::fs::rename(from, to)
            .map_err(|e| FigureError::Io(format!("cannot write {}: {e}", to.display())))?;
    }
    Ok(())
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> FigureError {
    FigureError::Io(format!("cannot draw {}: {e}", path.display()))
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    cols: usize,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let rows = panels.len().div_ceil(cols.max(1));
    let areas = root.split_evenly((rows, cols.max(1)));
    for (area, p) in areas.iter().zip(panels) {
        let (x0, x1, y0, y1) = bounds(p);
        // A log axis over less than a decade would get no ticks: draw it linear.
        let p = &Panel {
            x_log: p.x_log && x1 / x0 >= 10.0,
            y_log: p.y_log && y1 / y0 >= 10.0,
            ..p.clone()
        };
        let (x0, x1, y0, y1) = bounds(p);
        match (p.x_log, p.y_log) {
            (false, false) => draw_panel(area, p, x0..x1, y0..y1)?,
            (true, false) => draw_panel(area, p, (x0..x1).log_scale(), y0..y1)?,
            (false, true) => draw_panel(area, p, x0..x1, (y0..y1).log_scale())?,
            (true, true) => draw_panel(area, p, (x0..x1).log_scale(), (y0..y1).log_scale())?,
        }
    }
    Ok(())
}

/// Data bounds with a margin (multiplicative on log axes); non-positive values are skipped
/// on log axes.
fn bounds(p: &Panel) -> (f64, f64, f64, f64) {
    let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let xs: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.0))
        .filter(|v| ok(*v, p.x_log))
        .collect();
    let mut ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| {
            s.points.iter().flat_map(|q| {
                let e = q.2.unwrap_or(0.0);
                [q.1 - e, q.1 + e, q.1]
            })
        })
        .filter(|v| ok(*v, p.y_log))
        .collect();
    ys.extend(p.hlines.iter().map(|h| h.0).filter(|v| ok(*v, p.y_log)));
    let span = |v: &[f64], log: bool| -> (f64, f64) {
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
                (l.min(*x), h.max(*x))
            });
        if !lo.is_finite() {
            return if log { (0.1, 10.0) } else { (0.0, 1.0) };
        }
        if log {
            let (lo, hi) = if lo == hi {
                (lo / 2.0, hi * 2.0)
            } else {
                (lo, hi)
            };
            (lo / 1.5, hi * 1.5)
        } else {
            let pad = ((hi - lo) * 0.08).max(1e-12 + hi.abs() * 0.05);
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = span(&xs, p.x_log);
    let (y0, y1) = p.y_range.unwrap_or_else(|| span(&ys, p.y_log));
    (x0, x1, y0, y1)
}

fn draw_panel<DB, X, Y>(area: &DrawingArea<DB, Shift>, p: &Panel, x: X, y: Y) -> DrawResult<DB>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (v, label) in &p.hlines {
        let xr = chart.x_range();
        let style = BLACK.mix(0.6).stroke_width(1);
        chart
            .draw_series(LineSeries::new(vec![(xr.start, *v), (xr.end, *v)], style))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    }
    for (k, s) in p.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|q| {
                q.0.is_finite()
                    && q.1.is_finite()
                    && (!p.x_log || q.0 > 0.0)
                    && (!p.y_log || q.1 > 0.0)
            })
            .map(|q| (q.0, q.1))
            .collect();
        let anno = if s.scatter {
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 2, color.filled())))?
        } else {
            // Markers only where they stay readable.
            let marker = if pts.len() <= 200 { 3 } else { 0 };
            chart.draw_series(
                LineSeries::new(pts.clone(), color.stroke_width(2)).point_size(marker),
            )?
        };
        if !s.label.is_empty() {
            anno.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        let bars: Vec<_> = s
            .points
            .iter()
            .filter_map(|q| q.2.map(|e| (q.0, q.1, e)))
            .filter(|(x, y, e)| x.is_finite() && y.is_finite() && e.is_finite())
            .filter(|(x, y, e)| (!p.x_log || *x > 0.0) && (!p.y_log || y - e > 0.0))
            .map(|(x, y, e)| ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(1), 6))
            .collect();
        chart.draw_series(bars)?;
    }
    if p.series.iter().any(|s| !s.label.is_empty()) || !p.hlines.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}

/// A tick label: integers without a decimal point, other values to three significant digits
/// with trailing zeros dropped, and scientific notation below 10⁻³ and from 10⁵ (`1e-4`,
/// `2.5e6`), so that a tick computed as 9.999999e-5 reads `1e-4`.
pub fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (1e-3..1e5).contains(&a) {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        trim(format!("{v:.decimals$}"))
    } else {
        let s = format!("{v:.2e}");
        let (mantissa, exponent) = s.split_once('e').expect("scientific notation");
        format!("{}e{exponent}", trim(mantissa.to_string()))
    }
}

/// The legend box, the same on every chart.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
}

fn draw_fields<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[FieldPanel],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, p) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(p.x_range.0..p.x_range.1, p.y_range.0..p.y_range.1)?;
        chart
            .configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .disable_mesh()
            .draw()?;
        // Shade by rank so that a loss spanning decades stays readable.
        let mut sorted: Vec<f64> = p.field.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |v: f64| -> f64 {
            let i = sorted.partition_point(|x| *x < v);
            i as f64 / sorted.len().max(1) as f64
        };
        let (dx, dy) = (
            (p.x_range.1 - p.x_range.0) / p.res as f64,
            (p.y_range.1 - p.y_range.0) / p.res as f64,
        );
        chart.draw_series((0..p.res * p.res).map(|k| {
            let (i, j) = (k % p.res, k / p.res);
            let t = rank(p.field[k]);
            let shade = (255.0 * (0.35 + 0.65 * t)) as u8;
            let x0 = p.x_range.0 + i as f64 * dx;
            let y0 = p.y_range.0 + j as f64 * dy;
            Rectangle::new(
                [(x0, y0), (x0 + dx, y0 + dy)],
                RGBColor(shade, shade, 255).filled(),
            )
        }))?;
        for (k, s) in p.paths.iter().enumerate() {
            let color = COLORS[(k + 1) % COLORS.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().map(|q| (q.0, q.1)).collect();
            let anno = if s.scatter {
                chart.draw_series(pts.iter().map(|&q| Circle::new(q, 2, color.filled())))?
            } else {
                // Width 1: wider polylines get miter spikes at the sharp turns of a
                // zig-zagging SGD path.
                chart.draw_series(LineSeries::new(pts, color.stroke_width(1)))?
            };
            if !s.label.is_empty() {
                anno.label(s.label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if p.paths.iter().any(|s| !s.label.is_empty()) {
            legend(&mut chart)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_read_as_numbers() {
        for (v, want) in [
            (0.0, "0"),
            (200.0, "200"),
            (750.0, "750"),
            (0.45, "0.45"),
            (0.30000000000000004, "0.3"),
            (12.5, "12.5"),
            (9.999999e-5, "1e-4"),
            (2.5e6, "2.5e6"),
            (-0.05, "-0.05"),
            (1234.6, "1235"),
        ] {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }

    /// The text elements of an SVG: (text-anchor, x, y, content).
    fn svg_texts(svg: &str) -> Vec<(String, f64, f64, String)> {
        let attr = |tag: &str, name: &str| -> Option<String> {
            let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
            Some(tag[at..at + tag[at..].find('"')?].to_string())
        };
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let (tag, rest) = t.split_once('>').unwrap();
                let content = rest.split("</text>").next().unwrap().trim().to_string();
                let num = |n| {
                    attr(tag, n)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN)
                };
                (
                    attr(tag, "text-anchor").unwrap_or_default(),
                    num("x"),
                    num("y"),
                    content,
                )
            })
            .collect()
    }

    /// Renders one panel of each kind the figures and run plots draw (a step axis against
    /// a loss on a log axis spanning less than a decade, an unlabelled learning-rate curve,
    /// a log-log spectrum over seven decades, a rank axis) and checks the tick labels the
    /// plotting code wrote: numbers on both axes of every panel, integers without a decimal
    /// point, no long mantissas, and no empty text (an unlabelled series adds no legend
    /// entry).
    #[test]
    fn every_panel_kind_has_readable_ticks() {
        let tmp = tempfile::tempdir().unwrap();
        let steps = |f: &dyn Fn(f64) -> f64| -> Vec<(f64, f64)> {
            (0..=75).map(|k| (10.0 * k as f64, f(k as f64))).collect()
        };
        let panels = [
            Panel {
                title: "loss".into(),
                x_label: "step".into(),
                y_label: "loss".into(),
                y_log: true,
                series: vec![Series::line("train", steps(&|k| 0.5 - 0.002 * k))],
                ..Panel::default()
            },
            Panel {
                title: "learning rate".into(),
                x_label: "step".into(),
                y_label: "η".into(),
                series: vec![Series::line("", steps(&|k| 0.01 + 0.006 * (k % 25.0)))],
                ..Panel::default()
            },
            Panel {
                title: "spectrum".into(),
                x_label: "λ_k".into(),
                y_label: "α_k".into(),
                x_log: true,
                y_log: true,
                series: vec![Series::scatter(
                    "α_k",
                    (0..40)
                        .map(|k| (10f64.powf(-5.0 + k as f64 / 6.0), 3e-5 * 1.4f64.powi(k)))
                        .collect(),
                )],
                hlines: vec![(1e-3, "reference".into())],
                ..Panel::default()
            },
            Panel {
                title: "by rank".into(),
                x_label: "k".into(),
                y_label: "λ_k".into(),
                series: vec![Series::line("λ_k", by_rank(&[9.0, 7.5, 4.0, 3.9, 1.2]))],
                ..Panel::default()
            },
        ];
        for p in panels {
            let stem = tmp.path().join("p");
            save(&stem, std::slice::from_ref(&p), 1, (600, 430)).unwrap();
            let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
            let texts = svg_texts(&svg);
            assert!(
                texts.iter().all(|t| !t.3.is_empty()),
                "{}: empty text in {texts:?}",
                p.title
            );
            let numbers: Vec<&(String, f64, f64, String)> = texts
                .iter()
                .filter(|t| t.3.parse::<f64>().is_ok())
                .collect();
            // y ticks are right-aligned left of the plot; x ticks centred below it.
            let y_ticks = numbers.iter().filter(|t| t.0 == "end").count();
            let x_ticks = numbers.iter().filter(|t| t.0 == "middle").count();
            assert!(
                y_ticks >= 3 && x_ticks >= 3,
                "{}: {y_ticks} y and {x_ticks} x tick labels in {texts:?}",
                p.title
            );
            for t in &numbers {
                let mantissa = t.3.split('e').next().unwrap();
                let digits = mantissa.chars().filter(char::is_ascii_digit).count();
                assert!(
                    !t.3.ends_with(".0") && digits <= 5,
                    "{}: tick label {}",
                    p.title,
                    t.3
                );
            }
        }
    }
}
