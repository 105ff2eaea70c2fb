//! Losses and accuracy of the seq_cls heads, as transformers computes them in
//! `Qwen2_5_VLForSequenceClassification`-style heads (`modeling_utils`/`loss_utils`
//! `ForSequenceClassificationLoss`): mean cross-entropy, mean BCE-with-logits, mean MSE,
//! all on f32 logits. Accuracy follows ms-swift `SwiftMixin._compute_acc`: argmax for
//! single-label, `sigmoid > 0.5` on every label for multi-label, none for regression.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::task::ProblemType;

/// A sample's target in the form the loss needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Class index (single-label).
    Class(usize),
    /// Positive class indices (multi-label; may be empty).
    Classes(Vec<usize>),
    /// One value per label (regression).
    Values(Vec<f32>),
}

/// Mean loss of `logits` `[batch, num_labels]` against `targets`; returns a `[1]` tensor.
pub fn loss<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[&Target],
    problem: ProblemType,
) -> Tensor<B, 1> {
    let device = logits.device();
    let [batch, labels] = logits.dims();
    match problem {
        ProblemType::SingleLabelClassification => {
            let ids: Vec<i64> = targets
                .iter()
                .map(|t| match t {
                    Target::Class(c) => *c as i64,
                    other => panic!("single-label loss needs class targets, got {other:?}"),
                })
                .collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, 1]), &device);
            let logp = log_softmax(logits, 1).gather(1, ids);
            logp.mean().neg()
        }
        ProblemType::MultiLabelClassification => {
            let y = dense_targets(targets, batch, labels, problem);
            let y = Tensor::<B, 2>::from_data(TensorData::new(y, [batch, labels]), &device);
            // torch's stable form: max(x, 0) - x·y + log(1 + exp(-|x|))
            let x = logits;
            let loss = x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().log1p();
            loss.mean()
        }
        ProblemType::Regression => {
            let y = dense_targets(targets, batch, labels, problem);
            let y = Tensor::<B, 2>::from_data(TensorData::new(y, [batch, labels]), &device);
            (logits - y).powi_scalar(2).mean()
        }
    }
}

/// Targets as a row-major `[batch, labels]` f32 matrix (multi-hot or values).
fn dense_targets(
    targets: &[&Target],
    batch: usize,
    labels: usize,
    problem: ProblemType,
) -> Vec<f32> {
    let mut y = vec![0f32; batch * labels];
    for (row, t) in targets.iter().enumerate() {
        match (problem, t) {
            (ProblemType::MultiLabelClassification, Target::Classes(cs)) => {
                for &c in cs {
                    y[row * labels + c] = 1.0;
                }
            }
            (ProblemType::Regression, Target::Values(vs)) => {
                y[row * labels..(row + 1) * labels].copy_from_slice(vs);
            }
            (p, t) => panic!("{p:?} loss cannot use target {t:?}"),
        }
    }
    y
}

/// Per-sample correctness from host logits (row-major `[batch, labels]`); None for regression.
pub fn correct(
    logits: &[f32],
    labels: usize,
    targets: &[&Target],
    problem: ProblemType,
) -> Option<Vec<bool>> {
    if !problem.has_acc() {
        return None;
    }
    Some(
        logits
            .chunks(labels)
            .zip(targets)
            .map(|(row, t)| match t {
                Target::Class(c) => argmax(row) == *c,
                Target::Classes(cs) => row
                    .iter()
                    .enumerate()
                    .all(|(j, &x)| (x > 0.0) == cs.contains(&j)),
                Target::Values(_) => false,
            })
            .collect(),
    )
}

/// Index of the first maximum (torch's argmax tie rule).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = j;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend as B;

    fn logits(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn scalar(t: Tensor<B, 1>) -> f64 {
        t.into_data().to_vec::<f32>().unwrap()[0] as f64
    }

    #[test]
    fn cross_entropy_matches_hand_value() {
        // torch.nn.functional.cross_entropy([[1,2,3],[1,0,-1]], [2,1]) = 0.9076059644443804
        let l = loss(
            logits(vec![1., 2., 3., 1., 0., -1.], [2, 3]),
            &[&Target::Class(2), &Target::Class(1)],
            ProblemType::SingleLabelClassification,
        );
        assert!((scalar(l) - 0.907_605_964_444_380_4).abs() < 1e-6);
    }

    #[test]
    fn bce_and_mse_match_hand_values() {
        // binary_cross_entropy_with_logits([[2,-1],[0,3]], [[1,0],[1,1]]) = 0.2954810576737207
        let l = loss(
            logits(vec![2., -1., 0., 3.], [2, 2]),
            &[&Target::Classes(vec![0]), &Target::Classes(vec![0, 1])],
            ProblemType::MultiLabelClassification,
        );
        assert!((scalar(l) - 0.295_481_057_673_720_7).abs() < 1e-6);
        let l = loss(
            logits(vec![1.5, -0.5], [2, 1]),
            &[&Target::Values(vec![1.0]), &Target::Values(vec![0.5])],
            ProblemType::Regression,
        );
        assert!((scalar(l) - 0.625).abs() < 1e-7);
    }

    #[test]
    fn accuracy_rules() {
        let c = correct(
            &[0.1, 0.9, 0.9, 0.1],
            2,
            &[&Target::Class(1), &Target::Class(1)],
            ProblemType::SingleLabelClassification,
        );
        assert_eq!(c, Some(vec![true, false]));
        let c = correct(
            &[1.0, -1.0, 1.0, 1.0],
            2,
            &[&Target::Classes(vec![0]), &Target::Classes(vec![0])],
            ProblemType::MultiLabelClassification,
        );
        assert_eq!(c, Some(vec![true, false]));
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert!(
            correct(
                &[0.0],
                1,
                &[&Target::Values(vec![0.0])],
                ProblemType::Regression
            )
            .is_none()
        );
    }
}
