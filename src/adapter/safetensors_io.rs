//! Host tensors (`burn::tensor::TensorData`) to and from safetensors files.
//!
//! Files are written with `{"format": "pt"}` metadata: transformers' `from_pretrained`
//! rejects safetensors archives without it (`modeling_utils.load_state_dict`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, View};

use super::AdapterError;

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

/// The safetensors dtype of a float tensor; None for dtypes we never write.
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

/// Write named tensors to `path` (PyTorch-style metadata). Tensors keep their dtype.
pub fn write_tensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), AdapterError> {
    for (key, t) in tensors {
        if to_st_dtype(t.dtype).is_none() {
            return Err(AdapterError::Tensor {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("cannot store dtype {:?} in safetensors", t.dtype),
            });
        }
    }
    let views = tensors.iter().map(|(k, t)| (k.as_str(), DataView(t)));
    safetensors::serialize_to_file(views, Some(pt_metadata()), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => AdapterError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => AdapterError::Safetensors {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// Read every tensor of a safetensors file into host memory, sorted by name.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, TensorData)>, AdapterError> {
    let bytes = std::fs::read(path).map_err(|source| AdapterError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| AdapterError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // Sorted by name: `SafeTensors::iter` follows a hash map (writers sort by name too).
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut out = Vec::with_capacity(st.len());
    for name in names {
        let view = st.tensor(name).map_err(|e| AdapterError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let dtype = from_st_dtype(view.dtype()).ok_or_else(|| AdapterError::Tensor {
            path: path.to_path_buf(),
            key: name.to_string(),
            message: format!("unsupported dtype {:?}", view.dtype()),
        })?;
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        out.push((name.to_string(), data));
    }
    Ok(out)
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
            &[("x.a".into(), a.clone()), ("y.b".into(), b.clone())],
        )
        .unwrap();
        let back: HashMap<_, _> = read_tensors(&path).unwrap().into_iter().collect();
        assert_eq!(back["x.a"], a);
        assert_eq!(back["y.b"].dtype, DType::BF16);
        assert_eq!(
            to_f32(&back["y.b"]).to_vec::<f32>().unwrap(),
            vec![0.5, -1.0]
        );
        let raw = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&raw).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
        let err = read_tensors(&path).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
    }
}
