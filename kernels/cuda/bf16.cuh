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
