//! Content keys (docs/ARCHITECTURE.md "Cache, keys and locks"): blake3 over everything that
//! can change a stage's output — kind, implementation version, canonical params, upstream keys
//! by need name, input file digests, what of its device changes the output (kind and compute
//! dtype) and, for stages that draw random numbers, the seed. Nothing else: a key that included
//! the seed of a stage that never uses it would recompute byte-identical artifacts.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::store::manifest::InputDigest;

/// Bumped if the key recipe itself changes.
const DOMAIN: &str = "pipeline.stage-key.v2";

/// `v` with every object's keys sorted (serde_json keeps insertion order here).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Compact JSON with sorted keys: equal values give equal bytes.
pub fn canonical_json(v: &Value) -> String {
    serde_json::to_string(&sorted(v)).expect("JSON values serialize")
}

/// What a key is computed from.
#[derive(Debug, Clone)]
pub struct KeyParts<'a> {
    pub kind: &'a str,
    pub version: u32,
    pub params: &'a Value,
    /// Need name → upstream key.
    pub upstream: &'a BTreeMap<String, String>,
    /// In `Stage::input_files()` order. Only digests enter the key (paths are already in
    /// the params), so moving a project keeps its keys where the params allow.
    pub inputs: &'a [InputDigest],
    /// `Stage::device_key` for the device kind the plan puts it on (null when none).
    pub device: &'a Value,
    /// `None` for stages whose output does not depend on the seed.
    pub seed: Option<u64>,
}

/// The full key: 64 hex chars.
pub fn content_key(p: &KeyParts) -> String {
    let doc = serde_json::json!({
        "kind": p.kind,
        "version": p.version,
        "params": p.params,
        "upstream": p.upstream,
        "inputs": p.inputs.iter().map(|i| i.blake3.as_str()).collect::<Vec<_>>(),
        "device": p.device,
        "seed": p.seed,
    });
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(&doc).as_bytes());
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(params: Value, up: &[(&str, &str)], inputs: &[&str], seed: u64, version: u32) -> String {
        key_on(params, up, inputs, Some(seed), version, &Value::Null)
    }

    fn key_on(
        params: Value,
        up: &[(&str, &str)],
        inputs: &[&str],
        seed: Option<u64>,
        version: u32,
        device: &Value,
    ) -> String {
        let upstream = up
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let inputs: Vec<InputDigest> = inputs
            .iter()
            .map(|d| InputDigest {
                path: "/x".into(),
                blake3: d.to_string(),
            })
            .collect();
        content_key(&KeyParts {
            kind: "train",
            version,
            params: &params,
            upstream: &upstream,
            inputs: &inputs,
            device,
            seed,
        })
    }

    #[test]
    fn canonical_form_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"y": 2, "x": 1}], "c": 0.0001}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":0.0001,"d":[1,{"x":1,"y":2}]},"b":1}"#
        );
        let b: Value =
            serde_json::from_str(r#"{"a": {"c": 1e-4, "d": [1, {"x": 1, "y": 2}]}, "b": 1}"#)
                .unwrap();
        assert_eq!(key(a, &[], &[], 1, 1), key(b, &[], &[], 1, 1));
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = key(json!({"r": 8}), &[("data", "k1")], &["d1"], 42, 1);
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            key(json!({"r": 8}), &[("data", "k1")], &["d1"], 42, 1)
        );
        for other in [
            key(json!({"r": 16}), &[("data", "k1")], &["d1"], 42, 1),
            key(json!({"r": 8}), &[("data", "k2")], &["d1"], 42, 1),
            key(json!({"r": 8}), &[("dat", "k1")], &["d1"], 42, 1),
            key(json!({"r": 8}), &[("data", "k1")], &["d2"], 42, 1),
            key(json!({"r": 8}), &[("data", "k1")], &["d1"], 43, 1),
            key(json!({"r": 8}), &[("data", "k1")], &["d1"], 42, 2),
            key_on(
                json!({"r": 8}),
                &[("data", "k1")],
                &["d1"],
                None,
                1,
                &Value::Null,
            ),
            key_on(
                json!({"r": 8}),
                &[("data", "k1")],
                &["d1"],
                Some(42),
                1,
                &json!({"device": "cuda", "compute_dtype": "bfloat16"}),
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
