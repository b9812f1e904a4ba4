//! SwiGLU, silu(h[..., :I]) * h[..., I:], as an autograd function over the [gate | up] halves of
//! `h` [..., 2I]. The function itself (`SwiGlu` in `shim.cpp`) allocates with ATen; on CUDA in bf16
//! or fp32 its forward and backward passes are NVRTC kernels launched through [`launch`], a
//! function pointer handed to the shim with each call, elsewhere (or when no launcher is given)
//! ATen operations. The kernels read each row's halves with 16-byte loads where alignment allows:
//! the forward pass reads h and writes out [.., I], the backward pass reads h and the output's
//! gradient and writes dh [.., 2I] in one pass (silu is recomputed, so only h is kept for it).
//! Intermediate values are rounded to the storage dtype where the ATen composition rounds them
//! (silu(gate); grad * up), so results agree with it up to the last bit of an exp.

use crate::nvrtc::{self, Args, Program};
use std::ffi::{c_char, c_int, c_void};
use tch::{TchError, Tensor};

/// One launch as the shim describes it (`SwiGluLaunch` in `shim.cpp`). Forward: `h` [rows, 2I]
/// -> `out` [rows, I]. Backward: `h` and `dy` [rows, I] -> `out` = dh [rows, 2I]. Row strides in
/// elements; the last dimension is contiguous.
#[repr(C)]
pub struct Launch {
    h: *const c_void,
    dy: *const c_void,
    out: *mut c_void,
    rows: i64,
    inter: i64,
    h_stride: i64,
    dy_stride: i64,
    out_stride: i64,
    /// 0: bf16, 1: fp32.
    dtype: i32,
    device: i32,
    backward: i32,
}

type Launcher = unsafe extern "C" fn(*const Launch, *mut c_char, usize) -> c_int;

extern "C" {
    fn oskern_swiglu(h: crate::Handle, launcher: Option<Launcher>, out: *mut crate::Handle) -> *mut c_char;
}

/// SwiGLU over the two halves of `h` [..., 2I] (gate first): silu(h[..., :I]) * h[..., I:], [..., I]
/// contiguous. Differentiable; the backward writes dh in one tensor. With `kernel`, on CUDA in bf16
/// or fp32, both passes are the NVRTC kernels and only `h` is kept for the backward pass; otherwise
/// ATen's silu, mul and silu_backward (keeping silu(gate) too), the composition's exact operations.
pub fn swiglu(h: &Tensor, kernel: bool) -> Result<Tensor, TchError> {
    crate::one_output(|out| unsafe { oskern_swiglu(crate::h(h), kernel.then_some(launch as Launcher), out) })
}


static PROGRAM: Program = Program { name: "swiglu", source: include_str!("../cuda/swiglu.cu") };

const THREADS: u32 = 256;
/// Blocks at most per launch (a grid-stride loop covers the rest).
const MAX_BLOCKS: u64 = 1 << 16;

/// The kernel for a launch and the values each thread takes per half: dtype, 16-byte vectors where
/// every row start is 16-byte aligned, 32-bit indexing where the flat index and offsets fit.
fn plan(l: &Launch) -> (String, i64) {
    let (ty, size) = if l.dtype == 0 { ("bf16", 2i64) } else { ("f32", 4) };
    let per = 16 / size;
    let aligned = [l.h as usize, l.dy as usize, l.out as usize].iter().all(|p| p % 16 == 0)
        && [l.inter, l.h_stride, l.out_stride].iter().all(|s| s % per == 0)
        && (l.backward == 0 || l.dy_stride % per == 0);
    let span = l.rows.saturating_mul(l.h_stride.max(l.out_stride).max(l.dy_stride).max(2 * l.inter));
    let (shape, per) = match (aligned, span < u32::MAX as i64) {
        (false, _) => ("s", 1),
        (true, true) => ("v", per),
        (true, false) => ("v_wide", per),
    };
    (format!("swiglu_{ty}_{shape}_{}", if l.backward != 0 { "bwd" } else { "fwd" }), per)
}

fn run(l: &Launch) -> Result<(), TchError> {
    if l.rows == 0 || l.inter == 0 {
        return Ok(());
    }
    let (name, per) = plan(l);
    let device = l.device as usize;
    let f = nvrtc::function(&PROGRAM, &name, device)?;
    let threads_needed = (l.rows * (l.inter / per)) as u64;
    let blocks = threads_needed.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
    let args = Args::new().arg(l.h).arg(l.dy).arg(l.out).arg(l.rows).arg(l.inter).arg(l.h_stride).arg(l.dy_stride).arg(l.out_stride);
    // Safety: the arguments are the kernel's parameters in order; the shim keeps the tensors alive
    // until the launch is queued and torch's allocator orders their reuse on the stream.
    unsafe { nvrtc::launch(f, blocks, THREADS, 0, device, args) }
}

/// The launcher the shim calls (see [`nvrtc::shim_launcher`]).
unsafe extern "C" fn launch(l: *const Launch, err: *mut c_char, cap: usize) -> c_int {
    // Safety: the shim passes a valid `Launch` and an error buffer of `cap` bytes.
    unsafe { nvrtc::shim_launcher("swiglu", err, cap, || run(&*l)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU), and launches pick the vector kernels only
    /// where every row start is 16-byte aligned.
    #[test]
    fn kernels_compile_and_vectorise_aligned_rows() {
        let code = nvrtc::compile(&PROGRAM, 90).unwrap();
        assert!(!code.is_empty());
        let at = |p: usize| p as *mut c_void;
        let mut l = Launch {
            h: at(4096),
            dy: at(0),
            out: at(8192),
            rows: 100,
            inter: 896,
            h_stride: 1792,
            dy_stride: 0,
            out_stride: 896,
            dtype: 0,
            device: 0,
            backward: 0,
        };
        assert_eq!(plan(&l), ("swiglu_bf16_v_fwd".to_string(), 8));
        l.rows = 10_000_000;
        assert_eq!(plan(&l).0, "swiglu_bf16_v_wide_fwd");
        (l.backward, l.dy, l.dy_stride, l.rows) = (1, at(1024), 896, 3);
        assert_eq!(plan(&l).0, "swiglu_bf16_v_bwd");
        l.inter = 9;
        assert_eq!(plan(&l).0, "swiglu_bf16_s_bwd");
        (l.inter, l.h_stride, l.dtype, l.dy) = (12, 24, 1, at(1026));
        assert_eq!(plan(&l), ("swiglu_f32_s_bwd".to_string(), 1), "a misaligned gradient");
    }
}
