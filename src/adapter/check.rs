//! Does an adapter fit a model? Checked before any tensor is placed, so the error names
//! the first module, key and shape that do not fit.

use std::collections::BTreeMap;

use super::AdapterError;
use super::keys::{Factor, lora_key, score_key};
use super::peft::{PeftAdapter, natural_key};

/// What the model offers an adapter: its LoRA-able linear layers with their base weight
/// shapes `[out, in]` (current-layout names), and the head's shape.
#[derive(Debug, Clone)]
pub struct ModelShapes {
    pub linears: BTreeMap<String, [usize; 2]>,
    pub num_labels: usize,
    pub hidden_size: usize,
}

/// Check `adapter` against `model`:
/// - every adapted module is a linear layer of the model, with `A: [r, in]`, `B: [out, r]`;
/// - `target_modules` selects exactly the adapted modules among the model's linears;
/// - the saved head, if any, is `[num_labels, hidden]`.
pub fn check_fits(adapter: &PeftAdapter, model: &ModelShapes) -> Result<(), AdapterError> {
    let weights = adapter.dir.join(super::peft::WEIGHTS_FILE);
    let mismatch = |message: String| AdapterError::Mismatch {
        path: weights.clone(),
        message,
    };
    let r = adapter.config.r;
    for p in &adapter.modules {
        let Some(&[out, inp]) = model.linears.get(&p.module) else {
            return Err(mismatch(format!(
                "`{}` adapts `{}`, which is not a linear layer of this model ({})",
                lora_key(&p.module, Factor::A),
                p.module,
                describe_linears(model)
            )));
        };
        if p.a.shape[..] != [r, inp] {
            return Err(mismatch(format!(
                "`{}` has shape {:?}; the model's `{}` takes {inp} inputs, so it must be [{r}, {inp}]",
                lora_key(&p.module, Factor::A),
                p.a.shape,
                p.module
            )));
        }
        if p.b.shape[..] != [out, r] {
            return Err(mismatch(format!(
                "`{}` has shape {:?}; the model's `{}` has {out} outputs, so it must be [{out}, {r}]",
                lora_key(&p.module, Factor::B),
                p.b.shape,
                p.module
            )));
        }
    }
    let cfg_path = adapter.dir.join(super::peft::CONFIG_FILE);
    let matcher =
        adapter
            .config
            .target_modules
            .matcher()
            .map_err(|message| AdapterError::Config {
                path: cfg_path.clone(),
                field: "target_modules",
                message,
            })?;
    let adapted: std::collections::BTreeSet<&str> =
        adapter.modules.iter().map(|p| p.module.as_str()).collect();
    if let Some(p) = adapter.modules.iter().find(|p| !matcher.matches(&p.module)) {
        return Err(AdapterError::Config {
            path: cfg_path,
            field: "target_modules",
            message: format!(
                "does not select `{}`, which has LoRA tensors in {WEIGHTS}",
                p.module,
                WEIGHTS = super::peft::WEIGHTS_FILE
            ),
        });
    }
    let mut names: Vec<&String> = model.linears.keys().collect();
    names.sort_by_key(|n| natural_key(n));
    if let Some(missing) = names
        .into_iter()
        .find(|n| matcher.matches(n) && !adapted.contains(n.as_str()))
    {
        return Err(AdapterError::Config {
            path: cfg_path,
            field: "target_modules",
            message: format!(
                "selects `{missing}` of this model, but {} has no LoRA tensors for it (an adapter for a different model?)",
                super::peft::WEIGHTS_FILE
            ),
        });
    }
    if let Some(s) = &adapter.score {
        let (labels, hidden) = (s.shape[0], s.shape[1]);
        if hidden != model.hidden_size {
            return Err(mismatch(format!(
                "`{}` has shape {:?}; the model's hidden size is {}",
                score_key(),
                s.shape,
                model.hidden_size
            )));
        }
        if labels != model.num_labels {
            return Err(mismatch(format!(
                "the adapter's head has {labels} labels (`{}` {:?}) but [task] num_labels = {}",
                score_key(),
                s.shape,
                model.num_labels
            )));
        }
    }
    Ok(())
}

/// "2 text layers, 2 vision blocks; e.g. `model.language_model.layers.0.self_attn.q_proj`".
fn describe_linears(model: &ModelShapes) -> String {
    let count = |prefix: &str| {
        model
            .linears
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1)
    };
    let example = model
        .linears
        .keys()
        .min_by_key(|n| natural_key(n))
        .cloned()
        .unwrap_or_default();
    format!(
        "it has {} text layers and {} vision blocks; linear layers are named like `{example}`",
        count("model.language_model.layers."),
        count("model.visual.blocks.")
    )
}

#[cfg(test)]
mod tests {
    use super::super::peft::{AdapterConfig, LoraPair};
    use super::super::targets::TargetModules;
    use super::*;
    use burn::tensor::TensorData;

    fn model() -> ModelShapes {
        let mut linears = BTreeMap::new();
        for i in 0..2 {
            linears.insert(
                format!("model.language_model.layers.{i}.self_attn.q_proj"),
                [8, 8],
            );
            linears.insert(
                format!("model.language_model.layers.{i}.mlp.down_proj"),
                [8, 16],
            );
        }
        linears.insert("model.visual.blocks.0.attn.qkv".into(), [12, 4]);
        ModelShapes {
            linears,
            num_labels: 3,
            hidden_size: 8,
        }
    }

    fn adapter(
        modules: Vec<(&str, [usize; 2], [usize; 2])>,
        targets: TargetModules,
        score: Option<[usize; 2]>,
    ) -> PeftAdapter {
        let modules = modules
            .into_iter()
            .map(|(m, a, b)| LoraPair {
                module: m.into(),
                a: TensorData::zeros::<f32, _>(a.to_vec()),
                b: TensorData::zeros::<f32, _>(b.to_vec()),
            })
            .collect();
        let mut config = AdapterConfig::for_modules(2, 4.0, 0.0, false, &[], "");
        config.target_modules = targets;
        PeftAdapter {
            dir: "/ad".into(),
            config,
            modules,
            score: score.map(|s| TensorData::zeros::<f32, _>(s.to_vec())),
            layout: super::super::keys::KeyLayout::Current,
        }
    }

    #[test]
    fn accepts_a_fitting_adapter() {
        let ad = adapter(
            vec![
                (
                    "model.language_model.layers.0.self_attn.q_proj",
                    [2, 8],
                    [8, 2],
                ),
                (
                    "model.language_model.layers.1.self_attn.q_proj",
                    [2, 8],
                    [8, 2],
                ),
            ],
            TargetModules::List(vec!["q_proj".into()]),
            Some([3, 8]),
        );
        check_fits(&ad, &model()).unwrap();
    }

    #[test]
    fn names_the_first_mismatch() {
        let q0 = "model.language_model.layers.0.self_attn.q_proj";
        let ad = adapter(
            vec![(q0, [2, 9], [8, 2])],
            TargetModules::Regex(".*layers\\.0\\.self_attn\\.q_proj".into()),
            None,
        );
        let e = check_fits(&ad, &model()).unwrap_err().to_string();
        assert!(
            e.contains("q_proj.lora_A.weight") && e.contains("[2, 9]") && e.contains("[2, 8]"),
            "{e}"
        );

        let ad = adapter(
            vec![(
                "model.language_model.layers.5.self_attn.q_proj",
                [2, 8],
                [8, 2],
            )],
            TargetModules::List(vec!["q_proj".into()]),
            None,
        );
        let e = check_fits(&ad, &model()).unwrap_err().to_string();
        assert!(e.contains("layers.5") && e.contains("2 text layers"), "{e}");

        // target_modules selects layer 1 too, but only layer 0 has tensors.
        let ad = adapter(
            vec![(q0, [2, 8], [8, 2])],
            TargetModules::List(vec!["q_proj".into()]),
            None,
        );
        let e = check_fits(&ad, &model()).unwrap_err().to_string();
        assert!(
            e.contains("layers.1.self_attn.q_proj") && e.contains("target_modules"),
            "{e}"
        );

        let ad = adapter(
            vec![],
            TargetModules::List(vec!["nothing".into()]),
            Some([5, 8]),
        );
        let e = check_fits(&ad, &model()).unwrap_err().to_string();
        assert!(
            e.contains("5 labels") && e.contains("num_labels = 3"),
            "{e}"
        );
    }
}
