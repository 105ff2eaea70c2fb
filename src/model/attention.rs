//! Memory-efficient attention for training: `softmax(Q·Kᵀ·d^-½ + mask)·V` computed for one
//! block of queries at a time, so the `S×S` score matrix never exists. The forward keeps
//! only Q, K, V, the output O and the per-row log-sum-exp; the backward recomputes each
//! block's probabilities from them (FlashAttention-2's math: `P = exp(S − lse)`,
//! `dS = P ∘ (dP − rowsum(dO ∘ O))`).
//!
//! Plain tensor ops on any backend, run outside autodiff (the training pass in
//! `model::train_pass` calls [`forward`] and [`backward`] between recorded segments). Queries
//! are grouped by key/value head (GQA), so K and V are never repeated. Scores and softmax run in
//! f32 whatever the input dtype (like flash kernels and transformers' eager softmax); O and the
//! gradients come back in the input dtype. Fully masked rows (left padding) give O = 0 and no
//! gradient, as Burn's decomposed attention does.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

/// Scores per block are kept to about this many elements (16 MiB in f32): the block's rows
/// follow from it, so a small model runs in one block and a 5120-token ViT image in ~100.
const BLOCK_SCORES: usize = 1 << 22;

/// Which keys each query sees.
#[derive(Debug, Clone)]
pub enum AttnMask {
    /// Every key (ViT full attention inside one image).
    Full,
    /// Keys at or before the query that are not padding; `keep[b·s + j]` is the attention
    /// mask (`true` = a real token).
    Causal { keep: Vec<bool> },
}

/// What the backward needs besides Q, K and V: the output and the log-sum-exp `[b, h, s]`
/// (f32).
#[derive(Debug, Clone)]
pub struct Saved<B: Backend> {
    pub out: Tensor<B, 4>,
    pub lse: Tensor<B, 3>,
}

/// Shapes of one call: `q [b, h, s, d]`, `k`/`v` `[b, kv, s, d]`, `h = kv·rep`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    rep: usize,
    s: usize,
    d: usize,
    /// Query rows per block.
    rows: usize,
}

impl Dims {
    /// `rows`: query rows per block, `None` for [`BLOCK_SCORES`]'s choice.
    fn of<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, rows: Option<usize>) -> Self {
        let [b, h, s, d] = q.dims();
        let kv = k.dims()[1];
        assert!(
            kv > 0 && h % kv == 0 && k.dims() == [b, kv, s, d],
            "attention: q {:?} and k {:?} do not fit (heads a multiple of kv heads)",
            q.dims(),
            k.dims()
        );
        let rows = rows
            .unwrap_or(BLOCK_SCORES / (b * h * s).max(1))
            .clamp(1, s.max(1));
        Self {
            b,
            h,
            kv,
            rep: h / kv,
            s,
            d,
            rows,
        }
    }

    /// Query blocks `(first row, rows, keys seen)`.
    fn blocks(&self, causal: bool) -> Vec<(usize, usize, usize)> {
        (0..self.s)
            .step_by(self.rows)
            .map(|r0| {
                let n = self.rows.min(self.s - r0);
                (r0, n, if causal { r0 + n } else { self.s })
            })
            .collect()
    }
}

/// Rows `r0..r0+n` of `t [b, h, s, d]`, grouped by kv head: `[b, kv, rep·n, d]`, f32.
fn group<B: Backend>(t: &Tensor<B, 4>, dm: &Dims, r0: usize, n: usize) -> Tensor<B, 4> {
    t.clone()
        .narrow(2, r0, n)
        .cast(DType::F32)
        .reshape([dm.b, dm.kv, dm.rep * n, dm.d])
}

/// The first `len` keys (or values) `[b, kv, len, d]`, f32.
fn keys<B: Backend>(t: &Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    t.clone().narrow(2, 0, len).cast(DType::F32)
}

/// Additive mask of one block, `[b, 1, 1, n, len]`: 0 where seen, -inf elsewhere; `None`
/// when every key is seen.
fn block_bias<B: Backend>(
    mask: &AttnMask,
    dm: &Dims,
    (r0, n, len): (usize, usize, usize),
    device: &B::Device,
) -> Option<Tensor<B, 5>> {
    let AttnMask::Causal { keep } = mask else {
        return None;
    };
    let mut v = Vec::with_capacity(dm.b * n * len);
    for b in 0..dm.b {
        for i in r0..r0 + n {
            v.extend((0..len).map(|j| {
                if j <= i && keep[b * dm.s + j] {
                    0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Some(Tensor::from_data(
        TensorData::new(v, [dm.b, 1, 1, n, len]),
        (device, DType::F32),
    ))
}

/// Scaled, masked scores of a block, `[b, kv, rep, n, len]` (f32).
fn scores<B: Backend>(
    qg: Tensor<B, 4>,
    k: Tensor<B, 4>,
    bias: Option<Tensor<B, 5>>,
    dm: &Dims,
    n: usize,
) -> Tensor<B, 5> {
    let len = k.dims()[2];
    let scale = (dm.d as f64).sqrt().recip();
    let s = qg
        .matmul(k.transpose())
        .mul_scalar(scale)
        .reshape([dm.b, dm.kv, dm.rep, n, len]);
    match bias {
        Some(m) => s + m,
        None => s,
    }
}

fn check_mask(mask: &AttnMask, dm: &Dims) {
    if let AttnMask::Causal { keep } = mask {
        assert_eq!(keep.len(), dm.b * dm.s, "attention: mask is not [b, s]");
    }
}

/// `softmax(Q·Kᵀ/√d + mask)·V` for `q [b, h, s, d]`, `k`/`v` `[b, kv, s, d]` → O in q's
/// dtype and what [`backward`] needs.
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttnMask,
) -> Saved<B> {
    forward_blocks(q, k, v, mask, None)
}

fn forward_blocks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttnMask,
    rows: Option<usize>,
) -> Saved<B> {
    let dm = Dims::of(&q, &k, rows);
    check_mask(mask, &dm);
    let dtype = q.dtype();
    let device = q.device();
    let finfo = DType::F32.finfo().expect("f32 is a float");
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for blk @ (r0, n, len) in dm.blocks(matches!(mask, AttnMask::Causal { .. })) {
        let s = scores(
            group(&q, &dm, r0, n),
            keys(&k, len),
            block_bias::<B>(mask, &dm, blk, &device),
            &dm,
            n,
        );
        // NaN-safe as Burn's fallback: a fully masked row has max -inf and sum 0.
        let max = s.clone().max_dim(4).clamp_min(finfo.min);
        let e = (s - max.clone()).exp();
        let sum = e.clone().sum_dim(4).clamp_min(finfo.min_positive);
        let p = (e / sum.clone()).reshape([dm.b, dm.kv, dm.rep * n, len]);
        let o = p.matmul(keys(&v, len)).reshape([dm.b, dm.h, n, dm.d]);
        outs.push(o.cast(dtype));
        lses.push((max + sum.log()).reshape([dm.b, dm.h, n]));
    }
    Saved {
        out: cat(outs, 2),
        lse: cat(lses, 2),
    }
}

/// Gradients `(dQ, dK, dV)` (input dtypes) of the attention output for `grad_out`
/// `[b, h, s, d]`.
pub fn backward<B: Backend>(
    (q, k, v): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
    saved: &Saved<B>,
    grad_out: Tensor<B, 4>,
    mask: &AttnMask,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    backward_blocks((q, k, v), saved, grad_out, mask, None)
}

fn backward_blocks<B: Backend>(
    (q, k, v): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
    saved: &Saved<B>,
    grad_out: Tensor<B, 4>,
    mask: &AttnMask,
    rows: Option<usize>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let dm = Dims::of(&q, &k, rows);
    check_mask(mask, &dm);
    let device = q.device();
    let scale = (dm.d as f64).sqrt().recip();
    let mut dq = Vec::new();
    let mut dk = Tensor::<B, 4>::zeros([dm.b, dm.kv, dm.s, dm.d], (&device, DType::F32));
    let mut dv = dk.clone();
    for blk @ (r0, n, len) in dm.blocks(matches!(mask, AttnMask::Causal { .. })) {
        let qg = group(&q, &dm, r0, n);
        let kb = keys(&k, len);
        let vb = keys(&v, len);
        let s = scores(
            qg.clone(),
            kb.clone(),
            block_bias::<B>(mask, &dm, blk, &device),
            &dm,
            n,
        );
        let lse = saved
            .lse
            .clone()
            .narrow(2, r0, n)
            .reshape([dm.b, dm.kv, dm.rep, n, 1]);
        let p = (s - lse).exp().reshape([dm.b, dm.kv, dm.rep * n, len]);
        let dog = group(&grad_out, &dm, r0, n);
        let og = group(&saved.out, &dm, r0, n);
        let delta = (dog.clone() * og).sum_dim(3);
        let dv_blk = p.clone().transpose().matmul(dog.clone());
        let dp = dog.matmul(vb.transpose());
        let ds = p * (dp - delta);
        dq.push(
            ds.clone()
                .matmul(kb)
                .mul_scalar(scale)
                .reshape([dm.b, dm.h, n, dm.d]),
        );
        let dk_blk = ds.transpose().matmul(qg).mul_scalar(scale);
        dk = add_rows(dk, dk_blk);
        dv = add_rows(dv, dv_blk);
    }
    (
        cat(dq, 2).cast(q.dtype()),
        dk.cast(k.dtype()),
        dv.cast(v.dtype()),
    )
}

/// `acc [b, kv, s, d] += part` on its first `part.dims()[2]` rows.
fn add_rows<B: Backend>(acc: Tensor<B, 4>, part: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, kv, s, d] = acc.dims();
    let len = part.dims()[2];
    if len == s {
        return acc + part;
    }
    let rest = Tensor::zeros([b, kv, s - len, d], (&acc.device(), acc.dtype()));
    acc + Tensor::cat(vec![part, rest], 2)
}

fn cat<B: Backend, const D: usize>(mut parts: Vec<Tensor<B, D>>, dim: usize) -> Tensor<B, D> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Distribution};

    type F = burn::backend::Flex;
    type A = Autodiff<F>;

    fn rand<Bk: Backend>(shape: [usize; 4], seed: u64) -> Tensor<Bk, 4> {
        Bk::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn host(t: Tensor<F, 4>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n.max(1e-30)).sqrt()
    }

    /// Burn's decomposed attention (kv heads repeated, boolean mask) under autodiff, and ours,
    /// on the same inputs and output gradient: values and gradients within 1e-5.
    fn compare(dims: [usize; 5], keep: Option<Vec<bool>>, rows: Option<usize>) {
        let [b, h, kv, s, d] = dims;
        let dev = Default::default();
        let (q, k, v) = (
            rand::<F>([b, h, s, d], 1),
            rand::<F>([b, kv, s, d], 2),
            rand::<F>([b, kv, s, d], 3),
        );
        let go = rand::<F>([b, h, s, d], 4);
        // Reference.
        let qa = Tensor::<A, 4>::from_inner(q.clone()).require_grad();
        let ka = Tensor::<A, 4>::from_inner(k.clone()).require_grad();
        let va = Tensor::<A, 4>::from_inner(v.clone()).require_grad();
        let rep = |t: Tensor<A, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv, h / kv, s, d])
                .reshape([b, h, s, d])
        };
        let bool_mask = keep.as_ref().map(|keep| {
            let m: Vec<bool> = (0..b * h * s * s)
                .map(|e| {
                    let (r, j, i) = (e / (h * s * s), e % s, (e / s) % s);
                    j > i || !keep[r * s + j]
                })
                .collect();
            Tensor::<A, 4, Bool>::from_data(TensorData::new(m, [b, h, s, s]), &dev)
        });
        let o_ref = attention(
            qa.clone(),
            rep(ka.clone()),
            rep(va.clone()),
            bool_mask,
            None,
            AttentionModuleOptions::default(),
        );
        let mut grads = (o_ref.clone() * Tensor::from_inner(go.clone()))
            .sum()
            .backward();
        let g = |t: &Tensor<A, 4>, grads: &mut _| host(t.grad_remove(grads).unwrap());
        let (gq, gk, gv) = (g(&qa, &mut grads), g(&ka, &mut grads), g(&va, &mut grads));
        // Ours.
        let mask = match keep {
            Some(keep) => AttnMask::Causal { keep },
            None => AttnMask::Full,
        };
        let saved = forward_blocks(q.clone(), k.clone(), v.clone(), &mask, rows);
        let (dq, dk, dv) = backward_blocks((q, k, v), &saved, go, &mask, rows);
        // Fully masked rows: both give 0.
        let eo = rel(&host(saved.out), &host(o_ref.inner()));
        let (eq, ek, ev) = (
            rel(&host(dq), &gq),
            rel(&host(dk), &gk),
            rel(&host(dv), &gv),
        );
        assert!(
            eo < 1e-5 && eq < 1e-5 && ek < 1e-5 && ev < 1e-5,
            "{dims:?}: out {eo:.2e} dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}"
        );
    }

    #[test]
    fn full_attention_matches_decomposed() {
        compare([2, 3, 3, 37, 16], None, None);
        compare([2, 3, 3, 37, 16], None, Some(8));
    }

    #[test]
    fn causal_gqa_with_padding_matches_decomposed() {
        let (b, s) = (3, 29);
        // Right padding (row 1), left padding (row 2: fully masked rows), none (row 0).
        let keep: Vec<bool> = (0..b * s)
            .map(|e| match e / s {
                1 => e % s < 20,
                2 => e % s >= 6,
                _ => true,
            })
            .collect();
        compare([b, 6, 2, s, 8], Some(keep.clone()), None);
        // Blocks of 5 rows (the last one shorter): causal key ranges grow per block.
        compare([b, 6, 2, s, 8], Some(keep), Some(5));
    }

    #[test]
    fn block_rows_follow_the_score_budget() {
        let t = |h, s| rand::<F>([1, h, s, 4], 0);
        assert_eq!(Dims::of(&t(2, 64), &t(2, 64), None).rows, 64);
        // ViT full attention at 7B: 16 heads × 5120 keys → 51 rows per block.
        let big = Dims::of(&t(16, 5120), &t(16, 5120), None);
        assert_eq!(big.rows, BLOCK_SCORES / (16 * 5120));
        assert!(big.rows * 16 * 5120 <= BLOCK_SCORES);
        let blocks = big.blocks(false);
        assert_eq!(blocks.len(), 5120usize.div_ceil(big.rows));
        assert_eq!(blocks.iter().map(|b| b.1).sum::<usize>(), 5120);
        assert!(big.blocks(true).iter().all(|&(r0, n, len)| len == r0 + n));
    }
}
