//! `[sweep]` expansion: names, values, errors at the sweep key, seeded random search.

use super::*;

const SWEEP: &str = "\n[sweep]\n\"stages.train.lora_rank\" = [8, 16]\n\"stages.train.learning_rate\" = [1e-4, 5e-5]\n";

#[test]
fn grid_sweep_names_and_values() {
    let l = project_ok(&format!("{BASE}{SWEEP}"));
    assert!(l.is_sweep());
    let names: Vec<&str> = l
        .variants
        .iter()
        .map(|v| v.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        ["r8-lr1e-4", "r8-lr5e-5", "r16-lr1e-4", "r16-lr5e-5"]
    );
    let StageParams::Train(t) = &l.variants[3].experiment.stage("train").unwrap().params else {
        panic!()
    };
    assert_eq!((t.lora_rank, t.learning_rate), (16, 5e-5));
    // the data stage is untouched
    assert_eq!(
        l.variants[0].experiment.stage("data"),
        l.variants[3].experiment.stage("data")
    );
    assert_eq!(l.select("2").unwrap().name.as_deref(), Some("r16-lr1e-4"));
    assert_eq!(l.select("r8-lr5e-5").unwrap().index, 1);
    assert!(l.select("9").unwrap_err().contains("r8-lr1e-4"));
}

#[test]
fn nested_sweep_tables_flatten() {
    let text =
        format!("{BASE}\n[sweep.stages.train]\nlora_rank = [4, 8]\n[sweep]\nseed = [1, 2]\n");
    // `[sweep]` after `[sweep.stages.train]` is valid TOML; seed in grid mode is a path.
    let l = project_ok(&text);
    let names: Vec<&str> = l
        .variants
        .iter()
        .map(|v| v.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["r4-seed1", "r4-seed2", "r8-seed1", "r8-seed2"]);
    assert_eq!(l.variants[1].experiment.common.seed, 2);
}

#[test]
fn sweep_errors_name_the_path() {
    let text = format!("{BASE}\n[sweep]\n\"stages.trian.lora_rank\" = [8, 16]\n");
    assert_has(
        &error_at(&text, line_of(&text, "trian")),
        &[
            "sweep.stages.trian.lora_rank",
            "unknown stage `trian`",
            "did you mean `train`",
            "stages: data, export, score, train",
        ],
    );

    let text = format!("{BASE}\n[sweep]\n\"stages.train.lora_rnk\" = [8, 16]\n");
    assert_has(
        &error_at(&text, line_of(&text, "lora_rnk")),
        &[
            "sweep.stages.train.lora_rnk",
            "unknown key `lora_rnk` for a train stage",
            "valid keys:",
        ],
    );

    let text = format!("{BASE}\n[sweep]\n\"stages.train.lora_rank\" = [8, \"x\"]\n");
    assert_has(
        &error_at(&text, line_of(&text, "\"x\"")),
        &[
            "sweep.stages.train.lora_rank",
            "value \"x\"",
            "expected an integer",
        ],
    );

    let text = format!("{BASE}\n[sweep]\n\"stages.train.lora_rank\" = [8, 0]\n");
    assert_has(
        &error_at(&text, line_of(&text, "[8, 0]")),
        &[
            "sweep.stages.train.lora_rank",
            "value 0",
            "lora_rank must be ≥ 1",
        ],
    );

    let text = format!("{BASE}\n[sweep]\n\"stages.train.lora_rank\" = 8\n");
    assert_has(
        &error_at(&text, line_of(&text, "lora_rank\" = 8")),
        &["sweep.stages.train.lora_rank", "expected a list of values"],
    );

    let text = format!("{BASE}\n[sweep]\n\"train.lora_rank\" = [8]\n");
    assert_has(
        &error_at(&text, line_of(&text, "train.lora_rank")),
        &["invalid sweep path `train.lora_rank`"],
    );

    let text = format!("{BASE}\n[sweep]\nmode = \"random\"\n\"stages.train.lora_rank\" = [8]\n");
    assert_has(
        &error_at(&text, line_of(&text, "mode = ")),
        &["sweep.mode", "needs `trials`"],
    );

    let text =
        format!("{BASE}\n[sweep]\n\"stages.train.learning_rate\" = {{ min = 1e-5, max = 1e-3 }}\n");
    assert_has(
        &error_at(&text, line_of(&text, "min")),
        &["needs mode = \"random\""],
    );

    // A cross-field rule broken only by a combination is reported at its sweep path.
    let text = with(
        "val_dataset = \"data/test.jsonl\"",
        "val_dataset = \"data/test.jsonl\"\nmin_pixels = 100",
    ) + "\n[sweep]\n\"stages.data.max_pixels\" = [50, 200]\n";
    assert_has(
        &error_at(&text, line_of(&text, "max_pixels\" =")),
        &[
            "sweep.stages.data.max_pixels",
            "value 50",
            "must be ≥ min_pixels",
        ],
    );
}

#[test]
fn random_sweep_is_seeded_and_deterministic() {
    let text = format!(
        "{BASE}\n[sweep]\nmode = \"random\"\ntrials = 6\nseed = 7\n\"stages.train.learning_rate\" = {{ min = 1e-5, max = 1e-3, log = true }}\n\"stages.train.lora_rank\" = {{ min = 4, max = 64 }}\n\"stages.train.lora_alpha\" = [16, 32]\n"
    );
    let a = project_ok(&text);
    let b = project_ok(&text);
    let names = |l: &Loaded| {
        l.variants
            .iter()
            .map(|v| v.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(a.variants.len(), 6);
    for v in &a.variants {
        let StageParams::Train(t) = &v.experiment.stage("train").unwrap().params else {
            panic!()
        };
        assert!(
            (1e-5..=1e-3).contains(&t.learning_rate),
            "{}",
            t.learning_rate
        );
        assert!((4..=64).contains(&t.lora_rank));
        assert!([16.0, 32.0].contains(&t.lora_alpha));
        // The name shows the exact (3-significant-digit) value.
        assert!(v.name.as_ref().unwrap().contains(&format!(
            "lr{}",
            format_value(&serde_json::json!(t.learning_rate))
        )));
        assert!(v.name.as_ref().unwrap().starts_with(&"lr".to_string()));
    }
    // Log-uniform over two decades: not all draws in the top decade.
    assert!(
        a.variants
            .iter()
            .any(|v| match &v.experiment.stage("train").unwrap().params {
                StageParams::Train(t) => t.learning_rate < 1e-4,
                _ => false,
            })
    );
    let other = project_ok(&text.replace("seed = 7", "seed = 8"));
    assert_ne!(names(&a), names(&other));
}
