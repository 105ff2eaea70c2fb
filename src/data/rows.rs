//! SWIFT-format dataset files: a JSON array or JSONL of rows
//! `{"messages": [{"role", "content"}], "images": [...] | "image": ..., "label": ...}`.
//!
//! `<image>` tags mark where images go. As ms-swift's `Template._add_default_tags`, a row
//! with fewer tags than images gets the missing tags at the start of its first user
//! message; more tags than images is an error (ms-swift only warns, then fails later).
//! Extra keys in a row are ignored, as ms-swift ignores unused columns.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::{DataError, RowLoc};
use super::label::LabelSpec;
use super::record::Label;

/// The tag marking an image's place in message content.
pub const IMAGE_TAG: &str = "<image>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One validated row: as many `<image>` tags in its messages as it has images.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub loc: RowLoc,
    pub messages: Vec<Message>,
    /// Image paths as written in the row.
    pub images: Vec<String>,
    pub label: Option<Label>,
}

/// Read and validate every row of a dataset file (JSON array or JSONL, detected from the
/// first non-blank character).
pub fn read_rows(path: &Path, labels: &LabelSpec) -> Result<Vec<Row>, DataError> {
    if path.is_dir() {
        return Err(DataError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other("it is a directory; expected a JSON or JSONL file"),
        });
    }
    if !path.is_file() {
        return Err(DataError::MissingFile(path.to_path_buf()));
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        let line_start = bytes[..bad]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        DataError::NotUtf8 {
            path: path.to_path_buf(),
            line: bytes[..bad].iter().filter(|&&b| b == b'\n').count() + 1,
            column: bad - line_start + 1,
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut rows = Vec::new();
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text).map_err(|e| json_error(path, 0, &e))?;
        for (row, value) in values.into_iter().enumerate() {
            let loc = RowLoc {
                file: path.to_path_buf(),
                line: None,
                row,
            };
            rows.push(parse_row(value, loc, labels)?);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| json_error(path, i, &e))?;
            let loc = RowLoc {
                file: path.to_path_buf(),
                line: Some(i + 1),
                row: rows.len(),
            };
            rows.push(parse_row(value, loc, labels)?);
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty(path.to_path_buf()));
    }
    Ok(rows)
}

/// `file:line: malformed JSON: <serde message> (column c)`; `line_offset` is the 0-based
/// line of a JSONL row (serde counts lines within what it was given).
fn json_error(path: &Path, line_offset: usize, e: &serde_json::Error) -> DataError {
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(cut) => format!("{} (column {})", &full[..cut], e.column()),
        None => full,
    };
    DataError::Json {
        path: path.to_path_buf(),
        line: line_offset + e.line().max(1),
        message,
    }
}

fn parse_row(value: Value, loc: RowLoc, labels: &LabelSpec) -> Result<Row, DataError> {
    let bad = |message: String| DataError::Row {
        loc: loc.clone(),
        message,
    };
    let Value::Object(obj) = value else {
        return Err(bad(format!(
            "row is not a JSON object but {}",
            kind_of(&value)
        )));
    };
    let mut messages = parse_messages(&obj, &loc)?;
    if let Some(system) = obj.get("system").filter(|v| !v.is_null()) {
        let Value::String(system) = system else {
            return Err(bad(format!(
                "`system` must be a string, got {}",
                kind_of(system)
            )));
        };
        if messages.iter().any(|m| m.role == Role::System) {
            return Err(bad(
                "row has both a `system` key and a system message".into()
            ));
        }
        messages.insert(
            0,
            Message {
                role: Role::System,
                content: system.clone(),
            },
        );
    }
    let images = parse_images(&obj, &loc)?;
    let tags: usize = messages
        .iter()
        .map(|m| m.content.matches(IMAGE_TAG).count())
        .sum();
    if tags > images.len() {
        return Err(DataError::TooManyTags {
            loc,
            tags,
            images: images.len(),
        });
    }
    if tags < images.len() {
        let first_user = messages
            .iter_mut()
            .find(|m| m.role == Role::User)
            .ok_or_else(|| {
                bad(format!(
                    "{} images need <image> tags but the row has no user message",
                    images.len()
                ))
            })?;
        first_user.content = IMAGE_TAG.repeat(images.len() - tags) + &first_user.content;
    }
    let label = labels.parse(obj.get("label"), &loc)?;
    Ok(Row {
        loc,
        messages,
        images,
        label,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_messages(obj: &Map<String, Value>, loc: &RowLoc) -> Result<Vec<Message>, DataError> {
    let bad = |message: String| DataError::Row {
        loc: loc.clone(),
        message,
    };
    let list = match obj.get("messages") {
        None | Some(Value::Null) => return Err(DataError::MissingMessages { loc: loc.clone() }),
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(bad("`messages` is empty".into()));
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(bad(format!(
                "`messages` must be a list, got {}",
                kind_of(other)
            )));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(bad(format!(
                    "messages[{i}] must be an object, got {}",
                    kind_of(m)
                )));
            };
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].role {other:?} is not one of system, user, assistant"
                    )));
                }
                None => return Err(bad(format!("messages[{i}] has no string `role`"))),
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string, got {}",
                        kind_of(other)
                    )));
                }
            };
            Ok(Message { role, content })
        })
        .collect()
}

/// `images` (list, or one string) or `image` (string or list); entries are paths or
/// `{"path": ...}` objects (the HF datasets image feature).
fn parse_images(obj: &Map<String, Value>, loc: &RowLoc) -> Result<Vec<String>, DataError> {
    let bad = |message: String| DataError::Row {
        loc: loc.clone(),
        message,
    };
    let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let (key, value) = match (present("images"), present("image")) {
        (Some(_), Some(_)) => return Err(bad("row has both `images` and `image`".into())),
        (Some(v), None) => ("images", v),
        (None, Some(v)) => ("image", v),
        (None, None) => return Ok(Vec::new()),
    };
    let entry = |i: usize, v: &Value| -> Result<String, DataError> {
        match v {
            Value::String(s) if s.trim().is_empty() => Err(bad(format!(
                "{key}[{i}] is an empty string; expected an image path"
            ))),
            Value::String(s) => Ok(s.clone()),
            Value::Object(o) => match o.get("path") {
                Some(Value::String(s)) if s.trim().is_empty() => Err(bad(format!(
                    "{key}[{i}].path is an empty string; expected an image path"
                ))),
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(bad(format!(
                    "{key}[{i}] is an object without a `path` string"
                ))),
            },
            other => Err(bad(format!(
                "{key}[{i}] must be a path string, got {}",
                kind_of(other)
            ))),
        }
    };
    match value {
        Value::Array(list) => list.iter().enumerate().map(|(i, v)| entry(i, v)).collect(),
        single => Ok(vec![entry(0, single)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::ProblemType;

    fn spec() -> LabelSpec {
        LabelSpec {
            num_labels: 3,
            problem_type: ProblemType::SingleLabelClassification,
        }
    }

    fn row(json: &str) -> Result<Row, DataError> {
        let loc = RowLoc {
            file: "t.jsonl".into(),
            line: Some(1),
            row: 0,
        };
        parse_row(serde_json::from_str(json).unwrap(), loc, &spec())
    }

    #[test]
    fn missing_tags_are_prepended_to_the_first_user_message() {
        let r = row(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q <image>"}],
            "images":["a.png","b.png","c.png"],"label":2}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1].content, "<image><image>q <image>");
        assert_eq!(r.images, ["a.png", "b.png", "c.png"]);
        assert_eq!(r.label, Some(Label::Class(2)));
        let r = row(r#"{"messages":[{"role":"user","content":"q"}],"image":"x.png"}"#).unwrap();
        assert_eq!(
            (r.messages[0].content.as_str(), r.images.len()),
            ("<image>q", 1)
        );
        let r = row(r#"{"messages":[{"role":"user","content":"q"}],"images":[{"path":"p.jpg"}]}"#)
            .unwrap();
        assert_eq!(r.images, ["p.jpg"]);
        let r = row(r#"{"system":"S","messages":[{"role":"user","content":null}]}"#).unwrap();
        assert_eq!(
            r.messages[0],
            Message {
                role: Role::System,
                content: "S".into()
            }
        );
        assert_eq!(r.messages[1].content, "");
    }

    #[test]
    fn bad_rows_are_one_line_errors() {
        let e = |j: &str| row(j).unwrap_err().to_string();
        assert_eq!(
            e(r#"{"images":["a.png"]}"#),
            "t.jsonl:1 (row 0): row has no `messages` (a list of {\"role\", \"content\"} objects)"
        );
        assert_eq!(
            e(r#"{"messages":[{"role":"user","content":"<image><image>"}],"images":["a.png"]}"#),
            "t.jsonl:1 (row 0): 2 <image> tags but only 1 images"
        );
        assert!(
            e(r#"{"messages":[{"role":"bot","content":""}]}"#).contains("system, user, assistant")
        );
        assert!(e(r#"{"messages":[{"role":"user","content":[1]}]}"#).contains("must be a string"));
        assert!(
            e(r#"{"messages":[{"role":"user","content":""}],"image":"a","images":["b"]}"#)
                .contains("both `images` and `image`")
        );
        assert!(e(r#"[1]"#).contains("not a JSON object"));
        assert!(
            e(r#"{"messages":[{"role":"user","content":"x"}],"label":5}"#)
                .contains("label 5 is outside 0..3")
        );
    }
}
