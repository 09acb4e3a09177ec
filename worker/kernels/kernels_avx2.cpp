// SPDX-License-Identifier: MIT
// The AVX2 + FMA + F16C path (compiled with those flags only; chosen at run time).
#include "kernels/paths.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cstring>
#include <vector>

namespace together::kernels::detail {
#if defined(__AVX2__)

namespace {

inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float bf16ToF32(uint16_t v)
{
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(static_cast<uint32_t>(v) << 16))));
}

// Four rows at a time share each load of x (one row at a time, two loads per FMA capped it at ~26 GB/s).
void f32(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    const int64_t full = cols / 8 * 8;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float* w0 = w + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t c = 0; c < full; c += 8) {
            const __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + cols + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 2 * cols + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 3 * cols + c), xv, a3);
        }
        float s[4] = {hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)};
        for (int64_t c = full; c < cols; ++c)
            for (int i = 0; i < 4; ++i)
                s[i] += w0[i * cols + c] * x[c];
        for (int i = 0; i < 4; ++i)
            y[r + i] = s[i];
    }
    for (; r < r1; ++r) {
        const float* row = w + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t c = 0;
        for (; c + 32 <= full; c += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c + 8), _mm256_loadu_ps(x + c + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c + 16), _mm256_loadu_ps(x + c + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c + 24), _mm256_loadu_ps(x + c + 24), a3);
        }
        for (; c < full; c += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(x + c), a0);
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; c < cols; ++c)
            s += row[c] * x[c];
        y[r] = s;
    }
}

// bf16 pairs read as 32-bit lanes: the even element is the lane shifted left by 16, the odd one the lane with
// its low half cleared, so no shuffles; x is split once per call into matching even/odd f32 vectors.
void bf16(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    const int64_t chunks = cols / 16, full = chunks * 16;
    thread_local std::vector<float> split;
    split.resize(static_cast<size_t>(chunks * 16));
    for (int64_t k = 0; k < chunks; ++k)
        for (int i = 0; i < 8; ++i) {
            split[static_cast<size_t>(k * 16 + i)] = bf16ToF32(x[k * 16 + 2 * i]);
            split[static_cast<size_t>(k * 16 + 8 + i)] = bf16ToF32(x[k * 16 + 2 * i + 1]);
        }
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    const float* xs = split.data();
    // Four rows at a time share each load of x (8 accumulators: even and odd lanes per row).
#define TOGETHER_BF16_STEP(e, o, p)                                                                                   \
    do {                                                                                                              \
        const __m256i v_ = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));                                  \
        e = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v_, 16)), xe, e);                                   \
        o = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v_, high)), xo, o);                                  \
    } while (0)
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint16_t* w0 = w + r * cols;
        __m256 e0 = _mm256_setzero_ps(), o0 = e0, e1 = e0, o1 = e0, e2 = e0, o2 = e0, e3 = e0, o3 = e0;
        for (int64_t k = 0; k < chunks; ++k) {
            const __m256 xe = _mm256_loadu_ps(xs + k * 16), xo = _mm256_loadu_ps(xs + k * 16 + 8);
            TOGETHER_BF16_STEP(e0, o0, w0 + k * 16);
            TOGETHER_BF16_STEP(e1, o1, w0 + cols + k * 16);
            TOGETHER_BF16_STEP(e2, o2, w0 + 2 * cols + k * 16);
            TOGETHER_BF16_STEP(e3, o3, w0 + 3 * cols + k * 16);
        }
        float s[4] = {hsum256(_mm256_add_ps(e0, o0)), hsum256(_mm256_add_ps(e1, o1)), hsum256(_mm256_add_ps(e2, o2)),
                      hsum256(_mm256_add_ps(e3, o3))};
        for (int64_t c = full; c < cols; ++c)
            for (int i = 0; i < 4; ++i)
                s[i] += bf16ToF32(w0[i * cols + c]) * bf16ToF32(x[c]);
        for (int i = 0; i < 4; ++i)
            y[r + i] = s[i];
    }
    for (; r < r1; ++r) {
        const uint16_t* row = w + r * cols;
        __m256 e0 = _mm256_setzero_ps(), o0 = e0, e1 = e0, o1 = e0;
        int64_t k = 0;
        for (; k + 2 <= chunks; k += 2) {
            __m256 xe = _mm256_loadu_ps(xs + k * 16), xo = _mm256_loadu_ps(xs + k * 16 + 8);
            TOGETHER_BF16_STEP(e0, o0, row + k * 16);
            xe = _mm256_loadu_ps(xs + k * 16 + 16);
            xo = _mm256_loadu_ps(xs + k * 16 + 24);
            TOGETHER_BF16_STEP(e1, o1, row + k * 16 + 16);
        }
        for (; k < chunks; ++k) {
            const __m256 xe = _mm256_loadu_ps(xs + k * 16), xo = _mm256_loadu_ps(xs + k * 16 + 8);
            TOGETHER_BF16_STEP(e0, o0, row + k * 16);
        }
#undef TOGETHER_BF16_STEP
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(e0, o0), _mm256_add_ps(e1, o1)));
        for (int64_t c = full; c < cols; ++c)
            s += bf16ToF32(row[c]) * bf16ToF32(x[c]);
        y[r] = s;
    }
}

#define TOGETHER_Q8_DOT(a, b) _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)), _mm256_set1_epi16(1))
#include "kernels/q8_256.inc"
#include "kernels/blocks_256.inc"
#undef TOGETHER_Q8_DOT

} // namespace

const Table& avx2Table()
{
    static const Table t{f32, bf16, q8, blocks, dequant};
    return t;
}

#else
// Built for another architecture: the path is never supported() there, and its table is the portable one.
const Table& avx2Table() { return portableTable(); }
#endif

} // namespace together::kernels::detail
