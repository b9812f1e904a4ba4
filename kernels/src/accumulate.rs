//! A micro-batch's bf16 gradient added into the step's fp32 gradient sum (Megatron's
//! `accumulate_allreduce_grads_in_fp32`): on CUDA one vectorised NVRTC kernel pass, where ATen's
//! mixed-dtype `add_` casts element by element; elsewhere, or for an fp32 gradient, `add_`.

use crate::nvrtc::{self, Args, Program};
use tch::{Device, Kind, TchError, Tensor};

static PROGRAM: Program = Program { name: "accumulate", source: include_str!("../cuda/accumulate.cu") };

const THREADS: u32 = 256;
const MAX_BLOCKS: u64 = 4096;

/// `sum += grad` in place: `sum` fp32, `grad` bf16 or fp32 with as many values (any shapes),
/// both contiguous, on one device; on CUDA it runs on the device's current stream.
pub fn accumulate_grad(sum: &mut Tensor, grad: &Tensor) -> Result<(), TchError> {
    let n = sum.numel();
    if sum.kind() != Kind::Float || grad.numel() != n || sum.device() != grad.device() || !sum.is_contiguous() || !grad.is_contiguous() {
        return Err(TchError::Shape(format!(
            "accumulate_grad: a {:?} sum of {} values on {:?} and a {:?} gradient of {} values on {:?}; expected an fp32 sum and a gradient of as many values on its device, both contiguous",
            sum.kind(),
            n,
            sum.device(),
            grad.kind(),
            grad.numel(),
            grad.device()
        )));
    }
    let (Device::Cuda(ordinal), Kind::BFloat16) = (sum.device(), grad.kind()) else {
        let _ = sum.f_add_(&grad.view(sum.size().as_slice()))?;
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    let (s, g) = (sum.data_ptr(), grad.data_ptr());
    let aligned = (s as usize).is_multiple_of(16) && (g as usize).is_multiple_of(8);
    let per_thread = if aligned { 4 } else { 1 };
    let blocks = (n as u64).div_ceil(per_thread * THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
    let f = nvrtc::function(&PROGRAM, "add_bf16_into_f32", ordinal)?;
    let args = Args::new().arg(s).arg(g).arg(n as i64).arg(aligned as i32);
    // Safety: the arguments are the kernel's parameters in order; the tensors are the caller's and
    // outlive the launch (torch's allocator orders reuse on the stream).
    unsafe { nvrtc::launch(f, blocks, THREADS, 0, ordinal, args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU).
    #[test]
    fn kernel_compiles() {
        assert!(!nvrtc::compile(&PROGRAM, 90).unwrap().is_empty());
    }

    /// Off CUDA it is `add_`, for bf16 and fp32 gradients; mismatched sizes are refused.
    #[test]
    fn adds_on_the_cpu_and_refuses_other_sizes() {
        let mut sum = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        accumulate_grad(&mut sum, &Tensor::from_slice(&[0.5f32, 0.25, -1.0]).to_kind(Kind::BFloat16)).unwrap();
        accumulate_grad(&mut sum, &Tensor::from_slice(&[1.0f32, 1.0, 1.0])).unwrap();
        assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [2.5, 3.25, 3.0]);
        assert!(accumulate_grad(&mut sum, &Tensor::from_slice(&[1.0f32])).is_err());
    }
}
