//! Confusion-matrix heat map as a PNG (plotters bitmap backend).
//!
//! Rows are gold classes, columns predictions; a cell's shade is its share of the row
//! (recall-normalised, so rare classes are as visible as common ones) and it is labelled
//! with the raw count.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::{FAMILY, PlotError, register_font};

/// Render `confusion[gold][pred]` to `path`. `class_names` (index order) label the axes
/// when given (shortened to 14 characters), else class indices.
pub fn render_confusion(
    path: &Path,
    confusion: &[Vec<u64>],
    class_names: Option<&[String]>,
    title: &str,
) -> Result<(), PlotError> {
    register_font()?;
    let n = confusion.len();
    let label = |c: usize| -> String {
        match class_names.and_then(|names| names.get(c)) {
            Some(name) if name.chars().count() > 14 => {
                format!("{}…", name.chars().take(13).collect::<String>())
            }
            Some(name) => name.clone(),
            None => c.to_string(),
        }
    };
    let label_chars = (0..n).map(|c| label(c).chars().count()).max().unwrap_or(1) as u32;
    let cell: u32 = if n <= 12 {
        44
    } else {
        (560 / n as u32).max(14)
    };
    let font_px = (cell as f64 * 0.32).clamp(8.0, 14.0);
    let left = 40 + label_chars * 8;
    let top = 56;
    let bottom = 16 + label_chars * 8;
    let side = cell * n as u32;
    let (width, height) = (left + side + 24, top + side + bottom);

    let draw_err = |e: String| PlotError::Draw {
        path: path.display().to_string(),
        message: e,
    };
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;

    root.draw(&Text::new(
        title.to_string(),
        ((width / 2) as i32, 18),
        centered(16.0, &BLACK),
    ))
    .map_err(|e| draw_err(e.to_string()))?;
    root.draw(&Text::new(
        "predicted".to_string(),
        ((left + side / 2) as i32, (top - 22) as i32),
        centered(13.0, &BLACK),
    ))
    .map_err(|e| draw_err(e.to_string()))?;
    let gold_style = TextStyle::from(
        (FAMILY, 13.0)
            .into_font()
            .transform(FontTransform::Rotate270),
    )
    .color(&BLACK)
    .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(
        "gold".to_string(),
        (12, (top + side / 2) as i32),
        gold_style,
    ))
    .map_err(|e| draw_err(e.to_string()))?;

    for (g, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let x0 = (left + p as u32 * cell) as i32;
            let y0 = (top + g as u32 * cell) as i32;
            let fill = shade(share);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                fill.filled(),
            ))
            .map_err(|e| draw_err(e.to_string()))?;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                RGBColor(200, 200, 200),
            ))
            .map_err(|e| draw_err(e.to_string()))?;
            if cell >= 20 || count > 0 {
                let ink = if share > 0.55 { &WHITE } else { &BLACK };
                let c = (x0 + cell as i32 / 2, y0 + cell as i32 / 2);
                root.draw(&Text::new(count.to_string(), c, centered(font_px, ink)))
                    .map_err(|e| draw_err(e.to_string()))?;
            }
        }
        // Row label (gold), right-aligned left of the grid.
        let y = (top + g as u32 * cell + cell / 2) as i32;
        let style = TextStyle::from((FAMILY, 12.0).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(label(g), (left as i32 - 6, y), style))
            .map_err(|e| draw_err(e.to_string()))?;
    }
    // Column labels (predicted), reading downwards under the grid.
    for p in 0..n {
        let x = (left + p as u32 * cell + cell / 2) as i32;
        let style = TextStyle::from(
            (FAMILY, 12.0)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(label(p), (x, (top + side + 6) as i32), style))
            .map_err(|e| draw_err(e.to_string()))?;
    }
    root.present().map_err(|e| draw_err(e.to_string()))
}

fn centered(size: f64, color: &RGBColor) -> TextStyle<'_> {
    TextStyle::from((FAMILY, size).into_font())
        .color(color)
        .pos(Pos::new(HPos::Center, VPos::Center))
}

/// White → dark blue as `share` goes 0 → 1.
pub fn shade(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * s).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_shaded_by_row_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let m = vec![vec![5, 0, 0], vec![1, 3, 0], vec![0, 0, 0]];
        let names = vec![
            "circle".to_string(),
            "square".to_string(),
            "a very long class name".to_string(),
        ];
        render_confusion(&path, &m, Some(&names), "val: acc 0.89").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // Recompute the layout to find cell centres.
        let label_chars = 14u32; // the long name is shortened to 14 characters
        let (left, top, cell) = (40 + label_chars * 8, 56u32, 44u32);
        assert_eq!(img.width(), left + 3 * cell + 24);
        let at = |g: u32, p: u32| {
            // A point inside the cell but away from the count text in its centre.
            let px = img.get_pixel(left + p * cell + 4, top + g * cell + 4);
            RGBColor(px[0], px[1], px[2])
        };
        assert_eq!(at(0, 0), shade(1.0));
        assert_eq!(at(1, 1), shade(0.75));
        assert_eq!(at(1, 0), shade(0.25));
        assert_eq!(at(0, 1), shade(0.0));
        assert_eq!(at(2, 2), shade(0.0), "an empty row stays white");
    }
}
