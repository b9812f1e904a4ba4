// rope.cu: the kernels of kernels/src/rope.rs (compiled at run time by NVRTC; see nvrtc.rs).
#include "bf16.cuh"
__device__ __forceinline__ float load(bf16 x) { return bf16_to_f32(x); }
__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ void store(bf16& d, float x) { d = f32_to_bf16(x); }
__device__ __forceinline__ void store(float& d, float x) { d = x; }
// x as the storage type holds it (where the composition writes a tensor and reads it back).
__device__ __forceinline__ float R(float x, bf16) { return bf16_to_f32(f32_to_bf16(x)); }
__device__ __forceinline__ float R(float x, float) { return x; }
// A product rounded to fp32 on its own, as the composition's multiplication is: never contracted
// with the following add into an FMA.
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }

// N values of T: 16 bytes in one access, or one value.
template <typename T, int N> __device__ __forceinline__ void copy_in(T* dst, const T* src) {
    if constexpr (N * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
        for (int k = 0; k < N; k++) dst[k] = src[k];
    }
}

// Pairs p0 .. p0+N of a rope vector: a = first members, b = second members, as pairs (x[2i],
// x[2i+1]) or halves (x[i], x[half+i]).
template <typename T, int N, typename Idx>
__device__ __forceinline__ void load_pairs(const T* x, Idx half, Idx p0, bool pairs, float* a, float* b) {
    __align__(16) T u[2 * N];
    if (pairs) {
        copy_in<T, N>(u, x + 2 * p0);
        copy_in<T, N>(u + N, x + 2 * p0 + N);
        #pragma unroll
        for (int k = 0; k < N; k++) { a[k] = load(u[2 * k]); b[k] = load(u[2 * k + 1]); }
    } else {
        copy_in<T, N>(u, x + p0);
        copy_in<T, N>(u + N, x + half + p0);
        #pragma unroll
        for (int k = 0; k < N; k++) { a[k] = load(u[k]); b[k] = load(u[N + k]); }
    }
}

template <typename T, int N, typename Idx>
__device__ __forceinline__ void store_pairs(T* x, Idx half, Idx p0, bool pairs, const float* a, const float* b) {
    __align__(16) T u[2 * N];
    if (pairs) {
        #pragma unroll
        for (int k = 0; k < N; k++) { store(u[2 * k], a[k]); store(u[2 * k + 1], b[k]); }
        copy_in<T, N>(x + 2 * p0, u);
        copy_in<T, N>(x + 2 * p0 + N, u + N);
    } else {
        #pragma unroll
        for (int k = 0; k < N; k++) { store(u[k], a[k]); store(u[N + k], b[k]); }
        copy_in<T, N>(x + p0, u);
        copy_in<T, N>(x + half + p0, u + N);
    }
}

// cos/sin of pairs p0 .. p0+N: c1/s1 for the first members' outputs (columns p0..), c2/s2 for the
// second members' (columns half + p0.., or p0.. again when interleaved: the composition narrows
// the tables to their first half).
template <typename T, int N, typename Idx>
__device__ __forceinline__ void load_tables(const T* cos, const T* sin, Idx half, Idx p0, bool inter,
                                            float* c1, float* s1, float* c2, float* s2) {
    __align__(16) T u[N];
    const Idx second = inter ? p0 : half + p0;
    copy_in<T, N>(u, cos + p0);
    for (int k = 0; k < N; k++) c1[k] = load(u[k]);
    copy_in<T, N>(u, sin + p0);
    for (int k = 0; k < N; k++) s1[k] = load(u[k]);
    copy_in<T, N>(u, cos + second);
    for (int k = 0; k < N; k++) c2[k] = load(u[k]);
    copy_in<T, N>(u, sin + second);
    for (int k = 0; k < N; k++) s2[k] = load(u[k]);
}

// MODE 0: query forward, 1: query backward, 2: key forward, 3: key backward (`Launch` in rope.rs).
// Each thread takes N columns of the nope (or v) part of a row, or N pairs of its rope part; in
// mode 3 the threads after the rows' take N pairs of a token, summing its heads.
template <typename T, int N, typename Idx, int MODE>
__device__ void rope(const T* x, const T* pe, const T* dv, const T* cos, const T* sin, T* out, T* dpe,
                     Idx rows, Idx tokens, Idx heads, Idx nope, Idx rope, Idx v, Idx xs, Idx pes, Idx cbs, bool inter) {
    const Idx half = rope / 2, cn = nope / N, cr = half / N;
    const Idx row_units = MODE == 3 ? cn + v / N : cn + cr;
    const Idx ow = MODE == 3 ? nope + v : nope + rope;
    const Idx row_total = rows * row_units;
    const Idx total = MODE == 3 ? row_total + rows / heads * cr : row_total;
    for (Idx t = (Idx)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (Idx)gridDim.x * blockDim.x) {
        float a[N], b[N], c1[N], s1[N], c2[N], s2[N];
        if (MODE == 3 && t >= row_total) {
            const Idx i = t - row_total, tok = i / cr, p0 = (i - tok * cr) * N;
            #pragma unroll
            for (int k = 0; k < N; k++) { a[k] = 0.0f; b[k] = 0.0f; }
            for (Idx h = 0; h < heads; h++) {
                float da[N], db[N];
                load_pairs<T, N, Idx>(x + (tok * heads + h) * xs + nope, half, p0, false, da, db);
                #pragma unroll
                for (int k = 0; k < N; k++) { a[k] += da[k]; b[k] += db[k]; }
            }
            const Idx bi = tok / tokens, ti = tok - bi * tokens;
            load_tables<T, N, Idx>(cos + bi * cbs + ti * rope, sin + bi * cbs + ti * rope, half, p0, inter, c1, s1, c2, s2);
            float d1[N], d2[N];
            #pragma unroll
            for (int k = 0; k < N; k++) {
                const float ga = R(a[k], T()), gb = R(b[k], T());
                d1[k] = R(mul(ga, c1[k]), T()) + R(mul(gb, s2[k]), T());
                d2[k] = R(mul(gb, c2[k]), T()) - R(mul(ga, s1[k]), T());
            }
            store_pairs<T, N, Idx>(dpe + tok * rope, half, p0, inter, d1, d2);
            continue;
        }
        const Idx r = t / row_units, u = t - r * row_units;
        if (u < cn) {
            copy_in<T, N>(out + r * ow + u * N, x + r * xs + u * N);
            continue;
        }
        if (MODE == 3) {
            copy_in<T, N>(out + r * ow + nope + (u - cn) * N, dv + r * v + (u - cn) * N);
            continue;
        }
        const Idx p0 = (u - cn) * N, tok = r / heads, bi = tok / tokens, ti = tok - bi * tokens;
        load_tables<T, N, Idx>(cos + bi * cbs + ti * rope, sin + bi * cbs + ti * rope, half, p0, inter, c1, s1, c2, s2);
        float o1[N], o2[N];
        if (MODE == 1) {
            load_pairs<T, N, Idx>(x + r * xs + nope, half, p0, false, a, b);
            #pragma unroll
            for (int k = 0; k < N; k++) {
                o1[k] = R(mul(a[k], c1[k]), T()) + R(mul(b[k], s2[k]), T());
                o2[k] = R(mul(b[k], c2[k]), T()) - R(mul(a[k], s1[k]), T());
            }
            store_pairs<T, N, Idx>(out + r * ow + nope, half, p0, inter, o1, o2);
        } else {
            load_pairs<T, N, Idx>(MODE == 2 ? pe + tok * pes : x + r * xs + nope, half, p0, inter, a, b);
            #pragma unroll
            for (int k = 0; k < N; k++) {
                o1[k] = R(mul(a[k], c1[k]), T()) - R(mul(b[k], s1[k]), T());
                o2[k] = R(mul(b[k], c2[k]), T()) + R(mul(a[k], s2[k]), T());
            }
            store_pairs<T, N, Idx>(out + r * ow + nope, half, p0, false, o1, o2);
        }
    }
}

#define ROPE_MODE(name, T, N, Idx, MODE)                                                                    \
extern "C" __global__ void name(const T* x, const T* pe, const T* dv, const T* cos, const T* sin, T* out,    \
                                T* dpe, long long rows, long long tokens, long long heads, long long nope,   \
                                long long rope_dim, long long v, long long xs, long long pes, long long cbs, \
                                int inter) {                                                                 \
    rope<T, N, Idx, MODE>(x, pe, dv, cos, sin, out, dpe, rows, tokens, heads, nope, rope_dim, v, xs, pes,   \
                          cbs, inter != 0);                                                                  \
}
#define ROPE(name, T, N, Idx)          \
ROPE_MODE(name##_0, T, N, Idx, 0)      \
ROPE_MODE(name##_1, T, N, Idx, 1)      \
ROPE_MODE(name##_2, T, N, Idx, 2)      \
ROPE_MODE(name##_3, T, N, Idx, 3)
ROPE(rope_bf16_v, bf16, 8, unsigned int)
ROPE(rope_bf16_v_wide, bf16, 8, unsigned long long)
ROPE(rope_bf16_s, bf16, 1, unsigned long long)
ROPE(rope_f32_v, float, 4, unsigned int)
ROPE(rope_f32_v_wide, float, 4, unsigned long long)
ROPE(rope_f32_s, float, 1, unsigned long long)
