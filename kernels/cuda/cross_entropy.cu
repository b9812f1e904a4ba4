// cross_entropy.cu: the kernels of kernels/src/cross_entropy.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"
#define THREADS 1024
#define LOGPROB_THREADS 512
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

// logits [rows, cols] bf16, rows 16-byte aligned (cols % 8 == 0); targets [rows]; logprob [rows]:
// each row's log-probability of its target over the first `vocab` columns, the row read once and
// not written (scoring: no gradient). One block of LOGPROB_THREADS per row, no shared-memory copy
// of the row, so that several blocks share an SM and keep more loads in flight.
extern "C" __global__ void __launch_bounds__(LOGPROB_THREADS)
target_logprob(const bf16* logits, const long long* targets, float* logprob, long long cols, long long vocab) {
    __shared__ float warp_m[32], warp_s[32];
    const long long row = blockIdx.x;
    const uint4* x = reinterpret_cast<const uint4*>(logits + row * cols);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nvalid = (int)((vocab + 7) / 8);
    float m = NEG_INF, s = 0.0f;
    for (int base = tid; base < nvalid; base += 4 * LOGPROB_THREADS) {
        uint4 r[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            const int v = base + k * LOGPROB_THREADS;
            if (v < nvalid) r[k] = load_streaming(x + v);
        }
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            const int v = base + k * LOGPROB_THREADS;
            if (v < nvalid) accumulate(r[k], 8ll * v, vocab, m, s);
        }
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) { warp_m[warp] = m; warp_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        const bool used = lane < LOGPROB_THREADS / 32;
        m = used ? warp_m[lane] : NEG_INF; s = used ? warp_s[lane] : 0.0f;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) {
            const long long t = targets[row];
            logprob[row] = (t >= 0 && t < vocab) ? bf16_to_f32(logits[row * cols + t]) - m - logf(s) : __int_as_float(0x7fc00000);
        }
    }
}
