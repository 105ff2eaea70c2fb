//! Readable, stable variant names from swept values: `lora_rank = 8, learning_rate =
//! 1e-4` → `r8-lr1e-4`.

use serde_json::Value as Json;

/// Short labels for keys swept often; anything else uses its last path component.
const SHORT: [(&str, &str); 15] = [
    ("lora_rank", "r"),
    ("learning_rate", "lr"),
    ("lora_alpha", "a"),
    ("lora_dropout", "do"),
    ("num_train_epochs", "ep"),
    ("per_device_train_batch_size", "bs"),
    ("gradient_accumulation_steps", "ga"),
    ("warmup_ratio", "wu"),
    ("weight_decay", "wd"),
    ("max_pixels", "px"),
    ("max_steps", "steps"),
    ("data_seed", "dseed"),
    ("target_modules", "tm"),
    ("lr_scheduler_type", "sched"),
    ("max_grad_norm", "gn"),
];

/// Labels for the swept `paths`: the short label of the last component, qualified by
/// the stage name where two paths would share one.
pub(crate) fn labels(paths: &[String]) -> Vec<String> {
    let short = |p: &str| {
        let last = p.rsplit('.').next().unwrap_or(p);
        SHORT
            .iter()
            .find(|(k, _)| *k == last)
            .map_or(last, |(_, s)| s)
            .to_string()
    };
    paths
        .iter()
        .map(|p| {
            let s = short(p);
            let clash = paths.iter().filter(|q| short(q) == s).count() > 1;
            let parts: Vec<&str> = p.split('.').collect();
            if clash && parts.len() >= 2 {
                format!("{}.{s}", parts[parts.len() - 2])
            } else {
                s
            }
        })
        .collect()
}

/// `r8`, `lr1e-4`, `sched_cosine`.
pub(crate) fn part(label: &str, value: &Json) -> String {
    let v = format_value(value);
    let joined = if matches!(value, Json::Number(_)) {
        format!("{label}{v}")
    } else {
        format!("{label}_{v}")
    };
    joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Compact text for a value: integers as is, small/large floats in `1e-4` form.
pub fn format_value(value: &Json) -> String {
    match value {
        Json::Number(n) if n.is_f64() => format_float(n.as_f64().unwrap_or(f64::NAN)),
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.clone(),
        Json::Bool(b) => b.to_string(),
        Json::Array(a) => a.iter().map(format_value).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    }
}

fn format_float(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{}", v as i64)
    } else if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `v` rounded to 3 significant digits (random trials get readable values).
pub(crate) fn round_sig3(v: f64) -> f64 {
    format!("{v:.2e}").parse().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_read_like_the_values() {
        let paths = vec![
            "stages.train.lora_rank".to_string(),
            "stages.train.learning_rate".to_string(),
        ];
        let l = labels(&paths);
        assert_eq!(l, ["r", "lr"]);
        assert_eq!(
            format!("{}-{}", part(&l[0], &json!(8)), part(&l[1], &json!(1e-4))),
            "r8-lr1e-4"
        );
        assert_eq!(part("lr", &json!(5e-5)), "lr5e-5");
        assert_eq!(part("lr", &json!(0.00123)), "lr1.23e-3");
        assert_eq!(part("wu", &json!(0.05)), "wu0.05");
        assert_eq!(part("a", &json!(32.0)), "a32");
        assert_eq!(part("sched", &json!("cosine")), "sched_cosine");
        assert_eq!(part("tm", &json!(["q_proj", "v_proj"])), "tm_q_proj+v_proj");
    }

    #[test]
    fn clashing_labels_are_qualified() {
        let paths = vec![
            "stages.a.lora_rank".to_string(),
            "stages.b.lora_rank".to_string(),
            "seed".to_string(),
        ];
        assert_eq!(labels(&paths), ["a.r", "b.r", "seed"]);
    }

    #[test]
    fn rounds_to_three_digits() {
        assert_eq!(round_sig3(0.000123456), 0.000123);
        assert_eq!(round_sig3(12345.0), 12300.0);
    }
}
