//! Tensor key names: PEFT adapter keys in both transformers layouts, and hub (legacy)
//! checkpoint keys.
//!
//! transformers 4.52 moved Qwen2.5-VL's submodules: `visual.*` → `model.visual.*` and
//! the text decoder `model.*` → `model.language_model.*` (`Qwen2_5_VLForConditionalGeneration
//! ._checkpoint_conversion_mapping`). PEFT prefixes module names with `base_model.model.`
//! and saves `modules_to_save` copies under the original module name
//! (`peft.utils.save_and_load.get_peft_model_state_dict` drops `modules_to_save.default`),
//! so an adapter holds, e.g. for ≥ 4.52:
//!   `base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight` [r, in]
//!   `base_model.model.model.visual.blocks.0.attn.qkv.lora_B.weight` [out, r]
//!   `base_model.model.score.weight` [num_labels, hidden]
//! and for older transformers `base_model.model.model.layers.0...` / `base_model.model.visual...`.

/// Prefix PEFT puts before every module name of the wrapped model.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The classification head's module name.
pub const SCORE: &str = "score";

const NEW_TEXT: &str = "model.language_model.";
const NEW_VISUAL: &str = "model.visual.";
const OLD_TEXT: &str = "model.";
const OLD_VISUAL: &str = "visual.";

/// Which transformers naming an adapter file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// transformers ≥ 4.52: `model.language_model.*`, `model.visual.*`.
    Current,
    /// transformers < 4.52: `model.*` (text), `visual.*`.
    Legacy,
}

/// Which LoRA factor a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// `lora_A.weight` [r, in].
    A,
    /// `lora_B.weight` [out, r].
    B,
}

/// What one adapter tensor key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterKey {
    /// A LoRA factor of the module with this (current-layout) name.
    Lora {
        module: String,
        factor: Factor,
        layout: KeyLayout,
    },
    /// The fully trained classification head (`modules_to_save`).
    ScoreWeight,
}

/// Why a key is not one we can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// Not under `base_model.model.`.
    NotPeft,
    /// DoRA magnitudes, LoRA biases, embedding LoRA, other adapter types.
    Unsupported(&'static str),
    /// A module that is not part of Qwen2.5-VL's layout.
    UnknownModule,
}

/// Parse a PEFT adapter key.
pub fn parse_adapter_key(key: &str) -> Result<AdapterKey, KeyProblem> {
    let rest = key.strip_prefix(PEFT_PREFIX).ok_or(KeyProblem::NotPeft)?;
    if rest == "score.weight" {
        return Ok(AdapterKey::ScoreWeight);
    }
    if rest.starts_with("score.") {
        return Err(KeyProblem::Unsupported(
            "a score bias (the head has no bias)",
        ));
    }
    let (module, factor) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, Factor::A)
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, Factor::B)
    } else if rest.contains("lora_magnitude_vector") {
        return Err(KeyProblem::Unsupported("DoRA (use_dora)"));
    } else if rest.contains("lora_embedding_") {
        return Err(KeyProblem::Unsupported("LoRA on embeddings"));
    } else if rest.ends_with(".lora_B.bias") {
        return Err(KeyProblem::Unsupported("LoRA biases (lora_bias)"));
    } else {
        return Err(KeyProblem::Unsupported(
            "a tensor that is neither lora_A/lora_B nor score",
        ));
    };
    let (module, layout) = to_current(module).ok_or(KeyProblem::UnknownModule)?;
    Ok(AdapterKey::Lora {
        module,
        factor,
        layout,
    })
}

/// The key of a LoRA factor in the current (≥ 4.52) layout.
pub fn lora_key(module: &str, factor: Factor) -> String {
    let f = match factor {
        Factor::A => "lora_A",
        Factor::B => "lora_B",
    };
    format!("{PEFT_PREFIX}{module}.{f}.weight")
}

/// The key of the head in an adapter.
pub fn score_key() -> String {
    format!("{PEFT_PREFIX}{SCORE}.weight")
}

/// A module name in either layout → (current-layout name, layout it was in).
pub fn to_current(module: &str) -> Option<(String, KeyLayout)> {
    if module.starts_with(NEW_TEXT) || module.starts_with(NEW_VISUAL) {
        Some((module.to_string(), KeyLayout::Current))
    } else if let Some(r) = module.strip_prefix(OLD_VISUAL) {
        Some((format!("{NEW_VISUAL}{r}"), KeyLayout::Legacy))
    } else {
        module
            .strip_prefix(OLD_TEXT)
            .map(|r| (format!("{NEW_TEXT}{r}"), KeyLayout::Legacy))
    }
}

/// A current-layout module or parameter name → the hub (legacy) name that checkpoints
/// use (`model.language_model.layers.0.x` → `model.layers.0.x`, `model.visual.x` →
/// `visual.x`); other names (`score.weight`) are unchanged.
pub fn to_legacy(name: &str) -> String {
    if let Some(r) = name.strip_prefix(NEW_TEXT) {
        format!("{OLD_TEXT}{r}")
    } else if let Some(r) = name.strip_prefix(NEW_VISUAL) {
        format!("{OLD_VISUAL}{r}")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_current_layout() {
        let k = "base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight";
        assert_eq!(
            parse_adapter_key(k),
            Ok(AdapterKey::Lora {
                module: "model.language_model.layers.1.self_attn.q_proj".into(),
                factor: Factor::A,
                layout: KeyLayout::Current
            })
        );
        let k = "base_model.model.model.visual.blocks.0.attn.qkv.lora_B.weight";
        assert!(matches!(
            parse_adapter_key(k),
            Ok(AdapterKey::Lora {
                factor: Factor::B,
                layout: KeyLayout::Current,
                ..
            })
        ));
        assert_eq!(
            parse_adapter_key("base_model.model.score.weight"),
            Ok(AdapterKey::ScoreWeight)
        );
    }

    #[test]
    fn maps_legacy_layout_to_current_names() {
        let k = "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight";
        assert_eq!(
            parse_adapter_key(k),
            Ok(AdapterKey::Lora {
                module: "model.language_model.layers.3.mlp.down_proj".into(),
                factor: Factor::B,
                layout: KeyLayout::Legacy
            })
        );
        let k = "base_model.model.visual.merger.mlp.0.lora_A.weight";
        assert!(matches!(
            parse_adapter_key(k),
            Ok(AdapterKey::Lora { ref module, layout: KeyLayout::Legacy, .. }) if module == "model.visual.merger.mlp.0"
        ));
    }

    #[test]
    fn writes_and_reparses_keys() {
        let m = "model.visual.blocks.7.mlp.up_proj";
        let key = lora_key(m, Factor::A);
        assert_eq!(
            key,
            "base_model.model.model.visual.blocks.7.mlp.up_proj.lora_A.weight"
        );
        assert!(
            matches!(parse_adapter_key(&key), Ok(AdapterKey::Lora { ref module, .. }) if module == m)
        );
        assert_eq!(score_key(), "base_model.model.score.weight");
    }

    #[test]
    fn rejects_what_we_cannot_load() {
        assert_eq!(
            parse_adapter_key("model.layers.0.q_proj.lora_A.weight"),
            Err(KeyProblem::NotPeft)
        );
        assert!(matches!(
            parse_adapter_key(
                "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector"
            ),
            Err(KeyProblem::Unsupported(_))
        ));
        assert_eq!(
            parse_adapter_key("base_model.model.lm_head.lora_A.weight"),
            Err(KeyProblem::UnknownModule)
        );
    }

    #[test]
    fn hub_names() {
        assert_eq!(
            to_legacy("model.language_model.norm.weight"),
            "model.norm.weight"
        );
        assert_eq!(
            to_legacy("model.visual.blocks.0.attn.qkv.bias"),
            "visual.blocks.0.attn.qkv.bias"
        );
        assert_eq!(to_legacy("score.weight"), "score.weight");
    }
}
