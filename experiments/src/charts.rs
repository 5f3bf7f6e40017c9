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
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area())
        .with_context(|| format!("cannot draw {}", svg.display()))?;
    draw_png(BitMapBackend::new(&png, SIZE).into_drawing_area())
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

/// A matrix as coloured cells with their values printed, rows top to bottom (`None`: a grey
/// cell, e.g. a pruned head).
pub fn heatmap(
    stem: &Path,
    title: &str,
    (columns, rows): (&str, &str),
    matrix: &[Vec<Option<f64>>],
) -> Result<Vec<PathBuf>> {
    let draw =
        |root: DrawingArea<SVGBackend, Shift>| draw_heatmap(root, title, (columns, rows), matrix);
    let draw_png = |root: DrawingArea<BitMapBackend, Shift>| {
        draw_heatmap(root, title, (columns, rows), matrix)
    };
    both_formats(stem, draw, draw_png)
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    matrix: &[Vec<Option<f64>>],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (height, width) = (matrix.len(), matrix.iter().map(Vec::len).max().unwrap_or(0));
    let values = || matrix.iter().flatten().flatten().copied();
    let (low, high) = values().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(50)
        // Integer ranges are inclusive in plotters: one segment a cell.
        .build_cartesian_2d(
            (0..width.max(1) - 1).into_segmented(),
            (0..height.max(1) - 1).into_segmented(),
        )?;
    // Labels at the cells' centres; row 0 at the top.
    let label = |value: &SegmentValue<usize>, flip: bool| match value {
        SegmentValue::CenterOf(v) if flip && *v < height => (height - 1 - v).to_string(),
        SegmentValue::CenterOf(v) if !flip && *v < width => v.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(width)
        .y_labels(height)
        .x_label_formatter(&|x| label(x, false))
        .y_label_formatter(&|y| label(y, true))
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
        if let Some(value) = value {
            let ink = if share(value) > 0.6 { WHITE } else { BLACK };
            let style = TextStyle::from((FAMILY, 11).into_font())
                .color(&ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let centre =
                chart.backend_coord(&(SegmentValue::CenterOf(column), SegmentValue::CenterOf(y)));
            root.draw(&Text::new(format!("{value:.decimals$}"), centre, style))?;
        }
    }
    root.present()?;
    Ok(())
}
