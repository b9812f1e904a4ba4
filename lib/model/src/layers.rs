//! The plain building blocks: linear maps, RMSNorm and the SwiGLU MLP (dense layers and shared experts).

use crate::model::{take, Weights};
use tch::{Kind, Tensor};

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn take(w: &mut Weights, prefix: &str, bias: bool) -> Linear {
        Linear {
            weight: take(w, &format!("{prefix}.weight")),
            bias: bias.then(|| take(w, &format!("{prefix}.bias"))),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub(crate) fn take(w: &mut Weights, prefix: &str, eps: f64) -> RmsNorm {
        RmsNorm { weight: take(w, &format!("{prefix}.weight")), eps }
    }
    /// Normalise in fp32, cast back to the input dtype, then scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let x = x * (variance + self.eps).rsqrt();
        &self.weight * x.to_kind(kind)
    }
}

/// SwiGLU: down(silu(gate x) * up x). The dense layers and the shared experts.
pub struct Mlp {
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
}

impl Mlp {
    pub(crate) fn take(w: &mut Weights, prefix: &str) -> Mlp {
        Mlp {
            gate_proj: take(w, &format!("{prefix}.gate_proj.weight")),
            up_proj: take(w, &format!("{prefix}.up_proj.weight")),
            down_proj: take(w, &format!("{prefix}.down_proj.weight")),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.linear::<Tensor>(&self.gate_proj, None).silu() * x.linear::<Tensor>(&self.up_proj, None);
        h.linear::<Tensor>(&self.down_proj, None)
    }
}

