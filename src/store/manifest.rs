//! `manifest.json`: what a cache entry is (written last, so its presence and validity
//! mark the entry complete) and everything needed to explain a later miss.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Result, io};
use crate::checksums::FileSum;

pub const MANIFEST: &str = "manifest.json";

/// An entry's manifest, or its temp file while it is written (`.manifest.json…`): the files
/// of an entry its record leaves out.
pub fn is_manifest_file(name: &str) -> bool {
    name == MANIFEST || name.starts_with(&format!(".{MANIFEST}"))
}
const SCHEMA: u32 = 2;

/// One input file's digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputDigest {
    pub path: String,
    pub blake3: String,
}

/// The manifest of a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    /// Full content key (64 hex chars).
    pub key: String,
    pub kind: String,
    /// Stage name that computed it (and its sweep variant).
    pub stage: String,
    pub variant: Option<String>,
    /// `Stage::version()`.
    pub version: u32,
    /// `Stage::params()` in canonical form.
    pub params: serde_json::Value,
    pub inputs: Vec<InputDigest>,
    /// Upstream need name → full key.
    pub upstream: BTreeMap<String, String>,
    /// The seed, for stages whose output depends on it.
    pub seed: Option<u64>,
    /// What of the device it ran on entered the key (null for stages off the device).
    #[serde(default)]
    pub device: serde_json::Value,
    pub started: String,
    pub finished: String,
    pub duration_s: f64,
    pub tool_version: String,
    /// Every file of the entry (filled in by `Store::publish`).
    pub artifacts: Vec<FileSum>,
}

impl Manifest {
    pub fn schema() -> u32 {
        SCHEMA
    }

    /// Read and schema-check `dir/manifest.json`; `Err` says why it is not usable.
    pub fn read(dir: &Path) -> std::result::Result<Manifest, String> {
        let path = dir.join(MANIFEST);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("no readable {MANIFEST} ({e})"))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("corrupt {MANIFEST} ({e})"))?;
        if m.schema != SCHEMA {
            return Err(format!(
                "{MANIFEST} has schema {}, expected {SCHEMA}",
                m.schema
            ));
        }
        Ok(m)
    }

    /// Write `dir/manifest.json` durably (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        let mut f = io(std::fs::File::create(&tmp), "create", &tmp)?;
        io(f.write_all(text.as_bytes()), "write", &tmp)?;
        io(f.sync_all(), "sync", &tmp)?;
        io(std::fs::rename(&tmp, &path), "rename", &tmp)
    }
}

/// `2026-11-28T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_250); // leap-year Feb 29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.250Z");
    }

    #[test]
    fn rejects_corrupt_manifests() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Manifest::read(dir.path())
                .unwrap_err()
                .contains("no readable")
        );
        std::fs::write(dir.path().join(MANIFEST), "{\"key\": 3").unwrap();
        assert!(Manifest::read(dir.path()).unwrap_err().contains("corrupt"));
    }
}
