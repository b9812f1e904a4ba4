// combine.cu: the kernels of kernels/src/combine.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"
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
