//! Minimal safetensors read/write of f32/bf16/f16 `TensorData` (checkpoints, adapters).

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io;
use std::path::Path;

fn to_st(dtype: DType) -> io::Result<Dtype> {
    match dtype {
        DType::F32 => Ok(Dtype::F32),
        DType::BF16 => Ok(Dtype::BF16),
        DType::F16 => Ok(Dtype::F16),
        other => Err(io::Error::other(format!("cannot save dtype {other:?}"))),
    }
}

/// Write `tensors` (keys unique) with optional `__metadata__`.
pub fn write(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<HashMap<String, String>>,
) -> io::Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (k, d) in tensors {
        let view = TensorView::new(to_st(d.dtype)?, d.shape.to_vec(), d.as_bytes())
            .map_err(|e| io::Error::other(format!("{k}: {e}")))?;
        views.push((k.clone(), view));
    }
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// Read every tensor of a safetensors file (f32, bf16 or f16), in file order of names.
pub fn read(path: &Path) -> io::Result<Vec<(String, TensorData)>> {
    let bytes = std::fs::read(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names {
        let v = st
            .tensor(&name)
            .map_err(|e| io::Error::other(format!("{}: {name}: {e}", path.display())))?;
        let dtype = match v.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            other => {
                return Err(io::Error::other(format!(
                    "{}: {name}: unsupported dtype {other:?}",
                    path.display()
                )));
            }
        };
        out.push((
            name,
            TensorData::from_bytes_vec(v.data().to_vec(), v.shape().to_vec(), dtype),
        ));
    }
    Ok(out)
}
