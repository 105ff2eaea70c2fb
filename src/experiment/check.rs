//! Small helpers shared by the validation passes: located errors, choice checks and
//! path resolution against the experiment file's folder.

use std::path::{Path, PathBuf};

use toml_edit::Table;

use super::error::{ExperimentError, closest, list};
use super::source::Source;
use crate::paths::normalize;

/// The file being validated, for locating errors.
pub(crate) struct Check<'a> {
    pub src: &'a Source,
    pub root: &'a Table,
    /// The experiment file's folder (absolute).
    pub dir: &'a Path,
}

pub(crate) type Result<T> = std::result::Result<T, ExperimentError>;

impl Check<'_> {
    pub fn err(&self, path: &[&str], message: impl Into<String>) -> ExperimentError {
        self.src.invalid(self.root, path, message)
    }

    pub fn ensure(&self, ok: bool, path: &[&str], message: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(self.err(path, message()))
        }
    }

    /// `value` must be one of `valid`.
    pub fn choice(&self, path: &[&str], value: &str, valid: &[&str]) -> Result<()> {
        if valid.contains(&value) {
            return Ok(());
        }
        let field = path.last().copied().unwrap_or_default();
        let hint = closest(value, valid)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        Err(self.err(
            path,
            format!(
                "invalid {field} `{value}`{hint}; valid values: {}",
                list(valid)
            ),
        ))
    }

    /// Absolute form of a path written in the file (no existence check).
    pub fn resolve(&self, value: &str) -> PathBuf {
        normalize(&self.dir.join(value))
    }

    /// Resolve and require an existing file.
    pub fn existing_file(&self, path: &[&str], value: &str) -> Result<String> {
        let abs = self.resolve(value);
        self.ensure(!abs.is_dir(), path, || {
            format!("{} is a directory; expected a file", abs.display())
        })?;
        self.ensure(abs.is_file(), path, || not_found("file", value, &abs))?;
        Ok(abs.to_string_lossy().into_owned())
    }

    /// Resolve and require an existing directory.
    pub fn existing_dir(&self, path: &[&str], value: &str) -> Result<String> {
        let abs = self.resolve(value);
        self.ensure(!abs.is_file(), path, || {
            format!("{} is a file; expected a directory", abs.display())
        })?;
        self.ensure(abs.is_dir(), path, || not_found("directory", value, &abs))?;
        Ok(abs.to_string_lossy().into_owned())
    }
}

fn not_found(what: &str, value: &str, abs: &Path) -> String {
    if Path::new(value).is_absolute() {
        format!("{what} not found: {}", abs.display())
    } else {
        format!(
            "{what} not found: {} (relative paths resolve against the experiment file's folder)",
            abs.display()
        )
    }
}
