//! Experiment files: raw TOML schema, validation with `file:line:column` errors, sweep
//! expansion. Two phases, as in ripgrep's flags: a raw parse (`parse`) with no I/O, then
//! validated objects (`validate`, `sweep`) that planning consumes.
//!
//! Entry point: [`load`] → [`Loaded`] (the base experiment plus one [`Variant`] per
//! sweep point, or a single unnamed variant when there is no `[sweep]`).

mod check;
pub mod cluster;
mod dag;
pub mod error;
mod fields;
pub mod from_swift;
pub mod hub_model;
mod parse;
pub mod reference;
pub mod schema;
pub mod source;
pub mod spec;
mod stage_rules;
pub mod sweep;
mod sweep_names;
mod validate;

use std::path::{Path, PathBuf};

pub use crate::paths::normalize as normalize_path;
pub use cluster::SlurmSpec;
pub use error::{ExperimentError, Location};
pub use schema::Common;
pub use source::Source;
pub use spec::{Experiment, STAGE_KINDS, StageParams, StageSpec};
pub use stage_rules::{replica_pool_problem, train_value_problem};
pub use sweep::{SweepMode, SweepSpec, SweptValue, Variant};
pub use sweep_names::format_value;

/// A loaded experiment file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    /// The file as written (the sweep's base values).
    pub base: Experiment,
    pub sweep: Option<SweepSpec>,
    /// One per sweep point in expansion order; exactly one (unnamed) without a sweep.
    pub variants: Vec<Variant>,
}

impl Loaded {
    pub fn name(&self) -> &str {
        &self.base.name
    }

    pub fn is_sweep(&self) -> bool {
        self.sweep.is_some()
    }

    /// Where the dotted `key` (`stages.train.lora_rank`) is written: its `[sweep]` entry
    /// when it is swept, else the key (or its nearest written ancestor, for a default).
    pub fn locate(&self, key: &str) -> Location {
        let Ok(doc) = toml_edit::ImDocument::parse(self.source.text.clone()) else {
            return self.source.location(0);
        };
        let root = doc.as_table();
        let swept = root
            .get("sweep")
            .and_then(|s| s.as_table_like())
            .is_some_and(|t| t.contains_key(key));
        if swept {
            self.source.value_location(root, &["sweep", key])
        } else {
            let parts: Vec<&str> = key.split('.').collect();
            self.source.value_location(root, &parts)
        }
    }

    /// The variant named `sel`, or at index `sel` (0-based, as in a slurm array).
    pub fn select(&self, sel: &str) -> Result<&Variant, String> {
        let names: Vec<&str> = self
            .variants
            .iter()
            .filter_map(|v| v.name.as_deref())
            .collect();
        let found = self
            .variants
            .iter()
            .find(|v| v.name.as_deref() == Some(sel))
            .or_else(|| sel.parse::<usize>().ok().and_then(|k| self.variants.get(k)));
        found.ok_or_else(|| {
            if names.is_empty() {
                format!(
                    "--variant {sel}: `{}` has no [sweep]",
                    self.source.file.display()
                )
            } else {
                format!(
                    "--variant {sel}: no such variant; use an index 0..{} or a name: {}",
                    self.variants.len() - 1,
                    names.join(", ")
                )
            }
        })
    }
}

/// Read, parse, validate and expand the experiment file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|e| ExperimentError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    load_str(path, &text)
}

/// As [`load`], with the text given (relative paths still resolve against `path`'s folder).
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, ExperimentError> {
    let abs = absolute(path);
    let source = Source::new(path, text);
    let (root, base) = validate::validate_text(&source, &abs)?;
    let (sweep, variants) = match sweep::expand(&source, &root, &abs, &base)? {
        Some((spec, variants)) => (Some(spec), variants),
        None => {
            let only = Variant {
                index: 0,
                name: None,
                values: vec![],
                experiment: base.clone(),
            };
            (None, vec![only])
        }
    };
    Ok(Loaded {
        source,
        base,
        sweep,
        variants,
    })
}

fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    crate::paths::normalize(&joined)
}

#[cfg(test)]
pub(crate) mod tests;
