//! The LM head's softmax and cross entropy for a chunk of tokens in one pass over the logits (an
//! NVRTC kernel, CUDA): each row of bf16 logits is overwritten in place with the loss' gradient
//! with respect to the logits, softmax - one-hot (computed in fp32, rounded once), and the label's
//! log-probability comes out in fp32 (logit - max - log(sum exp), not the log of a rounded
//! probability). Columns from `vocab` on are padding: probability 0, written 0, never read.
//!
//! One block of 1024 threads per row: a first pass reads the row (16 bytes per access) for its
//! maximum and sum of exponentials, keeping as much of it as fits in shared memory (224 KiB of
//! a 300 KiB row on an H100); a second pass writes the probabilities, re-reading from global
//! memory (then mostly L2) only the part that did not fit, last-read first.

use crate::nvrtc::{self, Program, BF16};
use cudarc::driver::result as cu;
use cudarc::driver::sys::CUdevice_attribute;
use std::ffi::c_void;
use std::sync::OnceLock;
use tch::{Device, Kind, TchError, Tensor};

const KERNEL: &str = r#"
#define THREADS 1024
#define LOG2E 1.4426950408889634f
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
// Round to nearest even, as torch casts: lo in the low half.
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    unsigned int r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
    uint4 r; asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p)); return r;
}
__device__ __forceinline__ void store_streaming(uint4* p, uint4 v) {
    asm volatile("st.global.cs.v4.u32 [%0], {%1,%2,%3,%4};" :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
__device__ __forceinline__ void unpack8(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// The running (max, sum of exp(x - max)) merged with another.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    const float M = fmaxf(m, m2);
    if (M == NEG_INF) return;
    s = s * ex2((m - M) * LOG2E) + s2 * ex2((m2 - M) * LOG2E);
    m = M;
}

// Eight logits from column c into the running (max, sum); columns from vocab on count as -inf.
__device__ __forceinline__ void accumulate(uint4 v, long long c, long long vocab, float& m, float& s) {
    float f[8];
    unpack8(v, f);
    if (c + 8 > vocab) {
        #pragma unroll
        for (int i = 0; i < 8; i++) if (c + i >= vocab) f[i] = NEG_INF;
    }
    float top = f[0];
    #pragma unroll
    for (int i = 1; i < 8; i++) top = fmaxf(top, f[i]);
    if (top > m) { s *= ex2((m - top) * LOG2E); m = top; }
    const float mb = m * LOG2E;
    #pragma unroll
    for (int i = 0; i < 8; i++) s += ex2(fmaf(f[i], LOG2E, -mb));
}

// Eight logits from column c as softmax - one-hot (target t), 0 from vocab on.
__device__ __forceinline__ uint4 gradient(uint4 v, long long c, long long vocab, long long t, float mb, float inv) {
    float f[8];
    unpack8(v, f);
    #pragma unroll
    for (int i = 0; i < 8; i++) f[i] = ex2(fmaf(f[i], LOG2E, -mb)) * inv;
    if (c + 8 > vocab) {
        #pragma unroll
        for (int i = 0; i < 8; i++) if (c + i >= vocab) f[i] = 0.0f;
    }
    if ((unsigned long long)(t - c) < 8ull) {
        #pragma unroll
        for (int i = 0; i < 8; i++) if (c + i == t) f[i] -= 1.0f;
    }
    return make_uint4(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]), pack_bf16x2(f[4], f[5]), pack_bf16x2(f[6], f[7]));
}

// logits [rows, cols] bf16, rows 16-byte aligned (cols % 8 == 0); targets [rows]; logprob [rows].
// One block of THREADS per row; `cache_vecs` 16-byte vectors of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
softmax_cross_entropy(bf16* logits, const long long* targets, float* logprob, long long cols, long long vocab, int cache_vecs) {
    extern __shared__ uint4 cache[];
    __shared__ float warp_m[32], warp_s[32];
    const long long row = blockIdx.x;
    uint4* x = reinterpret_cast<uint4*>(logits + row * cols);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nvec = (int)(cols / 8), nvalid = (int)((vocab + 7) / 8);
    const int cached = min(cache_vecs, nvalid);
    const long long t = targets[row];
    const bool t_valid = t >= 0 && t < vocab;
    // Read before the barrier below, after which the row is overwritten.
    const float x_t = (tid == 0 && t_valid) ? bf16_to_f32(logits[row * cols + t]) : 0.0f;

    // Pass 1: max and sum of exp; four loads in flight per thread. The part that fits is kept in
    // shared memory and not read from global memory again.
    float m = NEG_INF, s = 0.0f;
    for (int base = tid; base < nvalid; base += 4 * THREADS) {
        uint4 r[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            const int v = base + k * THREADS;
            if (v < cached) r[k] = load_streaming(x + v);
            else if (v < nvalid) r[k] = x[v];
        }
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            const int v = base + k * THREADS;
            if (v < nvalid) {
                if (v < cached) cache[v] = r[k];
                accumulate(r[k], 8ll * v, vocab, m, s);
            }
        }
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) { warp_m[warp] = m; warp_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = warp_m[lane]; s = warp_s[lane];
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) {
            warp_m[0] = m; warp_s[0] = s;
            logprob[row] = t_valid ? x_t - m - logf(s) : __int_as_float(0x7fc00000);
        }
    }
    __syncthreads();
    m = warp_m[0]; s = warp_s[0];
    const float mb = m * LOG2E, inv = 1.0f / s;

    // Pass 2: the uncached part first, from the thread's last vector down (the most recently read
    // first, for L2), padding vectors written as zeros; then the shared-memory part.
    if (tid < nvec) {
        const int last = tid + (nvec - 1 - tid) / THREADS * THREADS;
        for (int base = last; base >= cached; base -= 4 * THREADS) {
            uint4 r[4];
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int v = base - k * THREADS;
                if (v >= cached && v < nvalid) r[k] = load_streaming(x + v);
            }
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int v = base - k * THREADS;
                if (v >= cached) store_streaming(x + v, v < nvalid ? gradient(r[k], 8ll * v, vocab, t, mb, inv) : make_uint4(0, 0, 0, 0));
            }
        }
    }
    for (int v = tid; v < cached; v += THREADS) store_streaming(x + v, gradient(cache[v], 8ll * v, vocab, t, mb, inv));
}
"#;

fn program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| Program { name: "cross_entropy", source: Box::leak(format!("{BF16}{KERNEL}").into_boxed_str()) })
}

const THREADS: u32 = 1024;

/// Shared memory a block of `device` may have (the opt-in maximum), less 1 KiB for the kernel's
/// own reduction scratch.
fn shared_bytes(device: usize) -> Result<usize, TchError> {
    let attr = || {
        cu::init()?;
        let dev = cu::device::get(device as i32)?;
        // Safety: a valid device and attribute.
        unsafe { cu::device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) }
    };
    let bytes = attr().map_err(|e| TchError::Torch(format!("CUDA shared memory per block: {e:?}")))?;
    Ok((bytes as usize).saturating_sub(1024))
}

/// Overwrite `logits` ([rows, cols] bf16, contiguous, CUDA; cols a multiple of 8) with softmax -
/// one-hot of each row's target, in place, and return the targets' log-probabilities (fp32
/// [rows]). `targets` holds one int64 per row (any shape of `rows` values, contiguous), each in
/// `[0, vocab)` (the caller clamps ignored labels to a valid index and masks their loss; an index
/// outside gives a NaN log-probability and no -1 in its row). Columns from `vocab` on are padding:
/// they are not read and come out 0. The softmax is computed in fp32 and each value rounded once
/// to bf16 (the target's p - 1 too). Runs on the device's current stream.
pub fn softmax_cross_entropy(logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<Tensor, TchError> {
    softmax_cross_entropy_cached(logits, targets, vocab, None)
}

/// [`softmax_cross_entropy`] with at most `cache_bytes` of a row kept in shared memory between
/// the passes (`None`: all the device allows): the GPU test's measure of what the cache gains.
#[doc(hidden)]
pub fn softmax_cross_entropy_cached(logits: &Tensor, targets: &Tensor, vocab: i64, cache_bytes: Option<usize>) -> Result<Tensor, TchError> {
    let fail = |msg: String| Err(TchError::Shape(format!("softmax_cross_entropy: {msg}")));
    let size = logits.size();
    let &[rows, cols] = size.as_slice() else {
        return fail(format!("logits are {size:?}; expected [rows, cols]"));
    };
    if logits.kind() != Kind::BFloat16 || !logits.is_contiguous() {
        return fail(format!("logits are {:?}{}; expected contiguous bf16", logits.kind(), if logits.is_contiguous() { "" } else { " (not contiguous)" }));
    }
    if cols % 8 != 0 {
        return fail(format!("logits have {cols} columns; the kernel reads rows 16 bytes at a time and needs a multiple of 8 (pad the head)"));
    }
    if !(1..=cols).contains(&vocab) {
        return fail(format!("vocab {vocab} outside 1..={cols} (the logits' columns)"));
    }
    if targets.kind() != Kind::Int64 || targets.numel() != rows as usize || !targets.is_contiguous() {
        return fail(format!("targets are {:?} {:?}; expected {rows} contiguous int64 values", targets.kind(), targets.size()));
    }
    let device = logits.device();
    let Device::Cuda(ordinal) = device else {
        return fail(format!("runs on CUDA; the logits are on {device:?}"));
    };
    if targets.device() != device {
        return fail(format!("targets are on {:?}, logits on {device:?}", targets.device()));
    }
    if !(logits.data_ptr() as usize).is_multiple_of(16) {
        return fail("the logits' storage is not 16-byte aligned".into());
    }
    if i32::try_from(cols / 8).is_err() || u32::try_from(rows).is_err() {
        return fail(format!("logits of {rows} x {cols} are too large"));
    }
    let logprob = Tensor::empty([rows], (Kind::Float, device));
    if rows == 0 {
        return Ok(logprob);
    }
    let row_bytes = (vocab as usize).div_ceil(8) * 16;
    let bytes = shared_bytes(ordinal)?.min(cache_bytes.unwrap_or(usize::MAX)).min(row_bytes) / 16 * 16;
    let f = nvrtc::function(program(), "softmax_cross_entropy", ordinal)?;
    let (mut x, mut t, mut out) = (logits.data_ptr(), targets.data_ptr(), logprob.data_ptr());
    let (mut cols, mut vocab, mut cache_vecs) = (cols, vocab, (bytes / 16) as i32);
    let mut args: Vec<*mut c_void> = vec![
        (&mut x as *mut *mut c_void).cast(),
        (&mut t as *mut *mut c_void).cast(),
        (&mut out as *mut *mut c_void).cast(),
        (&mut cols as *mut i64).cast(),
        (&mut vocab as *mut i64).cast(),
        (&mut cache_vecs as *mut i32).cast(),
    ];
    // Safety: the arguments are the kernel's parameters in order; the tensors outlive the launch
    // (the caller's, and torch's allocator orders reuse of `logprob` on the stream).
    unsafe { nvrtc::launch_shared(f, rows as u32, THREADS, bytes as u32, ordinal, &mut args)? };
    Ok(logprob)
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

    /// Inputs the kernel cannot take are errors that say what is wrong.
    #[test]
    fn bad_inputs_are_clear_errors() {
        let t = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        let err = |logits: &Tensor, targets: &Tensor, vocab: i64| softmax_cross_entropy(logits, targets, vocab).unwrap_err().to_string();
        let bf16 = |cols: i64| Tensor::zeros([3, cols], (Kind::BFloat16, Device::Cpu));
        assert!(err(&bf16(12), &t, 10).contains("multiple of 8"));
        assert!(err(&bf16(16).to_kind(Kind::Float), &t, 10).contains("bf16"));
        assert!(err(&bf16(16), &t, 17).contains("vocab 17"));
        assert!(err(&bf16(16), &t.narrow(0, 0, 2), 10).contains("expected 3 contiguous int64"));
        assert!(err(&bf16(16), &t, 10).contains("runs on CUDA"));
    }
}
