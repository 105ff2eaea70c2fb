//! Errors of the dataset pipeline. Every message is one line naming the file and row.

use std::fmt;
use std::path::PathBuf;

use super::smart_resize::ResizeError;

/// Where a row sits: its file, its 1-based line (JSONL only) and its 0-based row index
/// (the `index` of its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLoc {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub row: usize,
}

impl fmt::Display for RowLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{} (row {})", self.file.display(), line, self.row),
            None => write!(f, "{} row {}", self.file.display(), self.row),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset file {} not found", .0.display())]
    MissingFile(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: malformed JSON: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{} has no rows", .0.display())]
    Empty(PathBuf),
    #[error("{loc}: {message}")]
    Row { loc: RowLoc, message: String },
    #[error("{loc}: row has no `messages` (a list of {{\"role\", \"content\"}} objects)")]
    MissingMessages { loc: RowLoc },
    #[error("{loc}: label {value} is outside 0..{num_labels} (num_labels = {num_labels})")]
    LabelRange {
        loc: RowLoc,
        value: String,
        num_labels: usize,
    },
    #[error("{loc}: {tags} <image> tags but only {images} images")]
    TooManyTags {
        loc: RowLoc,
        tags: usize,
        images: usize,
    },
    #[error("{loc}: image {path:?} not found (looked in {})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ImageMissing {
        loc: RowLoc,
        path: String,
        tried: Vec<PathBuf>,
    },
    #[error("{loc}: image {path:?} is a directory ({}), not an image file", dir.display())]
    ImageIsDir {
        loc: RowLoc,
        path: String,
        dir: PathBuf,
    },
    #[error("{}:{line}: not valid UTF-8 (byte {column} of the line); dataset files must be UTF-8 text", path.display())]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{loc}: cannot decode image {}: {message}", path.display())]
    ImageDecode {
        loc: RowLoc,
        path: PathBuf,
        message: String,
    },
    #[error("{loc}: image {}: {source}", path.display())]
    ImageSize {
        loc: RowLoc,
        path: PathBuf,
        source: ResizeError,
    },
    #[error("{loc}: cannot tokenize: {message}")]
    Tokenize { loc: RowLoc, message: String },
    #[error(
        "{}: {} rows longer than max_length {max_length} tokens (row: length): {}{}; raise \
         max_length or set truncation_strategy = \"delete\" to drop them",
        file.display(), rows.len(), list_rows(rows), if rows.len() > 20 { ", ..." } else { "" }
    )]
    TooLong {
        file: PathBuf,
        max_length: usize,
        rows: Vec<(usize, usize)>,
    },
    #[error("invalid dataset parameter: {0}")]
    Param(String),
    /// Writing artifacts failed (not an input problem).
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

fn list_rows(rows: &[(usize, usize)]) -> String {
    rows.iter()
        .take(20)
        .map(|(r, n)| format!("{r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataError {
    /// Whether the user's input is at fault (exit 2) rather than the machine (exit 1).
    pub fn is_input(&self) -> bool {
        !matches!(self, DataError::Write { .. })
    }
}
