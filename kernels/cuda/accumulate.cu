// accumulate.cu: the kernel of kernels/src/accumulate.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"

// sum[i] += g[i] for n values: sum fp32, g bf16. With vec, sum is 16-byte and g 8-byte aligned
// and four values move per access.
extern "C" __global__ void add_bf16_into_f32(float* sum, const bf16* g, long long n, int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = first; i < n4; i += stride) {
            float4 s = load4(sum, i);
            const float4 d = load4(g, i);
            s.x += d.x;
            s.y += d.y;
            s.z += d.z;
            s.w += d.w;
            store4(sum, i, s);
        }
        done = n4 * 4;
    }
    for (long long i = done + first; i < n; i += stride) sum[i] += bf16_to_f32(g[i]);
}
