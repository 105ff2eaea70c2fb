//! The experiment file's text, kept to turn byte spans into `file:line:column`.

use std::ops::Range;
use std::path::PathBuf;

use toml_edit::{Item, Table, TableLike};

use super::error::{ExperimentError, Location};

/// An experiment file as read: its display path and its text.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as the user gave it (shown in messages).
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(file: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            file: file.into(),
            text: text.into(),
        }
    }

    /// Location of a byte offset (clamped to the text).
    pub fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }

    fn span_location(&self, span: Option<Range<usize>>) -> Location {
        self.location(span.map_or(0, |s| s.start))
    }

    /// Where the key at `path` is written; the nearest written ancestor when the key is
    /// absent (a default), or the start of the file.
    pub fn key_location(&self, root: &Table, path: &[&str]) -> Location {
        self.span_location(find_spans(root, path).0)
    }

    /// Where the value at `path` is written (falls back like `key_location`).
    pub fn value_location(&self, root: &Table, path: &[&str]) -> Location {
        let (key, value) = find_spans(root, path);
        self.span_location(value.or(key))
    }

    /// An `Invalid` error located at the value of `path` (or its nearest ancestor).
    pub fn invalid(
        &self,
        root: &Table,
        path: &[&str],
        message: impl Into<String>,
    ) -> ExperimentError {
        invalid_error(self.value_location(root, path), path, message)
    }

    /// An `Invalid` error located at the key of `path`.
    pub fn invalid_key(
        &self,
        root: &Table,
        path: &[&str],
        message: impl Into<String>,
    ) -> ExperimentError {
        invalid_error(self.key_location(root, path), path, message)
    }

    /// An `Invalid` error at an explicit span.
    pub fn invalid_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ExperimentError {
        ExperimentError::Invalid {
            location: self.span_location(span),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// An `Invalid` error at `location` for the dotted key of `path`.
fn invalid_error(location: Location, path: &[&str], message: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        location,
        key: path.join("."),
        message: message.into(),
    }
}

/// Spans of the deepest key written along `path` and, when the whole path exists, of
/// its value.
fn find_spans(root: &Table, path: &[&str]) -> (Option<Range<usize>>, Option<Range<usize>>) {
    let mut table: &dyn TableLike = root;
    let mut key_span = None;
    let mut container_span = root.span().filter(|s| !s.is_empty());
    for (i, part) in path.iter().enumerate() {
        let Some((key, item)) = table.get_key_value(part) else {
            return (key_span.or(container_span), None);
        };
        key_span = key.span().or(key_span);
        if i + 1 == path.len() {
            return (key_span.or(container_span), item_span(item));
        }
        match item.as_table_like() {
            Some(t) => {
                container_span = item_span(item).or(container_span);
                table = t;
            }
            None => return (key_span.or(container_span), None),
        }
    }
    (key_span.or(container_span), None)
}

/// Span of an item; header tables report the header through the last value.
pub(crate) fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines_and_columns() {
        let src = Source::new("x.toml", "a = 1\nbé = 2\n");
        assert_eq!(src.location(0).line, 1);
        let loc = src.location(src.text.find('2').unwrap());
        assert_eq!((loc.line, loc.column), (2, 6));
        assert_eq!(loc.to_string(), "x.toml:2:6");
    }

    #[test]
    fn spans_of_nested_keys() {
        let text = "seed = 1\n\n[stages.train]\nkind = \"train\"\nlora_rank = 8\n";
        let doc = toml_edit::ImDocument::parse(text.to_string()).unwrap();
        let src = Source::new("e.toml", text);
        let loc = src.key_location(doc.as_table(), &["stages", "train", "lora_rank"]);
        assert_eq!((loc.line, loc.column), (5, 1));
        let loc = src.value_location(doc.as_table(), &["stages", "train", "lora_rank"]);
        assert_eq!((loc.line, loc.column), (5, 13));
        // An absent key points at its table.
        let loc = src.key_location(doc.as_table(), &["stages", "train", "lora_alpha"]);
        assert_eq!(loc.line, 3);
    }
}
