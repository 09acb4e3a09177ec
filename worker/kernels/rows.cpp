// SPDX-License-Identifier: MIT
// The per-token operators of a step as plain loops over f32 rows (kernels.h): ATen dispatched ~15 operators per
// layer for them, about a fifth of a one-thread decode step of a 1B model once the products ran at the read
// bandwidth. One rounding per operation as ATen's (x · r then · w; x · cos + rot · sin); the sum of squares in
// double.
#include "kernels/kernels.h"

#include <cmath>

namespace together::kernels {

void rmsNormRows(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps)
{
    for (int64_t r = 0; r < rows; ++r) {
        const float* a = x + r * n;
        float* o = out + r * n;
        double ss = 0;
        for (int64_t i = 0; i < n; ++i)
            ss += static_cast<double>(a[i]) * a[i];
        const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
        for (int64_t i = 0; i < n; ++i)
            o[i] = a[i] * inv * w[i];
    }
}

void rotaryRows(const float* x, const float* cos, const float* sin, float* out, int64_t tokens, int64_t heads, int64_t d)
{
    const int64_t half = d / 2;
    for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < heads; ++h) {
            const float* a = x + (t * heads + h) * d;
            float* o = out + (t * heads + h) * d;
            const float *c = cos + t * d, *s = sin + t * d;
            for (int64_t i = 0; i < half; ++i)
                o[i] = a[i] * c[i] + -a[i + half] * s[i];
            for (int64_t i = half; i < d; ++i)
                o[i] = a[i] * c[i] + a[i - half] * s[i];
        }
}

void siluMulRows(const float* gateUp, float* out, int64_t tokens, int64_t n)
{
    for (int64_t t = 0; t < tokens; ++t) {
        const float *g = gateUp + t * 2 * n, *u = g + n;
        float* o = out + t * n;
        for (int64_t i = 0; i < n; ++i)
            o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
}

} // namespace together::kernels
