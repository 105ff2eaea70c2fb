//! The classifier's task: transformers' `problem_type`, and ms-swift's rule for its default
//! (`get_problem_type`): an explicit value wins; otherwise num_labels == 1 ⇒ regression, else
//! single-label classification. The one definition the data, train, report and experiment
//! layers share.

/// What the classifier predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    SingleLabelClassification,
    MultiLabelClassification,
    Regression,
}

/// The valid `problem_type` values, sorted as every list of choices in messages is.
pub const PROBLEM_TYPES: [&str; 3] = [
    "multi_label_classification",
    "regression",
    "single_label_classification",
];

/// A `problem_type` that is none of [`PROBLEM_TYPES`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("problem_type {0:?} is not one of {list}", list = PROBLEM_TYPES.join(", "))]
pub struct UnknownProblemType(pub String);

impl ProblemType {
    /// The explicit `problem_type`, else ms-swift's default for `num_labels`.
    pub fn resolve(explicit: Option<&str>, num_labels: usize) -> Result<Self, UnknownProblemType> {
        match explicit {
            None if num_labels == 1 => Ok(Self::Regression),
            None => Ok(Self::SingleLabelClassification),
            Some(s) => Self::parse(s).ok_or_else(|| UnknownProblemType(s.to_string())),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "single_label_classification" => Some(Self::SingleLabelClassification),
            "multi_label_classification" => Some(Self::MultiLabelClassification),
            "regression" => Some(Self::Regression),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SingleLabelClassification => "single_label_classification",
            Self::MultiLabelClassification => "multi_label_classification",
            Self::Regression => "regression",
        }
    }

    /// Whether an accuracy is defined (not for regression).
    pub fn has_acc(self) -> bool {
        self != Self::Regression
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_type_rule() {
        assert_eq!(ProblemType::resolve(None, 1), Ok(ProblemType::Regression));
        assert_eq!(
            ProblemType::resolve(None, 11),
            Ok(ProblemType::SingleLabelClassification)
        );
        assert_eq!(
            ProblemType::resolve(Some("multi_label_classification"), 11),
            Ok(ProblemType::MultiLabelClassification)
        );
        let e = ProblemType::resolve(Some("ranking"), 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("multi_label_classification, regression, single_label_classification"),
            "{e}"
        );
        for s in PROBLEM_TYPES {
            assert_eq!(ProblemType::parse(s).map(ProblemType::as_str), Some(s));
        }
    }
}
