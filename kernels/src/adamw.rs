//! One AdamW update of one parameter on CUDA, in a single pass over memory (an NVRTC kernel): fp32
//! weights and moments, the gradient in fp32 or bf16, and, for a model that computes in bf16 from
//! fp32 master weights held by the optimizer, the model's bf16 copy rewritten from the updated
//! master in the same pass. The arithmetic is `torch.optim.AdamW(fused=True)`'s, in its order.

use crate::nvrtc::{self, Program, BF16};
use std::ffi::c_void;
use std::sync::OnceLock;
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

const KERNEL: &str = r#"
struct Hyper { float lr_decay, beta1, beta2, step_size, bc2_sqrt, eps, grad_scale; };

__device__ __forceinline__ void update(float& w, float& m, float& v, float g, const Hyper& h) {
    g *= h.grad_scale;
    w -= h.lr_decay * w;
    m = h.beta1 * m + (1.0f - h.beta1) * g;
    v = h.beta2 * v + (1.0f - h.beta2) * g * g;
    const float denom = sqrtf(v) / h.bc2_sqrt + h.eps;
    w -= h.step_size * m / denom;
}

__device__ __forceinline__ float grad_at(const float* g, long long i) { return g[i]; }
__device__ __forceinline__ float grad_at(const bf16* g, long long i) { return bf16_to_f32(g[i]); }
__device__ __forceinline__ float4 grad4(const float* g, long long i) { return reinterpret_cast<const float4*>(g)[i]; }
__device__ __forceinline__ float4 grad4(const bf16* g, long long i) {
    const uint2 r = reinterpret_cast<const uint2*>(g)[i];
    return make_float4(bf16_to_f32(r.x & 0xffff), bf16_to_f32(r.x >> 16), bf16_to_f32(r.y & 0xffff), bf16_to_f32(r.y >> 16));
}

// The sum over a block of each thread's `x`, returned to thread 0 (blocks of 256 threads).
__device__ float block_sum(float x) {
    __shared__ float warp_sums[8];
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = x;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0) for (int i = 0; i < (int)(blockDim.x >> 5); i++) total += warp_sums[i];
    return total;
}

// w, m, v: n fp32 values; g: the gradient; copy: null, or n bf16 values rewritten from w. With
// vec, every pointer is 16-byte aligned (8 for bf16) and four values move per access. sumsq:
// null, or one fp32 per block: the block's sum of the updated weights' squares (the parameter
// norm without another pass over the weights).
template <typename G>
__device__ void adamw(float* w, bf16* copy, const G* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    float squares = 0.0f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = first; i < n4; i += stride) {
            float4 W = reinterpret_cast<float4*>(w)[i], M = reinterpret_cast<float4*>(m)[i], V = reinterpret_cast<float4*>(v)[i];
            const float4 G4 = grad4(g, i);
            update(W.x, M.x, V.x, G4.x, h);
            update(W.y, M.y, V.y, G4.y, h);
            update(W.z, M.z, V.z, G4.z, h);
            update(W.w, M.w, V.w, G4.w, h);
            reinterpret_cast<float4*>(w)[i] = W;
            squares += W.x * W.x + W.y * W.y + W.z * W.z + W.w * W.w;
            reinterpret_cast<float4*>(m)[i] = M;
            reinterpret_cast<float4*>(v)[i] = V;
            if (copy) {
                uint2 c;
                c.x = (unsigned int)f32_to_bf16(W.x) | ((unsigned int)f32_to_bf16(W.y) << 16);
                c.y = (unsigned int)f32_to_bf16(W.z) | ((unsigned int)f32_to_bf16(W.w) << 16);
                reinterpret_cast<uint2*>(copy)[i] = c;
            }
        }
        done = n4 * 4;
    }
    for (long long i = done + first; i < n; i += stride) {
        float W = w[i], M = m[i], V = v[i];
        update(W, M, V, grad_at(g, i), h);
        w[i] = W; m[i] = M; v[i] = V;
        squares += W * W;
        if (copy) copy[i] = f32_to_bf16(W);
    }
    if (sumsq) {
        const float total = block_sum(squares);
        if (threadIdx.x == 0) sumsq[blockIdx.x] = total;
    }
}

extern "C" __global__ void adamw_f32_grad(float* w, bf16* copy, const float* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    adamw(w, copy, g, m, v, n, h, vec, sumsq);
}
extern "C" __global__ void adamw_bf16_grad(float* w, bf16* copy, const bf16* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    adamw(w, copy, g, m, v, n, h, vec, sumsq);
}
"#;

fn program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| Program { name: "adamw", source: Box::leak(format!("{BF16}{KERNEL}").into_boxed_str()) })
}

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
/// `exp_avg_sq` (fp32) in place from `grad` (fp32 or bf16) and, when given, rewrite `bf16_copy`
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
    check("exp_avg", exp_avg, &[Kind::Float], n, device)?;
    check("exp_avg_sq", exp_avg_sq, &[Kind::Float], n, device)?;
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
    let mut w = weights.data_ptr();
    let mut g = grad.data_ptr();
    let mut m = exp_avg.data_ptr();
    let mut v = exp_avg_sq.data_ptr();
    let mut c = bf16_copy.map_or(std::ptr::null_mut(), |c| c.data_ptr());
    let grad_align = if grad.kind() == Kind::Float { 16 } else { 8 };
    let aligned = [w, m, v].iter().all(|p| *p as usize % 16 == 0) && g as usize % grad_align == 0 && c as usize % 8 == 0;
    let mut vec: i32 = aligned as i32;
    let mut n64 = n as i64;
    let mut hyper = h;
    let kernel = if grad.kind() == Kind::Float { "adamw_f32_grad" } else { "adamw_bf16_grad" };
    let f = nvrtc::function(program(), kernel, ordinal)?;
    let per_thread = if aligned { 4 } else { 1 };
    let blocks = (n as u64).div_ceil(per_thread * THREADS as u64).clamp(1, MAX_BLOCKS as u64) as u32;
    let mut q = sum_of_squares.map_or(std::ptr::null_mut(), |q| q.data_ptr());
    let mut args: Vec<*mut c_void> = vec![
        (&mut w as *mut *mut c_void).cast(),
        (&mut c as *mut *mut c_void).cast(),
        (&mut g as *mut *mut c_void).cast(),
        (&mut m as *mut *mut c_void).cast(),
        (&mut v as *mut *mut c_void).cast(),
        (&mut n64 as *mut i64).cast(),
        (&mut hyper as *mut Hyper).cast(),
        (&mut vec as *mut i32).cast(),
        (&mut q as *mut *mut c_void).cast(),
    ];
    // Safety: the arguments are the kernel's parameters in order; the tensors outlive the launch
    // (they are the caller's, and torch's allocator orders reuse on the stream).
    unsafe { nvrtc::launch(f, blocks, THREADS, ordinal, &mut args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU).
    #[test]
    fn kernel_compiles() {
        let code = nvrtc::compile(program(), 90).unwrap();
        assert!(!code.is_empty());
    }
}
