//! Sweep heat map as a PNG (plotters bitmap backend): one cell per combination of two
//! swept values (e.g. LoRA rank × learning rate), coloured by a metric and labelled with
//! its value. One swept key gives a single row.
//!
//! The colour runs along viridis from the worst value (dark purple) to the best (yellow),
//! whichever direction "better" is, so the best cell is always the brightest; it is also
//! outlined. Cells without a value (a variant not run yet) are grey with a dash.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot::{FAMILY, PlotError, register_font};

/// Cell size in pixels.
const CELL: (u32, u32) = (112, 56);
/// Colour of a cell without a value.
pub const MISSING: RGBColor = RGBColor(225, 225, 225);

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    /// Axis names: columns (x) and rows (y; empty for a single row).
    pub x_label: String,
    pub y_label: String,
    /// Tick labels, one per column and one per row.
    pub x_ticks: Vec<String>,
    pub y_ticks: Vec<String>,
    /// `values[row][col]`; `None` where there is nothing to show.
    pub values: Vec<Vec<Option<f64>>>,
    pub lower_is_better: bool,
}

impl Heatmap {
    /// Finite values, worst and best.
    fn range(&self) -> Option<(f64, f64)> {
        let mut it = self
            .values
            .iter()
            .flatten()
            .flatten()
            .filter(|x| x.is_finite());
        let first = *it.next()?;
        let (lo, hi) = it.fold((first, first), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        Some(if self.lower_is_better {
            (hi, lo)
        } else {
            (lo, hi)
        })
    }

    /// Where `x` lies between the worst (0) and the best (1) value.
    pub fn goodness(&self, x: f64) -> f64 {
        match self.range() {
            Some((worst, best)) if worst != best => ((x - worst) / (best - worst)).clamp(0.0, 1.0),
            _ => 1.0,
        }
    }

    /// Row and column of the best value.
    fn best_cell(&self) -> Option<(usize, usize)> {
        let (_, best) = self.range()?;
        self.values
            .iter()
            .enumerate()
            .find_map(|(r, row)| row.iter().position(|v| *v == Some(best)).map(|c| (r, c)))
    }
}

/// Pixel geometry of a rendered heat map (tests sample cells with it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub left: u32,
    pub top: u32,
    pub size: (u32, u32),
}

impl Layout {
    fn of(map: &Heatmap) -> Layout {
        let widest = map
            .y_ticks
            .iter()
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(0) as u32;
        let left = 24 + widest * 8;
        let top = 60;
        let (cols, rows) = (map.x_ticks.len() as u32, map.values.len() as u32);
        let width = left + cols * CELL.0 + 110;
        let height = top + rows * CELL.1 + 56;
        Layout {
            left,
            top,
            size: (width.max(360), height),
        }
    }

    /// Top-left pixel of cell (`row`, `col`).
    pub fn cell(&self, row: usize, col: usize) -> (u32, u32) {
        (
            self.left + col as u32 * CELL.0,
            self.top + row as u32 * CELL.1,
        )
    }
}

/// Render `map` to `path` (PNG); returns the layout used.
pub fn render_heatmap(path: &Path, map: &Heatmap) -> Result<Layout, PlotError> {
    register_font()?;
    let lay = Layout::of(map);
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = BitMapBackend::new(path, lay.size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let center = Pos::new(HPos::Center, VPos::Center);
    let (cols, rows) = (map.x_ticks.len() as u32, map.values.len() as u32);
    let grid_w = cols * CELL.0;
    let grid_h = rows * CELL.1;

    root.draw(&text(
        &map.title,
        (lay.size.0 / 2, 18),
        15.0,
        &BLACK,
        center,
    ))
    .map_err(|e| err(&e))?;
    let best = map.best_cell();
    for (r, row) in map.values.iter().enumerate() {
        for (c, value) in row.iter().enumerate() {
            let (x0, y0) = lay.cell(r, c);
            let corners = [
                (x0 as i32, y0 as i32),
                ((x0 + CELL.0) as i32, (y0 + CELL.1) as i32),
            ];
            let (fill, label, ink) = match value {
                Some(v) if v.is_finite() => {
                    let t = map.goodness(*v);
                    let ink = if t > 0.6 { BLACK } else { WHITE };
                    (viridis(t), format_value(*v), ink)
                }
                Some(v) => (MISSING, v.to_string(), BLACK),
                None => (MISSING, "–".to_string(), BLACK),
            };
            root.draw(&Rectangle::new(corners, fill.filled()))
                .map_err(|e| err(&e))?;
            root.draw(&Rectangle::new(corners, WHITE.stroke_width(1)))
                .map_err(|e| err(&e))?;
            if best == Some((r, c)) {
                let inset = [
                    (corners[0].0 + 2, corners[0].1 + 2),
                    (corners[1].0 - 2, corners[1].1 - 2),
                ];
                root.draw(&Rectangle::new(inset, BLACK.stroke_width(3)))
                    .map_err(|e| err(&e))?;
            }
            let mid = (x0 + CELL.0 / 2, y0 + CELL.1 / 2);
            root.draw(&text(&label, mid, 14.0, &ink, center))
                .map_err(|e| err(&e))?;
        }
    }
    // Ticks and axis names.
    for (c, t) in map.x_ticks.iter().enumerate() {
        let at = (
            lay.left + c as u32 * CELL.0 + CELL.0 / 2,
            lay.top + grid_h + 12,
        );
        root.draw(&text(t, at, 12.0, &BLACK, center))
            .map_err(|e| err(&e))?;
    }
    let right = Pos::new(HPos::Right, VPos::Center);
    for (r, t) in map.y_ticks.iter().enumerate() {
        let at = (lay.left - 8, lay.top + r as u32 * CELL.1 + CELL.1 / 2);
        root.draw(&text(t, at, 12.0, &BLACK, right))
            .map_err(|e| err(&e))?;
    }
    let x_name = (lay.left + grid_w / 2, lay.top + grid_h + 34);
    root.draw(&text(&map.x_label, x_name, 13.0, &BLACK, center))
        .map_err(|e| err(&e))?;
    // The row axis name goes above the row ticks: written sideways it would not fit
    // beside two rows.
    let above = Pos::new(HPos::Left, VPos::Center);
    root.draw(&text(&map.y_label, (8, lay.top - 14), 13.0, &BLACK, above))
        .map_err(|e| err(&e))?;
    // Colour bar: best at the top, worst at the bottom.
    if let Some((worst, best)) = map.range() {
        let x0 = (lay.left + grid_w + 24) as i32;
        let (y0, h) = (lay.top as i32, grid_h.max(CELL.1) as i32);
        for dy in 0..h {
            let t = 1.0 - dy as f64 / (h - 1).max(1) as f64;
            root.draw(&Rectangle::new(
                [(x0, y0 + dy), (x0 + 14, y0 + dy + 1)],
                viridis(t).filled(),
            ))
            .map_err(|e| err(&e))?;
        }
        let left = Pos::new(HPos::Left, VPos::Center);
        for (v, y) in [(best, y0), (worst, y0 + h)] {
            let at = ((x0 + 20) as u32, y as u32);
            root.draw(&text(&format_value(v), at, 11.0, &BLACK, left))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(lay)
}

fn text<'a>(
    s: &str,
    at: (u32, u32),
    size: f64,
    ink: &'a RGBColor,
    pos: Pos,
) -> Text<'a, (i32, i32), String> {
    let style = TextStyle::from((FAMILY, size).into_font())
        .color(ink)
        .pos(pos);
    Text::new(s.to_string(), (at.0 as i32, at.1 as i32), style)
}

/// Cell text: four decimals, scientific for tiny or huge values.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The viridis colour map at `t` ∈ [0, 1], linearly interpolated between nine evenly
/// spaced samples (`viridisLite::viridis(9)`: #440154 … #FDE725).
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [[u8; 3]; 9] = [
        [0x44, 0x01, 0x54],
        [0x47, 0x2D, 0x7B],
        [0x3B, 0x52, 0x8B],
        [0x2C, 0x72, 0x8E],
        [0x21, 0x90, 0x8C],
        [0x27, 0xAD, 0x81],
        [0x5D, 0xC8, 0x63],
        [0xAA, 0xDC, 0x32],
        [0xFD, 0xE7, 0x25],
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let lerp = |k: usize| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8;
    RGBColor(lerp(0), lerp(1), lerp(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(img: &image::RgbImage, at: (u32, u32)) -> RGBColor {
        let p = img.get_pixel(at.0, at.1);
        RGBColor(p[0], p[1], p[2])
    }

    fn map(values: Vec<Vec<Option<f64>>>, lower_is_better: bool) -> Heatmap {
        Heatmap {
            title: "train.eval_loss".into(),
            x_label: "lr".into(),
            y_label: "r".into(),
            x_ticks: (0..values[0].len()).map(|c| format!("x{c}")).collect(),
            y_ticks: (0..values.len()).map(|r| format!("y{r}")).collect(),
            values,
            lower_is_better,
        }
    }

    #[test]
    fn cells_run_from_worst_to_best() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        let m = map(
            vec![vec![Some(2.0), Some(1.0)], vec![Some(1.5), None]],
            true,
        );
        let lay = render_heatmap(&path, &m).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), lay.size);
        // Sample a cell away from its border, outline and centred text.
        let at = |r, c| {
            let (x, y) = lay.cell(r, c);
            pixel(&img, (x + 8, y + 8))
        };
        assert_eq!(at(0, 0), viridis(0.0), "worst (highest loss) is darkest");
        assert_eq!(at(0, 1), viridis(1.0), "best is brightest");
        assert_eq!(at(1, 0), viridis(0.5));
        assert_eq!(at(1, 1), MISSING);
        // The best cell is outlined in black just inside its edge.
        let (x, y) = lay.cell(0, 1);
        assert_eq!(pixel(&img, (x + 3, y + 20)), BLACK);
        // Its value is written in it: dark text pixels near the centre of a yellow cell.
        let ink = (x + 20..x + CELL.0 - 20)
            .flat_map(|px| (y + 20..y + CELL.1 - 20).map(move |py| (px, py)))
            .filter(|&p| pixel(&img, p).0 < 60)
            .count();
        assert!(
            ink > 20,
            "no value text in the best cell ({ink} dark pixels)"
        );
    }

    #[test]
    fn higher_is_better_flips_the_scale_and_one_row_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        let mut m = map(vec![vec![Some(0.25), Some(0.75), Some(0.5)]], false);
        m.y_label.clear();
        m.y_ticks = vec![String::new()];
        let lay = render_heatmap(&path, &m).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let at = |c| {
            let (x, y) = lay.cell(0, c);
            pixel(&img, (x + 8, y + 8))
        };
        assert_eq!(at(0), viridis(0.0));
        assert_eq!(at(1), viridis(1.0));
        assert_eq!(at(2), viridis(0.5));
    }

    #[test]
    fn viridis_ends_and_formatting() {
        assert_eq!(viridis(0.0), RGBColor(0x44, 0x01, 0x54));
        assert_eq!(viridis(1.0), RGBColor(0xFD, 0xE7, 0x25));
        assert_eq!(viridis(0.5), RGBColor(0x21, 0x90, 0x8C));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(format_value(0.123456), "0.1235");
        assert_eq!(format_value(2e-5), "2.000e-5");
        let flat = map(vec![vec![Some(1.0), Some(1.0)]], true);
        assert_eq!(flat.goodness(1.0), 1.0, "equal values are all best");
    }
}
