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

__device__ __forceinline__ float grad_at(const float* g, long long i) { return g[i]; }
__device__ __forceinline__ float grad_at(const bf16* g, long long i) { return bf16_to_f32(g[i]); }
__device__ __forceinline__ float4 grad4(const float* g, long long i) { return reinterpret_cast<const float4*>(g)[i]; }
__device__ __forceinline__ float4 grad4(const bf16* g, long long i) {
    const uint2 r = reinterpret_cast<const uint2*>(g)[i];
    return make_float4(bf16_to_f32(r.x & 0xffff), bf16_to_f32(r.x >> 16), bf16_to_f32(r.y & 0xffff), bf16_to_f32(r.y >> 16));
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

// w, m, v: n fp32 values; g: the gradient; copy: null, or n bf16 values rewritten from w. With
// vec, every pointer is 16-byte aligned (8 for bf16) and four values move per access. sumsq:
// null, or one fp32 per block: the block's sum of the updated weights' squares (the parameter
// norm without another pass over the weights).
template <typename G>
__device__ void adamw(float* w, bf16* copy, const G* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    float squares = 0.0f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = first; i < n4; i += stride) {
            float4 W = reinterpret_cast<float4*>(w)[i], M = reinterpret_cast<float4*>(m)[i], V = reinterpret_cast<float4*>(v)[i];
            const float4 G4 = grad4(g, i);
            update(W.x, M.x, V.x, G4.x, h);
            update(W.y, M.y, V.y, G4.y, h);
            update(W.z, M.z, V.z, G4.z, h);
            update(W.w, M.w, V.w, G4.w, h);
            reinterpret_cast<float4*>(w)[i] = W;
            squares += W.x * W.x + W.y * W.y + W.z * W.z + W.w * W.w;
            reinterpret_cast<float4*>(m)[i] = M;
            reinterpret_cast<float4*>(v)[i] = V;
            if (copy) {
                uint2 c;
                c.x = (unsigned int)f32_to_bf16(W.x) | ((unsigned int)f32_to_bf16(W.y) << 16);
                c.y = (unsigned int)f32_to_bf16(W.z) | ((unsigned int)f32_to_bf16(W.w) << 16);
                reinterpret_cast<uint2*>(copy)[i] = c;
            }
        }
        done = n4 * 4;
    }
    for (long long i = done + first; i < n; i += stride) {
        float W = w[i], M = m[i], V = v[i];
        update(W, M, V, grad_at(g, i), h);
        w[i] = W; m[i] = M; v[i] = V;
        squares += W * W;
        if (copy) copy[i] = f32_to_bf16(W);
    }
    if (sumsq) {
        const float total = block_sum(squares);
        if (threadIdx.x == 0) sumsq[blockIdx.x] = total;
    }
}

extern "C" __global__ void adamw_f32_grad(float* w, bf16* copy, const float* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    adamw(w, copy, g, m, v, n, h, vec, sumsq);
}
extern "C" __global__ void adamw_bf16_grad(float* w, bf16* copy, const bf16* g, float* m, float* v, long long n, Hyper h, int vec, float* sumsq) {
    adamw(w, copy, g, m, v, n, h, vec, sumsq);
}
