//! Plain-text summary of a scored split, printed after the score stage.

use std::fmt::Write;

use super::metrics::{ClassStats, Metrics};

/// The headline metrics on one line, then per-class precision/recall/F1/support.
/// `class_names` (index order) label the rows when given.
pub fn metrics_table(metrics: &Metrics, class_names: Option<&[String]>) -> String {
    let mut out = String::new();
    match metrics {
        Metrics::SingleLabel(m) => {
            let _ = writeln!(
                out,
                "acc {:.4}  macro_f1 {:.4}  nll {:.4}  ece {:.4}  (n = {})",
                m.acc, m.macro_f1, m.nll, m.ece, m.num_samples
            );
            per_class(&mut out, &m.per_class, class_names);
        }
        Metrics::MultiLabel(m) => {
            let _ = writeln!(
                out,
                "exact-match acc {:.4}  label acc {:.4}  macro_f1 {:.4}  bce {:.4}  ece {:.4}  (n = {})",
                m.acc, m.label_acc, m.macro_f1, m.nll, m.ece, m.num_samples
            );
            per_class(&mut out, &m.per_class, class_names);
        }
        Metrics::Regression(m) => {
            let r2 =
                m.r2.iter()
                    .map(|r| format!("{r:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ");
            let _ = writeln!(
                out,
                "mse {:.6}  rmse {:.6}  mae {:.6}  r2 [{r2}]  (n = {})",
                m.mse, m.rmse, m.mae, m.num_samples
            );
        }
    }
    out
}

fn per_class(out: &mut String, stats: &[ClassStats], names: Option<&[String]>) {
    let label = |c: usize| match names.and_then(|n| n.get(c)) {
        Some(name) => format!("{c} {name}"),
        None => c.to_string(),
    };
    let width = (0..stats.len())
        .map(|c| label(c).chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:<width$}  precision  recall  f1      support",
        "class"
    );
    for (c, s) in stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<width$}  {:<9.4}  {:<6.4}  {:<6.4}  {}",
            label(c),
            s.precision,
            s.recall,
            s.f1,
            s.support
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::single_label;
    use super::*;

    #[test]
    fn table_lists_headline_and_every_class() {
        let rows = vec![vec![-0.1f32, -2.4], vec![-2.4, -0.1]];
        let m = Metrics::SingleLabel(single_label(&rows, &[0, 0], 2));
        let names = vec!["circle".to_string(), "square".to_string()];
        let t = metrics_table(&m, Some(&names));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("acc 0.5000  macro_f1 0.3333"), "{t}");
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("0 circle") && lines[2].ends_with(" 2"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("1 square") && lines[3].ends_with(" 0"),
            "{t}"
        );
    }
}
