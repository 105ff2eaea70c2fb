//! The crate's one safetensors reader and writer: model checkpoints, adapters, training
//! checkpoints and the header sniffs of plan-time checks all go through [`TensorFile`].
//!
//! A file is checked before anything is allocated from it: the 8-byte header length must
//! fit inside the file (a corrupt length field is one error line naming the file, never an
//! allocation of 2^60 bytes), and the header's tensor offsets must cover the rest of the
//! file exactly (a truncated file is an error, not garbage tensors). Small files are read
//! into memory; large ones (model weights) are memory-mapped, so opening one reads only its
//! header. Files are written with `{"format": "pt"}` metadata: transformers'
//! `from_pretrained` rejects safetensors archives without it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, View};

/// The header length safetensors itself accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;
/// Files up to this size are read into memory; larger ones are mapped.
const READ_LIMIT: u64 = 64 << 20;

/// A safetensors file that cannot be read or written; every message is one line naming it.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: tensor `{key}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TensorFileError + '_ {
    move |source| TensorFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> TensorFileError {
    TensorFileError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

enum Bytes {
    Owned(Vec<u8>),
    Mapped(Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// An opened, validated safetensors file.
pub struct TensorFile {
    path: PathBuf,
    bytes: Bytes,
    /// Byte offset of the tensor data (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

impl TensorFile {
    /// Open and validate `path` (header length within the file, offsets covering it).
    pub fn open(path: &Path) -> Result<TensorFile, TensorFileError> {
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        header_len(path, &mut file, len)?;
        let bytes = if len <= READ_LIMIT {
            let mut v = Vec::with_capacity(len as usize);
            std::io::Seek::rewind(&mut file).map_err(io_err(path))?;
            file.read_to_end(&mut v).map_err(io_err(path))?;
            Bytes::Owned(v)
        } else {
            // SAFETY: opened read-only; pipeline never writes a file it has mapped, and
            // model weights are not expected to change while a stage reads them.
            Bytes::Mapped(unsafe { Mmap::map(&file) }.map_err(io_err(path))?)
        };
        let (n, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| format_err(path, format!("{e} ({len} bytes)")))?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + n,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.metadata.offset_keys();
        names.sort_unstable();
        names
    }

    /// The header's `__metadata__` map.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Dtype and shape of `name`, if present.
    pub fn info(&self, name: &str) -> Option<(Dtype, &[usize])> {
        self.metadata
            .info(name)
            .map(|i| (i.dtype, i.shape.as_slice()))
    }

    /// Raw little-endian bytes of `name`.
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8]), TensorFileError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| TensorFileError::Tensor {
                path: self.path.clone(),
                key: name.to_string(),
                message: "not in the file".into(),
            })?;
        let (a, b) = info.data_offsets;
        // `read_metadata` validated the offsets against the file length.
        let data = &self.bytes[self.data_start + a..self.data_start + b];
        Ok((info.dtype, &info.shape, data))
    }

    /// `name` as host tensor data in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<TensorData, TensorFileError> {
        let (dtype, shape, data) = self.raw(name)?;
        let dtype = from_st_dtype(dtype).ok_or_else(|| TensorFileError::Tensor {
            path: self.path.clone(),
            key: name.to_string(),
            message: format!("unsupported dtype {dtype:?}"),
        })?;
        Ok(TensorData::from_bytes_vec(
            data.to_vec(),
            shape.to_vec(),
            dtype,
        ))
    }
}

/// Read the header length field and check it against the file size and safetensors' cap.
fn header_len(path: &Path, file: &mut std::fs::File, len: u64) -> Result<u64, TensorFileError> {
    if len < 8 {
        return Err(format_err(
            path,
            format!("{len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let mut field = [0u8; 8];
    file.read_exact(&mut field).map_err(io_err(path))?;
    let n = u64::from_le_bytes(field);
    if n > len - 8 || n > MAX_HEADER {
        return Err(format_err(
            path,
            format!(
                "its header length field says {n} bytes but the file has {len} bytes in all \
                 (truncated, or not a safetensors file)"
            ),
        ));
    }
    Ok(n)
}

/// Dtype and shape of every tensor named in the header of `path`, reading only the header
/// (plan-time checks of multi-GB weights). The header must still describe the file's size.
pub fn read_header(path: &Path) -> Result<HashMap<String, (Dtype, Vec<usize>)>, TensorFileError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let n = header_len(path, &mut file, len)?;
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io_err(path))?;
    #[derive(serde::Deserialize)]
    struct Entry {
        dtype: Dtype,
        shape: Vec<usize>,
        data_offsets: (usize, usize),
    }
    let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format_err(path, format!("invalid JSON in header: {e}")))?;
    raw.remove("__metadata__");
    let mut out = HashMap::with_capacity(raw.len());
    let mut end = 0usize;
    for (name, v) in raw {
        let e: Entry = serde_json::from_value(v)
            .map_err(|e| format_err(path, format!("header entry `{name}`: {e}")))?;
        end = end.max(e.data_offsets.1);
        out.insert(name, (e.dtype, e.shape));
    }
    if end as u64 != len - 8 - n {
        return Err(format_err(
            path,
            format!(
                "its header describes {end} bytes of tensor data but the file holds {} \
                 (truncated?)",
                len - 8 - n
            ),
        ));
    }
    Ok(out)
}

/// Every tensor of `path` in host memory, sorted by name, in its stored dtype.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, TensorData)>, TensorFileError> {
    let file = TensorFile::open(path)?;
    file.names()
        .into_iter()
        .map(|n| {
            let t = file.tensor(&n)?;
            Ok((n, t))
        })
        .collect()
}

/// Borrowed view of a `TensorData` for `safetensors::serialize`.
pub struct DataView<'a>(pub &'a TensorData);

impl View for DataView<'_> {
    fn dtype(&self) -> Dtype {
        to_st_dtype(self.0.dtype).expect("tensor dtype checked by the writer")
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.0.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.0.as_bytes().len()
    }
}

/// The safetensors dtype of a tensor; None for dtypes we never write.
pub fn to_st_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 | DType::Flex32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        _ => return None,
    })
}

fn from_st_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        _ => return None,
    })
}

/// Size in bytes of one element of `dtype` as stored.
pub fn dtype_size(dtype: DType) -> usize {
    match dtype {
        DType::F64 | DType::I64 => 8,
        DType::F16 | DType::BF16 => 2,
        _ => 4,
    }
}

/// The metadata every file we write carries.
pub fn pt_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Write named tensors (names unique) to `path` with PyTorch-style metadata; tensors keep
/// their dtype.
pub fn write_tensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), TensorFileError> {
    for (key, t) in tensors {
        if to_st_dtype(t.dtype).is_none() {
            return Err(TensorFileError::Tensor {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("cannot store dtype {:?} in safetensors", t.dtype),
            });
        }
    }
    let views = tensors.iter().map(|(k, t)| (k.as_str(), DataView(t)));
    safetensors::serialize_to_file(views, Some(pt_metadata()), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => TensorFileError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => format_err(path, other.to_string()),
    })
}

/// `TensorData` as f32 (bf16/f16/f64 converted), for comparisons and LoRA tensors.
pub fn to_f32(t: &TensorData) -> TensorData {
    if t.dtype == DType::F32 {
        t.clone()
    } else {
        t.clone().convert_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_shapes_dtypes_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = TensorData::new(vec![1.0f32, -2.5, 3.25, 0.0, 5.0, 6.0], [2, 3]);
        let b = TensorData::new(
            vec![half::bf16::from_f32(0.5), half::bf16::from_f32(-1.0)],
            [2],
        );
        write_tensors(
            &path,
            &[("y.b".into(), b.clone()), ("x.a".into(), a.clone())],
        )
        .unwrap();
        let back = read_tensors(&path).unwrap();
        assert_eq!(back[0].0, "x.a", "sorted by name");
        assert_eq!(back[0].1, a);
        assert_eq!(back[1].1.dtype, DType::BF16);
        assert_eq!(to_f32(&back[1].1).to_vec::<f32>().unwrap(), vec![0.5, -1.0]);
        let file = TensorFile::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap()["format"], "pt");
        assert_eq!(file.info("x.a").unwrap().1, &[2, 3]);
        let header = read_header(&path).unwrap();
        assert_eq!(header["y.b"], (Dtype::BF16, vec![2]));
    }

    #[test]
    fn bad_files_are_one_line_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        write_tensors(
            &good,
            &[("w".into(), TensorData::new(vec![1f32; 64], [8, 8]))],
        )
        .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", b"\x10\x00".to_vec()),
            ("huge_len", {
                let mut b = (1u64 << 60).to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            }),
            ("max_len", {
                let mut b = u64::MAX.to_le_bytes().to_vec();
                b.extend_from_slice(&[0u8; 32]);
                b
            }),
            (
                "random",
                (0..4096u32)
                    .map(|i| ((i * 2654435761u32) >> 13) as u8)
                    .collect(),
            ),
            ("truncated", bytes[..bytes.len() - 10].to_vec()),
            ("bad_json", b"\x02\x00\x00\x00\x00\x00\x00\x00{x".to_vec()),
        ];
        cases.push(("padded", [bytes.as_slice(), b"junk"].concat()));
        for (name, content) in cases {
            let path = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&path, &content).unwrap();
            for err in [
                TensorFile::open(&path).err().map(|e| e.to_string()),
                read_header(&path).err().map(|e| e.to_string()),
                read_tensors(&path).err().map(|e| e.to_string()),
            ] {
                let err = err.unwrap_or_else(|| panic!("{name} accepted"));
                assert!(err.contains(&format!("{name}.safetensors")), "{err}");
                assert!(!err.contains('\n'), "{err}");
            }
        }
        let missing = read_header(&dir.path().join("nope.safetensors")).unwrap_err();
        assert!(
            missing.to_string().contains("nope.safetensors"),
            "{missing}"
        );
    }
}
