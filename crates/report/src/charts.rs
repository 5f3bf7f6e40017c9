//! Charts as PNG and SVG, drawn with plotters: labelled points (`kd compare`) and curves
//! against steps (`kd report`). Text needs a TrueType font: `KD_FONT`, or the first of the
//! usual system fonts found.

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SIZE: (u32, u32) = (800, 560);
const FAMILY: &str = "sans-serif";
const FONT_DIRS: [&str; 4] = [
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "/Library/Fonts",
    "C:\\Windows\\Fonts",
];
const PREFERRED_FONTS: [&str; 3] = ["DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"];

/// Registers a font for chart text once; the error says how to provide one.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let path = FONT.get_or_init(|| {
        let path = std::env::var_os("KD_FONT")
            .map(PathBuf::from)
            .or_else(find_font)?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(&path).ok()?.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).ok()?;
        Some(path)
    });
    if path.is_none() {
        bail!("no TrueType font found for chart text: set KD_FONT to a .ttf file");
    }
    Ok(())
}

fn find_font() -> Option<PathBuf> {
    let mut fonts = Vec::new();
    let mut dirs: Vec<PathBuf> = FONT_DIRS.iter().map(PathBuf::from).collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("ttf"))
            {
                fonts.push(path);
            }
        }
    }
    let named = |name: &str| fonts.iter().find(|path| path.ends_with(name)).cloned();
    PREFERRED_FONTS
        .iter()
        .find_map(|name| named(name))
        .or_else(|| fonts.first().cloned())
}

/// A span around `values` with a margin, so that points do not sit on the frame.
fn span(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let margin = ((high - low) * 0.15).max(high.abs() * 0.05).max(1e-6);
    (low - margin)..(high + margin)
}

/// Draws `draw` into `<stem>.png` and `<stem>.svg`; returns both paths.
fn both_formats(
    stem: &Path,
    draw: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    both_formats_sized(stem, SIZE, draw, draw_png)
}

/// [`both_formats`] at `size` pixels.
fn both_formats_sized(
    stem: &Path,
    size: (u32, u32),
    draw: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(SVGBackend::new(&svg, size).into_drawing_area())
        .with_context(|| format!("cannot draw {}", svg.display()))?;
    draw_png(BitMapBackend::new(&png, size).into_drawing_area())
        .with_context(|| format!("cannot draw {}", png.display()))?;
    Ok(vec![png, svg])
}

/// One labelled point per model.
pub fn scatter(
    stem: &Path,
    title: &str,
    axes: (&str, &str),
    points: &[(String, f64, f64)],
) -> Result<Vec<PathBuf>> {
    both_formats(
        stem,
        |root| draw_scatter(root, title, axes, points),
        |root| draw_scatter(root, title, axes, points),
    )
}

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    points: &[(String, f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(
            span(points.iter().map(|p| p.1)),
            span(points.iter().map(|p| p.2)),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    // Points carry numbers; the key names them (names beside crowded points overlap).
    for (number, (label, x, y)) in points.iter().enumerate() {
        let number = (number + 1).to_string();
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 5, BLUE.filled())
                    + Text::new(number.clone(), (6, -16), (FAMILY, 13).into_font()),
            ))?
            .label(format!("{number}  {label}"))
            .legend(|(x, y)| Circle::new((x, y), 4, BLUE.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Curves against `x_label` (steps, a share pruned), one panel per group (`(panel title,
/// [(series, points)])`).
pub fn panels(
    stem: &Path,
    title: &str,
    x_label: &str,
    groups: &[(String, Vec<Series>)],
) -> Result<Vec<PathBuf>> {
    both_formats(
        stem,
        |root| draw_panels(root, title, x_label, groups),
        |root| draw_panels(root, title, x_label, groups),
    )
}

/// A named curve.
pub type Series = (String, Vec<(f64, f64)>);

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    groups: &[(String, Vec<Series>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 22))?;
    let areas = root.split_evenly((groups.len().max(1), 1));
    for (area, (panel, series)) in areas.iter().zip(groups) {
        let points = || series.iter().flat_map(|(_, points)| points.iter());
        if points().next().is_none() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(panel, (FAMILY, 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(span(points().map(|p| p.0)), span(points().map(|p| p.1)))?;
        chart.configure_mesh().x_desc(x_label).draw()?;
        for (index, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// How heatmaps are drawn: the axes' titles, each row's label (its index when empty; columns
/// are numbered), and whether each cell prints its value.
pub struct HeatmapAxes<'a> {
    /// The x axis's title.
    pub columns: &'a str,
    /// The y axis's title.
    pub rows: &'a str,
    /// Each row's label, top to bottom; empty to number the rows from 0.
    pub row_labels: &'a [String],
    /// Whether each cell prints its value.
    pub values: bool,
}

/// Matrices as coloured cells (`None`: a grey cell, e.g. a pruned head), rows top to bottom,
/// one panel each (`(caption, matrix)`) in a grid under `title`.
pub fn heatmaps(
    stem: &Path,
    title: &str,
    axes: &HeatmapAxes,
    panels: &[(String, Vec<Vec<Option<f64>>>)],
) -> Result<Vec<PathBuf>> {
    let columns = (panels.len() as f64).sqrt().ceil().max(1.0) as usize;
    let rows = panels.len().div_ceil(columns).max(1);
    let size = match panels.len() {
        0 | 1 => SIZE,
        _ => (480 * columns as u32, 440 * rows as u32 + 40),
    };
    both_formats_sized(
        stem,
        size,
        |root| draw_heatmap_grid(root, title, axes, panels, (rows, columns)),
        |root| draw_heatmap_grid(root, title, axes, panels, (rows, columns)),
    )
}

fn draw_heatmap_grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    axes: &HeatmapAxes,
    panels: &[(String, Vec<Vec<Option<f64>>>)],
    grid: (usize, usize),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 22))?;
    for (area, (caption, matrix)) in root.split_evenly(grid).into_iter().zip(panels) {
        draw_heatmap(&area, caption, axes, matrix)?;
    }
    root.present()?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    axes: &HeatmapAxes,
    matrix: &[Vec<Option<f64>>],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (height, width) = (matrix.len(), matrix.iter().map(Vec::len).max().unwrap_or(0));
    let values = || matrix.iter().flatten().flatten().copied();
    let (low, high) = values().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    // Token labels need room; indices little.
    let longest = axes
        .row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(2);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FAMILY, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(24 + 7 * longest as u32)
        // Integer ranges are inclusive in plotters: one segment a cell.
        .build_cartesian_2d(
            (0..width.max(1) - 1).into_segmented(),
            (0..height.max(1) - 1).into_segmented(),
        )?;
    // Labels at the cells' centres (their index, or the given name); row 0 at the top.
    let row_name = |index: usize| {
        let name = axes.row_labels.get(index).cloned();
        name.unwrap_or_else(|| index.to_string())
    };
    let label = |value: &SegmentValue<usize>, flip: bool| match value {
        SegmentValue::CenterOf(v) if flip && *v < height => row_name(height - 1 - v),
        SegmentValue::CenterOf(v) if !flip && *v < width => v.to_string(),
        _ => String::new(),
    };
    let (x_label, y_label) = (|x: &_| label(x, false), |y: &_| label(y, true));
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(axes.columns)
        .y_desc(axes.rows)
        .x_labels(width)
        .y_labels(height)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()?;
    // Enough decimals to tell the values apart.
    let decimals = match high.abs().max(low.abs()) {
        m if m >= 10.0 => 1,
        m if m >= 0.1 => 2,
        _ => 3,
    };
    let share = |value: f64| {
        if high > low {
            (value - low) / (high - low)
        } else {
            0.5
        }
    };
    let cells = matrix.iter().enumerate().flat_map(|(row, values)| {
        values
            .iter()
            .enumerate()
            .map(move |(column, value)| (row, column, *value))
    });
    for (row, column, value) in cells {
        let y = height - 1 - row;
        let color = match value {
            // White for the lowest value, deep blue for the highest.
            Some(value) => {
                let fade = |full: u8| (255.0 - share(value) * (255.0 - full as f64)) as u8;
                RGBColor(fade(24), fade(72), fade(160))
            }
            None => RGBColor(200, 200, 200),
        };
        let corners = [
            (SegmentValue::Exact(column), SegmentValue::Exact(y)),
            (SegmentValue::Exact(column + 1), SegmentValue::Exact(y + 1)),
        ];
        chart.draw_series(std::iter::once(Rectangle::new(corners, color.filled())))?;
        if let Some(value) = value.filter(|_| axes.values) {
            let ink = if share(value) > 0.6 { WHITE } else { BLACK };
            let style = TextStyle::from((FAMILY, 11).into_font())
                .color(&ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let centre = (SegmentValue::CenterOf(column), SegmentValue::CenterOf(y));
            let text = Text::new(format!("{value:.decimals$}"), centre, style);
            chart.draw_series(std::iter::once(text))?;
        }
    }
    Ok(())
}
