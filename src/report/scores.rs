//! `scores.jsonl`: one SWIFT-compatible line per scored sample (docs/ARCHITECTURE.md "Output contract").
//!
//! Semantics of ms-swift's `Template.decode_seq_cls` (`swift/llm/template/base.py`):
//! single-label → argmax response, `log_softmax` scores; multi-label → the classes with
//! sigmoid ≥ 0.5, `logsigmoid` scores; regression → the raw output as response, no
//! log-probs. `top_logprobs` lists the classes best first, at most 20 (`swift infer`'s
//! default `top_logprobs` for seq_cls).
//!
//! The line is the one `swift infer --logprobs true` writes (ms-swift 4.6,
//! `pipelines/infer/infer.py`): `response`, `labels`, `logprobs`, then the dataset row's
//! `messages` with the response appended as an assistant turn, and its `images` as
//! `{"bytes": null, "path"}`. The chosen entry's key is `logprobs` (plural), the top-list
//! entries' key `logprob`, as ms-swift's `_get_seq_cls_logprobs` writes them. Ours adds
//! `index` (the dataset row) and `class_logprobs` (every class, in class order).

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::metrics::{self, Metrics, argmax};
use crate::data::record::Label;
use crate::task::ProblemType;

/// One line of scores.jsonl; keys in this order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreLine {
    /// Row index in the dataset file.
    pub index: usize,
    /// Gold label as in the dataset, or null.
    pub labels: Value,
    /// Predicted class (single-label), classes (multi-label) or value(s) (regression).
    pub response: Value,
    /// Per-class log-probabilities in class order; null for regression.
    pub class_logprobs: Option<Vec<f32>>,
    /// `{"content": [{"index", "logprobs", "top_logprobs": [{"index", "logprob"}, ..]}]}`;
    /// null for regression.
    pub logprobs: Option<Value>,
    /// The row's messages, then `{"role": "assistant", "content": response}`.
    pub messages: Vec<Value>,
    /// `{"bytes": null, "path": p}` per image, the path as written in the dataset row.
    pub images: Vec<Value>,
}

/// ms-swift's `top_logprobs` default for seq_cls inference (`transformers_engine.py`).
pub const TOP_LOGPROBS: usize = 20;

/// What a scored sample brings besides its logits.
pub struct SampleRow<'a> {
    pub index: usize,
    pub label: Option<&'a Label>,
    /// (role, content) of each message, as in the dataset row.
    pub messages: &'a [(String, String)],
    /// Image paths as written in the dataset row.
    pub images: &'a [String],
}

/// Build the line of one sample from its logits `[num_labels]`.
pub fn score_line(row: &SampleRow, problem: ProblemType, logits: &[f32]) -> ScoreLine {
    let labels = row.label.map_or(Value::Null, label_json);
    let (response, class_logprobs, logprobs) = match problem {
        ProblemType::SingleLabelClassification => {
            let lp = log_softmax(logits);
            let pred = argmax(logits);
            let content = json!({"index": pred, "logprobs": lp[pred], "top_logprobs": top(&lp)});
            (json!(pred), Some(lp), Some(json!({"content": [content]})))
        }
        ProblemType::MultiLabelClassification => {
            let lp: Vec<f32> = logits.iter().map(|&z| log_sigmoid(z)).collect();
            // sigmoid(z) ≥ 0.5 ⇔ z ≥ 0.
            let preds: Vec<usize> = (0..logits.len()).filter(|&c| logits[c] >= 0.0).collect();
            let chosen: Vec<f32> = preds.iter().map(|&c| lp[c]).collect();
            let content = json!({"index": preds, "logprobs": chosen, "top_logprobs": top(&lp)});
            (json!(preds), Some(lp), Some(json!({"content": [content]})))
        }
        ProblemType::Regression => {
            let response = if logits.len() == 1 {
                json!(logits[0])
            } else {
                json!(logits)
            };
            (response, None, None)
        }
    };
    let mut messages: Vec<Value> = row
        .messages
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    messages.push(json!({"role": "assistant", "content": response.clone()}));
    ScoreLine {
        index: row.index,
        labels,
        response,
        class_logprobs,
        logprobs,
        messages,
        images: row
            .images
            .iter()
            .map(|p| json!({"bytes": null, "path": p}))
            .collect(),
    }
}

/// `[{"index": c, "logprob": lp}, ...]`, best first (ties by index), at most
/// `TOP_LOGPROBS` classes.
fn top(lp: &[f32]) -> Vec<Value> {
    let mut order: Vec<usize> = (0..lp.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(TOP_LOGPROBS)
        .map(|c| json!({"index": c, "logprob": lp[c]}))
        .collect()
}

fn label_json(label: &Label) -> Value {
    match label {
        Label::Class(c) => json!(c),
        Label::Classes(cs) => json!(cs),
        Label::Values(v) if v.len() == 1 => json!(v[0]),
        Label::Values(v) => json!(v),
    }
}

/// log_softmax computed in f64 (max-shifted), returned as f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits
        .iter()
        .map(|&z| f64::from(z))
        .fold(f64::NEG_INFINITY, f64::max);
    let lse = m + logits
        .iter()
        .map(|&z| (f64::from(z) - m).exp())
        .sum::<f64>()
        .ln();
    logits
        .iter()
        .map(|&z| (f64::from(z) - lse) as f32)
        .collect()
}

/// log σ(z) = −softplus(−z), stable for large |z|.
pub fn log_sigmoid(z: f32) -> f32 {
    let z = f64::from(z);
    (z.min(0.0) - (-z.abs()).exp().ln_1p()) as f32
}

/// Write lines as JSONL.
pub fn write_scores(path: &Path, lines: &[ScoreLine]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in lines {
        serde_json::to_writer(&mut f, line)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// Metrics over the samples that have a gold label; None when none has one.
/// `logits[i]` and `labels[i]` belong to the same sample. A label whose form does not
/// match the problem type is an error naming the dataset row.
pub fn split_metrics(
    problem: ProblemType,
    num_labels: usize,
    rows: &[(usize, &[f32], Option<&Label>)],
) -> Result<Option<Metrics>, String> {
    let labelled: Vec<_> = rows
        .iter()
        .filter_map(|(i, z, l)| l.map(|l| (*i, *z, l)))
        .collect();
    if labelled.is_empty() {
        return Ok(None);
    }
    let bad = |i: usize, l: &Label| {
        format!(
            "row {i}: label {} does not fit {} with num_labels {num_labels}",
            label_json(l),
            problem.as_str()
        )
    };
    Ok(Some(match problem {
        ProblemType::SingleLabelClassification => {
            let mut lps = Vec::new();
            let mut gold = Vec::new();
            for (i, z, l) in labelled {
                match l {
                    Label::Class(c) if *c < num_labels => gold.push(*c),
                    other => return Err(bad(i, other)),
                }
                lps.push(log_softmax(z));
            }
            Metrics::SingleLabel(metrics::single_label(&lps, &gold, num_labels))
        }
        ProblemType::MultiLabelClassification => {
            let mut zs = Vec::new();
            let mut gold = Vec::new();
            for (i, z, l) in labelled {
                match l {
                    Label::Classes(cs) if cs.iter().all(|&c| c < num_labels) => {
                        gold.push(cs.clone())
                    }
                    Label::Class(c) if *c < num_labels => gold.push(vec![*c]),
                    other => return Err(bad(i, other)),
                }
                zs.push(z.to_vec());
            }
            Metrics::MultiLabel(metrics::multi_label(&zs, &gold, num_labels))
        }
        ProblemType::Regression => {
            let mut preds = Vec::new();
            let mut gold = Vec::new();
            for (i, z, l) in labelled {
                match l {
                    Label::Values(v) if v.len() == num_labels => gold.push(v.clone()),
                    Label::Class(c) if num_labels == 1 => gold.push(vec![*c as f32]),
                    other => return Err(bad(i, other)),
                }
                preds.push(z.to_vec());
            }
            Metrics::Regression(metrics::regression(&preds, &gold))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_label_line_has_the_contract_shape() {
        let messages = [("user".to_string(), "<image>Which?".to_string())];
        let images = ["a.png".to_string()];
        let row = SampleRow {
            index: 7,
            label: Some(&Label::Class(1)),
            messages: &messages,
            images: &images,
        };
        let line = score_line(
            &row,
            ProblemType::SingleLabelClassification,
            &[0.5, 2.0, -1.0],
        );
        let v = serde_json::to_value(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "index",
                "labels",
                "response",
                "class_logprobs",
                "logprobs",
                "messages",
                "images"
            ]
        );
        assert_eq!(v["index"], 7);
        assert_eq!(v["labels"], 1);
        assert_eq!(v["response"], 1);
        let lp = line.class_logprobs.clone().unwrap();
        let total: f64 = lp.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let c = &v["logprobs"]["content"][0];
        assert_eq!(c["index"], 1);
        assert_eq!(c["logprobs"].as_f64().unwrap() as f32, lp[1]);
        let order: Vec<u64> = c["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["index"].as_u64().unwrap())
            .collect();
        assert_eq!(order, [1, 0, 2]);
        assert_eq!(v["images"], json!([{"bytes": null, "path": "a.png"}]));
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": "<image>Which?"}, {"role": "assistant", "content": 1}])
        );
    }

    #[test]
    fn top_list_stops_at_twenty_classes_as_swift_infer() {
        let logits: Vec<f32> = (0..25).map(|c| c as f32 / 10.0).collect();
        let row = SampleRow {
            index: 0,
            label: None,
            messages: &[],
            images: &[],
        };
        let line = score_line(&row, ProblemType::SingleLabelClassification, &logits);
        let top = &line.logprobs.unwrap()["content"][0]["top_logprobs"];
        assert_eq!(top.as_array().unwrap().len(), TOP_LOGPROBS);
        assert_eq!(top[0]["index"], 24);
        assert_eq!(line.class_logprobs.unwrap().len(), 25);
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let lp = log_softmax(&[1000.0, 0.0]);
        assert_eq!(lp[0], 0.0);
        assert!((lp[1] + 1000.0).abs() < 1e-3);
    }

    #[test]
    fn multi_label_uses_sigmoid_threshold_and_logsigmoid() {
        let label = Label::Classes(vec![0]);
        let row = SampleRow {
            index: 0,
            label: Some(&label),
            messages: &[],
            images: &[],
        };
        let line = score_line(
            &row,
            ProblemType::MultiLabelClassification,
            &[1.0, -2.0, 0.0],
        );
        assert_eq!(line.response, json!([0, 2]));
        let lp = line.class_logprobs.unwrap();
        assert!((lp[1] - (1.0f64 / (1.0 + 2.0f64.exp())).ln() as f32).abs() < 1e-6);
        assert!((lp[2] - 0.5f32.ln()).abs() < 1e-6);
        let c = &line.logprobs.unwrap()["content"][0];
        assert_eq!(c["index"], json!([0, 2]));
        assert_eq!(c["logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(
            line.messages,
            [json!({"role": "assistant", "content": [0, 2]})]
        );
        assert!((log_sigmoid(-100.0) + 100.0).abs() < 1e-4);
    }

    #[test]
    fn regression_has_float_response_and_no_logprobs() {
        let label = Label::Values(vec![0.5]);
        let row = SampleRow {
            index: 3,
            label: Some(&label),
            messages: &[],
            images: &[],
        };
        let line = score_line(&row, ProblemType::Regression, &[0.25]);
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["response"], 0.25);
        assert_eq!(v["labels"], 0.5);
        assert!(v["logprobs"].is_null() && v["class_logprobs"].is_null());
        assert!(v.as_object().unwrap().contains_key("logprobs"));
    }

    #[test]
    fn metrics_skip_unlabelled_rows_and_reject_misfit_labels() {
        let a = [2.0f32, 0.0];
        let b = [0.0f32, 2.0];
        let rows = [(0, &a[..], Some(&Label::Class(0))), (1, &b[..], None)];
        let Some(Metrics::SingleLabel(m)) =
            split_metrics(ProblemType::SingleLabelClassification, 2, &rows).unwrap()
        else {
            panic!("single-label metrics expected")
        };
        assert_eq!(m.num_samples, 1);
        assert_eq!(m.acc, 1.0);
        assert!(
            split_metrics(
                ProblemType::SingleLabelClassification,
                2,
                &[(1, &b[..], None)]
            )
            .unwrap()
            .is_none()
        );
        let bad = Label::Class(5);
        let e = split_metrics(
            ProblemType::SingleLabelClassification,
            2,
            &[(4, &a[..], Some(&bad))],
        )
        .unwrap_err();
        assert!(e.contains("row 4") && e.contains("num_labels 2"), "{e}");
    }
}
