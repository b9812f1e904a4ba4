//! The MoE's combine step, out[t] = sum_s w[t, s] * y[rank[t*k + s]], as an autograd function
//! (`CombineRows` in `shim.cpp`): `y` [t*k, H] holds the experts' outputs in expert-sorted order,
//! `rank` where each (token, slot) pair sits among them. On CUDA in bf16 or fp32 (k <= 32) both
//! passes are one NVRTC kernel each, launched through [`launch`] (a function pointer handed to the
//! shim with each call): a warp per token reads its k rows with 16-byte loads where alignment
//! allows and sums them in fp32; the backward pass writes dy[rank[t*k + s]] = w[t, s] * dout[t]
//! straight at the permuted rows (rounded once, as the product is) and dw[t, s] = dout[t] . y[rank]
//! summed in fp32 and rounded to y's dtype. Only `y`, `w` and `rank` are kept for the backward
//! pass. Elsewhere (or when no launcher is given) ATen operations: a gather and a batched product.

use crate::nvrtc::{self, Args, Program};
use std::ffi::{c_char, c_int, c_void};
use tch::{TchError, Tensor};

/// One launch as the shim describes it (`CombineLaunch` in `shim.cpp`); all tensors contiguous.
/// Forward: `y` [P, H], `w` [tokens, k], `rank` [tokens*k] -> `out` [tokens, H]. Backward: the same
/// and `dout` [tokens, H] -> `out` = dy [P, H], `dw` [tokens, k].
#[repr(C)]
pub struct Launch {
    y: *const c_void,
    w: *const c_void,
    rank: *const i64,
    dout: *const c_void,
    out: *mut c_void,
    dw: *mut c_void,
    tokens: i64,
    k: i64,
    width: i64,
    /// 0: bf16, 1: fp32.
    dtype: i32,
    device: i32,
    backward: i32,
}

type Launcher = unsafe extern "C" fn(*const Launch, *mut c_char, usize) -> c_int;

extern "C" {
    fn oskern_combine_rows(
        y: crate::Handle,
        w: crate::Handle,
        rank: crate::Handle,
        order: crate::Handle,
        launcher: Option<Launcher>,
        out: *mut crate::Handle,
    ) -> *mut c_char;
}

/// out[t] = sum_s w[t, s] * y[rank[t*k + s]] for `y` [t*k, H], `w` [t, k] (y's dtype), `rank`
/// [t*k] a permutation and `order` its inverse: [t, H], differentiable with respect to `y` and
/// `w`. With `kernel`, on CUDA in bf16 or fp32, both passes are the NVRTC kernels; otherwise ATen's
/// index_select and bmm (the backward's gather by `order`).
pub fn combine_rows(y: &Tensor, w: &Tensor, rank: &Tensor, order: &Tensor, kernel: bool) -> Result<Tensor, TchError> {
    crate::one_output(|out| unsafe { oskern_combine_rows(crate::h(y), crate::h(w), crate::h(rank), crate::h(order), kernel.then_some(launch as Launcher), out) })
}


static PROGRAM: Program = Program { name: "combine", source: include_str!("../cuda/combine.cu") };

/// Threads per block: 8 warps, a token each.
const THREADS: u32 = 256;

/// The kernel for a launch: dtype, and 16-byte vectors where every row start is 16-byte aligned.
fn plan(l: &Launch) -> String {
    let (ty, size) = if l.dtype == 0 { ("bf16", 2i64) } else { ("f32", 4) };
    let mut pointers = vec![l.y as usize, l.out as usize];
    if l.backward != 0 {
        pointers.push(l.dout as usize);
    }
    let aligned = pointers.iter().all(|p| p % 16 == 0) && l.width % (16 / size) == 0;
    format!("combine_{ty}_{}_{}", if aligned { "v" } else { "s" }, if l.backward != 0 { "bwd" } else { "fwd" })
}

fn run(l: &Launch) -> Result<(), TchError> {
    if l.tokens == 0 || (l.width == 0 && l.backward == 0) {
        return Ok(());
    }
    if !(1..=32).contains(&l.k) {
        return Err(TchError::Torch(format!("combine kernel: {} slots per token (1 to 32 supported)", l.k)));
    }
    let device = l.device as usize;
    let f = nvrtc::function(&PROGRAM, &plan(l), device)?;
    let blocks = u32::try_from((l.tokens as u64).div_ceil((THREADS / 32) as u64)).map_err(|_| TchError::Torch(format!("combine kernel: {} tokens", l.tokens)))?;
    let args = Args::new().arg(l.y).arg(l.w).arg(l.rank).arg(l.dout).arg(l.out).arg(l.dw).arg(l.tokens).arg(l.k).arg(l.width);
    // Safety: the arguments are the kernel's parameters in order; the shim keeps the tensors alive
    // until the launch is queued and torch's allocator orders their reuse on the stream.
    unsafe { nvrtc::launch(f, blocks, THREADS, 0, device, args) }
}

/// The launcher the shim calls (see [`nvrtc::shim_launcher`]).
unsafe extern "C" fn launch(l: *const Launch, err: *mut c_char, cap: usize) -> c_int {
    // Safety: the shim passes a valid `Launch` and an error buffer of `cap` bytes.
    unsafe { nvrtc::shim_launcher("combine", err, cap, || run(&*l)) }
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
            y: at(4096),
            w: at(64),
            rank: std::ptr::null(),
            dout: at(0),
            out: at(8192),
            dw: at(0),
            tokens: 100,
            k: 6,
            width: 1280,
            dtype: 0,
            device: 0,
            backward: 0,
        };
        assert_eq!(plan(&l), "combine_bf16_v_fwd");
        (l.backward, l.dout) = (1, at(1024));
        assert_eq!(plan(&l), "combine_bf16_v_bwd");
        l.dout = at(1026);
        assert_eq!(plan(&l), "combine_bf16_s_bwd", "a misaligned gradient");
        (l.dout, l.width) = (at(1024), 1284);
        assert_eq!(plan(&l), "combine_bf16_s_bwd");
        l.dtype = 1;
        assert_eq!(plan(&l), "combine_f32_v_bwd");
        l.k = 33;
        assert!(run(&l).unwrap_err().to_string().contains("33 slots"));
    }
}
