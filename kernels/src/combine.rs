//! The MoE's combine step, out[t] = sum_s w[t, s] * y[rank[t*k + s]], as an autograd function
//! (`CombineRows` in `shim.cpp`): `y` [t*k, H] holds the experts' outputs in expert-sorted order,
//! `rank` where each (token, slot) pair sits among them. On CUDA in bf16 or fp32 (k <= 32) both
//! passes are one NVRTC kernel each, launched through [`launch`] (a function pointer handed to the
//! shim with each call): a warp per token reads its k rows with 16-byte loads where alignment
//! allows and sums them in fp32; the backward pass writes dy[rank[t*k + s]] = w[t, s] * dout[t]
//! straight at the permuted rows (rounded once, as the product is) and dw[t, s] = dout[t] . y[rank]
//! summed in fp32 and rounded to y's dtype. Only `y`, `w` and `rank` are kept for the backward
//! pass. Elsewhere (or when no launcher is given) ATen operations: a gather and a batched product.

use crate::nvrtc::{self, Program, BF16};
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
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

const KERNEL: &str = r#"
__device__ __forceinline__ float load(bf16 x) { return bf16_to_f32(x); }
__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ void store(bf16& d, float x) { d = f32_to_bf16(x); }
__device__ __forceinline__ void store(float& d, float x) { d = x; }

// N values of T: 16 bytes in one access, or one value (unaligned rows).
template <typename T, int N> __device__ __forceinline__ void copy_in(T* dst, const T* src) {
    if constexpr (N * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
        for (int j = 0; j < N; j++) dst[j] = src[j];
    }
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// A warp per token; lane s < k holds the token's slot s (its row of y and its weight), the others
// pass them round by shuffles. The lanes walk the row N columns at a time, 32 chunks apart.
template <typename T, int N>
__device__ void forward(const T* y, const T* w, const long long* rank, T* out, long long tokens, int k, long long width) {
    const int lane = threadIdx.x & 31;
    const long long t = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= tokens) return;
    long long my_row = 0;
    float my_w = 0.0f;
    if (lane < k) {
        my_row = rank[t * k + lane];
        my_w = load(w[t * k + lane]);
    }
    const long long cols = width / N;
    for (long long c0 = 0; c0 < cols; c0 += 32) {
        const long long c = (c0 + lane) * N;
        const bool live = c0 + lane < cols;
        float acc[N];
        #pragma unroll
        for (int j = 0; j < N; j++) acc[j] = 0.0f;
        #pragma unroll 4
        for (int s = 0; s < k; s++) {  // unrolled: the slots' loads in flight together
            const long long r = __shfl_sync(0xffffffffu, my_row, s);
            const float ws = __shfl_sync(0xffffffffu, my_w, s);
            if (live) {
                __align__(16) T v[N];
                copy_in<T, N>(v, y + r * width + c);
                #pragma unroll
                for (int j = 0; j < N; j++) acc[j] += ws * load(v[j]);
            }
        }
        if (live) {
            __align__(16) T o[N];
            #pragma unroll
            for (int j = 0; j < N; j++) store(o[j], acc[j]);
            copy_in<T, N>(out + t * width + c, o);
        }
    }
}

// dy[rank[t*k + s]] = round(w[t, s] * dout[t]) at the permuted rows; dw[t, s] = dout[t] . y[rank]
// in fp32: each chunk's partial sum is summed over the warp and kept by lane s.
template <typename T, int N>
__device__ void backward(const T* y, const T* w, const long long* rank, const T* dout, T* dy, T* dw, long long tokens, int k,
                         long long width) {
    const int lane = threadIdx.x & 31;
    const long long t = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= tokens) return;
    long long my_row = 0;
    float my_w = 0.0f, my_dot = 0.0f;
    if (lane < k) {
        my_row = rank[t * k + lane];
        my_w = load(w[t * k + lane]);
    }
    const long long cols = width / N;
    for (long long c0 = 0; c0 < cols; c0 += 32) {
        const long long c = (c0 + lane) * N;
        const bool live = c0 + lane < cols;
        __align__(16) T d[N];
        if (live) copy_in<T, N>(d, dout + t * width + c);
        #pragma unroll 4
        for (int s = 0; s < k; s++) {
            const long long r = __shfl_sync(0xffffffffu, my_row, s);
            const float ws = __shfl_sync(0xffffffffu, my_w, s);
            float part = 0.0f;
            if (live) {
                __align__(16) T v[N], o[N];
                copy_in<T, N>(v, y + r * width + c);
                #pragma unroll
                for (int j = 0; j < N; j++) {
                    const float g = load(d[j]);
                    store(o[j], ws * g);
                    part += g * load(v[j]);
                }
                copy_in<T, N>(dy + r * width + c, o);
            }
            part = warp_sum(part);
            if (lane == s) my_dot += part;
        }
    }
    if (lane < k) store(dw[t * k + lane], my_dot);
}

#define COMBINE(name, T, N)                                                                                            \
extern "C" __global__ void name##_fwd(const T* y, const T* w, const long long* rank, const T* dout, T* out, T* dw,     \
                                      long long tokens, long long k, long long width) {                               \
    forward<T, N>(y, w, rank, out, tokens, (int)k, width);                                                             \
}                                                                                                                      \
extern "C" __global__ void name##_bwd(const T* y, const T* w, const long long* rank, const T* dout, T* out, T* dw,     \
                                      long long tokens, long long k, long long width) {                               \
    backward<T, N>(y, w, rank, dout, out, dw, tokens, (int)k, width);                                                  \
}
COMBINE(combine_bf16_v, bf16, 8)
COMBINE(combine_bf16_s, bf16, 1)
COMBINE(combine_f32_v, float, 4)
COMBINE(combine_f32_s, float, 1)
"#;

fn program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| Program { name: "combine", source: Box::leak(format!("{BF16}{KERNEL}").into_boxed_str()) })
}

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
    let f = nvrtc::function(program(), &plan(l), device)?;
    let blocks = u32::try_from((l.tokens as u64).div_ceil((THREADS / 32) as u64)).map_err(|_| TchError::Torch(format!("combine kernel: {} tokens", l.tokens)))?;
    let (mut y, mut w, mut rank, mut dout, mut out, mut dw) = (l.y, l.w, l.rank, l.dout, l.out, l.dw);
    let (mut tokens, mut k, mut width) = (l.tokens, l.k, l.width);
    let mut args: Vec<*mut c_void> = vec![
        (&mut y as *mut *const c_void).cast(),
        (&mut w as *mut *const c_void).cast(),
        (&mut rank as *mut *const i64).cast(),
        (&mut dout as *mut *const c_void).cast(),
        (&mut out as *mut *mut c_void).cast(),
        (&mut dw as *mut *mut c_void).cast(),
        (&mut tokens as *mut i64).cast(),
        (&mut k as *mut i64).cast(),
        (&mut width as *mut i64).cast(),
    ];
    // Safety: the arguments are the kernel's parameters in order; the shim keeps the tensors alive
    // until the launch is queued and torch's allocator orders their reuse on the stream.
    unsafe { nvrtc::launch(f, blocks, THREADS, device, &mut args) }
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
        let code = nvrtc::compile(program(), 90).unwrap();
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
