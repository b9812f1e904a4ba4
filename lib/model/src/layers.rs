//! The plain building blocks: linear maps, RMSNorm and the SwiGLU MLP (dense layers and shared experts).
//! Weights are cast to the activations' dtype where they are used, so fp32 master weights run in
//! bf16 (as autocast does) and their gradients come back in fp32; equal dtypes cost nothing.

use crate::model::{take, Weights};
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// The fast paths (`fused_norm`, `moe_fused`, `swiglu_kernel`, `mlp_fused`, `combine_kernel`,
/// `attn_layout`, `rope_kernel`; os-train's `head_grad`, `head_assign`, `xent_kernel`, `grad_none`,
/// `bf16_leaves`) are on unless named in `OPENSEEK_DISABLE` (comma-separated), which benchmarks
/// use to measure each one.
pub fn enabled(fast_path: &str) -> bool {
    static OFF: OnceLock<Vec<String>> = OnceLock::new();
    let off = OFF.get_or_init(|| std::env::var("OPENSEEK_DISABLE").unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect());
    !off.iter().any(|o| o == fast_path)
}

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
}

impl RmsNorm {
    pub(crate) fn take(w: &mut Weights, prefix: &str, eps: f64) -> RmsNorm {
        RmsNorm { weight: take(w, &format!("{prefix}.weight")), eps }
    }
    /// Normalise in fp32, cast back to the input dtype, then scale. On CUDA in a 16-bit dtype
    /// ATen's fused kernel does the same in one pass (scaling before the cast, in fp32) and saves
    /// only the input and the inverse RMS for the backward pass.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if x.device().is_cuda() && kind != Kind::Float && enabled("fused_norm") {
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
}

impl Mlp {
    pub(crate) fn take(w: &mut Weights, prefix: &str) -> Mlp {
        Mlp {
            gate_proj: take(w, &format!("{prefix}.gate_proj.weight")),
            up_proj: take(w, &format!("{prefix}.up_proj.weight")),
            down_proj: take(w, &format!("{prefix}.down_proj.weight")),
        }
    }
    /// On CUDA gate and up run as one GEMM with the two weights stacked ([2I, H], a `cat` per
    /// call; checkpoints keep them apart) and openseek-kernels' `swiglu` over its halves;
    /// `OPENSEEK_DISABLE=mlp_fused`: two GEMMs and autograd's silu and mul, as on CPU.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let h = if x.device().is_cuda() && enabled("mlp_fused") {
            let gate_up = Tensor::cat(&[self.gate_proj.to_kind(k), self.up_proj.to_kind(k)], 0);
            openseek_kernels::swiglu(&x.linear::<Tensor>(&gate_up, None), enabled("swiglu_kernel")).expect("swiglu")
        } else {
            x.linear::<Tensor>(&self.gate_proj.to_kind(k), None).silu() * x.linear::<Tensor>(&self.up_proj.to_kind(k), None)
        };
        h.linear::<Tensor>(&self.down_proj.to_kind(k), None)
    }
}

