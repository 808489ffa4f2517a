//! Drawing the figures (`epochs.rs`, `evals.rs` say what they plot): per-group mean curves (and
//! thin per-seed curves), drawn with plotters into PNG
//! (text rendered with an embedded font) and SVG, with the legend in its own panel to the right
//! of the plot so that it never covers a line.

use super::GroupSummary;
use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Pixel size of every plot (PNG and SVG).
const SIZE: (u32, u32) = (1000, 560);
/// Width of the legend panel.
const LEGEND_W: u32 = 230;
/// Font family registered with plotters for bitmap text.
const FONT: &str = "sans-serif";

/// Tableau 10.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One group's line in a figure.
pub(super) struct Series {
    /// Legend label.
    pub(super) label: String,
    /// Index into the palette.
    pub(super) color: usize,
    /// Mean over seeds, per epoch.
    pub(super) mean: Vec<(f64, f64)>,
    /// Each seed's own curve (empty where seeds are not drawn).
    pub(super) seeds: Vec<Vec<(f64, f64)>>,
    /// A second quantity to compare with, mean over seeds, drawn dashed (empty if none).
    pub(super) reference: Vec<(f64, f64)>,
}

/// One plot, ready to draw.
pub(super) struct Figure {
    /// File stem of the `.png` and `.svg` written.
    pub name: &'static str,
    /// Title drawn above the plot.
    pub title: String,
    pub(super) x_label: &'static str,
    pub(super) y_label: &'static str,
    pub(super) x_log: bool,
    pub(super) y_log: bool,
    /// Whether the seeds are drawn thin behind the mean (else lines are layered, earlier
    /// groups wider, so identical schedules stay visible).
    pub(super) per_seed: bool,
    /// Whether x is the epoch count (integer ticks only).
    pub(super) x_epoch: bool,
    pub(super) series: Vec<Series>,
}

impl Figure {
    /// A figure whose x is not the epoch, seeds drawn thin behind the means.
    pub(super) fn new(
        name: &'static str,
        title: String,
        (x_label, y_label): (&'static str, &'static str),
        (x_log, y_log): (bool, bool),
        series: Vec<Series>,
    ) -> Self {
        Figure {
            name,
            title,
            x_label,
            y_label,
            x_log,
            y_log,
            per_seed: true,
            x_epoch: false,
            series,
        }
    }
}

/// The mean over seeds of a group's curves, point by point (points share a key: the epoch, or
/// an evaluation's number).
pub(super) fn mean_by_key<K: Ord + Copy>(curves: &[Vec<(K, f64, f64)>]) -> Vec<(f64, f64)> {
    let mut by_key: BTreeMap<K, (f64, f64, f64)> = BTreeMap::new();
    for &(k, x, y) in curves.iter().flatten() {
        let acc = by_key.entry(k).or_insert((0.0, 0.0, 0.0));
        *acc = (acc.0 + x, acc.1 + y, acc.2 + 1.0);
    }
    by_key.values().map(|&(x, y, n)| (x / n, y / n)).collect()
}

/// Group `g`'s line (the `i`th): its mean, each seed's curve drawn thin where `per_seed` and
/// there are several, and a dashed reference (empty: none).
pub(super) fn group_series<K>(
    g: &GroupSummary,
    i: usize,
    curves: &[Vec<(K, f64, f64)>],
    mean: Vec<(f64, f64)>,
    reference: Vec<(f64, f64)>,
    per_seed: bool,
) -> Series {
    let seeds = if per_seed && curves.len() > 1 {
        curves
            .iter()
            .map(|c| c.iter().map(|&(_, x, y)| (x, y)).collect())
            .collect()
    } else {
        Vec::new()
    };
    let marker = if g.unfinished.is_empty() { "" } else { " *" };
    Series {
        label: format!("{}{marker}", g.group),
        color: i % PALETTE.len(),
        mean,
        seeds,
        reference,
    }
}

/// Axis range covering `values`, padded; positive and multiplicatively padded for log axes.
fn range(values: impl Iterator<Item = f64>, log: bool) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        let (lo, hi) = if hi / lo < 1.5 {
            (lo / 1.5, hi * 1.5)
        } else {
            (lo, hi)
        };
        let (lo, hi) = (lo / 1.15, hi * 1.15);
        // End on a tick where that costs little room.
        let (slo, shi) = (snap_125(lo, false), snap_125(hi, true));
        let lo = if lo / slo <= 1.3 { slo } else { lo };
        let hi = if shi / hi <= 1.3 { shi } else { hi };
        lo..hi
    } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
        (lo - d).min(0.0).max(lo - d)..hi + d
    } else {
        let pad = 0.04 * (hi - lo);
        let lo = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        lo..hi + pad
    }
}

/// The nearest 1, 2 or 5 × 10^k at or below `v` (at or above when `up`), so that a log axis
/// ends on a tick.
fn snap_125(v: f64, up: bool) -> f64 {
    let k = v.log10().floor() as i32;
    let steps = [1.0, 2.0, 5.0, 10.0, 20.0];
    let vals = steps.iter().map(|m| m * 10f64.powi(k));
    if up {
        vals.filter(|&t| t >= v * (1.0 - 1e-12))
            .fold(f64::INFINITY, f64::min)
    } else {
        vals.filter(|&t| t <= v * (1.0 + 1e-12))
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// A tick label: short decimals, scientific notation for very large or small values.
pub(super) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.3e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = mant.trim_end_matches('0').trim_end_matches('.');
        return format!("{mant}e{exp}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Registers the embedded font with plotters (once per process).
fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails for bytes that are not a font, which these are.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// A plotters error as an `anyhow` error.
fn de<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Draws `fig` into `out` as `NAME.png` and `NAME.svg`; returns both paths.
pub(super) fn render(fig: &Figure, out: &Path) -> Result<(PathBuf, PathBuf)> {
    ensure_font();
    let png = out.join(format!("{}.png", fig.name));
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&root, fig)?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    let svg = out.join(format!("{}.svg", fig.name));
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&root, fig)?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    Ok((png, svg))
}

/// Draws a whole figure: plot on the left, legend panel on the right.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<()> {
    root.fill(&WHITE).map_err(de)?;
    let (w, _) = root.dim_in_pixel();
    let (plot_area, legend_area) = root.split_horizontally(w - LEGEND_W);
    let points = || {
        fig.series.iter().flat_map(|s| {
            s.mean
                .iter()
                .chain(s.seeds.iter().flatten())
                .chain(&s.reference)
        })
    };
    let xr = range(points().map(|p| p.0), fig.x_log);
    let yr = range(points().map(|p| p.1), fig.y_log);
    match (fig.x_log, fig.y_log) {
        (false, false) => chart(&plot_area, fig, xr, yr)?,
        (true, false) => chart(&plot_area, fig, log_axis(xr), yr)?,
        (false, true) => chart(&plot_area, fig, xr, log_axis(yr))?,
        (true, true) => chart(&plot_area, fig, log_axis(xr), log_axis(yr))?,
    }
    legend(&legend_area, fig)
}

/// A log axis over `r` with ticks at 1, 2, 5 × 10^k (1…9 × 10^k within a narrow range, powers
/// of ten only over a wide one).
fn log_axis(r: std::ops::Range<f64>) -> WithKeyPoints<LogCoord<f64>> {
    let ticks = log_ticks(r.start, r.end);
    r.log_scale().with_key_points(ticks)
}

/// Tick values for a log axis from `lo` to `hi` (both positive).
pub(super) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pick = |mantissas: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
            // Round away float noise (3 × 0.1 = 0.30000000000000004).
            .map(|v| format!("{v:.6e}").parse::<f64>().unwrap_or(v))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let decades = pick(&[1.0]);
    if decades.len() > 8 {
        return decades;
    }
    let coarse = pick(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        return coarse;
    }
    pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
}

/// Draws the axes and the lines.
fn chart<DB, X, Y>(area: &DrawingArea<DB, Shift>, fig: &Figure, x: X, y: Y) -> Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ch = ChartBuilder::on(area)
        .caption(&fig.title, (FONT, 20))
        .margin(14)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(de)?;
    let fmt = |v: &f64| fmt_num(*v);
    // Epoch ticks only at whole epochs.
    let fmt_x = |v: &f64| {
        if fig.x_epoch && (v - v.round()).abs() > 1e-9 {
            String::new()
        } else {
            fmt_num(*v)
        }
    };
    ch.configure_mesh()
        .x_desc(fig.x_label)
        .y_desc(fig.y_label)
        .x_labels(12)
        .y_labels(10)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(de)?;
    let n = fig.series.len();
    for s in &fig.series {
        let color = PALETTE[s.color];
        for seed in &s.seeds {
            ch.draw_series(LineSeries::new(
                seed.iter().copied(),
                color.mix(0.35).stroke_width(1),
            ))
            .map_err(de)?;
        }
    }
    for (i, s) in fig.series.iter().enumerate() {
        let color = PALETTE[s.color];
        // Earlier groups wider, so that curves that coincide stay visible.
        let width = if fig.per_seed {
            (2 + 2 * (n - 1 - i) as u32).min(8)
        } else {
            (3 + 4 * (n - 1 - i) as u32).min(15)
        };
        ch.draw_series(LineSeries::new(
            s.mean.iter().copied(),
            color.stroke_width(width),
        ))
        .map_err(de)?;
        if s.mean.len() == 1 {
            ch.draw_series(std::iter::once(Circle::new(s.mean[0], 4, color.filled())))
                .map_err(de)?;
        }
        if !s.reference.is_empty() {
            ch.draw_series(DashedLineSeries::new(
                s.reference.iter().copied(),
                8,
                6,
                color.stroke_width(2),
            ))
            .map_err(de)?;
        }
    }
    Ok(())
}

/// The legend panel: a swatch and label per group, and how to read the lines.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<()> {
    let text = TextStyle::from((FONT, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let small = TextStyle::from((FONT, 13).into_font())
        .color(&RGBColor(90, 90, 90))
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 60;
    for s in &fig.series {
        let color = PALETTE[s.color];
        area.draw(&PathElement::new(
            vec![(8, y), (40, y)],
            color.stroke_width(4),
        ))
        .map_err(de)?;
        area.draw(&Text::new(truncate(&s.label, 24), (48, y), text.clone()))
            .map_err(de)?;
        y += 26;
    }
    y += 10;
    let notes: &[&str] = if fig.per_seed {
        &[
            "bold: mean over seeds",
            "thin: each seed",
            "earlier groups are drawn",
            "wider, so equal curves",
            "stay visible",
        ]
    } else {
        &[
            "mean over seeds; earlier",
            "groups are drawn wider, so",
            "equal curves stay visible",
        ]
    };
    let has_reference = fig.series.iter().any(|s| !s.reference.is_empty());
    let reference_notes: &[&str] = if has_reference {
        &["dashed: the schedule's B,", "mean over seeds"]
    } else {
        &[]
    };
    for line in notes
        .iter()
        .copied()
        .chain(reference_notes.iter().copied())
        .chain(
            fig.series
                .iter()
                .any(|s| s.label.ends_with(" *"))
                .then_some("*: has unfinished runs"),
        )
    {
        area.draw(&Text::new(line.to_string(), (8, y), small.clone()))
            .map_err(de)?;
        y += 19;
    }
    Ok(())
}

/// Shortens a label to `max` characters.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
