//! Evaluation metrics of a scored split, for the three ms-swift problem types.
//!
//! Definitions follow scikit-learn's (`precision_recall_fscore_support` with
//! `zero_division=0`, `f1_score(average="macro")` over the classes that occur in the gold
//! labels or the predictions) and Guo et al. 2017 for ECE (equal-width confidence bins,
//! `lower < conf <= upper`).

use serde::Serialize;

/// Number of equal-width confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Precision, recall and F1 of one class (one-vs-rest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of gold samples of the class (multi-label: samples where it is positive).
    pub support: u64,
}

impl ClassStats {
    /// From true positives, false positives and false negatives; 0 where undefined.
    fn from_counts(tp: u64, fp: u64, fn_: u64) -> Self {
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Self {
            precision,
            recall,
            f1,
            support: tp + fn_,
        }
    }
}

/// Single-label classification metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SingleLabelMetrics {
    pub num_samples: usize,
    /// Argmax accuracy.
    pub acc: f64,
    /// Mean F1 over the classes present in the gold labels or the predictions.
    pub macro_f1: f64,
    /// Mean negative log-likelihood of the gold class (= cross-entropy loss).
    pub nll: f64,
    /// Expected calibration error of the argmax confidence, `ECE_BINS` bins.
    pub ece: f64,
    pub per_class: Vec<ClassStats>,
    /// `confusion[gold][pred]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Multi-label classification metrics (sigmoid ≥ 0.5 per class).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiLabelMetrics {
    pub num_samples: usize,
    /// Exact-match (subset) accuracy: every class decided correctly.
    pub acc: f64,
    /// Fraction of (sample, class) decisions that are correct (1 − Hamming loss).
    pub label_acc: f64,
    /// Mean F1 over the classes positive in the gold labels or the predictions.
    pub macro_f1: f64,
    /// Mean binary cross-entropy over samples and classes (= BCE-with-logits loss).
    pub nll: f64,
    /// Expected calibration error over all (sample, class) binary decisions.
    pub ece: f64,
    pub per_class: Vec<ClassStats>,
    /// Per class `[[tn, fp], [fn, tp]]`.
    pub confusion: Vec<[[u64; 2]; 2]>,
}

/// Regression metrics, one value per target plus their means.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegressionMetrics {
    pub num_samples: usize,
    /// Mean squared error over samples and targets (= MSE loss).
    pub mse: f64,
    pub mae: f64,
    pub rmse: f64,
    /// Coefficient of determination per target (NaN-free: 0 when the gold is constant).
    pub r2: Vec<f64>,
}

/// Metrics of one scored split, tagged by problem type in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "problem_type", rename_all = "snake_case")]
pub enum Metrics {
    #[serde(rename = "single_label_classification")]
    SingleLabel(SingleLabelMetrics),
    #[serde(rename = "multi_label_classification")]
    MultiLabel(MultiLabelMetrics),
    Regression(RegressionMetrics),
}

/// Single-label metrics from per-sample class log-probabilities (log_softmax rows) and
/// gold classes. Predictions are the argmax (first maximum on ties, like torch).
pub fn single_label(
    logprobs: &[Vec<f32>],
    gold: &[usize],
    num_labels: usize,
) -> SingleLabelMetrics {
    assert_eq!(
        logprobs.len(),
        gold.len(),
        "one gold label per scored sample"
    );
    let mut confusion = vec![vec![0u64; num_labels]; num_labels];
    let mut nll = 0.0;
    let mut correct = 0usize;
    let mut calib = Calibration::default();
    for (row, &g) in logprobs.iter().zip(gold) {
        let pred = argmax(row);
        confusion[g][pred] += 1;
        nll -= f64::from(row[g]);
        correct += usize::from(pred == g);
        calib.add(f64::from(row[pred]).exp(), pred == g);
    }
    let per_class: Vec<ClassStats> = (0..num_labels)
        .map(|c| {
            let tp = confusion[c][c];
            let fp = (0..num_labels).map(|g| confusion[g][c]).sum::<u64>() - tp;
            let fn_ = confusion[c].iter().sum::<u64>() - tp;
            ClassStats::from_counts(tp, fp, fn_)
        })
        .collect();
    // sklearn averages over the labels that occur in y_true ∪ y_pred.
    let present: Vec<usize> = (0..num_labels)
        .filter(|&c| {
            confusion[c].iter().sum::<u64>() > 0 || (0..num_labels).any(|g| confusion[g][c] > 0)
        })
        .collect();
    let n = gold.len();
    SingleLabelMetrics {
        num_samples: n,
        acc: ratio(correct, n),
        macro_f1: mean(present.iter().map(|&c| per_class[c].f1)),
        nll: if n == 0 { 0.0 } else { nll / n as f64 },
        ece: calib.ece(),
        per_class,
        confusion,
    }
}

/// Multi-label metrics from per-sample logits and gold positive-class sets.
pub fn multi_label(
    logits: &[Vec<f32>],
    gold: &[Vec<usize>],
    num_labels: usize,
) -> MultiLabelMetrics {
    assert_eq!(
        logits.len(),
        gold.len(),
        "one gold label set per scored sample"
    );
    let mut confusion = vec![[[0u64; 2]; 2]; num_labels];
    let mut exact = 0usize;
    let mut bce = 0.0;
    let mut calib = Calibration::default();
    for (row, positives) in logits.iter().zip(gold) {
        let mut all_right = true;
        for (c, &z) in row.iter().enumerate() {
            let truth = positives.contains(&c);
            let p = sigmoid(f64::from(z));
            let pred = p >= 0.5;
            confusion[c][usize::from(truth)][usize::from(pred)] += 1;
            all_right &= pred == truth;
            // −log σ(z) = softplus(−z), −log(1−σ(z)) = softplus(z): stable for large |z|.
            bce += if truth {
                softplus(-f64::from(z))
            } else {
                softplus(f64::from(z))
            };
            calib.add(if pred { p } else { 1.0 - p }, pred == truth);
        }
        exact += usize::from(all_right);
    }
    let per_class: Vec<ClassStats> = confusion
        .iter()
        .map(|m| ClassStats::from_counts(m[1][1], m[0][1], m[1][0]))
        .collect();
    let present = confusion
        .iter()
        .enumerate()
        .filter(|(_, m)| m[1][1] + m[1][0] + m[0][1] > 0);
    let n = gold.len();
    let decisions = n * num_labels;
    let right: u64 = confusion.iter().map(|m| m[0][0] + m[1][1]).sum();
    MultiLabelMetrics {
        num_samples: n,
        acc: ratio(exact, n),
        label_acc: ratio(right as usize, decisions),
        macro_f1: mean(present.map(|(c, _)| per_class[c].f1)),
        nll: if decisions == 0 {
            0.0
        } else {
            bce / decisions as f64
        },
        ece: calib.ece(),
        per_class,
        confusion,
    }
}

/// Regression metrics from per-sample predictions and gold values (same length each).
pub fn regression(preds: &[Vec<f32>], gold: &[Vec<f32>]) -> RegressionMetrics {
    assert_eq!(preds.len(), gold.len(), "one gold value per scored sample");
    let n = gold.len();
    let targets = gold.first().map_or(0, Vec::len);
    let (mut se, mut ae) = (0.0, 0.0);
    for (p, g) in preds.iter().zip(gold) {
        for (&pv, &gv) in p.iter().zip(g) {
            let d = f64::from(pv) - f64::from(gv);
            se += d * d;
            ae += d.abs();
        }
    }
    let r2 = (0..targets)
        .map(|t| {
            let mean_g = mean(gold.iter().map(|g| f64::from(g[t])));
            let ss_tot: f64 = gold
                .iter()
                .map(|g| (f64::from(g[t]) - mean_g).powi(2))
                .sum();
            let ss_res: f64 = preds
                .iter()
                .zip(gold)
                .map(|(p, g)| (f64::from(p[t]) - f64::from(g[t])).powi(2))
                .sum();
            if ss_tot == 0.0 {
                0.0
            } else {
                1.0 - ss_res / ss_tot
            }
        })
        .collect();
    let count = (n * targets).max(1) as f64;
    RegressionMetrics {
        num_samples: n,
        mse: se / count,
        mae: ae / count,
        rmse: (se / count).sqrt(),
        r2,
    }
}

/// Index of the first maximum (torch.argmax's tie rule); NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Accumulates (confidence, correct) pairs into `ECE_BINS` equal-width bins.
#[derive(Default)]
struct Calibration {
    /// Per bin: (count, sum of confidences, number correct).
    bins: [(u64, f64, u64); ECE_BINS],
}

impl Calibration {
    fn add(&mut self, confidence: f64, correct: bool) {
        // Bin b covers (b/B, (b+1)/B]; confidence 0 falls in the first bin.
        let b = ((confidence * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        let bin = &mut self.bins[b];
        bin.0 += 1;
        bin.1 += confidence;
        bin.2 += u64::from(correct);
    }

    fn ece(&self) -> f64 {
        let total: u64 = self.bins.iter().map(|b| b.0).sum();
        if total == 0 {
            return 0.0;
        }
        self.bins
            .iter()
            .filter(|b| b.0 > 0)
            .map(|&(count, conf, right)| {
                let n = count as f64;
                n / total as f64 * (right as f64 / n - conf / n).abs()
            })
            .sum()
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(logits: &[f32]) -> Vec<f32> {
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
        logits.iter().map(|z| z - lse).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn single_label_counts_match_hand_computation() {
        // gold: 0 0 1 2 2 2 ; pred: 0 1 1 2 2 0
        let preds = [0usize, 1, 1, 2, 2, 0];
        let gold = [0usize, 0, 1, 2, 2, 2];
        let rows: Vec<Vec<f32>> = preds
            .iter()
            .map(|&p| {
                let mut z = vec![0.0f32; 3];
                z[p] = 2.0;
                log_softmax(&z)
            })
            .collect();
        let m = single_label(&rows, &gold, 3);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]
        );
        assert!(close(m.acc, 4.0 / 6.0));
        // class 0: tp1 fp1 fn1 → p=r=f1=.5 ; class 1: tp1 fp1 fn0 → p=.5 r=1 f1=2/3 ;
        // class 2: tp2 fp0 fn1 → p=1 r=2/3 f1=.8
        assert!(close(m.per_class[0].f1, 0.5));
        assert!(close(m.per_class[1].precision, 0.5) && close(m.per_class[1].recall, 1.0));
        assert!(close(m.per_class[2].f1, 0.8));
        assert_eq!(
            m.per_class.iter().map(|c| c.support).collect::<Vec<_>>(),
            vec![2, 1, 3]
        );
        assert!(close(m.macro_f1, (0.5 + 2.0 / 3.0 + 0.8) / 3.0));
        // Every row has the same confidence p = e²/(e²+2): ECE = |acc − p|.
        let p = (2.0f64.exp()) / (2.0f64.exp() + 2.0);
        assert!((m.ece - (4.0 / 6.0 - p).abs()).abs() < 1e-6);
        let expect_nll =
            -(rows[0][0] + rows[1][0] + rows[2][1] + rows[3][2] + rows[4][2] + rows[5][2]) as f64
                / 6.0;
        assert!((m.nll - expect_nll).abs() < 1e-6);
    }

    #[test]
    fn macro_f1_skips_classes_absent_from_gold_and_predictions() {
        let rows = vec![
            log_softmax(&[3.0, 0.0, 0.0, 0.0]),
            log_softmax(&[0.0, 3.0, 0.0, 0.0]),
        ];
        let m = single_label(&rows, &[0, 1], 4);
        assert!(
            close(m.macro_f1, 1.0),
            "classes 2 and 3 never occur: {}",
            m.macro_f1
        );
        assert_eq!(
            m.per_class[3],
            ClassStats {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
                support: 0
            }
        );
    }

    #[test]
    fn ece_bins_split_by_confidence() {
        // Two samples at confidence 0.9 (one right), two at 0.6 (both right).
        let lp = |p: f64| vec![p.ln() as f32, (1.0 - p).ln() as f32];
        let rows = vec![lp(0.9), lp(0.9), lp(0.6), lp(0.6)];
        let m = single_label(&rows, &[0, 1, 0, 0], 2);
        let expect = 0.5 * (0.5f64 - 0.9).abs() + 0.5 * (1.0f64 - 0.6).abs();
        assert!((m.ece - expect).abs() < 1e-6, "{} vs {expect}", m.ece);
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn multi_label_counts_and_bce() {
        // sample 0: gold {0}, logits (+2, −1, +1) → pred {0, 2}
        // sample 1: gold {},  logits (−3, −2, −1) → pred {}
        let logits = vec![vec![2.0f32, -1.0, 1.0], vec![-3.0, -2.0, -1.0]];
        let m = multi_label(&logits, &[vec![0], vec![]], 3);
        assert!(close(m.acc, 0.5));
        assert!(close(m.label_acc, 5.0 / 6.0));
        assert_eq!(m.confusion[2], [[1, 1], [0, 0]]);
        assert_eq!(m.per_class[0].support, 1);
        // F1: class 0 = 1, class 2 = 0 (fp only); class 1 never positive → excluded.
        assert!(close(m.macro_f1, 0.5));
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let expect = (sp(-2.0) + sp(-1.0) + sp(1.0) + sp(-3.0) + sp(-2.0) + sp(-1.0)) / 6.0;
        assert!((m.nll - expect).abs() < 1e-9);
    }

    #[test]
    fn regression_errors_and_r2() {
        let preds = vec![vec![1.0f32], vec![2.0], vec![4.0]];
        let gold = vec![vec![1.0f32], vec![3.0], vec![5.0]];
        let m = regression(&preds, &gold);
        assert!(close(m.mse, 2.0 / 3.0));
        assert!(close(m.mae, 2.0 / 3.0));
        // ss_tot = 8, ss_res = 2.
        assert!(close(m.r2[0], 0.75));
    }

    #[test]
    fn json_is_tagged_by_problem_type() {
        let m = Metrics::Regression(regression(&[vec![1.0]], &[vec![1.0]]));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["problem_type"], "regression");
        assert_eq!(v["mse"], 0.0);
    }
}
