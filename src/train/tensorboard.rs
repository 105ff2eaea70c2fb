//! TensorBoard event files for the `logging.jsonl` lines, as ms-swift writes them by default
//! (`report_to tensorboard`: transformers' `TensorBoardCallback` under `output_dir/runs/`).
//!
//! Format: TFRecord framing — per record `u64` length (LE), masked CRC-32C of those 8
//! bytes, the payload, masked CRC-32C of the payload; mask = `rotr(crc, 15) + 0xa282ead8` —
//! around `tensorflow.Event` protobufs: the first record `file_version = "brain.Event:2"`,
//! then one event per logged line with `Summary.Value{tag, simple_value}` scalars. Tags as
//! transformers' `rewrite_logs`: `eval_x` → `eval/x`, every other number `x` → `train/x`;
//! non-numbers are skipped, the step is the line's global step.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Numbers ms-swift adds to logging.jsonl lines only (after transformers' callbacks
/// saw the logs): not TensorBoard scalars, not trainer_state.json log_history entries.
pub const LOGGING_ONLY_KEYS: &[&str] = &["train_speed(s/it)", "memory(GiB)"];

/// Folder beside `logging.jsonl` (transformers' default `logging_dir` is `output_dir/runs`).
pub const RUNS_DIR: &str = "runs";
/// One fixed name, so a resumed run rewrites the file instead of adding a second one.
pub const EVENTS_FILE: &str = "events.out.tfevents.0.pipeline";

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn masked_crc(data: &[u8]) -> u32 {
    let c = CRC32C.checksum(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `payload`.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event{wall_time: 1, step: 2, file_version: 3 | summary: 5}`.
fn event(wall_time: f64, step: i64, body: EventBody) -> Vec<u8> {
    let mut out = Vec::new();
    varint(1 << 3 | 1, &mut out);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        varint(2 << 3, &mut out);
        varint(step as u64, &mut out);
    }
    match body {
        EventBody::FileVersion(v) => field_bytes(3, v.as_bytes(), &mut out),
        EventBody::Scalars(values) => {
            // Summary{value: 1 repeated Value{tag: 1, simple_value: 2 (float)}}
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                field_bytes(1, tag.as_bytes(), &mut value);
                varint(2 << 3 | 5, &mut value);
                value.extend_from_slice(&v.to_le_bytes());
                field_bytes(1, &value, &mut summary);
            }
            field_bytes(5, &summary, &mut out);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f32)]),
}

/// The scalars of one `logging.jsonl` line and its step; None for lines without a
/// `global_step/max_steps` (the closing summary line, as in ms-swift's event files).
pub fn line_scalars(line: &Map<String, Value>) -> Option<(i64, Vec<(String, f32)>)> {
    let step = super::log_step::step_of(line)? as i64;
    let values = line
        .iter()
        .filter(|(k, _)| !LOGGING_ONLY_KEYS.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let x = v.as_f64()?;
            let tag = match k.strip_prefix("eval_") {
                Some(rest) => format!("eval/{rest}"),
                None => format!("train/{k}"),
            };
            Some((tag, x as f32))
        })
        .collect();
    Some((step, values))
}

/// Appends events to `runs/events.out.tfevents.0.pipeline` under a run directory.
pub struct EventWriter {
    path: PathBuf,
}

impl EventWriter {
    /// Start the file afresh in `run_dir/runs/` with the events of `history`.
    pub fn create(run_dir: &Path, history: &[Map<String, Value>]) -> std::io::Result<Self> {
        let dir = run_dir.join(RUNS_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(EVENTS_FILE);
        let mut bytes = record(&event(now(), 0, EventBody::FileVersion("brain.Event:2")));
        for line in history {
            bytes.extend(line_record(line));
        }
        std::fs::write(&path, bytes)?;
        Ok(Self { path })
    }

    /// Append the events of one line.
    pub fn append(&self, line: &Map<String, Value>) -> std::io::Result<()> {
        let bytes = line_record(line);
        if bytes.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(&bytes)?;
        f.flush()
    }
}

fn line_record(line: &Map<String, Value>) -> Vec<u8> {
    match line_scalars(line) {
        Some((step, values)) if !values.is_empty() => {
            record(&event(now(), step, EventBody::Scalars(&values)))
        }
        _ => Vec::new(),
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crc32c_and_mask_match_tensorflow() {
        // CRC-32C check value (RFC 3720) and TensorFlow's mask of it.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        let c = 0xE306_9283u32;
        assert_eq!(
            masked_crc(b"123456789"),
            c.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn tags_follow_transformers_rewrite_logs() {
        let line = json!({"loss": 1.5, "eval_acc": 0.5, "global_step/max_steps": "3/9",
                          "elapsed_time": "1s", "epoch": 0.25, "train_speed(s/it)": 0.1});
        let (step, v) = line_scalars(line.as_object().unwrap()).unwrap();
        assert_eq!(step, 3);
        let tags: Vec<&str> = v.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["train/loss", "eval/acc", "train/epoch"]);
        assert!(line_scalars(json!({"best_metric": 1.0}).as_object().unwrap()).is_none());
    }
}
