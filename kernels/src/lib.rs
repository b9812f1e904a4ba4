//! The native ATen operations the model and trainer need beyond what tch 0.24 exposes, reached
//! through a small C++ shim (`src/shim.cpp`, compiled by `build.rs` against the build venv's torch
//! headers) that takes tch's tensor handles:
//!
//! - [`foreach_norm`]: per-tensor L2 norms (`at::_foreach_norm`);
//! - [`current_stream`] and [`synchronize`]: the accelerator's current stream and a device sync;
//! - [`varlen_attention`]: causal attention within the segments (documents) of packed sequences,
//!   an autograd function over flash attention's variable-length kernels, CUDA only;
//! - [`profiler_start`] and [`profiler_stop`]: the Kineto profiler (CPU ops, CUDA kernels) around a
//!   region, written as a Chrome trace;
//! - [`gather_rows`] and [`combine_rows`]: the MoE's row-moving steps as autograd functions with
//!   hand-written backward passes (ATen operations, any device; on CUDA combine_rows' passes are one
//!   NVRTC kernel each);
//! - [`addmm_accumulate`] and [`set_grad`]: a GEMM's product added (or written) into an fp32 tensor (the LM
//!   head's weight gradient) and a parameter's `.grad` set or cleared;
//! - [`backward`]: a backward pass from tensors with given upstream gradients;
//! - [`CudaGraph`]: CUDA graphs (capture once, replay with one launch; CUDA builds only).
//!
//! Errors that ATen raises come back as `TchError::Torch` with its message.
//!
//! Kernels of our own are CUDA C compiled at run time by NVRTC ([`nvrtc`]):
//!
//! - [`softmax_cross_entropy`]: the LM head's softmax - one-hot written over bf16 logits in place and
//!   the labels' fp32 log-probabilities, one pass per row; [`target_logprobs`]: the log-probabilities
//!   alone (scoring), one read of each row;
//! - [`accumulate_grad`]: a micro-batch's bf16 gradient added into the step's fp32 sum, one pass;
//! - [`adamw_update`]: one AdamW update of a parameter in one pass, fp32 or bf16 gradients, and the
//!   model's bf16 copy of an fp32 master weight rewritten in the same pass;
//! - [`swiglu`]: silu(gate) * up over a GEMM's [gate | up] halves, an autograd function whose CUDA
//!   forward and backward passes are one kernel each (ATen operations elsewhere);
//! - [`rope_query`] and [`rope_key`]: MLA's query and key joins with rotary embeddings, autograd
//!   functions whose CUDA passes are one kernel each (ATen operations elsewhere).

pub mod accumulate;
pub mod adamw;
pub mod combine;
pub mod cross_entropy;
pub mod graph;
pub mod nvrtc;
pub mod rope;
pub mod swiglu;

pub use accumulate::accumulate_grad;
pub use adamw::{adamw_update, AdamWStep};
pub use combine::combine_rows;
pub use cross_entropy::{softmax_cross_entropy, target_logprobs};
pub use graph::CudaGraph;
pub use rope::{rope_key, rope_query};
pub use swiglu::swiglu;

use std::ffi::{c_char, c_void, CStr};
use tch::{TchError, Tensor};
use torch_sys::C_tensor;

type Handle = *mut C_tensor;

extern "C" {
    fn oskern_gather_rows(x: Handle, token: Handle, rank: Handle, out: *mut Handle) -> *mut c_char;
    fn oskern_addmm_acc(out: Handle, m1: Handle, m2: Handle, alpha: f64, accumulate: bool) -> *mut c_char;
    fn oskern_set_grad(t: Handle, g: Handle) -> *mut c_char;
    fn oskern_backward(tensors: *const Handle, grads: *const Handle, n: usize) -> *mut c_char;
    fn oskern_foreach_norm(tensors: *const Handle, n: usize, out: *mut Handle) -> *mut c_char;
    fn oskern_current_stream(device: i32, id: *mut i64, handle: *mut u64) -> *mut c_char;
    fn oskern_synchronize(device: i32) -> *mut c_char;
    fn oskern_memory_stats(device: i32, out: *mut i64) -> *mut c_char;
    fn oskern_release_cached_memory(device: i32) -> *mut c_char;
    fn oskern_varlen_attention(q: Handle, k: Handle, v: Handle, cu_seqlens: Handle, max_len: i64, scale: f64, out: *mut Handle) -> *mut c_char;
    fn oskern_profiler_start() -> *mut c_char;
    fn oskern_profiler_stop(path: *const c_char) -> *mut c_char;
    fn free(p: *mut c_void);
}

/// The shim's result: null, or a malloc'd message.
fn check(err: *mut c_char) -> Result<(), TchError> {
    if err.is_null() {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { free(err.cast()) };
    // ATen appends the C++ stack; the message is what comes before it.
    let msg = msg.split("\nException raised from").next().unwrap_or_default().trim_end();
    Err(TchError::Torch(msg.to_string()))
}

fn handles(ts: &[Tensor]) -> Vec<Handle> {
    ts.iter().map(|t| t.as_ptr() as Handle).collect()
}

/// The L2 norm of each tensor (`at::_foreach_norm`), 0-dim fp32 tensors on each input's device.
pub fn foreach_norm(tensors: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
    if tensors.is_empty() {
        return Ok(vec![]);
    }
    let input = handles(tensors);
    let mut out: Vec<Handle> = vec![std::ptr::null_mut(); tensors.len()];
    check(unsafe { oskern_foreach_norm(input.as_ptr(), input.len(), out.as_mut_ptr()) })?;
    Ok(out.into_iter().map(|h| unsafe { Tensor::from_ptr(h) }).collect())
}

/// A stream of the accelerator (CUDA): PyTorch's stream id and the native handle (`cudaStream_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    pub id: i64,
    pub handle: u64,
}

/// The current stream on accelerator device `device`. An error when there is no accelerator.
pub fn current_stream(device: usize) -> Result<Stream, TchError> {
    let (mut id, mut handle) = (0i64, 0u64);
    check(unsafe { oskern_current_stream(device as i32, &mut id, &mut handle) })?;
    Ok(Stream { id, handle })
}

/// The caching allocator's bytes on accelerator device `device`: what tensors hold (now, peak) and
/// what it reserved from the driver (now, peak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub allocated: u64,
    pub peak_allocated: u64,
    pub reserved: u64,
    pub peak_reserved: u64,
}

pub fn memory_stats(device: usize) -> Result<MemoryStats, TchError> {
    let mut out = [0i64; 4];
    check(unsafe { oskern_memory_stats(device as i32, out.as_mut_ptr()) })?;
    Ok(MemoryStats { allocated: out[0] as u64, peak_allocated: out[1] as u64, reserved: out[2] as u64, peak_reserved: out[3] as u64 })
}

/// Give the caching allocator's unused blocks on `device` back to the driver and restart its peaks
/// (after setting up, so that what was freed there is not counted as held).
pub fn release_cached_memory(device: usize) -> Result<(), TchError> {
    check(unsafe { oskern_release_cached_memory(device as i32) })
}

/// Wait until all work queued on accelerator device `device` has finished.
pub fn synchronize(device: usize) -> Result<(), TchError> {
    check(unsafe { oskern_synchronize(device as i32) })
}

/// Causal attention within segments of packed sequences (CUDA, fp16/bf16), differentiable: `q`,
/// `k` [total, heads, qk_dim], `v` [total, heads, v_dim] (v_dim <= qk_dim; last dimensions
/// contiguous); `cu_seqlens` int32 [segments + 1], the segments' running starts (0 first, total
/// last); `max_len` the longest segment. Token i of a segment attends to tokens 0..=i of the same
/// segment only, as attention over each segment alone would. Returns [total, heads, v_dim],
/// contiguous. An autograd function (`VarlenAttention` in `shim.cpp`) over flash attention 2's
/// varlen kernels, which need v's head dim to equal q/k's: v is padded with zeros and the output
/// narrowed, as SDPA's flash path pads.
pub fn varlen_attention(q: &Tensor, k: &Tensor, v: &Tensor, cu_seqlens: &Tensor, max_len: i64, scale: f64) -> Result<Tensor, TchError> {
    one_output(|out| unsafe { oskern_varlen_attention(h(q), h(k), h(v), h(cu_seqlens), max_len, scale, out) })
}

fn one_output(f: impl FnOnce(*mut Handle) -> *mut c_char) -> Result<Tensor, TchError> {
    let mut out: Handle = std::ptr::null_mut();
    check(f(&mut out))?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

fn h(t: &Tensor) -> Handle {
    t.as_ptr() as Handle
}

/// Rows of `x` [n, H] for `token` [P] (`x.index_select(0, token)`), differentiable with respect
/// to `x`: `rank` [n*k] gives the row holding each (token, slot) pair t*k + s, and the backward
/// sums a token's k rows (a gather and a sum, no atomic adds).
pub fn gather_rows(x: &Tensor, token: &Tensor, rank: &Tensor) -> Result<Tensor, TchError> {
    one_output(|out| unsafe { oskern_gather_rows(h(x), h(token), h(rank), out) })
}

/// `out += alpha * (m1 @ m2)[..rows of out]` outside autograd (`m1` may have more rows: padding,
/// dropped); without `accumulate`, `out = ...` (its contents are not read: it may come from
/// `empty`). With a 16-bit `m1`/`m2` and an fp32 `out` on CUDA the scaled product is computed in the
/// inputs' dtype (cuBLAS' fast kernels) and added (or copied) in fp32; elsewhere `addmm_` in `out`'s dtype.
pub fn addmm_accumulate(out: &Tensor, m1: &Tensor, m2: &Tensor, alpha: f64, accumulate: bool) -> Result<(), TchError> {
    check(unsafe { oskern_addmm_acc(h(out), h(m1), h(m2), alpha, accumulate) })
}

/// Set the `.grad` of `t` to `grad` (sharing its storage), or clear it with `None` (as
/// `zero_grad(set_to_none=True)`: the next backward pass stores its gradient without an add).
pub fn set_grad(t: &Tensor, grad: Option<&Tensor>) -> Result<(), TchError> {
    check(unsafe { oskern_set_grad(h(t), grad.map_or(std::ptr::null_mut(), h)) })
}

/// Backward from each of `tensors` with the upstream gradient `grads[i]` (`torch.autograd.backward`):
/// what `(t * g).sum().backward()` computes, without the product and the sum.
pub fn backward(tensors: &[&Tensor], grads: &[&Tensor]) -> Result<(), TchError> {
    if tensors.len() != grads.len() {
        return Err(TchError::Shape(format!("backward: {} tensors but {} gradients", tensors.len(), grads.len())));
    }
    let ts: Vec<Handle> = tensors.iter().map(|t| h(t)).collect();
    let gs: Vec<Handle> = grads.iter().map(|g| h(g)).collect();
    check(unsafe { oskern_backward(ts.as_ptr(), gs.as_ptr(), ts.len()) })
}

/// Start the Kineto profiler (CPU operators and CUDA kernels), as `torch.profiler.profile` does.
pub fn profiler_start() -> Result<(), TchError> {
    check(unsafe { oskern_profiler_start() })
}

/// Stop the profiler started by [`profiler_start`] and write what it recorded as a Chrome trace.
pub fn profiler_stop(path: &std::path::Path) -> Result<(), TchError> {
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(|e| TchError::FileFormat(format!("{}: {e}", path.display())))?;
    check(unsafe { oskern_profiler_stop(c.as_ptr()) })
}
