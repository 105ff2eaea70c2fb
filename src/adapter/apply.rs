//! Adapters on a live model: put a read adapter onto a `SeqClassifier` (after checking it
//! fits), and take one out of a model for writing.

use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use super::AdapterError;
use super::check::{ModelShapes, check_fits};
use super::peft::{AdapterConfig, LoraPair, PeftAdapter};
use crate::model::SeqClassifier;
use crate::model::lora::{LoraLinear, LoraSpec, TargetSelector};

/// The model's LoRA-able linears with their `[out, in]`, and the head's shape.
pub fn model_shapes<B: Backend>(model: &SeqClassifier<B>) -> ModelShapes {
    let mut linears = BTreeMap::new();
    let mut visit = |name: &str, l: &LoraLinear<B>| {
        linears.insert(name.to_string(), [l.out_features(), l.in_features()]);
    };
    model.visual.visit_linears(&mut visit);
    model.language_model.visit_linears(&mut visit);
    ModelShapes {
        linears,
        num_labels: model.num_labels(),
        hidden_size: model.config().text.hidden_size,
    }
}

/// The `LoraSpec` an adapter was trained with, targeting exactly its modules.
pub fn lora_spec(adapter: &PeftAdapter) -> LoraSpec {
    let c = &adapter.config;
    LoraSpec {
        r: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        use_rslora: c.use_rslora,
        targets: TargetSelector::Names(adapter.modules.iter().map(|p| p.module.clone()).collect()),
    }
}

/// Check `adapter` against `model` (first mismatch named), then load its LoRA factors and,
/// when saved, its head. The base stays frozen; A, B and the head are trainable.
pub fn apply_adapter<B: Backend>(
    model: SeqClassifier<B>,
    adapter: &PeftAdapter,
) -> Result<SeqClassifier<B>, AdapterError> {
    check_fits(adapter, &model_shapes(&model))?;
    let device = model.score_weight().device();
    let tensor = |d: &TensorData| Tensor::<B, 2>::from_data(d.clone(), (&device, DType::F32));
    let adapters = adapter
        .modules
        .iter()
        .map(|p| (p.module.clone(), tensor(&p.a), tensor(&p.b)))
        .collect();
    let score = adapter.score.as_ref().map(tensor);
    model
        .load_lora_weights(&lora_spec(adapter), adapters, score)
        .map_err(|e| AdapterError::Mismatch {
            path: adapter.dir.clone(),
            message: e.to_string(),
        })
}

/// The adapters of `model` as host f32 tensors plus its head, ready for
/// [`super::write_peft_adapter`] with `config`.
pub fn extract_adapter<B: Backend>(model: &SeqClassifier<B>) -> (Vec<LoraPair>, TensorData) {
    let host = |t: Tensor<B, 2>| t.cast(DType::F32).into_data();
    let modules = model
        .lora_weights()
        .into_iter()
        .map(|(module, a, b)| LoraPair {
            module,
            a: host(a),
            b: host(b),
        })
        .collect();
    (modules, host(model.score_weight()))
}

/// Config for the adapters currently on `model` (exact-regex targets).
pub fn config_for<B: Backend>(
    model: &SeqClassifier<B>,
    spec: &LoraSpec,
    base_model: &str,
) -> AdapterConfig {
    let names: Vec<String> = model
        .lora_weights()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    AdapterConfig::for_modules(
        spec.r,
        spec.alpha,
        spec.dropout,
        spec.use_rslora,
        &names,
        base_model,
    )
}
