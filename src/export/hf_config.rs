//! `config.json` of a merged sequence-classification checkpoint.
//!
//! Starts from the base model's config (the file of a `path` model, or the preset's
//! rendering) and adds what `swift export --merge_lora true` writes for seq_cls —
//! `num_labels`, `id2label`, `label2id`, `problem_type`, `architectures` kept as
//! `Qwen2_5_VLForConditionalGeneration` — plus:
//! - `pad_token_id` when the base config has none (pooling needs it without a mask);
//! - `torch_dtype` = the dtype of the written weights;
//! - `auto_map.AutoModelForSequenceClassification`, pointing at the modeling file we ship
//!   alongside, so `AutoModelForSequenceClassification.from_pretrained(dir,
//!   trust_remote_code=True)` works (transformers has no Qwen2.5-VL seq-cls class).

use serde_json::{Map, Value, json};

/// The remote-code module written next to the weights.
pub const MODELING_FILE: &str = "modeling_qwen2_5_vl_seq_cls.py";
/// Its source.
pub const MODELING_SOURCE: &str = include_str!("modeling_qwen2_5_vl_seq_cls.py");
const AUTO_CLASS: &str = "modeling_qwen2_5_vl_seq_cls.Qwen2_5_VLForSequenceClassification";

/// Label-related settings of the merged config.
#[derive(Debug, Clone)]
pub struct HeadSpec<'a> {
    pub num_labels: usize,
    /// `single_label_classification` | `multi_label_classification` | `regression`.
    pub problem_type: &'a str,
    /// Class names in index order (`LABEL_i` when absent).
    pub labels: Option<&'a [String]>,
    /// `<|endoftext|>` id, used as `pad_token_id` if the base config has none.
    pub pad_token_id: u32,
    /// `float32` | `bfloat16`.
    pub torch_dtype: &'a str,
}

/// The merged config: `base` (a config.json object) with the head fields set.
pub fn merged_config(base: &Value, head: &HeadSpec<'_>) -> Value {
    let mut cfg: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
    let name = |i: usize| {
        head.labels
            .and_then(|l| l.get(i))
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    };
    let id2label: Map<String, Value> = (0..head.num_labels)
        .map(|i| (i.to_string(), json!(name(i))))
        .collect();
    let label2id: Map<String, Value> = (0..head.num_labels).map(|i| (name(i), json!(i))).collect();
    cfg.insert(
        "architectures".into(),
        json!(["Qwen2_5_VLForConditionalGeneration"]),
    );
    cfg.insert(
        "auto_map".into(),
        json!({"AutoModelForSequenceClassification": AUTO_CLASS}),
    );
    cfg.insert("num_labels".into(), json!(head.num_labels));
    cfg.insert("id2label".into(), Value::Object(id2label));
    cfg.insert("label2id".into(), Value::Object(label2id));
    cfg.insert("problem_type".into(), json!(head.problem_type));
    if cfg.get("pad_token_id").is_none_or(Value::is_null) {
        cfg.insert("pad_token_id".into(), json!(head.pad_token_id));
    }
    cfg.insert("torch_dtype".into(), json!(head.torch_dtype));
    // transformers ≥ 4.56 spells it `dtype`; one spelling only, or it warns.
    cfg.remove("dtype");
    if let Some(Value::Object(text)) = cfg.get_mut("text_config") {
        text.remove("dtype");
        text.insert("torch_dtype".into(), json!(head.torch_dtype));
    }
    Value::Object(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_head_fields_and_keeps_the_base() {
        let base = json!({"model_type": "qwen2_5_vl", "hidden_size": 64, "architectures": ["X"], "dtype": "float32",
                          "text_config": {"hidden_size": 64, "dtype": "float32"}});
        let names = vec!["cat".to_string(), "dog".to_string()];
        let head = HeadSpec {
            num_labels: 2,
            problem_type: "single_label_classification",
            labels: Some(&names),
            pad_token_id: 256,
            torch_dtype: "bfloat16",
        };
        let c = merged_config(&base, &head);
        assert_eq!(c["hidden_size"], 64);
        assert_eq!(
            c["architectures"],
            json!(["Qwen2_5_VLForConditionalGeneration"])
        );
        assert_eq!(c["num_labels"], 2);
        assert_eq!(c["id2label"], json!({"0": "cat", "1": "dog"}));
        assert_eq!(c["label2id"], json!({"cat": 0, "dog": 1}));
        assert_eq!(c["pad_token_id"], 256);
        assert_eq!(c["torch_dtype"], "bfloat16");
        assert!(c.get("dtype").is_none() && c["text_config"].get("dtype").is_none());
        assert_eq!(c["text_config"]["torch_dtype"], "bfloat16");
        assert_eq!(
            c["auto_map"]["AutoModelForSequenceClassification"],
            AUTO_CLASS
        );
        assert!(MODELING_SOURCE.contains("class Qwen2_5_VLForSequenceClassification"));
    }

    #[test]
    fn default_label_names_and_existing_pad_id() {
        let base = json!({"pad_token_id": 151643});
        let head = HeadSpec {
            num_labels: 3,
            problem_type: "regression",
            labels: None,
            pad_token_id: 1,
            torch_dtype: "float32",
        };
        let c = merged_config(&base, &head);
        assert_eq!(c["id2label"]["2"], "LABEL_2");
        assert_eq!(c["pad_token_id"], 151643);
    }
}
