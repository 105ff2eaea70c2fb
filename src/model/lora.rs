//! `LoraLinear`: the one linear layer of the model, with LoRA built in (PEFT `lora.Linear`
//! semantics, `peft/tuners/lora/layer.py`).
//!
//! `y = x·Wᵀ + b + scaling · B·A·dropout(x)`. A and B are f32 master weights; the branch runs
//! in the activation dtype (PyTorch autocast: a bf16 base multiplies by bf16 copies of A and
//! B, and their gradients come back in f32). The dense `W + s·B·A` is only formed by
//! [`LoraLinear::merged_weight`] at export time.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{
    Bool, DType, Distribution, Int, IntDType, Tensor, TensorData, backend::Backend,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ModelError;
use super::seed::derive_seed;
use super::weights::{Init, ParamSource};

/// Callback used to walk the named linear layers of a module tree.
pub type LinearVisit<'a, B> = dyn FnMut(&str, &LoraLinear<B>) + 'a;
/// Callback used to rebuild the named linear layers of a module tree.
pub type LinearMap<'a, B> =
    dyn FnMut(&str, LoraLinear<B>) -> Result<LoraLinear<B>, ModelError> + 'a;

/// Linear layer with a frozen base in Hugging Face layout and an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Base weight `[out, in]` (PyTorch layout; the forward multiplies by its transpose view).
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub adapter: Option<LoraAdapter<B>>,
}

/// Low-rank update: `A [r, in]`, `B [out, r]`, both f32.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    pub scaling: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// Base layer from `{key}.weight` `[out, in]` (+ `{key}.bias` `[out]`), frozen.
    pub fn load(
        src: &mut impl ParamSource<B>,
        key: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let weight = src.tensor::<2>(&format!("{key}.weight"), [d_out, d_in], Init::Normal)?;
        let bias = if bias {
            Some(src.tensor::<1>(&format!("{key}.bias"), [d_out], Init::Zeros)?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias))
    }

    /// Wrap existing tensors (weight `[out, in]`) as a frozen base layer.
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::initialized(ParamId::new(), weight.set_require_grad(false)),
            bias: bias.map(|b| Param::initialized(ParamId::new(), b.set_require_grad(false))),
            adapter: None,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `[..., in]` → `[..., out]` in the base dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let x2: Tensor<B, 2> = x.reshape([-1, d_in as i32]);
        let w = self.weight.val();
        let mut y = x2.clone().matmul(w.transpose());
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze_dim(0);
        }
        if let Some(ad) = &self.adapter {
            // Autocast: the branch runs in the activation dtype, the f32 master weights are
            // cast per use and their gradients come back in f32 (through the cast).
            let dtype = y.dtype();
            let h = dropout(x2, ad.dropout.prob);
            let h = h.matmul(cast_to(ad.lora_a.val(), dtype).transpose());
            let h = h.matmul(cast_to(ad.lora_b.val(), dtype).transpose());
            y = y + h.mul_scalar(ad.scaling);
        }
        dims[D - 1] = self.out_features();
        y.reshape(dims)
    }

    /// Attach a fresh adapter: A ~ kaiming_uniform(a=√5) = U(±1/√in), B = 0 (PEFT
    /// `reset_lora_parameters` with `init_lora_weights=True`), deterministic in (seed, name).
    pub fn with_new_adapter(self, spec: &LoraSpec, seed: u64, name: &str) -> Self {
        let device = self.weight.device();
        let d_in = self.in_features();
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut rng = ChaCha8Rng::from_seed(derive_seed(seed, &format!("lora_A:{name}")));
        let a: Vec<f32> = (0..spec.r * d_in)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_data(TensorData::new(a, [spec.r, d_in]), (&device, DType::F32));
        let b = Tensor::zeros([self.out_features(), spec.r], (&device, DType::F32));
        self.with_adapter(spec, a, b)
    }

    /// Attach the given adapter (`a [r, in]`, `b [out, r]`, cast to f32, trainable).
    pub fn with_adapter(mut self, spec: &LoraSpec, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Self {
        self.adapter = Some(LoraAdapter {
            lora_a: Param::initialized(ParamId::new(), a.cast(DType::F32).require_grad()),
            lora_b: Param::initialized(ParamId::new(), b.cast(DType::F32).require_grad()),
            dropout: DropoutConfig::new(spec.dropout).init(),
            scaling: spec.scaling(),
        });
        self
    }

    /// Base weight with the adapter folded in (`W + s·B·A`), in the base dtype, `[out, in]`.
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        let w = self.weight.val();
        match &self.adapter {
            None => w,
            Some(ad) => {
                let dtype = w.dtype();
                let delta = ad.lora_b.val().matmul(ad.lora_a.val()) * ad.scaling;
                (w.cast(DType::F32) + delta).cast(dtype)
            }
        }
    }
}

thread_local! {
    /// This thread's dropout stream while [`with_dropout_stream`] runs.
    static DROPOUT_STREAM: std::cell::RefCell<Option<ChaCha8Rng>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` with this thread's LoRA dropout masks drawn from a stream seeded by `seed`
/// instead of the backend RNG (which is one per process), so forward passes running
/// concurrently each draw their own reproducible masks. Nests: rayon may run another
/// shard on this thread while `f` waits, and that shard restores this stream when done.
pub fn with_dropout_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    with_stream(Some(ChaCha8Rng::seed_from_u64(seed)), f)
}

/// Where this thread's dropout stream stands (see [`with_dropout_stream`]): running a
/// forward again from [`with_dropout_state`] draws the same masks, which is how a recomputed
/// (gradient-checkpointed) segment reproduces its forward.
#[derive(Debug, Clone)]
pub struct DropoutState(Option<ChaCha8Rng>);

impl DropoutState {
    /// The current stream's position (`None` inside: no stream is set).
    pub fn now() -> Self {
        Self(DROPOUT_STREAM.with(|s| s.borrow().clone()))
    }
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// Run `f` with the dropout stream at `state`, then restore the stream as it was.
pub fn with_dropout_state<R>(state: &DropoutState, f: impl FnOnce() -> R) -> R {
    with_stream(state.0.clone(), f)
}

fn with_stream<R>(stream: Option<ChaCha8Rng>, f: impl FnOnce() -> R) -> R {
    let prev = DROPOUT_STREAM.with(|s| s.replace(stream));
    let out = f();
    DROPOUT_STREAM.with(|s| *s.borrow_mut() = prev);
    out
}

/// `t` in `dtype` (no cast node when it already is).
pub fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Inverted dropout (`torch.nn.Dropout` in training): zero each element with probability `p`,
/// scale the rest by `1/(1-p)`; the identity without autodiff (eval) or when `p` is 0.
///
/// The mask is boolean (what backward keeps: one byte per element, as PyTorch keeps it),
/// applied by `mask_fill` and one scalar multiply. Each call takes one `u64` from this
/// thread's dropout stream when one is set, else from the backend RNG so `B::seed` still
/// makes runs reproducible. On the CPU backend the mask is drawn on the host with ChaCha8
/// (u32 per element) from that seed: Flex's per-element `Bernoulli` sampling through StdRng
/// was ~13% of a LoRA train step of the tiny preset. Other backends draw on the device: from
/// the thread's stream with [`hashed_keep_mask`], else from the backend RNG.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    let device = x.device();
    if p <= 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    let keep = 1.0 - p;
    let dims = x.dims();
    let stream = DROPOUT_STREAM.with(|s| s.borrow_mut().as_mut().map(|r| r.next_u64()));
    let flex = B::name(&device).contains("flex");
    let drop = if let (Some(key), false) = (stream, flex) {
        hashed_keep_mask::<B, D>(dims, keep, key, &device).bool_not()
    } else if flex {
        let seed = stream.unwrap_or_else(|| backend_seed::<B>(&device));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let threshold = (keep * 4294967296.0) as u64;
        let n = dims.iter().product();
        let v: Vec<bool> = (0..n)
            .map(|_| (rng.next_u32() as u64) >= threshold)
            .collect();
        Tensor::<B, D, Bool>::from_data(TensorData::new(v, dims), &device)
    } else {
        Tensor::<B, D>::random(dims, Distribution::Bernoulli(keep), (&device, DType::F32))
            .lower_elem(0.5)
    };
    x.mask_fill(drop, 0.0).mul_scalar(1.0 / keep)
}

/// A seed drawn from the backend RNG (so `B::seed` keeps runs reproducible).
pub fn backend_seed<B: Backend>(device: &B::Device) -> u64 {
    let v = Tensor::<B, 1, Int>::random([2], Distribution::Uniform(0.0, 2147483647.0), device)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    v.iter().fold(0u64, |acc, &v| (acc << 31) ^ v as u64)
}

/// Which elements [`dropout`] keeps, computed on the device from `key` (one draw of a
/// dropout stream): element `i` is kept (`true`) when `hash(i, key) < keep · 2³²`. The
/// hash is murmur3's 32-bit finaliser with the key's halves mixed in, in u32 arithmetic
/// (wrapping, defined on every backend). A pure function of `(key, i)`, unlike the backend RNG (one per process, drawn when a kernel launches), so
/// replicas on several GPUs each draw their own reproducible masks, without a lock.
pub fn hashed_keep_mask<B: Backend, const D: usize>(
    dims: [usize; D],
    keep: f64,
    key: u64,
    device: &B::Device,
) -> Tensor<B, D, Bool> {
    let n: usize = dims.iter().product();
    let c = |v: u32| {
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![v], [1]), (device, DType::U32))
    };
    let shift_xor =
        |h: Tensor<B, 1, Int>, by: u32| h.clone().bitwise_xor(h.bitwise_right_shift(c(by)));
    let mut h = Tensor::<B, 1, Int>::arange(0..n as i64, device).cast(IntDType::U32);
    h = h.bitwise_xor(c(key as u32)).mul(c(HASH_MUL[0]));
    h = shift_xor(h, 16).mul(c(HASH_MUL[1]));
    h = shift_xor(h, 13)
        .bitwise_xor(c((key >> 32) as u32))
        .mul(c(HASH_MUL[2]));
    h = shift_xor(h, 16);
    h.lower(c(keep_threshold(keep))).reshape(dims)
}

/// Multipliers of [`hashed_keep_mask`] (golden ratio, then murmur3's finaliser constants).
const HASH_MUL: [u32; 3] = [0x9E37_79B1, 0x85EB_CA6B, 0xC2B2_AE35];

fn keep_threshold(keep: f64) -> u32 {
    (keep * 4294967296.0).min(u32::MAX as f64) as u32
}

/// [`hashed_keep_mask`]'s keep decision for element `i`, on the host (the reference the
/// device version is tested against).
pub fn hashed_keep(i: u32, keep: f64, key: u64) -> bool {
    let sx = |h: u32, by: u32| h ^ (h >> by);
    let mut h = (i ^ key as u32).wrapping_mul(HASH_MUL[0]);
    h = sx(h, 16).wrapping_mul(HASH_MUL[1]);
    h = (sx(h, 13) ^ (key >> 32) as u32).wrapping_mul(HASH_MUL[2]);
    sx(h, 16) < keep_threshold(keep)
}

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSelector {
    /// ms-swift `all-linear`: LLM q/k/v/o/gate/up/down (when `llm`), ViT attn.qkv/attn.proj/
    /// mlp.gate/up/down (when `vit`), merger mlp.0/mlp.2 (when `aligner`). Never embeddings,
    /// `score` or the patch embedding.
    AllLinear { vit: bool, aligner: bool, llm: bool },
    /// PEFT list semantics: a module matches when its name equals an entry or ends with
    /// `.entry` (`q_proj` matches `model.language_model.layers.0.self_attn.q_proj`).
    Names(Vec<String>),
    /// PEFT string semantics: `re.fullmatch(pattern, module_name)`.
    Regex(String),
}

/// LoRA hyper-parameters (`swift sft --lora_rank --lora_alpha --lora_dropout --use_rslora`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    pub targets: TargetSelector,
}

impl TargetSelector {
    /// ms-swift `all-linear` over the chosen parts.
    pub fn all_linear(vit: bool, aligner: bool, llm: bool) -> TargetSelector {
        TargetSelector::AllLinear { vit, aligner, llm }
    }
}

impl LoraSpec {
    /// Plain LoRA (no dropout, no rsLoRA) of rank `r` scaled by `alpha / r` on `targets`.
    pub fn new(r: usize, alpha: f64, targets: TargetSelector) -> LoraSpec {
        LoraSpec {
            r,
            alpha,
            dropout: 0.0,
            use_rslora: false,
            targets,
        }
    }

    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Pick the target modules among `names` (HF ≥ 4.52 module names of every linear layer).
pub fn select_targets(names: &[String], sel: &TargetSelector) -> Result<Vec<String>, ModelError> {
    let picked: Vec<String> = match sel {
        TargetSelector::AllLinear { vit, aligner, llm } => names
            .iter()
            .filter(|n| {
                if n.starts_with("model.language_model.") {
                    *llm
                } else if n.starts_with("model.visual.blocks.") {
                    *vit
                } else if n.starts_with("model.visual.merger.") {
                    *aligner
                } else {
                    false
                }
            })
            .cloned()
            .collect(),
        TargetSelector::Names(wanted) => {
            let matches = |n: &str, w: &str| n == w || n.ends_with(&format!(".{w}"));
            if let Some(bad) = wanted.iter().find(|w| !names.iter().any(|n| matches(n, w))) {
                return Err(ModelError::Lora(format!(
                    "target module {bad:?} matches no linear layer; available: {}",
                    name_patterns(names).join(", ")
                )));
            }
            names
                .iter()
                .filter(|n| wanted.iter().any(|w| matches(n, w)))
                .cloned()
                .collect()
        }
        TargetSelector::Regex(pattern) => {
            // fancy-regex: ms-swift users write look-aheads (`^(?!.*visual).*proj$`).
            let re = fancy_regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| ModelError::Lora(format!("target_modules regex {pattern:?}: {e}")))?;
            names
                .iter()
                .filter(|n| re.is_match(n).unwrap_or(false))
                .cloned()
                .collect()
        }
    };
    if picked.is_empty() {
        let what = match sel {
            TargetSelector::AllLinear { .. } => "all-linear (with everything frozen)".to_string(),
            TargetSelector::Names(list) => format!("{list:?}"),
            TargetSelector::Regex(re) => format!("regex {re:?}"),
        };
        return Err(ModelError::Lora(format!(
            "target_modules {what} selects no linear layer; available: {}",
            name_patterns(names).join(", ")
        )));
    }
    Ok(picked)
}

/// Distinct module names with layer indices replaced by `*`, for error messages.
pub fn name_patterns(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let p: Vec<&str> = n
            .split('.')
            .enumerate()
            .map(|(i, part)| {
                let prev = n.split('.').nth(i.wrapping_sub(1)).unwrap_or("");
                if (prev == "layers" || prev == "blocks") && part.parse::<usize>().is_ok() {
                    "*"
                } else {
                    part
                }
            })
            .collect();
        let p = p.join(".");
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_masks_follow_the_host_hash() {
        type B = crate::backend::CpuBackend;
        let device = Default::default();
        let (keep, key) = (0.9, 0x0123_4567_89AB_CDEF_u64);
        let mask = hashed_keep_mask::<B, 2>([37, 53], keep, key, &device)
            .into_data()
            .to_vec::<bool>()
            .unwrap();
        let want: Vec<bool> = (0..37 * 53).map(|i| hashed_keep(i, keep, key)).collect();
        assert_eq!(mask, want);
        // About `keep` of the elements survive, and another key draws another mask.
        let kept = want.iter().filter(|&&v| v).count() as f64 / want.len() as f64;
        assert!((kept - keep).abs() < 0.03, "{kept}");
        let other =
            (0..37 * 53u32).filter(|&i| hashed_keep(i, keep, key + 1) != hashed_keep(i, keep, key));
        assert!(other.count() > 100);
    }

    fn names() -> Vec<String> {
        [
            "model.visual.blocks.0.attn.qkv",
            "model.visual.blocks.0.mlp.up_proj",
            "model.visual.merger.mlp.0",
            "model.visual.merger.mlp.2",
            "model.language_model.layers.0.self_attn.q_proj",
            "model.language_model.layers.0.mlp.down_proj",
            "model.language_model.layers.1.self_attn.q_proj",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn selectors() {
        let all = |vit, aligner, llm| TargetSelector::AllLinear { vit, aligner, llm };
        assert_eq!(
            select_targets(&names(), &all(false, false, true))
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            select_targets(&names(), &all(true, false, true))
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            select_targets(&names(), &all(true, true, true))
                .unwrap()
                .len(),
            7
        );
        let by_name = TargetSelector::Names(vec!["q_proj".into(), "mlp.0".into()]);
        assert_eq!(select_targets(&names(), &by_name).unwrap().len(), 3);
        let re = TargetSelector::Regex(r".*layers\.\d+\.self_attn\.q_proj".into());
        assert_eq!(select_targets(&names(), &re).unwrap().len(), 2);
        // fullmatch: a bare suffix does not match as a regex.
        assert!(select_targets(&names(), &TargetSelector::Regex("q_proj".into())).is_err());
        // ms-swift's look-ahead form (everything but the vision tower).
        let not_vit = TargetSelector::Regex(r"^(?!.*visual).*\.(q_proj|o_proj)$".into());
        let picked = select_targets(&names(), &not_vit).unwrap();
        assert!(!picked.is_empty() && picked.iter().all(|n| !n.contains("visual")));
    }

    #[test]
    fn unknown_name_lists_available() {
        let e = select_targets(&names(), &TargetSelector::Names(vec!["qproj".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"qproj\""), "{e}");
        assert!(
            e.contains("model.language_model.layers.*.self_attn.q_proj"),
            "{e}"
        );
    }

    #[test]
    fn dropout_drops_p_and_rescales_in_training_only() {
        type F = burn::backend::Flex;
        type A = burn::backend::Autodiff<F>;
        let n = 200_000;
        let x = Tensor::<A, 2>::ones([n / 100, 100], &Default::default()).require_grad();
        let y: Vec<f32> = dropout(x.clone(), 0.05).into_data().into_vec().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((zeros - 0.05).abs() < 0.003, "dropped {zeros}");
        let kept = 1.0 / 0.95;
        assert!(
            y.iter()
                .all(|&v| v == 0.0 || (v as f64 - kept).abs() < 1e-6)
        );
        // Two calls draw different masks; the gradient is the (scaled) mask.
        let y2: Vec<f32> = dropout(x.clone(), 0.05).into_data().into_vec().unwrap();
        assert_ne!(y, y2);
        let grads = dropout(x.clone(), 0.5).sum().backward();
        let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().into_vec().unwrap();
        assert!(gx.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(gx.contains(&0.0) && gx.contains(&2.0));
        // Eval (no autodiff) and p = 0 are the identity.
        let e = Tensor::<F, 2>::ones([4, 4], &Default::default());
        let ev: Vec<f32> = dropout(e, 0.5).into_data().into_vec().unwrap();
        assert!(ev.iter().all(|&v| v == 1.0));
        let z: Vec<f32> = dropout(x, 0.0).into_data().into_vec().unwrap();
        assert!(z.iter().all(|&v| v == 1.0));
    }

    /// A forward started again from a saved stream position redraws the same masks.
    #[test]
    fn stream_state_replays_masks() {
        type A = burn::backend::Autodiff<burn::backend::Flex>;
        let x = || Tensor::<A, 2>::ones([64, 64], &Default::default());
        let draw = || -> Vec<f32> { dropout(x(), 0.5).into_data().into_vec().unwrap() };
        assert!(!DropoutState::now().is_set());
        with_dropout_stream(3, || {
            let at = DropoutState::now();
            assert!(at.is_set());
            let (a, b) = (draw(), draw());
            assert_ne!(a, b);
            assert!(a.contains(&0.0) && a.contains(&2.0));
            let (a2, b2) = with_dropout_state(&at, || (draw(), draw()));
            assert_eq!((a2, b2), (a, b.clone()));
            // The replay left the stream where it was: the next draw is a new mask.
            assert_ne!(draw(), b);
        });
        assert!(!DropoutState::now().is_set());
    }

    #[test]
    fn scaling() {
        let mut s = LoraSpec {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            use_rslora: false,
            targets: TargetSelector::Names(vec![]),
        };
        assert_eq!(s.scaling(), 2.0);
        s.use_rslora = true;
        assert_eq!(s.scaling(), 8.0);
    }
}
