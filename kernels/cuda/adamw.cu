// adamw.cu: the kernels of kernels/src/adamw.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"
struct Hyper { float lr_decay, beta1, beta2, step_size, bc2_sqrt, eps, grad_scale; };

__device__ __forceinline__ void update(float& w, float& m, float& v, float g, const Hyper& h) {
    g *= h.grad_scale;
    w -= h.lr_decay * w;
    m = h.beta1 * m + (1.0f - h.beta1) * g;
    v = h.beta2 * v + (1.0f - h.beta2) * g * g;
    const float denom = sqrtf(v) / h.bc2_sqrt + h.eps;
    w -= h.step_size * m / denom;
}

// The sum over a block of each thread's `x`, returned to thread 0 (blocks of 256 threads).
__device__ float block_sum(float x) {
    __shared__ float warp_sums[8];
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = x;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0) for (int i = 0; i < (int)(blockDim.x >> 5); i++) total += warp_sums[i];
    return total;
}

// w: n fp32 values; m, v: the moments, n fp32 or bf16 values (the arithmetic is fp32 either way);
// g: the gradient; copy: null, or n bf16 values rewritten from w. With vec, every pointer is
// 16-byte aligned (8 for bf16) and four values move per access. sumsq: null, or one fp32 per
// block: the block's sum of the updated weights' squares (the parameter norm without another pass
// over the weights).
template <typename G, typename M>
__device__ void adamw(float* w, bf16* copy, const G* g, M* m, M* v, long long n, Hyper h, int vec, float* sumsq) {
    float squares = 0.0f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = first; i < n4; i += stride) {
            float4 W = load4(w, i), M4 = load4(m, i), V4 = load4(v, i);
            const float4 G4 = load4(g, i);
            update(W.x, M4.x, V4.x, G4.x, h);
            update(W.y, M4.y, V4.y, G4.y, h);
            update(W.z, M4.z, V4.z, G4.z, h);
            update(W.w, M4.w, V4.w, G4.w, h);
            store4(w, i, W);
            squares += W.x * W.x + W.y * W.y + W.z * W.z + W.w * W.w;
            store4(m, i, M4);
            store4(v, i, V4);
            if (copy) store4(copy, i, W);
        }
        done = n4 * 4;
    }
    for (long long i = done + first; i < n; i += stride) {
        float W = w[i], M1 = load1(m, i), V1 = load1(v, i);
        update(W, M1, V1, load1(g, i), h);
        w[i] = W;
        store1(m, i, M1);
        store1(v, i, V1);
        squares += W * W;
        if (copy) copy[i] = f32_to_bf16(W);
    }
    if (sumsq) {
        const float total = block_sum(squares);
        if (threadIdx.x == 0) sumsq[blockIdx.x] = total;
    }
}

// adamw_<gradient dtype>_grad[_bf16_moments]
#define ADAMW_KERNEL(name, G, M) \
    extern "C" __global__ void name(float* w, bf16* copy, const G* g, M* m, M* v, long long n, Hyper h, int vec, float* sumsq) { \
        adamw(w, copy, g, m, v, n, h, vec, sumsq); \
    }
ADAMW_KERNEL(adamw_f32_grad, float, float)
ADAMW_KERNEL(adamw_bf16_grad, bf16, float)
ADAMW_KERNEL(adamw_f32_grad_bf16_moments, float, bf16)
ADAMW_KERNEL(adamw_bf16_grad_bf16_moments, bf16, bf16)
