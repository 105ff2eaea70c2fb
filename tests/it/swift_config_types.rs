//! Every config.json field we write has the JSON type transformers 5.x declares for it
//! (its `@strict` config dataclasses reject e.g. `"tokens_per_second": 2.0` where `int` is
//! declared). The declared types come from `tools/fixtures/gen_swift.py types`
//! (transformers 5.19.0) in `tests/fixtures/swift/config_types.json`.

use std::path::Path;

use pipeline::export::hf_config::{HeadSpec, merged_config};
use pipeline::model::presets::{PRESETS, preset_config, to_hf_json};
use serde_json::Value;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Fields of `obj` whose JSON type transformers would reject, as "section.field: kind".
fn mistyped(obj: &Value, declared: &Value, section: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, v) in obj.as_object().unwrap() {
        let Some(allowed) = declared.get(name).and_then(Value::as_array) else {
            continue;
        };
        let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        if !allowed.contains(&"any") && !allowed.contains(&kind(v)) {
            bad.push(format!("{section}.{name}: {} not in {allowed:?}", kind(v)));
        }
    }
    bad
}

#[test]
fn written_configs_have_the_types_transformers_declares() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swift/config_types.json");
    let types: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let fields = &types["fields"];
    assert!(fields["vision_config"]["tokens_per_second"] == serde_json::json!(["int"]));
    let names = ["a".to_string(), "b".to_string(), "c".to_string()];
    for preset in PRESETS {
        let base = to_hf_json(&preset_config(preset).unwrap());
        let head = HeadSpec {
            num_labels: 3,
            problem_type: "single_label_classification",
            labels: Some(&names),
            pad_token_id: 151643,
            torch_dtype: "bfloat16",
        };
        for (what, cfg) in [
            ("preset", base.clone()),
            ("merged", merged_config(&base, &head)),
        ] {
            let mut bad = mistyped(&cfg, &fields[""], "");
            // Flat text keys at the top level (hub layout) go to the text config.
            let flat: serde_json::Map<String, Value> = cfg
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| fields[""].get(k.as_str()).is_none())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            bad.extend(mistyped(
                &Value::Object(flat),
                &fields["text_config"],
                "(flat)",
            ));
            for section in ["text_config", "vision_config"] {
                if let Some(sub) = cfg.get(section) {
                    bad.extend(mistyped(sub, &fields[section], section));
                }
            }
            assert!(bad.is_empty(), "{preset} {what}: {bad:?}");
            // The vision fields are also checked where they are written.
            assert!(
                cfg["vision_config"]["tokens_per_second"].is_u64(),
                "{preset} {what}"
            );
        }
    }
}
