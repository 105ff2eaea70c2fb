//! Model inputs: one tokenized sample with its pixel rows, and a padded batch on a device.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData};

/// One sample as the dataset stage produces it: token ids with `<|image_pad|>` expanded, the
/// pixel rows of all its images concatenated (`[Σ t·h·w, C·T·p·p]` row-major) and their grids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleInputs {
    pub input_ids: Vec<u32>,
    pub pixel_rows: Vec<f32>,
    pub grids: Vec<[usize; 3]>,
}

/// Where padding goes: ms-swift pads right for training, left for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

/// A padded batch on a device.
#[derive(Debug, Clone)]
pub struct ModelInputs<B: Backend> {
    /// `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[Σ patches, C·T·p·p]` f32 (cast to the model dtype inside), images of all samples in
    /// batch order; `None` when no sample has an image.
    pub pixel_values: Option<Tensor<B, 2>>,
    /// `(t, h, w)` per image, same order as the pixel rows.
    pub image_grid_thw: Vec<[usize; 3]>,
}

impl<B: AutodiffBackend> ModelInputs<B> {
    /// A batch built on the inner backend as autodiff leaves (nothing tracked).
    pub fn from_inner(inputs: &ModelInputs<B::InnerBackend>) -> Self {
        Self {
            input_ids: Tensor::from_inner(inputs.input_ids.clone()),
            attention_mask: Tensor::from_inner(inputs.attention_mask.clone()),
            pixel_values: inputs.pixel_values.clone().map(Tensor::from_inner),
            image_grid_thw: inputs.image_grid_thw.clone(),
        }
    }
}

/// Pad `samples` to the longest with `pad_id` on `side` and concatenate their images.
///
/// Panics if a sample's `pixel_rows` do not hold one row per patch of its `grids` (an
/// invariant of `processor::pixel_rows`, not user input).
pub fn collate<B: Backend>(
    samples: &[&SampleInputs],
    pad_id: u32,
    side: PaddingSide,
    device: &B::Device,
) -> ModelInputs<B> {
    let batch = samples.len();
    let seq = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    for (b, s) in samples.iter().enumerate() {
        let n = s.input_ids.len();
        let start = match side {
            PaddingSide::Left => seq - n,
            PaddingSide::Right => 0,
        };
        for (k, &t) in s.input_ids.iter().enumerate() {
            ids[b * seq + start + k] = t as i64;
            mask[b * seq + start + k] = 1;
        }
    }
    let grids: Vec<[usize; 3]> = samples
        .iter()
        .flat_map(|s| s.grids.iter().copied())
        .collect();
    let rows: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
    let n_values: usize = samples.iter().map(|s| s.pixel_rows.len()).sum();
    assert!(
        n_values.is_multiple_of(rows),
        "collate: {n_values} pixel values do not split into {rows} patch rows"
    );
    let pixel_values = n_values.checked_div(rows).map(|dim| {
        let mut px = Vec::with_capacity(n_values);
        for s in samples {
            px.extend_from_slice(&s.pixel_rows);
        }
        Tensor::from_data(TensorData::new(px, [rows, dim]), (device, DType::F32))
    });
    ModelInputs {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [batch, seq]), device),
        pixel_values,
        image_grid_thw: grids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Flex;

    #[test]
    fn left_and_right_padding() {
        let a = SampleInputs {
            input_ids: vec![5, 6, 7],
            ..Default::default()
        };
        let b = SampleInputs {
            input_ids: vec![8],
            ..Default::default()
        };
        let dev = Default::default();
        let l = collate::<B>(&[&a, &b], 0, PaddingSide::Left, &dev);
        let ids: Vec<i64> = l.input_ids.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![5, 6, 7, 0, 0, 8]);
        let m: Vec<i64> = l
            .attention_mask
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(m, vec![1, 1, 1, 0, 0, 1]);
        let r = collate::<B>(&[&a, &b], 0, PaddingSide::Right, &dev);
        let ids: Vec<i64> = r.input_ids.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![5, 6, 7, 8, 0, 0]);
        assert!(r.pixel_values.is_none());
    }
}
