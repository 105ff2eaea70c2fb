//! Errors of the experiment layer. Every message is one line that names the file
//! position, the dotted key and, where there is a closed set, the valid choices.

use std::fmt;
use std::path::PathBuf;

/// A position in an experiment file (1-based line and column, columns in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why an experiment file was rejected. Always an input error (exit status 2).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExperimentError {
    /// The file could not be read at all.
    #[error("cannot read experiment file {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// Not valid TOML.
    #[error("{location}: invalid TOML: {message}")]
    Syntax { location: Location, message: String },
    /// Valid TOML, but a key or value is wrong.
    #[error("{location}: {key}: {message}")]
    Invalid {
        location: Location,
        /// Dotted path of the offending key (`stages.train.lora_rank`).
        key: String,
        message: String,
    },
}

impl ExperimentError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ExperimentError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `a, b, c` for a list of valid choices.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest candidate within a small edit distance, for "did you mean" hints.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_only() {
        let keys = ["lora_rank", "lora_alpha", "learning_rate"];
        assert_eq!(closest("lora_rnk", &keys), Some("lora_rank"));
        assert_eq!(closest("trian", &["dataset", "train"]), Some("train"));
        assert_eq!(closest("banana", &keys), None);
    }
}
