//! Build a dataset cache entry: rows → images (decode, RGB, smart_resize, PIL bicubic,
//! PNG) → templated token ids → `train.jsonl` / `val.jsonl` / `images/` / `stats.json`
//! (layout in `record.rs`).
//!
//! Distinct images (by resolved path) are processed once, in parallel on all cores
//! (rayon); errors are reported for the first row, in dataset order, that uses the image.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::error::{DataError, RowLoc};
use super::images::{decode_rgb, resolve_image};
use super::label::LabelSpec;
use super::record::{Record, RecordImage};
use super::resample::resize_bicubic;
use super::rows::{Row, read_rows};
use super::smart_resize::{IMAGE_FACTOR, MERGE_SIZE, PATCH_SIZE, smart_resize};
use super::stats::{DatasetStats, ImageStats, SplitStats};
use super::template::{encode_prompt, render_prompt};

/// What to do with rows longer than `max_length` tokens (ms-swift's `truncation_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Fail, listing the offending rows (`raise`; also spelled `error`).
    Error,
    /// Drop them and report the count (ms-swift 4's default).
    Delete,
    /// Keep every image/video pad token and the last (`Left`) or first (`Right`) of the
    /// other tokens, up to `max_length` in all, as ms-swift's `Template._truncate`.
    Left,
    Right,
}

impl Truncation {
    pub fn parse(s: &str) -> Result<Self, DataError> {
        match s {
            "error" | "raise" => Ok(Self::Error),
            "delete" => Ok(Self::Delete),
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            other => Err(DataError::Param(format!(
                "truncation_strategy {other:?} is not one of delete, left, right, raise"
            ))),
        }
    }

    /// The canonical name (the one in the content key).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "raise",
            Self::Delete => "delete",
            Self::Left => "left",
            Self::Right => "right",
        }
    }
}

/// ms-swift's `Template._truncate`: keep every token in `protected` and the last (`left`)
/// or first (`right`) `max_length - #protected` others, in their order.
pub fn truncate_ids(ids: &[u32], max_length: usize, left: bool, protected: &[u32]) -> Vec<u32> {
    let keep_prot: Vec<bool> = ids.iter().map(|t| protected.contains(t)).collect();
    let n_prot = keep_prot.iter().filter(|&&p| p).count();
    let mut keep = keep_prot.clone();
    if n_prot < max_length {
        let budget = max_length - n_prot;
        let others: Vec<usize> = (0..ids.len()).filter(|&i| !keep_prot[i]).collect();
        let chosen = if left {
            &others[others.len().saturating_sub(budget)..]
        } else {
            &others[..budget.min(others.len())]
        };
        for &i in chosen {
            keep[i] = true;
        }
    }
    ids.iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(t, _)| *t)
        .collect()
}

/// Everything besides the files that shapes the output.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub max_length: usize,
    pub truncation: Truncation,
    /// Default system prompt (a row's own system message wins).
    pub system: String,
    pub labels: LabelSpec,
}

impl BuildOptions {
    /// Check the pixel bounds and max_length before anything is read.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.max_pixels < self.min_pixels {
            return Err(DataError::Param(format!(
                "max_pixels ({}) must be >= min_pixels ({})",
                self.max_pixels, self.min_pixels
            )));
        }
        let one_patch = (IMAGE_FACTOR * IMAGE_FACTOR) as u64;
        if self.max_pixels < one_patch {
            return Err(DataError::Param(format!(
                "max_pixels ({}) must be at least {one_patch} (one 28x28 block)",
                self.max_pixels
            )));
        }
        if self.max_length == 0 {
            return Err(DataError::Param("max_length must be > 0".into()));
        }
        if self.labels.num_labels == 0 {
            return Err(DataError::Param("num_labels must be > 0".into()));
        }
        Ok(())
    }
}

/// A dataset file and the split it becomes (`train` or `val`).
#[derive(Debug, Clone)]
pub struct SplitSource {
    pub split: String,
    pub path: PathBuf,
}

/// Rows of a split with their images resolved to files.
pub struct ResolvedSplit {
    pub source: SplitSource,
    pub rows: Vec<Row>,
    /// Per row, per image: index into `ResolvedDataset::images`.
    pub image_ids: Vec<Vec<usize>>,
}

/// Distinct image files in first-use order, with the row that first uses each.
pub struct ResolvedDataset {
    pub splits: Vec<ResolvedSplit>,
    pub images: Vec<(PathBuf, RowLoc)>,
}

/// Read every split's rows and resolve its images (fails on the first bad row or
/// missing image).
pub fn resolve(sources: &[SplitSource], labels: &LabelSpec) -> Result<ResolvedDataset, DataError> {
    let mut images: Vec<(PathBuf, RowLoc)> = Vec::new();
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut splits = Vec::new();
    for source in sources {
        let rows = read_rows(&source.path, labels)?;
        let dir = source.path.parent().unwrap_or(Path::new("."));
        let mut image_ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let ids = row
                .images
                .iter()
                .map(|written| {
                    let path = resolve_image(written, dir).map_err(|tried| {
                        match tried.iter().find(|p| p.is_dir()) {
                            Some(d) => DataError::ImageIsDir {
                                loc: row.loc.clone(),
                                path: written.clone(),
                                dir: d.clone(),
                            },
                            None => DataError::ImageMissing {
                                loc: row.loc.clone(),
                                path: written.clone(),
                                tried,
                            },
                        }
                    })?;
                    Ok(*seen.entry(path.clone()).or_insert_with(|| {
                        images.push((path, row.loc.clone()));
                        images.len() - 1
                    }))
                })
                .collect::<Result<Vec<_>, DataError>>()?;
            image_ids.push(ids);
        }
        splits.push(ResolvedSplit {
            source: source.clone(),
            rows,
            image_ids,
        });
    }
    Ok(ResolvedDataset { splits, images })
}

/// An image after decode + resize, written to `images/`.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// Relative to the entry directory.
    pub file: String,
    pub orig_hw: [u32; 2],
    pub new_hw: [u32; 2],
}

impl ProcessedImage {
    pub fn grid_thw(&self) -> [usize; 3] {
        [
            1,
            (self.new_hw[0] / PATCH_SIZE) as usize,
            (self.new_hw[1] / PATCH_SIZE) as usize,
        ]
    }
}

/// Decode, convert and smart-resize one image; returns the resized image.
pub fn load_resized(
    path: &Path,
    loc: &RowLoc,
    opts: &BuildOptions,
) -> Result<(image::RgbImage, [u32; 2]), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::ImageDecode {
        loc: loc.clone(),
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let rgb = decode_rgb(&bytes).map_err(|message| DataError::ImageDecode {
        loc: loc.clone(),
        path: path.to_path_buf(),
        message,
    })?;
    let (w, h) = rgb.dimensions();
    let (nh, nw) =
        smart_resize(h, w, IMAGE_FACTOR, opts.min_pixels, opts.max_pixels).map_err(|source| {
            DataError::ImageSize {
                loc: loc.clone(),
                path: path.to_path_buf(),
                source,
            }
        })?;
    Ok((resize_bicubic(&rgb, nw, nh), [h, w]))
}

fn process_image(
    index: usize,
    path: &Path,
    loc: &RowLoc,
    opts: &BuildOptions,
    out_dir: &Path,
) -> Result<ProcessedImage, DataError> {
    let (resized, orig_hw) = load_resized(path, loc, opts)?;
    let file = format!("images/{index:06}.png");
    let dest = out_dir.join(&file);
    let write_err = |message: String| DataError::Write {
        path: dest.clone(),
        message,
    };
    let f = std::fs::File::create(&dest).map_err(|e| write_err(e.to_string()))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(f),
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    );
    resized
        .write_with_encoder(encoder)
        .map_err(|e| write_err(e.to_string()))?;
    Ok(ProcessedImage {
        file,
        orig_hw,
        new_hw: [resized.height(), resized.width()],
    })
}

/// Process all distinct images in parallel into `out_dir/images/`.
pub fn process_images(
    images: &[(PathBuf, RowLoc)],
    opts: &BuildOptions,
    out_dir: &Path,
    progress: &ProgressBar,
) -> Result<Vec<ProcessedImage>, DataError> {
    let dir = out_dir.join("images");
    std::fs::create_dir_all(&dir).map_err(|e| DataError::Write {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let results: Vec<Result<ProcessedImage, DataError>> = images
        .par_iter()
        .enumerate()
        .map(|(i, (path, loc))| {
            let r = process_image(i, path, loc, opts, out_dir);
            progress.inc(1);
            r
        })
        .collect();
    // The first failure in dataset order, whatever order the threads finished in.
    results.into_iter().collect()
}

/// A built split: kept records and the rows deleted for length.
pub struct BuiltSplit {
    pub source: SplitSource,
    pub rows_in_file: usize,
    pub records: Vec<Record>,
    /// (row index, token length) of rows dropped by `truncation_strategy = "delete"`.
    pub deleted: Vec<(usize, usize)>,
}

/// Template + tokenize every row of a split and apply the max_length rule.
pub fn tokenize_split(
    split: &ResolvedSplit,
    images: &[ProcessedImage],
    tokenizer: &Tokenizer,
    opts: &BuildOptions,
) -> Result<BuiltSplit, DataError> {
    let records: Vec<Record> = split
        .rows
        .par_iter()
        .zip(&split.image_ids)
        .map(|(row, ids)| {
            let grids: Vec<[usize; 3]> = ids.iter().map(|&i| images[i].grid_thw()).collect();
            let prompt = render_prompt(&row.messages, &opts.system, &grids, MERGE_SIZE as usize);
            let input_ids =
                encode_prompt(tokenizer, &prompt).map_err(|message| DataError::Tokenize {
                    loc: row.loc.clone(),
                    message,
                })?;
            let images = ids
                .iter()
                .zip(&row.images)
                .map(|(&i, source)| RecordImage {
                    file: images[i].file.clone(),
                    source: source.clone(),
                    orig_hw: images[i].orig_hw,
                    grid_thw: images[i].grid_thw(),
                })
                .collect();
            Ok(Record {
                index: row.loc.row,
                input_ids,
                label: row.label.clone(),
                images,
                messages: row
                    .messages
                    .iter()
                    .map(|m| (m.role.as_str().to_string(), m.content.clone()))
                    .collect(),
            })
        })
        .collect::<Result<_, DataError>>()?;
    let too_long: Vec<(usize, usize)> = records
        .iter()
        .filter(|r| r.input_ids.len() > opts.max_length)
        .map(|r| (r.index, r.input_ids.len()))
        .collect();
    if !too_long.is_empty() && opts.truncation == Truncation::Error {
        return Err(DataError::TooLong {
            file: split.source.path.clone(),
            max_length: opts.max_length,
            rows: too_long,
        });
    }
    let mut records = records;
    let mut too_long = too_long;
    if matches!(opts.truncation, Truncation::Left | Truncation::Right) {
        let protected: Vec<u32> = ["<|image_pad|>", "<|video_pad|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        for r in records
            .iter_mut()
            .filter(|r| r.input_ids.len() > opts.max_length)
        {
            r.input_ids = truncate_ids(
                &r.input_ids,
                opts.max_length,
                opts.truncation == Truncation::Left,
                &protected,
            );
        }
        // Only rows whose image tokens alone exceed max_length stay too long: dropped.
        too_long.retain(|(i, _)| {
            records
                .iter()
                .any(|r| r.index == *i && r.input_ids.len() > opts.max_length)
        });
    }
    let rows_in_file = records.len();
    let records = records
        .into_iter()
        .filter(|r| r.input_ids.len() <= opts.max_length)
        .collect();
    Ok(BuiltSplit {
        source: split.source.clone(),
        rows_in_file,
        records,
        deleted: too_long,
    })
}

/// Build the whole entry into `out_dir` and return its statistics (also written to
/// `stats.json`). Training splits need a label on every row.
pub fn build_dataset(
    resolved: &ResolvedDataset,
    opts: &BuildOptions,
    tokenizer: &Tokenizer,
    out_dir: &Path,
    progress: &ProgressBar,
) -> Result<DatasetStats, DataError> {
    for split in resolved.splits.iter().filter(|s| s.source.split == "train") {
        if let Some(row) = split.rows.iter().find(|r| r.label.is_none()) {
            return Err(DataError::Row {
                loc: row.loc.clone(),
                message: "row has no `label` (every training row needs one)".into(),
            });
        }
    }
    progress.set_length(resolved.images.len() as u64);
    let images = process_images(&resolved.images, opts, out_dir, progress)?;
    let mut image_stats = ImageStats::default();
    for im in &images {
        image_stats.count(im.orig_hw, im.new_hw);
    }
    let mut splits = std::collections::BTreeMap::new();
    for split in &resolved.splits {
        let built = tokenize_split(split, &images, tokenizer, opts)?;
        let path = out_dir.join(format!("{}.jsonl", built.source.split));
        write_records(&path, &built.records)?;
        let deleted: Vec<usize> = built.deleted.iter().map(|d| d.0).collect();
        let stats = SplitStats::new(
            built.source.path.display().to_string(),
            built.rows_in_file,
            &built.records,
            &deleted,
        );
        splits.insert(built.source.split.clone(), stats);
    }
    let stats = DatasetStats {
        splits,
        images: image_stats,
    };
    let path = out_dir.join("stats.json");
    let json = serde_json::to_string_pretty(&stats).expect("stats serialize");
    std::fs::write(&path, json + "\n").map_err(|e| DataError::Write {
        path,
        message: e.to_string(),
    })?;
    Ok(stats)
}

fn write_records(path: &Path, records: &[Record]) -> Result<(), DataError> {
    let err = |e: std::io::Error| DataError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    for r in records {
        serde_json::to_writer(&mut w, r).map_err(|e| err(e.into()))?;
        w.write_all(b"\n").map_err(err)?;
    }
    w.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_image_pads_like_swift() {
        // 9 = image pad; ms-swift keeps every pad and fills the rest from the chosen end.
        let ids = [1, 2, 9, 9, 3, 4, 5];
        assert_eq!(truncate_ids(&ids, 5, true, &[9]), [9, 9, 3, 4, 5]);
        assert_eq!(truncate_ids(&ids, 5, false, &[9]), [1, 2, 9, 9, 3]);
        assert_eq!(truncate_ids(&ids, 2, true, &[9]), [9, 9]);
        assert_eq!(truncate_ids(&ids, 1, false, &[9]), [9, 9]);
        for s in ["raise", "error", "delete", "left", "right"] {
            let t = Truncation::parse(s).unwrap();
            assert_eq!(Truncation::parse(t.as_str()).unwrap(), t);
        }
        assert!(Truncation::parse("split").is_err());
    }

    #[test]
    fn cached_png_reads_back_bit_identical() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("images")).unwrap();
        let opts = BuildOptions {
            min_pixels: 3136,
            max_pixels: 12544,
            max_length: 1 << 20,
            truncation: Truncation::Error,
            system: String::new(),
            labels: LabelSpec {
                num_labels: 2,
                problem_type: crate::task::ProblemType::SingleLabelClassification,
            },
        };
        let loc = RowLoc {
            file: PathBuf::from("rows.jsonl"),
            line: Some(1),
            row: 0,
        };
        for (i, src) in ["data/resize/noise.png", "jpeg/baseline_420.jpg"]
            .iter()
            .enumerate()
        {
            let path = fixtures.join(src);
            let (want, _) = load_resized(&path, &loc, &opts).unwrap();
            let im = process_image(i, &path, &loc, &opts, out.path()).unwrap();
            let file = out.path().join(&im.file);
            let got = image::open(&file).unwrap();
            assert!(matches!(got, image::DynamicImage::ImageRgb8(_)), "{src}");
            assert_eq!(
                got.to_rgb8(),
                want,
                "{src}: pixels change on the way through"
            );
        }
    }
}
