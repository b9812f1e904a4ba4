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

use crate::nvrtc::{self, Program, BF16};
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
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

const KERNEL: &str = r#"
__device__ __forceinline__ float load(bf16 x) { return bf16_to_f32(x); }
__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ void store(bf16& d, float x) { d = f32_to_bf16(x); }
__device__ __forceinline__ void store(float& d, float x) { d = x; }
// x as the storage type holds it (where the composition writes a tensor and reads it back).
__device__ __forceinline__ float R(float x, bf16) { return bf16_to_f32(f32_to_bf16(x)); }
__device__ __forceinline__ float R(float x, float) { return x; }
// A product rounded to fp32 on its own, as the composition's multiplication is: never contracted
// with the following add into an FMA.
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }

// N values of T: 16 bytes in one access, or one value.
template <typename T, int N> __device__ __forceinline__ void copy_in(T* dst, const T* src) {
    if constexpr (N * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
        for (int k = 0; k < N; k++) dst[k] = src[k];
    }
}

// Pairs p0 .. p0+N of a rope vector: a = first members, b = second members, as pairs (x[2i],
// x[2i+1]) or halves (x[i], x[half+i]).
template <typename T, int N, typename Idx>
__device__ __forceinline__ void load_pairs(const T* x, Idx half, Idx p0, bool pairs, float* a, float* b) {
    __align__(16) T u[2 * N];
    if (pairs) {
        copy_in<T, N>(u, x + 2 * p0);
        copy_in<T, N>(u + N, x + 2 * p0 + N);
        #pragma unroll
        for (int k = 0; k < N; k++) { a[k] = load(u[2 * k]); b[k] = load(u[2 * k + 1]); }
    } else {
        copy_in<T, N>(u, x + p0);
        copy_in<T, N>(u + N, x + half + p0);
        #pragma unroll
        for (int k = 0; k < N; k++) { a[k] = load(u[k]); b[k] = load(u[N + k]); }
    }
}

template <typename T, int N, typename Idx>
__device__ __forceinline__ void store_pairs(T* x, Idx half, Idx p0, bool pairs, const float* a, const float* b) {
    __align__(16) T u[2 * N];
    if (pairs) {
        #pragma unroll
        for (int k = 0; k < N; k++) { store(u[2 * k], a[k]); store(u[2 * k + 1], b[k]); }
        copy_in<T, N>(x + 2 * p0, u);
        copy_in<T, N>(x + 2 * p0 + N, u + N);
    } else {
        #pragma unroll
        for (int k = 0; k < N; k++) { store(u[k], a[k]); store(u[N + k], b[k]); }
        copy_in<T, N>(x + p0, u);
        copy_in<T, N>(x + half + p0, u + N);
    }
}

// cos/sin of pairs p0 .. p0+N: c1/s1 for the first members' outputs (columns p0..), c2/s2 for the
// second members' (columns half + p0.., or p0.. again when interleaved: the composition narrows
// the tables to their first half).
template <typename T, int N, typename Idx>
__device__ __forceinline__ void load_tables(const T* cos, const T* sin, Idx half, Idx p0, bool inter,
                                            float* c1, float* s1, float* c2, float* s2) {
    __align__(16) T u[N];
    const Idx second = inter ? p0 : half + p0;
    copy_in<T, N>(u, cos + p0);
    for (int k = 0; k < N; k++) c1[k] = load(u[k]);
    copy_in<T, N>(u, sin + p0);
    for (int k = 0; k < N; k++) s1[k] = load(u[k]);
    copy_in<T, N>(u, cos + second);
    for (int k = 0; k < N; k++) c2[k] = load(u[k]);
    copy_in<T, N>(u, sin + second);
    for (int k = 0; k < N; k++) s2[k] = load(u[k]);
}

// MODE 0: query forward, 1: query backward, 2: key forward, 3: key backward (`Launch` in rope.rs).
// Each thread takes N columns of the nope (or v) part of a row, or N pairs of its rope part; in
// mode 3 the threads after the rows' take N pairs of a token, summing its heads.
template <typename T, int N, typename Idx, int MODE>
__device__ void rope(const T* x, const T* pe, const T* dv, const T* cos, const T* sin, T* out, T* dpe,
                     Idx rows, Idx tokens, Idx heads, Idx nope, Idx rope, Idx v, Idx xs, Idx pes, Idx cbs, bool inter) {
    const Idx half = rope / 2, cn = nope / N, cr = half / N;
    const Idx row_units = MODE == 3 ? cn + v / N : cn + cr;
    const Idx ow = MODE == 3 ? nope + v : nope + rope;
    const Idx row_total = rows * row_units;
    const Idx total = MODE == 3 ? row_total + rows / heads * cr : row_total;
    for (Idx t = (Idx)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (Idx)gridDim.x * blockDim.x) {
        float a[N], b[N], c1[N], s1[N], c2[N], s2[N];
        if (MODE == 3 && t >= row_total) {
            const Idx i = t - row_total, tok = i / cr, p0 = (i - tok * cr) * N;
            #pragma unroll
            for (int k = 0; k < N; k++) { a[k] = 0.0f; b[k] = 0.0f; }
            for (Idx h = 0; h < heads; h++) {
                float da[N], db[N];
                load_pairs<T, N, Idx>(x + (tok * heads + h) * xs + nope, half, p0, false, da, db);
                #pragma unroll
                for (int k = 0; k < N; k++) { a[k] += da[k]; b[k] += db[k]; }
            }
            const Idx bi = tok / tokens, ti = tok - bi * tokens;
            load_tables<T, N, Idx>(cos + bi * cbs + ti * rope, sin + bi * cbs + ti * rope, half, p0, inter, c1, s1, c2, s2);
            float d1[N], d2[N];
            #pragma unroll
            for (int k = 0; k < N; k++) {
                const float ga = R(a[k], T()), gb = R(b[k], T());
                d1[k] = R(mul(ga, c1[k]), T()) + R(mul(gb, s2[k]), T());
                d2[k] = R(mul(gb, c2[k]), T()) - R(mul(ga, s1[k]), T());
            }
            store_pairs<T, N, Idx>(dpe + tok * rope, half, p0, inter, d1, d2);
            continue;
        }
        const Idx r = t / row_units, u = t - r * row_units;
        if (u < cn) {
            copy_in<T, N>(out + r * ow + u * N, x + r * xs + u * N);
            continue;
        }
        if (MODE == 3) {
            copy_in<T, N>(out + r * ow + nope + (u - cn) * N, dv + r * v + (u - cn) * N);
            continue;
        }
        const Idx p0 = (u - cn) * N, tok = r / heads, bi = tok / tokens, ti = tok - bi * tokens;
        load_tables<T, N, Idx>(cos + bi * cbs + ti * rope, sin + bi * cbs + ti * rope, half, p0, inter, c1, s1, c2, s2);
        float o1[N], o2[N];
        if (MODE == 1) {
            load_pairs<T, N, Idx>(x + r * xs + nope, half, p0, false, a, b);
            #pragma unroll
            for (int k = 0; k < N; k++) {
                o1[k] = R(mul(a[k], c1[k]), T()) + R(mul(b[k], s2[k]), T());
                o2[k] = R(mul(b[k], c2[k]), T()) - R(mul(a[k], s1[k]), T());
            }
            store_pairs<T, N, Idx>(out + r * ow + nope, half, p0, inter, o1, o2);
        } else {
            load_pairs<T, N, Idx>(MODE == 2 ? pe + tok * pes : x + r * xs + nope, half, p0, inter, a, b);
            #pragma unroll
            for (int k = 0; k < N; k++) {
                o1[k] = R(mul(a[k], c1[k]), T()) - R(mul(b[k], s1[k]), T());
                o2[k] = R(mul(b[k], c2[k]), T()) + R(mul(a[k], s2[k]), T());
            }
            store_pairs<T, N, Idx>(out + r * ow + nope, half, p0, false, o1, o2);
        }
    }
}

#define ROPE_MODE(name, T, N, Idx, MODE)                                                                    \
extern "C" __global__ void name(const T* x, const T* pe, const T* dv, const T* cos, const T* sin, T* out,    \
                                T* dpe, long long rows, long long tokens, long long heads, long long nope,   \
                                long long rope_dim, long long v, long long xs, long long pes, long long cbs, \
                                int inter) {                                                                 \
    rope<T, N, Idx, MODE>(x, pe, dv, cos, sin, out, dpe, rows, tokens, heads, nope, rope_dim, v, xs, pes,   \
                          cbs, inter != 0);                                                                  \
}
#define ROPE(name, T, N, Idx)          \
ROPE_MODE(name##_0, T, N, Idx, 0)      \
ROPE_MODE(name##_1, T, N, Idx, 1)      \
ROPE_MODE(name##_2, T, N, Idx, 2)      \
ROPE_MODE(name##_3, T, N, Idx, 3)
ROPE(rope_bf16_v, bf16, 8, unsigned int)
ROPE(rope_bf16_v_wide, bf16, 8, unsigned long long)
ROPE(rope_bf16_s, bf16, 1, unsigned long long)
ROPE(rope_f32_v, float, 4, unsigned int)
ROPE(rope_f32_v_wide, float, 4, unsigned long long)
ROPE(rope_f32_s, float, 1, unsigned long long)
"#;

fn program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| Program { name: "rope", source: Box::leak(format!("{BF16}{KERNEL}").into_boxed_str()) })
}

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
    let f = nvrtc::function(program(), &name, device)?;
    let (half_units, nope_units) = (l.rope / 2 / per, l.nope / per);
    let threads_needed = if l.mode == 3 { l.rows * (nope_units + l.v / per) + l.rows / l.heads * half_units } else { l.rows * (nope_units + half_units) } as u64;
    let blocks = threads_needed.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
    let (mut x, mut pe, mut dv, mut cos, mut sin, mut out, mut dpe) = (l.x, l.pe, l.dv, l.cos, l.sin, l.out, l.dpe);
    let mut dims = [l.rows, l.tokens, l.heads, l.nope, l.rope, l.v, l.x_stride, l.pe_stride, l.cos_batch_stride];
    let mut inter: c_int = l.interleave;
    let mut args: Vec<*mut c_void> = vec![
        (&mut x as *mut *const c_void).cast(),
        (&mut pe as *mut *const c_void).cast(),
        (&mut dv as *mut *const c_void).cast(),
        (&mut cos as *mut *const c_void).cast(),
        (&mut sin as *mut *const c_void).cast(),
        (&mut out as *mut *mut c_void).cast(),
        (&mut dpe as *mut *mut c_void).cast(),
    ];
    args.extend(dims.iter_mut().map(|d| (d as *mut i64).cast::<c_void>()));
    args.push((&mut inter as *mut c_int).cast());
    // Safety: the arguments are the kernel's parameters in order; the shim keeps the tensors alive
    // until the launch is queued and torch's allocator orders their reuse on the stream.
    unsafe { nvrtc::launch(f, blocks, THREADS, device, &mut args) }
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
        let code = nvrtc::compile(program(), 90).unwrap();
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
