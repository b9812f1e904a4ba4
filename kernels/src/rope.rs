//! MLA's query and key joins with rotary embeddings, as autograd functions (`RopeQuery` and
//! `RopeKey` in `shim.cpp`) over the projections' [B, T, H, d] layout:
//!
//! - [`rope_query`]: q [B, T, H, nope + rope] -> [q_nope | rotate(q_rope)], contiguous;
//! - [`rope_key`]: kv [B, T, H, nope + v] and the shared k_pe [B, T, rope] -> the key
//!   [kv_nope | rotate(k_pe) on every head], contiguous, and the values (a view of kv).
//!
//! On CUDA in bf16 or fp32 each pass is one NVRTC kernel launched through [`launch`] (a function
//! pointer handed to the shim with each call): the forward passes copy the nope part and rotate the
//! rope part in one pass; the query's backward copies and rotates back; the key's backward writes
//! kv's gradient [nope | v] in one tensor and rotates back k_pe's gradient summed over heads. Only
//! the cos/sin tables are kept for the backward passes. Elsewhere (or without a launcher) the same
//! steps as ATen operations. Rotations round where the tensor-op composition (`Rope::apply` of
//! openseek-model) rounds: each product, then their sum, in the storage dtype.
//!
//! Pairs: interleaved (`rope_interleave`), pair i is (x[2i], x[2i+1]); otherwise (x[i], x[i + rope/2]).
//! The rotated output lists the pairs' first members, then their second members, in both layouts.

use crate::nvrtc::{self, Args, Program};
use std::ffi::{c_char, c_int, c_void};
use tch::{TchError, Tensor};

/// One launch as the shim describes it (`RopeLaunch` in `shim.cpp`). Rows are (token, head)
/// pairs, `rows` = tokens in all * heads, token-major; last dimensions contiguous, strides in elements.
///
/// - mode 0 (query forward): `x` q rows [rows, nope + rope] -> `out` [rows, nope + rope];
/// - mode 1 (query backward): `x` the output's gradient [rows, nope + rope] -> `out` dq;
/// - mode 2 (key forward): `x` kv rows [rows, nope + v], `pe` [tokens, rope] -> `out` [rows, nope + rope];
/// - mode 3 (key backward): `x` dk [rows, nope + rope], `dv` [rows, v] -> `out` dkv [rows, nope + v]
///   and `dpe` [tokens, rope].
///
/// cos/sin are [Bc, T, rope] contiguous, Bc 1 (shared by the batch, `cos_batch_stride` 0) or B.
#[repr(C)]
pub struct Launch {
    x: *const c_void,
    pe: *const c_void,
    dv: *const c_void,
    cos: *const c_void,
    sin: *const c_void,
    out: *mut c_void,
    dpe: *mut c_void,
    rows: i64,
    /// T: positions per sequence (the cos/sin tables' rows).
    tokens: i64,
    heads: i64,
    nope: i64,
    rope: i64,
    v: i64,
    x_stride: i64,
    pe_stride: i64,
    cos_batch_stride: i64,
    /// 0: bf16, 1: fp32.
    dtype: i32,
    device: i32,
    mode: i32,
    interleave: i32,
}

type Launcher = unsafe extern "C" fn(*const Launch, *mut c_char, usize) -> c_int;

extern "C" {
    fn oskern_rope_query(q: crate::Handle, cos: crate::Handle, sin: crate::Handle, nope: i64, interleave: bool, launcher: Option<Launcher>, out: *mut crate::Handle) -> *mut c_char;
    fn oskern_rope_key(
        kv: crate::Handle,
        pe: crate::Handle,
        cos: crate::Handle,
        sin: crate::Handle,
        nope: i64,
        interleave: bool,
        launcher: Option<Launcher>,
        out: *mut crate::Handle,
    ) -> *mut c_char;
}

/// The query [B, T, H, nope + rope] with its last `rope` columns rotated by `cos`/`sin` ([T, rope]
/// or [B, T, rope], in q's dtype), contiguous. Differentiable with respect to `q`. With `kernel`,
/// on CUDA in bf16 or fp32, both passes are NVRTC kernels; otherwise ATen operations.
pub fn rope_query(q: &Tensor, cos: &Tensor, sin: &Tensor, nope: i64, interleave: bool, kernel: bool) -> Result<Tensor, TchError> {
    crate::one_output(|out| unsafe { oskern_rope_query(crate::h(q), crate::h(cos), crate::h(sin), nope, interleave, kernel.then_some(launch as Launcher), out) })
}

/// The key [B, T, H, nope + rope] (kv's first `nope` columns, then `pe` [B, T, rope] rotated by
/// `cos`/`sin` and repeated on every head), contiguous, and the values kv[..., nope:] (a view of
/// `kv` [B, T, H, nope + v]). Differentiable with respect to `kv` and `pe`; kv's gradient comes back
/// in one tensor. `kernel` as in [`rope_query`].
pub fn rope_key(kv: &Tensor, pe: &Tensor, cos: &Tensor, sin: &Tensor, nope: i64, interleave: bool, kernel: bool) -> Result<(Tensor, Tensor), TchError> {
    let mut out: [crate::Handle; 2] = [std::ptr::null_mut(); 2];
    crate::check(unsafe {
        oskern_rope_key(crate::h(kv), crate::h(pe), crate::h(cos), crate::h(sin), nope, interleave, kernel.then_some(launch as Launcher), out.as_mut_ptr())
    })?;
    let [k, v] = out.map(|p| unsafe { Tensor::from_ptr(p) });
    Ok((k, v))
}


static PROGRAM: Program = Program { name: "rope", source: include_str!("../cuda/rope.cu") };

const THREADS: u32 = 256;
/// Blocks at most per launch (a grid-stride loop covers the rest).
const MAX_BLOCKS: u64 = 1 << 16;

/// The kernel for a launch and the values each thread takes: dtype, 16-byte vectors where every
/// pointer, stride and part width allows them, 32-bit indexing where offsets and the thread count fit.
fn plan(l: &Launch) -> (String, i64) {
    let (ty, size) = if l.dtype == 0 { ("bf16", 2i64) } else { ("f32", 4) };
    let per = 16 / size;
    let pointers = [l.x as usize, l.pe as usize, l.dv as usize, l.cos as usize, l.sin as usize, l.out as usize, l.dpe as usize];
    let aligned = pointers.iter().all(|p| p % 16 == 0)
        && [l.nope, l.rope / 2, l.v, l.x_stride, l.pe_stride, l.cos_batch_stride].iter().all(|s| s % per == 0);
    let width = l.x_stride.max(l.nope + l.rope).max(l.nope + l.v);
    let span = l.rows.saturating_mul(width).max(l.rows.saturating_mul(l.pe_stride.max(l.rope)));
    let (shape, per) = match (aligned, span < u32::MAX as i64) {
        (false, _) => ("s", 1),
        (true, true) => ("v", per),
        (true, false) => ("v_wide", per),
    };
    (format!("rope_{ty}_{shape}_{}", l.mode), per)
}

fn run(l: &Launch) -> Result<(), TchError> {
    if l.rows == 0 {
        return Ok(());
    }
    let (name, per) = plan(l);
    let device = l.device as usize;
    let f = nvrtc::function(&PROGRAM, &name, device)?;
    let (half_units, nope_units) = (l.rope / 2 / per, l.nope / per);
    let threads_needed = if l.mode == 3 { l.rows * (nope_units + l.v / per) + l.rows / l.heads * half_units } else { l.rows * (nope_units + half_units) } as u64;
    let blocks = threads_needed.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
    let mut args = Args::new().arg(l.x).arg(l.pe).arg(l.dv).arg(l.cos).arg(l.sin).arg(l.out).arg(l.dpe);
    for dim in [l.rows, l.tokens, l.heads, l.nope, l.rope, l.v, l.x_stride, l.pe_stride, l.cos_batch_stride] {
        args = args.arg(dim);
    }
    let args = args.arg(l.interleave);
    // Safety: the arguments are the kernel's parameters in order; the shim keeps the tensors alive
    // until the launch is queued and torch's allocator orders their reuse on the stream.
    unsafe { nvrtc::launch(f, blocks, THREADS, 0, device, args) }
}

/// The launcher the shim calls (see [`nvrtc::shim_launcher`]).
unsafe extern "C" fn launch(l: *const Launch, err: *mut c_char, cap: usize) -> c_int {
    // Safety: the shim passes a valid `Launch` and an error buffer of `cap` bytes.
    unsafe { nvrtc::shim_launcher("rope", err, cap, || run(&*l)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU), and launches take 16-byte vectors only
    /// where every pointer, stride and part width allows.
    #[test]
    fn kernels_compile_and_vectorise_aligned_rows() {
        let code = nvrtc::compile(&PROGRAM, 90).unwrap();
        assert!(!code.is_empty());
        let at = |p: usize| p as *mut c_void;
        let mut l = Launch {
            x: at(4096),
            pe: at(0),
            dv: at(0),
            cos: at(1 << 20),
            sin: at(1 << 21),
            out: at(8192),
            dpe: at(0),
            rows: 16384 * 10,
            tokens: 4096,
            heads: 10,
            nope: 128,
            rope: 64,
            v: 0,
            x_stride: 192,
            pe_stride: 0,
            cos_batch_stride: 0,
            dtype: 0,
            device: 0,
            mode: 0,
            interleave: 1,
        };
        assert_eq!(plan(&l), ("rope_bf16_v_0".to_string(), 8));
        (l.mode, l.pe, l.pe_stride, l.x_stride, l.v) = (2, at(1 << 22), 576, 256, 128);
        assert_eq!(plan(&l).0, "rope_bf16_v_2");
        l.pe = at((1 << 22) + 2 * 512);
        assert_eq!(plan(&l).0, "rope_bf16_v_2", "k_pe after the 512 latent columns");
        l.pe_stride = 577;
        assert_eq!(plan(&l), ("rope_bf16_s_2".to_string(), 1), "an odd row stride");
        (l.pe_stride, l.rows) = (576, 10_000_000);
        assert_eq!(plan(&l).0, "rope_bf16_v_wide_2");
        (l.rows, l.rope, l.dtype) = (30, 12, 1);
        assert_eq!(plan(&l).0, "rope_f32_s_2", "6 pairs do not fill 4-wide vectors");
        (l.rope, l.mode, l.dv) = (16, 3, at(8));
        assert_eq!(plan(&l).0, "rope_f32_s_3", "a misaligned gradient");
    }
}
