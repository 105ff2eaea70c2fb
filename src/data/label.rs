//! `label` of a SWIFT seq_cls row → `record::Label`, checked against the task.
//!
//! ms-swift (`Template._seq_cls_encode` + `get_problem_type`): an explicit problem_type
//! wins; otherwise num_labels == 1 ⇒ regression, else single-label classification. The
//! label's JSON shape must fit: an int (single-label; or regression with one label), a
//! float (regression, num_labels 1), a list of ints (multi-label), a list of floats
//! (multi-target regression, num_labels of them).

use serde_json::Value;

use super::error::{DataError, RowLoc};
use super::record::Label;

use crate::task::ProblemType;

/// How labels are read: the task's label count and problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelSpec {
    pub num_labels: usize,
    pub problem_type: ProblemType,
}

/// An integral JSON number as i64 (`3` or `3.0`), else None.
fn as_index(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

impl LabelSpec {
    /// Parse a row's `label` (`None`/`null` ⇒ no label).
    pub fn parse(&self, value: Option<&Value>, loc: &RowLoc) -> Result<Option<Label>, DataError> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let bad = |message: String| DataError::Row {
            loc: loc.clone(),
            message,
        };
        let class = |v: &Value| -> Result<usize, DataError> {
            let i = as_index(v).ok_or_else(|| {
                bad(format!(
                    "label {v} is not a class index (an integer in 0..{})",
                    self.num_labels
                ))
            })?;
            if i < 0 || i as usize >= self.num_labels {
                return Err(DataError::LabelRange {
                    loc: loc.clone(),
                    value: v.to_string(),
                    num_labels: self.num_labels,
                });
            }
            Ok(i as usize)
        };
        let float = |v: &Value| -> Result<f32, DataError> {
            v.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| bad(format!("label element {v} is not a number")))
        };
        let kind = self.problem_type.as_str();
        match (self.problem_type, value) {
            (ProblemType::SingleLabelClassification, Value::Number(_)) => {
                Ok(Some(Label::Class(class(value)?)))
            }
            // ms-swift's `int(label)` (Template._seq_cls_encode) also reads "3".
            (ProblemType::SingleLabelClassification, Value::String(text)) => {
                match text.trim().parse::<i64>() {
                    Ok(i) => Ok(Some(Label::Class(class(&Value::from(i))?))),
                    Err(_) => Err(bad(format!(
                        "label {value} is not a class index (an integer in 0..{})",
                        self.num_labels
                    ))),
                }
            }
            (ProblemType::MultiLabelClassification, Value::Array(items)) => {
                let mut classes = items.iter().map(class).collect::<Result<Vec<_>, _>>()?;
                classes.sort_unstable();
                classes.dedup();
                Ok(Some(Label::Classes(classes)))
            }
            (ProblemType::Regression, Value::Number(n)) => {
                if self.num_labels != 1 {
                    return Err(bad(format!(
                        "regression label {n} is a single number but num_labels = {}; give a \
                         list of {} numbers",
                        self.num_labels, self.num_labels
                    )));
                }
                Ok(Some(Label::Values(vec![float(value)?])))
            }
            (ProblemType::Regression, Value::Array(items)) => {
                if items.len() != self.num_labels {
                    return Err(bad(format!(
                        "regression label has {} values but num_labels = {}",
                        items.len(),
                        self.num_labels
                    )));
                }
                Ok(Some(Label::Values(
                    items.iter().map(float).collect::<Result<_, _>>()?,
                )))
            }
            (_, other) => Err(bad(format!(
                "label {other} does not fit problem_type {kind} (expected {})",
                match self.problem_type {
                    ProblemType::SingleLabelClassification => "an integer class index",
                    ProblemType::MultiLabelClassification => "a list of class indices",
                    ProblemType::Regression => "a number or a list of numbers",
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loc() -> RowLoc {
        RowLoc {
            file: "d.jsonl".into(),
            line: Some(3),
            row: 2,
        }
    }

    fn spec(n: usize, p: Option<&str>) -> LabelSpec {
        LabelSpec {
            num_labels: n,
            problem_type: ProblemType::resolve(p, n).unwrap(),
        }
    }

    #[test]
    fn shapes_map_to_labels() {
        let s = spec(11, None);
        assert_eq!(
            s.parse(Some(&json!(3)), &loc()).unwrap(),
            Some(Label::Class(3))
        );
        assert_eq!(
            s.parse(Some(&json!(3.0)), &loc()).unwrap(),
            Some(Label::Class(3))
        );
        assert_eq!(s.parse(None, &loc()).unwrap(), None);
        assert_eq!(s.parse(Some(&json!(null)), &loc()).unwrap(), None);
        let r = spec(1, None);
        assert_eq!(
            r.parse(Some(&json!(0.25)), &loc()).unwrap(),
            Some(Label::Values(vec![0.25]))
        );
        assert_eq!(
            r.parse(Some(&json!(2)), &loc()).unwrap(),
            Some(Label::Values(vec![2.0]))
        );
        let m = spec(4, Some("multi_label_classification"));
        assert_eq!(
            m.parse(Some(&json!([3, 1])), &loc()).unwrap(),
            Some(Label::Classes(vec![1, 3]))
        );
        assert_eq!(
            m.parse(Some(&json!([])), &loc()).unwrap(),
            Some(Label::Classes(vec![]))
        );
        let v = spec(2, Some("regression"));
        assert_eq!(
            v.parse(Some(&json!([0.5, -1.0])), &loc()).unwrap(),
            Some(Label::Values(vec![0.5, -1.0]))
        );
    }

    #[test]
    fn bad_labels_say_what_is_wrong() {
        let s = spec(11, None);
        // String labels read as ms-swift's int(label) reads them.
        assert_eq!(
            s.parse(Some(&json!(" 3")), &loc()).unwrap(),
            Some(Label::Class(3))
        );
        assert!(s.parse(Some(&json!("3.0")), &loc()).is_err());
        assert!(s.parse(Some(&json!("30")), &loc()).is_err());
        let e = s.parse(Some(&json!(11)), &loc()).unwrap_err().to_string();
        assert_eq!(
            e,
            "d.jsonl:3 (row 2): label 11 is outside 0..11 (num_labels = 11)"
        );
        let e = s.parse(Some(&json!(-1)), &loc()).unwrap_err().to_string();
        assert!(e.contains("label -1 is outside 0..11"), "{e}");
        let e = s.parse(Some(&json!(2.5)), &loc()).unwrap_err().to_string();
        assert!(e.contains("not a class index"), "{e}");
        let e = s
            .parse(Some(&json!([1, 2])), &loc())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not fit problem_type single_label_classification"),
            "{e}"
        );
        let e = spec(4, Some("multi_label_classification"))
            .parse(Some(&json!([1, 7])), &loc())
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 7 is outside 0..4"), "{e}");
        let e = spec(3, Some("regression"))
            .parse(Some(&json!(0.5)), &loc())
            .unwrap_err();
        assert!(e.to_string().contains("num_labels = 3"), "{e}");
    }
}
