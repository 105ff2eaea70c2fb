//! Rotary position embeddings: the text decoder's M-RoPE with 3D position ids
//! (transformers `Qwen2_5_VLModel.get_rope_index`, `Qwen2_5_VLRotaryEmbedding`,
//! `apply_multimodal_rotary_pos_emb`) and the vision encoder's 2D rotary
//! (`Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb`). Everything here is host-side
//! index arithmetic; the resulting cos/sin tables are uploaded once per forward.

use super::ModelError;
use super::config::ModelConfig;

/// `1 / theta^(2j/dim)` for j < dim/2, computed in f32 like torch
/// (`1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))`).
pub fn inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| {
            let e = (2 * j) as f32 / dim as f32;
            1.0 / (theta as f32).powf(e)
        })
        .collect()
}

/// 3D (t, h, w) position ids `[3][batch][seq]` as `get_rope_index` builds them with an
/// attention mask: positions count only attended tokens; padded slots hold 1.
///
/// `ids`/`mask` are row-major `[batch, seq]`; `grids` are the images of the whole batch in
/// order. An image is a `<|vision_start|>` followed by `<|image_pad|>`; its tokens take
/// `t = st`, `h = st + row`, `w = st + col` over the merged grid (`st` = previous max + 1).
pub fn rope_index(
    cfg: &ModelConfig,
    ids: &[i64],
    mask: &[i64],
    batch: usize,
    seq: usize,
    grids: &[[usize; 3]],
) -> Result<Vec<i64>, ModelError> {
    let merge = cfg.vision.spatial_merge_size;
    let tok = cfg.tokens;
    let (image, video, vstart) = (
        tok.image_token_id as i64,
        tok.video_token_id as i64,
        tok.vision_start_token_id as i64,
    );
    let mut pos = vec![1i64; 3 * batch * seq];
    let mut image_index = 0usize;
    for b in 0..batch {
        let row = &ids[b * seq..(b + 1) * seq];
        let mrow = &mask[b * seq..(b + 1) * seq];
        let kept: Vec<usize> = (0..seq).filter(|&s| mrow[s] == 1).collect();
        let toks: Vec<i64> = kept.iter().map(|&s| row[s]).collect();
        let mut n_images = 0;
        for w in toks.windows(2) {
            if w[0] == vstart {
                if w[1] == image {
                    n_images += 1;
                } else if w[1] == video {
                    return Err(ModelError::Inputs(format!(
                        "sample {b}: video inputs are not supported"
                    )));
                }
            }
        }
        // (t, h, w) per kept token.
        let mut out: Vec<[i64; 3]> = Vec::with_capacity(toks.len());
        let mut st = 0usize;
        let mut next = 0i64; // max of the last chunk + 1
        for _ in 0..n_images {
            let ed = (st..toks.len())
                .find(|&i| toks[i] == image)
                .ok_or_else(|| {
                    ModelError::Inputs(format!(
                        "sample {b}: <|vision_start|> without <|image_pad|> tokens"
                    ))
                })?;
            let [t, h, w] = *grids.get(image_index).ok_or_else(|| {
                ModelError::Inputs(format!(
                    "the batch has more images in its token ids than grids ({})",
                    grids.len()
                ))
            })?;
            image_index += 1;
            let (lh, lw) = (h / merge, w / merge);
            let text_len = ed - st;
            for i in 0..text_len as i64 {
                out.push([next + i; 3]);
            }
            let base = next + text_len as i64;
            // Images: second_per_grid_t = 0, so every frame has temporal offset 0.
            let mut max = base;
            for _f in 0..t {
                for r in 0..lh as i64 {
                    for c in 0..lw as i64 {
                        out.push([base, base + r, base + c]);
                        max = max.max(base + r).max(base + c);
                    }
                }
            }
            next = max + 1;
            st = ed + t * lh * lw;
        }
        if st < toks.len() {
            for i in 0..(toks.len() - st) as i64 {
                out.push([next + i; 3]);
            }
        }
        if out.len() != toks.len() {
            return Err(ModelError::Inputs(format!(
                "sample {b}: image grids need {} positions but the sample has {} attended tokens",
                out.len(),
                toks.len()
            )));
        }
        for (k, &s) in kept.iter().enumerate() {
            for d in 0..3 {
                pos[(d * batch + b) * seq + s] = out[k][d];
            }
        }
    }
    Ok(pos)
}

/// M-RoPE cos/sin tables `[batch, seq, head_dim]` (row-major, f32) from 3D position ids
/// `[3][batch][seq]`: frequency j uses the t, h or w position by `mrope_section`, the same in
/// both halves (`emb = cat(freqs, freqs)`).
pub fn mrope_cos_sin(
    positions: &[i64],
    batch: usize,
    seq: usize,
    head_dim: usize,
    theta: f64,
    section: [usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    let inv = inv_freq(theta, head_dim);
    let half = head_dim / 2;
    let which: Vec<usize> = (0..half)
        .map(|j| {
            if j < section[0] {
                0
            } else if j < section[0] + section[1] {
                1
            } else {
                2
            }
        })
        .collect();
    let n = batch * seq;
    let mut cos = vec![0f32; n * head_dim];
    let mut sin = vec![0f32; n * head_dim];
    for i in 0..n {
        let p = [
            positions[i] as f32,
            positions[n + i] as f32,
            positions[2 * n + i] as f32,
        ];
        let row = i * head_dim;
        for j in 0..half {
            let a = p[which[j]] * inv[j];
            let (s, c) = a.sin_cos();
            cos[row + j] = c;
            cos[row + half + j] = c;
            sin[row + j] = s;
            sin[row + half + j] = s;
        }
    }
    (cos, sin)
}

/// Per-patch (row, col) in pixel-row order (merge blocks in raster order, raster inside a
/// block), for every image in order; `t` frames repeat the same positions.
pub fn vision_patch_positions(grids: &[[usize; 3]], merge: usize) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for br in 0..h / merge {
                for bc in 0..w / merge {
                    for ir in 0..merge {
                        for ic in 0..merge {
                            out.push([br * merge + ir, bc * merge + ic]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Vision rotary cos/sin `[n, head_dim]` for patches at `positions` (in the order given):
/// `emb = [row·f, col·f]` (head_dim/2 values) duplicated, theta 10000.
pub fn vision_cos_sin(positions: &[[usize; 2]], head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    let inv = inv_freq(10000.0, head_dim / 2);
    let half = head_dim / 2;
    let mut cos = vec![0f32; positions.len() * head_dim];
    let mut sin = vec![0f32; positions.len() * head_dim];
    for (i, &[r, c]) in positions.iter().enumerate() {
        let row = i * head_dim;
        for (j, &f) in inv.iter().enumerate().take(quarter) {
            for (k, p) in [(j, r), (quarter + j, c)] {
                let (s, co) = (p as f32 * f).sin_cos();
                cos[row + k] = co;
                cos[row + half + k] = co;
                sin[row + k] = s;
                sin[row + half + k] = s;
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    /// Test vector computed with transformers' `get_rope_index`: ids [1,2,VS,IMG×30,VE,3,4,5],
    /// grid [1,12,10].
    #[test]
    fn rope_index_test_vector() {
        let cfg = preset_config("qwen2.5-vl-7b").unwrap();
        let t = cfg.tokens;
        let mut ids = vec![1i64, 2, t.vision_start_token_id as i64];
        ids.extend(std::iter::repeat_n(t.image_token_id as i64, 30));
        ids.extend([t.vision_end_token_id as i64, 3, 4, 5]);
        let n = ids.len();
        let mask = vec![1i64; n];
        let pos = rope_index(&cfg, &ids, &mask, 1, n, &[[1, 12, 10]]).unwrap();
        let (pt, ph, pw) = (&pos[0..n], &pos[n..2 * n], &pos[2 * n..]);
        let mut et = vec![0, 1, 2];
        et.extend([3; 30]);
        et.extend([9, 10, 11, 12]);
        let mut eh = vec![0, 1, 2];
        for r in 0..6 {
            eh.extend([3 + r; 5]);
        }
        eh.extend([9, 10, 11, 12]);
        let mut ew = vec![0, 1, 2];
        for _ in 0..6 {
            ew.extend(3..8);
        }
        ew.extend([9, 10, 11, 12]);
        assert_eq!(pt, et.as_slice());
        assert_eq!(ph, eh.as_slice());
        assert_eq!(pw, ew.as_slice());
        // Left padding: the same sample behind two pads keeps its positions, pads hold 1.
        let mut pids = vec![0i64, 0];
        pids.extend(&ids);
        let mut pmask = vec![0i64, 0];
        pmask.extend(&mask);
        let pos2 = rope_index(&cfg, &pids, &pmask, 1, n + 2, &[[1, 12, 10]]).unwrap();
        assert_eq!(&pos2[0..2], &[1, 1]);
        assert_eq!(&pos2[2..n + 2], pt);
    }
}
