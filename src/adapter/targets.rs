//! `target_modules` of an adapter_config.json: which modules carry LoRA.
//!
//! PEFT semantics (`peft.tuners.tuners_utils.check_target_module_exists`): a string is a
//! regex that must match the whole module name (`re.fullmatch`); a list matches a module
//! whose name equals an entry or ends with `.` + entry; `"all-linear"` means every linear
//! layer except the output head. ms-swift writes regexes with look-aheads, so they are
//! compiled with `fancy-regex`. A regex written under transformers < 4.52 names modules in
//! the legacy layout, so both spellings of a module name are tried.

use std::collections::BTreeMap;

use serde_json::Value;

use super::keys::to_legacy;

/// The `target_modules` value of an adapter config.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Module-name suffixes.
    List(Vec<String>),
    /// A regex over full module names.
    Regex(String),
    /// PEFT's `"all-linear"` shorthand.
    AllLinear,
}

impl TargetModules {
    /// From the JSON value of `target_modules` (string or list of strings).
    pub fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) if s == "all-linear" => Ok(Self::AllLinear),
            Value::String(s) => Ok(Self::Regex(s.clone())),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("list entry {v} is not a string"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::List),
            other => Err(format!(
                "expected a string or a list of strings, found {other}"
            )),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::List(items) => Value::from(items.clone()),
            Self::Regex(r) => Value::from(r.clone()),
            Self::AllLinear => Value::from("all-linear"),
        }
    }

    /// Compile into a matcher; a regex that does not compile is an error.
    pub fn matcher(&self) -> Result<TargetMatcher, String> {
        Ok(match self {
            Self::List(items) => TargetMatcher::Suffixes(items.clone()),
            Self::Regex(r) => {
                // fullmatch: anchor the whole pattern.
                let re = fancy_regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("invalid regex {r:?}: {e}"))?;
                TargetMatcher::Regex(Box::new(re))
            }
            Self::AllLinear => TargetMatcher::AllLinear,
        })
    }
}

/// A compiled `target_modules`.
pub enum TargetMatcher {
    Suffixes(Vec<String>),
    Regex(Box<fancy_regex::Regex>),
    AllLinear,
}

impl TargetMatcher {
    /// Whether the module (current-layout name, one of the model's linear layers) is a
    /// target; tried under its legacy name too.
    pub fn matches(&self, module: &str) -> bool {
        let legacy = to_legacy(module);
        let names = [module, legacy.as_str()];
        match self {
            Self::Suffixes(items) => names.iter().any(|n| {
                items
                    .iter()
                    .any(|t| *n == t || n.ends_with(&format!(".{t}")))
            }),
            Self::Regex(re) => names.iter().any(|n| re.is_match(n).unwrap_or(false)),
            Self::AllLinear => module != super::keys::SCORE,
        }
    }
}

/// A regex that matches exactly `modules` (current-layout names) under either layout:
/// layers/blocks are grouped by the set of adapted sub-modules, with their indices
/// listed, e.g. `^(?:model\.(?:language_model\.)?layers\.(?:0|1)\.(?:self_attn\.q_proj|mlp\.up_proj))$`.
pub fn exact_regex(modules: &[String]) -> String {
    const TEXT: (&str, &str) = (
        "model.language_model.layers.",
        r"model\.(?:language_model\.)?layers\.",
    );
    const VISION: (&str, &str) = ("model.visual.blocks.", r"(?:model\.)?visual\.blocks\.");
    let mut alternatives = Vec::new();
    let mut others = Vec::new();
    for (prefix, pattern) in [TEXT, VISION] {
        // index → its sub-module suffixes; then suffix set → indices.
        let mut by_index: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for m in modules {
            if let Some(rest) = m.strip_prefix(prefix)
                && let Some((idx, suffix)) = rest.split_once('.')
                && let Ok(i) = idx.parse::<usize>()
            {
                by_index.entry(i).or_default().push(suffix);
            }
        }
        let mut by_set: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
        for (i, mut suffixes) in by_index {
            suffixes.sort_unstable();
            suffixes.dedup();
            by_set.entry(suffixes).or_default().push(i);
        }
        for (suffixes, indices) in by_set {
            let idx = indices
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("|");
            let subs = suffixes
                .iter()
                .map(|s| regex_escape(s))
                .collect::<Vec<_>>()
                .join("|");
            alternatives.push(format!("{pattern}(?:{idx})\\.(?:{subs})"));
        }
    }
    for m in modules {
        let layered = [TEXT.0, VISION.0].iter().any(|p| {
            m.strip_prefix(p).is_some_and(|r| {
                r.split_once('.')
                    .is_some_and(|(i, _)| i.parse::<usize>().is_ok())
            })
        });
        if !layered {
            let legacy = to_legacy(m);
            let alt = if legacy == *m {
                regex_escape(m)
            } else {
                format!("{}|{}", regex_escape(m), regex_escape(&legacy))
            };
            others.push(alt);
        }
    }
    alternatives.extend(others);
    format!("^(?:{})$", alternatives.join("|"))
}

/// Escape regex metacharacters (module names only contain `.`, `_`, letters, digits).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_names() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..3 {
            for s in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
            ] {
                v.push(format!("model.language_model.layers.{i}.{s}"));
            }
            for s in ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
                v.push(format!("model.language_model.layers.{i}.{s}"));
            }
        }
        for j in 0..12 {
            for s in [
                "attn.qkv",
                "attn.proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.visual.blocks.{j}.{s}"));
            }
        }
        v.push("model.visual.merger.mlp.0".into());
        v.push("model.visual.merger.mlp.2".into());
        v
    }

    #[test]
    fn suffix_list_follows_peft() {
        let m = TargetModules::List(vec!["q_proj".into(), "attn.proj".into()])
            .matcher()
            .unwrap();
        assert!(m.matches("model.language_model.layers.0.self_attn.q_proj"));
        assert!(m.matches("model.visual.blocks.3.attn.proj"));
        assert!(!m.matches("model.visual.blocks.3.attn.qkv"));
        // `proj` alone must not match `o_proj` (suffix after a dot only).
        let m = TargetModules::List(vec!["proj".into()]).matcher().unwrap();
        assert!(m.matches("model.visual.blocks.3.attn.proj"));
        assert!(!m.matches("model.language_model.layers.0.self_attn.o_proj"));
    }

    #[test]
    fn swift_style_regex_with_lookahead_matches_either_layout() {
        // The shape of ms-swift's `get_multimodal_target_regex` output (freeze_vit false).
        let re = r"^(model\.language_model|model\.visual)(?!.*\b(merger|lm_head|score)\b).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv|proj)$";
        let m = TargetModules::Regex(re.into()).matcher().unwrap();
        let hits: Vec<_> = linear_names()
            .into_iter()
            .filter(|n| m.matches(n))
            .collect();
        assert_eq!(hits.len(), 3 * 7 + 12 * 5, "{hits:?}");
        // Legacy-layout regex (transformers < 4.52).
        let m = TargetModules::Regex(r"^(model|visual)(?!.*\bmerger\b).*\.(q_proj|qkv)$".into())
            .matcher()
            .unwrap();
        assert!(m.matches("model.language_model.layers.2.self_attn.q_proj"));
        assert!(m.matches("model.visual.blocks.11.attn.qkv"));
        assert!(!m.matches("model.visual.merger.mlp.0"));
    }

    #[test]
    fn exact_regex_selects_exactly_the_given_modules() {
        let all = linear_names();
        // Text layers 0 and 2 fully, layer 1 only q/v, ViT blocks with qkv only, merger mlp.0.
        let chosen: Vec<String> = all
            .iter()
            .filter(|n| {
                (n.contains("layers.1.") && (n.ends_with("q_proj") || n.ends_with("v_proj")))
                    || (n.contains("language_model") && !n.contains("layers.1."))
                    || n.ends_with("attn.qkv")
                    || n.ends_with("merger.mlp.0")
            })
            .cloned()
            .collect();
        let re = exact_regex(&chosen);
        let m = TargetModules::Regex(re.clone()).matcher().unwrap();
        let hits: Vec<String> = all.iter().filter(|n| m.matches(n)).cloned().collect();
        assert_eq!(hits, chosen, "regex {re}");
        // Layer index 1 must not match 11 etc.: the alternation is anchored by `\.`.
        assert!(!m.matches("model.visual.blocks.11.attn.proj"));
        assert!(
            m.matches("visual.merger.mlp.0"),
            "legacy spelling of the merger"
        );
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            TargetModules::from_json(&serde_json::json!("all-linear")).unwrap(),
            TargetModules::AllLinear
        );
        assert_eq!(
            TargetModules::from_json(&serde_json::json!(["q_proj"])).unwrap(),
            TargetModules::List(vec!["q_proj".into()])
        );
        assert!(TargetModules::from_json(&serde_json::json!(3)).is_err());
        assert!(TargetModules::Regex("(".into()).matcher().is_err());
    }
}
