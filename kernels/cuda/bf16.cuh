// bf16.cuh: bf16 <-> fp32 as torch converts (round to nearest even). The kernels include no CUDA
// headers, so bf16 values travel as unsigned short. NVRTC gets this file as a named header
// (nvrtc.rs), so every kernel source includes it by name.
#pragma once
typedef unsigned short bf16;
__device__ __forceinline__ float bf16_to_f32(bf16 b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)0x7fc0;  // NaN stays a quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Loads and stores of fp32 or bf16 values (bf16 rounded to nearest even), one or four at a time.
__device__ __forceinline__ float load1(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load1(const bf16* p, long long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store1(float* p, long long i, float x) { p[i] = x; }
__device__ __forceinline__ void store1(bf16* p, long long i, float x) { p[i] = f32_to_bf16(x); }
__device__ __forceinline__ float4 load4(const float* p, long long i) { return reinterpret_cast<const float4*>(p)[i]; }
__device__ __forceinline__ float4 load4(const bf16* p, long long i) {
    const uint2 r = reinterpret_cast<const uint2*>(p)[i];
    return make_float4(bf16_to_f32(r.x & 0xffff), bf16_to_f32(r.x >> 16), bf16_to_f32(r.y & 0xffff), bf16_to_f32(r.y >> 16));
}
__device__ __forceinline__ void store4(float* p, long long i, float4 x) { reinterpret_cast<float4*>(p)[i] = x; }
__device__ __forceinline__ void store4(bf16* p, long long i, float4 x) {
    uint2 c;
    c.x = (unsigned int)f32_to_bf16(x.x) | ((unsigned int)f32_to_bf16(x.y) << 16);
    c.y = (unsigned int)f32_to_bf16(x.z) | ((unsigned int)f32_to_bf16(x.w) << 16);
    reinterpret_cast<uint2*>(p)[i] = c;
}
