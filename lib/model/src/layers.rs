//! The plain building blocks: linear maps, RMSNorm and the SwiGLU MLP (dense layers and shared experts).
//! Weights are cast to the activations' dtype where they are used, so fp32 master weights run in
//! bf16 (as autocast does) and their gradients come back in fp32; equal dtypes cost nothing.

use crate::fast_paths::FastPaths;
use crate::weights::{take, Weights};
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
        let k = x.kind();
        x.linear(&self.weight.to_kind(k), self.bias.as_ref().map(|b| b.to_kind(k)).as_ref())
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub fast: FastPaths,
}

impl RmsNorm {
    pub(crate) fn take(w: &mut Weights, prefix: &str, eps: f64) -> RmsNorm {
        RmsNorm { weight: take(w, &format!("{prefix}.weight")), eps, fast: FastPaths::default() }
    }
    /// Normalise in fp32, cast back to the input dtype, then scale. On CUDA in a 16-bit dtype
    /// ATen's fused kernel does the same in one pass (scaling before the cast, in fp32) and saves
    /// only the input and the inverse RMS for the backward pass.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if x.device().is_cuda() && kind != Kind::Float && self.fast.fused_norm {
            let width = *x.size().last().unwrap();
            return x.rms_norm([width], Some(self.weight.to_kind(kind)), self.eps);
        }
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let x = x * (variance + self.eps).rsqrt();
        self.weight.to_kind(kind) * x.to_kind(kind)
    }
}

/// SwiGLU: down(silu(gate x) * up x). The dense layers and the shared experts.
pub struct Mlp {
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
    pub fast: FastPaths,
}

impl Mlp {
    pub(crate) fn take(w: &mut Weights, prefix: &str) -> Mlp {
        Mlp {
            gate_proj: take(w, &format!("{prefix}.gate_proj.weight")),
            up_proj: take(w, &format!("{prefix}.up_proj.weight")),
            down_proj: take(w, &format!("{prefix}.down_proj.weight")),
            fast: FastPaths::default(),
        }
    }
    /// On CUDA gate and up run as one GEMM with the two weights stacked ([2I, H], a `cat` per
    /// call; checkpoints keep them apart) and openseek-kernels' `swiglu` over its halves;
    /// `mlp_fused` off: two GEMMs and autograd's silu and mul, as on CPU.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let h = if x.device().is_cuda() && self.fast.mlp_fused {
            let gate_up = Tensor::cat(&[self.gate_proj.to_kind(k), self.up_proj.to_kind(k)], 0);
            openseek_kernels::swiglu(&x.linear::<Tensor>(&gate_up, None), self.fast.swiglu_kernel).expect("swiglu")
        } else {
            x.linear::<Tensor>(&self.gate_proj.to_kind(k), None).silu() * x.linear::<Tensor>(&self.up_proj.to_kind(k), None)
        };
        h.linear::<Tensor>(&self.down_proj.to_kind(k), None)
    }
}

