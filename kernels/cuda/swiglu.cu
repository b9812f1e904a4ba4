// swiglu.cu: the kernels of kernels/src/swiglu.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"
__device__ __forceinline__ float load(bf16 x) { return bf16_to_f32(x); }
__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ void store(bf16& d, float x) { d = f32_to_bf16(x); }
__device__ __forceinline__ void store(float& d, float x) { d = x; }
// x as the storage type holds it (where ATen's composition writes a tensor and reads it back).
__device__ __forceinline__ float rounded(float x, bf16) { return bf16_to_f32(f32_to_bf16(x)); }
__device__ __forceinline__ float rounded(float x, float) { return x; }

// N values of T: 16 bytes in one access, or one value (unaligned rows).
template <typename T, int N> __device__ __forceinline__ void copy_in(T* dst, const T* src) {
    if constexpr (N * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
        for (int k = 0; k < N; k++) dst[k] = src[k];
    }
}

// silu as ATen computes it (opmath fp32): x / (1 + exp(-x)).
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Element (row, N*c .. N*c+N) of each half. Idx: the flat index type (32-bit when it fits).
template <typename T, int N, typename Idx>
__device__ void forward(const T* h, T* out, Idx rows, Idx inter, Idx h_stride, Idx out_stride) {
    const Idx cols = inter / N, total = rows * cols;
    for (Idx t = (Idx)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (Idx)gridDim.x * blockDim.x) {
        const Idx r = t / cols, c = (t - r * cols) * N;
        __align__(16) T g[N], u[N], o[N];
        copy_in<T, N>(g, h + r * h_stride + c);
        copy_in<T, N>(u, h + r * h_stride + inter + c);
        #pragma unroll
        for (int k = 0; k < N; k++) {
            const float s = rounded(silu(load(g[k])), T());
            store(o[k], s * load(u[k]));
        }
        copy_in<T, N>(out + r * out_stride + c, o);
    }
}

// dgate = silu_backward(round(dy * up), gate), dup = dy * round(silu(gate)): the composition's
// mul backward and silu_backward (sigmoid * (1 + x * (1 - sigmoid))), in its order.
template <typename T, int N, typename Idx>
__device__ void backward(const T* h, const T* dy, T* dh, Idx rows, Idx inter, Idx h_stride, Idx dy_stride, Idx dh_stride) {
    const Idx cols = inter / N, total = rows * cols;
    for (Idx t = (Idx)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (Idx)gridDim.x * blockDim.x) {
        const Idx r = t / cols, c = (t - r * cols) * N;
        __align__(16) T g[N], u[N], d[N], dg[N], du[N];
        copy_in<T, N>(g, h + r * h_stride + c);
        copy_in<T, N>(u, h + r * h_stride + inter + c);
        copy_in<T, N>(d, dy + r * dy_stride + c);
        #pragma unroll
        for (int k = 0; k < N; k++) {
            const float x = load(g[k]), grad = load(d[k]);
            const float s = rounded(silu(x), T());
            store(du[k], grad * s);
            const float gu = rounded(grad * load(u[k]), T());
            const float sig = 1.0f / (1.0f + expf(-x));
            store(dg[k], gu * sig * (1.0f + x * (1.0f - sig)));
        }
        copy_in<T, N>(dh + r * dh_stride + c, dg);
        copy_in<T, N>(dh + r * dh_stride + inter + c, du);
    }
}

#define SWIGLU(name, T, N, Idx)                                                                             \
extern "C" __global__ void name##_fwd(const T* h, const T* dy, T* out, long long rows, long long inter,   \
                                      long long hs, long long ds, long long os) {                         \
    forward<T, N, Idx>(h, out, rows, inter, hs, os);                                                       \
}                                                                                                          \
extern "C" __global__ void name##_bwd(const T* h, const T* dy, T* out, long long rows, long long inter,   \
                                      long long hs, long long ds, long long os) {                         \
    backward<T, N, Idx>(h, dy, out, rows, inter, hs, ds, os);                                              \
}
SWIGLU(swiglu_bf16_v, bf16, 8, unsigned int)
SWIGLU(swiglu_bf16_v_wide, bf16, 8, unsigned long long)
SWIGLU(swiglu_bf16_s, bf16, 1, unsigned long long)
SWIGLU(swiglu_f32_v, float, 4, unsigned int)
SWIGLU(swiglu_f32_v_wide, float, 4, unsigned long long)
SWIGLU(swiglu_f32_s, float, 1, unsigned long long)
