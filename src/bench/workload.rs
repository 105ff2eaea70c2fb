//! The benchmark workload, built exactly like `tools/bench/torch_baseline.py` builds its own:
//! image grid from the pixel budget (4:5 aspect), prompt layout, random weights, LoRA targets.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::classifier::SeqClassifier;
use crate::model::classifier::load_classifier_at_depth;
use crate::model::config::Depth;
use crate::model::config::ModelConfig;
use crate::model::inputs::SampleInputs;
use crate::model::lora::{LoraLinear, LoraSpec, TargetSelector};
use crate::model::seed::derive_seed;
use crate::model::text::TextModel;
use crate::model::vision::VisionModel;
use crate::model::weights::{RandomSource, seeded_normal};
use crate::model::{ModelError, WeightsSource};

use super::args::BenchModel;

/// Number of classes of the score head (the baseline's `Linear(hidden, 11)`).
pub const NUM_LABELS: usize = 11;
/// The label every benchmark sample carries (the baseline's `labels = [3]`).
pub const LABEL: usize = 3;

/// `(t, h, w)` patch grid of one image of `pixels` pixels, as the baseline computes it:
/// `hp = round(√(0.8·pixels) / f)·merge`, `wp = (pixels // f² · merge²) // hp // merge · merge`
/// with `f = patch·merge` (Python `round`: ties to even).
pub fn image_grid(pixels: usize, patch: usize, merge: usize) -> [usize; 3] {
    let f = (patch * merge) as f64;
    let hp = (((pixels as f64) * 0.8).sqrt() / f).round_ties_even() as usize * merge;
    let hp = hp.max(merge);
    let wp = ((pixels / (patch * merge * patch * merge) * merge * merge) / hp / merge * merge)
        .max(merge);
    [1, hp, wp]
}

/// One sample laid out like the baseline's: a chat-start token, 20 random text tokens,
/// `<|vision_start|>`, the image tokens, `<|vision_end|>`, then random text up to
/// `text_tokens` text tokens in all (sequence = text_tokens + image tokens + 1). Pixel rows are
/// normal(0, 1) like the baseline's `randn`.
pub fn bench_sample(
    cfg: &ModelConfig,
    pixels: usize,
    text_tokens: usize,
    seed: u64,
) -> SampleInputs {
    let v = &cfg.vision;
    let grid = image_grid(pixels, v.patch_size, v.spatial_merge_size);
    let patches: usize = grid.iter().product();
    let n_img = patches / v.merge_unit();
    let tok = cfg.tokens;
    // Random "words" below every special id: Qwen's ids < 150000 (as the baseline draws),
    // the tiny byte vocabulary's 0..256.
    let words = if cfg.text.vocab_size > 150_000 {
        150_000
    } else {
        256.min(cfg.text.vocab_size)
    } as u32;
    let mut rng = ChaCha8Rng::from_seed(derive_seed(seed, "bench:ids"));
    let mut draw = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..words)).collect() };
    // `<|im_start|>`: 151644 in Qwen's vocabulary, 257 in the tiny one.
    let chat_start = if words == 150_000 { 151_644 } else { 257 };
    let mut ids = vec![chat_start];
    ids.extend(draw(20));
    ids.push(tok.vision_start_token_id);
    ids.extend(std::iter::repeat_n(tok.image_token_id, n_img));
    ids.push(tok.vision_end_token_id);
    ids.extend(draw(text_tokens.saturating_sub(22)));
    SampleInputs {
        input_ids: ids,
        pixel_rows: seeded_normal(seed, "bench:pixels", patches * v.patch_dim(), 1.0),
        grids: vec![grid],
    }
}

/// The baseline's adapters: r = alpha, dropout 0.05, every LLM linear and (unless the ViT is
/// frozen) every ViT block linear; merger frozen, score trained.
pub fn lora_spec(rank: usize, freeze_vit: bool) -> LoraSpec {
    let targets = TargetSelector::all_linear(!freeze_vit, false, true);
    LoraSpec {
        dropout: 0.05,
        ..LoraSpec::new(rank, rank as f64, targets)
    }
}

/// The classifier under test, cut to `depth`, with fresh LoRA adapters (base frozen).
pub fn bench_model<B: Backend>(
    model: &BenchModel,
    depth: Depth,
    dtype: DType,
    spec: &LoraSpec,
    seed: u64,
    device: &B::Device,
) -> Result<SeqClassifier<B>, ModelError> {
    let m = match model {
        BenchModel::Dir(dir) => load_classifier_at_depth::<B>(
            WeightsSource::Dir(dir),
            depth,
            NUM_LABELS,
            dtype,
            seed,
            device,
        )?,
        BenchModel::Preset(name) => {
            let config = crate::model::presets::preset_config(name)?.with_depth(depth)?;
            B::seed(device, seed);
            let mut src = RandomSource::<B> {
                seed,
                std: 0.02,
                dtype,
                device: device.clone(),
                device_rng: true,
            };
            let visual = VisionModel::load(&mut src, &config.vision)?;
            let language_model = TextModel::load(&mut src, &config.text)?;
            let h = config.text.hidden_size;
            let w = seeded_normal(seed, "score.weight", NUM_LABELS * h, 0.02);
            let w = Tensor::from_data(TensorData::new(w, [NUM_LABELS, h]), (device, DType::F32));
            SeqClassifier {
                visual,
                language_model,
                score: LoraLinear::from_tensors(w, None),
                config,
            }
        }
    };
    m.apply_lora(spec, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    #[test]
    fn grids_match_the_baseline() {
        // python: hp = int(round(sqrt(p * 0.8) / 28)) * 2; wp = (p // 784 * 4) // hp // 2 * 2
        assert_eq!(image_grid(1_003_520, 14, 2), [1, 64, 80]);
        assert_eq!(image_grid(12_544, 14, 2), [1, 8, 8]);
        assert_eq!(image_grid(200_704, 14, 2), [1, 28, 36]);
        // sqrt(0.8 * 6272) / 28 = 2.53 → 3 → hp 6; 6272 // 784 * 4 = 32 // 6 // 2 * 2 = 4
        assert_eq!(image_grid(6_272, 14, 2), [1, 6, 4]);
        assert_eq!(image_grid(1, 14, 2), [1, 2, 2]);
    }

    #[test]
    fn sample_layout() {
        let cfg = preset_config("qwen2.5-vl-7b").unwrap();
        let s = bench_sample(&cfg, 1_003_520, 120, 0);
        assert_eq!(s.input_ids.len(), 120 + 1280 + 1);
        let img = cfg.tokens.image_token_id;
        assert_eq!(s.input_ids.iter().filter(|&&t| t == img).count(), 1280);
        assert_eq!(s.input_ids[21], cfg.tokens.vision_start_token_id);
        assert_eq!(s.input_ids[22 + 1280], cfg.tokens.vision_end_token_id);
        assert_eq!(s.pixel_rows.len(), 5120 * 1176);
        let tiny = preset_config("tiny").unwrap();
        let t = bench_sample(&tiny, 12_544, 40, 0);
        assert_eq!(t.input_ids.len(), 40 + 16 + 1);
        let specials = [257, 259, 260, 261, 262];
        let text: Vec<u32> = t
            .input_ids
            .iter()
            .copied()
            .filter(|x| !specials.contains(x))
            .collect();
        assert!(text.iter().all(|&x| x < 256), "{text:?}");
        assert_eq!(text.len(), 40 - 1 - 1); // all text but <|im_start|>
    }
}
