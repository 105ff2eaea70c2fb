//! Line charts rendered to PNG with `plotters` (bitmap backend, text via ab_glyph).
//!
//! Text uses the embedded font of `report::font`.
//!
//! ```no_run
//! use pipeline::report::plot::{Chart, Series, render_grid};
//! let chart = Chart::new("loss", "step", "").with(Series::new("train", vec![(1.0, 2.3), (2.0, 1.9)]));
//! render_grid(std::path::Path::new("curves.png"), &[chart], 1, (640, 400)).unwrap();
//! ```

use plotters::prelude::*;
use std::path::Path;

pub use super::font::PlotError;
use super::font::{FAMILY, register_font};

/// Colours used in order for the series of a chart.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One named line of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// A titled panel with axes and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
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
        }
    }

    /// Add a series (empty series are skipped when drawing).
    pub fn with(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// Bounds of all finite points, padded so flat lines stay visible.
    fn bounds(&self) -> Option<((f64, f64), (f64, f64))> {
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let mut any = false;
        for &(x, y) in pts {
            any = true;
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !any {
            return None;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(y1.abs().max(1e-12) * 1e-3);
        Some(((x0, x1), (y0 - pad, y1 + pad)))
    }
}

/// Draw `charts` in a grid of `cols` columns, each panel `panel` pixels, into a PNG.
pub fn render_grid(
    path: &Path,
    charts: &[Chart],
    cols: usize,
    panel: (u32, u32),
) -> Result<(), PlotError> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let cols = cols.max(1);
    let rows = charts.len().div_ceil(cols).max(1);
    let size = (panel.0 * cols as u32, panel.1 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, cols));
    for (chart, area) in charts.iter().zip(areas.iter()) {
        draw_chart(chart, area).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn draw_chart<DB: DrawingBackend>(
    chart: &Chart,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let Some(((x0, x1), (y0, y1))) = chart.bounds() else {
        area.titled(&format!("{} (no data)", chart.title), (FAMILY, 18))?;
        return Ok(());
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FAMILY, 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FAMILY, 12))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let style = color.stroke_width(2);
        let drawn = if pts.len() == 1 {
            ctx.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, style.filled())))?
        } else {
            ctx.draw_series(LineSeries::new(pts, style))?
        };
        drawn.label(&s.name).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
    }
    ctx.configure_series_labels()
        .label_font((FAMILY, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Short tick labels: 3 significant digits, scientific for tiny/huge values.
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let a = Chart::new("loss", "step", "loss")
            .with(Series::new(
                "train",
                vec![(1.0, 2.0), (2.0, 1.5), (3.0, 1.0)],
            ))
            .with(Series::new("eval", vec![(3.0, 1.2)]));
        let b =
            Chart::new("lr", "step", "").with(Series::new("lr", vec![(1.0, 1e-4), (2.0, 1e-4)]));
        let empty = Chart::new("nothing", "step", "");
        render_grid(&path, &[a, b, empty], 2, (320, 240)).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 480));
        // Something other than white was drawn in the first panel (lines, text).
        let dark = img
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 200, "only {dark} dark pixels");
    }

    #[test]
    fn tick_format() {
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(2e-5), "2.0e-5");
        assert_eq!(format_tick(0.0), "0");
    }
}
