//! Building blocks shared by the vision encoder and the text decoder: RMSNorm, the SwiGLU
//! MLP, activations and the rotate-half rotary helper.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, activation, backend::Backend};

use super::ModelError;
use super::config::Activation;
use super::lora::{LinearVisit, LoraLinear};
use super::weights::{Init, ParamSource};

/// `Qwen2RMSNorm` (transformers `models/qwen2/modeling_qwen2.py`): normalise in f32, cast
/// back to the input dtype, then multiply by the weight.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(
        src: &mut impl ParamSource<B>,
        key: &str,
        dim: usize,
        eps: f64,
    ) -> Result<Self, ModelError> {
        let weight = src.tensor::<1>(&format!("{key}.weight"), [dim], Init::Ones)?;
        Ok(Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            eps,
        })
    }

    /// `[..., dim]` → `[..., dim]` in the input dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let var = x32.clone().square().mean_dim(D - 1);
        let normed = x32 * (var + self.eps).sqrt().recip();
        let w = self.weight.val();
        let w = w.reshape(broadcast_shape::<D>(self.weight.dims()[0]));
        normed.cast(dtype) * w
    }
}

/// `[1, ..., 1, n]` for broadcasting a vector over the last dimension.
pub fn broadcast_shape<const D: usize>(n: usize) -> [usize; D] {
    let mut s = [1; D];
    s[D - 1] = n;
    s
}

pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Silu => activation::silu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluTanh => activation::gelu_approximate(x),
    }
}

/// SwiGLU MLP: `down(act(gate(x)) · up(x))` (`Qwen2MLP`, `Qwen2_5_VLMLP`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn load(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        inter: usize,
        bias: bool,
        act: Activation,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            gate_proj: LoraLinear::load(src, &format!("{key}.gate_proj"), hidden, inter, bias)?,
            up_proj: LoraLinear::load(src, &format!("{key}.up_proj"), hidden, inter, bias)?,
            down_proj: LoraLinear::load(src, &format!("{key}.down_proj"), inter, hidden, bias)?,
            act,
        })
    }

    /// `[..., hidden]` → `[..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let g = activate(self.gate_proj.forward(x.clone()), self.act);
        self.down_proj.forward(g * self.up_proj.forward(x))
    }

    pub fn visit_linears(&self, prefix: &str, f: &mut LinearVisit<'_, B>) {
        f(&format!("{prefix}.gate_proj"), &self.gate_proj);
        f(&format!("{prefix}.up_proj"), &self.up_proj);
        f(&format!("{prefix}.down_proj"), &self.down_proj);
    }

    pub fn map_linears(
        self,
        prefix: &str,
        f: &mut super::lora::LinearMap<'_, B>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            gate_proj: f(&format!("{prefix}.gate_proj"), self.gate_proj)?,
            up_proj: f(&format!("{prefix}.up_proj"), self.up_proj)?,
            down_proj: f(&format!("{prefix}.down_proj"), self.down_proj)?,
            act: self.act,
        })
    }
}

/// `rotate_half`: `[x1, x2]` → `[-x2, x1]` over the last dimension.
pub fn rotate_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    let x1 = x.clone().narrow(D - 1, 0, d / 2);
    let x2 = x.narrow(D - 1, d / 2, d - d / 2);
    Tensor::cat(vec![x2.neg(), x1], D - 1)
}

/// `x·cos + rotate_half(x)·sin` (`cos`/`sin` broadcast against `x`).
pub fn apply_rotary<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    cos: Tensor<B, D>,
    sin: Tensor<B, D>,
) -> Tensor<B, D> {
    x.clone() * cos + rotate_half(x) * sin
}
