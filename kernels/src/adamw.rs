//! One AdamW update of one parameter on CUDA, in a single pass over memory (an NVRTC kernel): fp32
//! weights, the moments in fp32 or bf16 (computed in fp32, stored rounded to nearest even), the
//! gradient in fp32 or bf16, and, for a model that computes in bf16 from
//! fp32 master weights held by the optimizer, the model's bf16 copy rewritten from the updated
//! master in the same pass. The arithmetic is `torch.optim.AdamW(fused=True)`'s, in its order.

use crate::nvrtc::{self, Args, Program};
use tch::{Device, Kind, TchError, Tensor};

/// The hyper-parameters of one update (the step count is the one after this update).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    /// The gradients are multiplied by this as they are read (the clipping factor; 1: as they are).
    pub grad_scale: f64,
}

/// The kernel's parameters, in the source's `Hyper` layout.
#[repr(C)]
#[derive(Clone, Copy)]
struct Hyper {
    lr_decay: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
}


static PROGRAM: Program = Program { name: "adamw", source: include_str!("../cuda/adamw.cu") };

const THREADS: u32 = 256;
/// Blocks at most per launch (a grid-stride loop covers the rest): enough to fill any current GPU.
pub const MAX_BLOCKS: i64 = 4096;

fn check(what: &str, t: &Tensor, kinds: &[Kind], numel: usize, device: Device) -> Result<(), TchError> {
    if !kinds.contains(&t.kind()) || t.numel() != numel || t.device() != device || !t.is_contiguous() {
        return Err(TchError::Shape(format!(
            "adamw_update: {what} is a {:?} {:?} tensor of {} values on {:?}{}; expected {kinds:?}, {numel} values on {device:?}, contiguous",
            t.kind(),
            t.size(),
            t.numel(),
            t.device(),
            if t.is_contiguous() { "" } else { " (not contiguous)" },
        )));
    }
    Ok(())
}

/// Update `weights` (fp32: the model's own leaf, or the optimizer's master copy), `exp_avg` and
/// `exp_avg_sq` (both fp32 or both bf16) in place from `grad` (fp32 or bf16) and, when given, rewrite `bf16_copy`
/// (the model's bf16 leaf of a master copy) from the updated weights. CUDA tensors of equal size,
/// contiguous; runs on the device's current stream. `sum_of_squares`, when given, is an fp32
/// tensor of [`MAX_BLOCKS`] zeros whose first entries receive partial sums of the updated weights'
/// squares (their total is the squared norm; the same sizes always give the same partition).
pub fn adamw_update(
    weights: &Tensor,
    bf16_copy: Option<&Tensor>,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    s: &AdamWStep,
    sum_of_squares: Option<&Tensor>,
) -> Result<(), TchError> {
    let device = weights.device();
    let Device::Cuda(ordinal) = device else {
        return Err(TchError::Shape(format!("adamw_update runs on CUDA; the weights are on {device:?}")));
    };
    let n = weights.numel();
    check("weights", weights, &[Kind::Float], n, device)?;
    check("grad", grad, &[Kind::Float, Kind::BFloat16], n, device)?;
    check("exp_avg", exp_avg, &[Kind::Float, Kind::BFloat16], n, device)?;
    check("exp_avg_sq", exp_avg_sq, &[exp_avg.kind()], n, device)?;
    if let Some(c) = bf16_copy {
        check("bf16 copy", c, &[Kind::BFloat16], n, device)?;
    }
    if let Some(q) = sum_of_squares {
        check("sum_of_squares", q, &[Kind::Float], MAX_BLOCKS as usize, device)?;
    }
    if n == 0 {
        return Ok(());
    }
    let t = s.step as i32;
    let h = Hyper {
        lr_decay: (s.lr * s.weight_decay) as f32,
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        step_size: (s.lr / (1.0 - s.beta1.powi(t))) as f32,
        bc2_sqrt: (1.0 - s.beta2.powi(t)).sqrt() as f32,
        eps: s.eps as f32,
        grad_scale: s.grad_scale as f32,
    };
    let (w, g, m, v) = (weights.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr());
    let c = bf16_copy.map_or(std::ptr::null_mut(), |c| c.data_ptr());
    // Four values per access: 16 bytes of fp32, 8 of bf16.
    let align = |t: &Tensor| if t.kind() == Kind::Float { 16 } else { 8 };
    let aligned = (w as usize).is_multiple_of(16)
        && (m as usize).is_multiple_of(align(exp_avg))
        && (v as usize).is_multiple_of(align(exp_avg_sq))
        && (g as usize).is_multiple_of(align(grad))
        && (c as usize).is_multiple_of(8);
    let kernel = match (grad.kind(), exp_avg.kind()) {
        (Kind::Float, Kind::Float) => "adamw_f32_grad",
        (_, Kind::Float) => "adamw_bf16_grad",
        (Kind::Float, _) => "adamw_f32_grad_bf16_moments",
        _ => "adamw_bf16_grad_bf16_moments",
    };
    let f = nvrtc::function(&PROGRAM, kernel, ordinal)?;
    let per_thread = if aligned { 4 } else { 1 };
    let blocks = (n as u64).div_ceil(per_thread * THREADS as u64).clamp(1, MAX_BLOCKS as u64) as u32;
    let q = sum_of_squares.map_or(std::ptr::null_mut(), |q| q.data_ptr());
    let args = Args::new().arg(w).arg(c).arg(g).arg(m).arg(v).arg(n as i64).arg(h).arg(aligned as i32).arg(q);
    // Safety: the arguments are the kernel's parameters in order; the tensors outlive the launch
    // (they are the caller's, and torch's allocator orders reuse on the stream).
    unsafe { nvrtc::launch(f, blocks, THREADS, 0, ordinal, args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU).
    #[test]
    fn kernel_compiles() {
        let code = nvrtc::compile(&PROGRAM, 90).unwrap();
        assert!(!code.is_empty());
    }
}
