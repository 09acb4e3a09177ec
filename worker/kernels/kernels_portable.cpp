// SPDX-License-Identifier: MIT
// The portable path: plain C++ (the compiler vectorises what the baseline ISA allows). Also the reference
// the other paths' structure follows: rows are independent, each a sum over columns (or q8 blocks).
#include "kernels/paths.h"

#include <cstring>
#include <vector>

namespace together::kernels::detail {

namespace {

inline float bf16ToF32(uint16_t v)
{
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

float halfToFloat(uint16_t h)
{
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    const uint32_t bits = e == 31 ? sign | 0x7f800000u | (m << 13) : sign | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Eight partial sums per row, so the compiler can keep them in one vector register.
void f32(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; ++r) {
        const float* row = w + r * cols;
        float acc[8] = {};
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
            for (int k = 0; k < 8; ++k)
                acc[k] += row[c + k] * x[c + k];
        float s = 0;
        for (; c < cols; ++c)
            s += row[c] * x[c];
        for (float a : acc)
            s += a;
        y[r] = s;
    }
}

void bf16(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t* row = w + r * cols;
        float acc[8] = {};
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
            for (int k = 0; k < 8; ++k)
                acc[k] += bf16ToF32(row[c + k]) * bf16ToF32(x[c + k]);
        float s = 0;
        for (; c < cols; ++c)
            s += bf16ToF32(row[c]) * bf16ToF32(x[c]);
        for (float a : acc)
            s += a;
        y[r] = s;
    }
}

void q8(const int8_t* qs, const uint16_t* d, int64_t blocks, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; ++r) {
        float s = 0;
        for (int64_t b = 0; b < blocks; ++b) {
            const int8_t* q = qs + (r * blocks + b) * 32;
            const int8_t* xb = xq + b * 32;
            int32_t dot = 0;
            for (int i = 0; i < 32; ++i)
                dot += static_cast<int32_t>(q[i]) * static_cast<int32_t>(xb[i]);
            s += static_cast<float>(dot) * (halfToFloat(d[r * blocks + b]) * xd[b]);
        }
        y[r] = s;
    }
}

// Any runnable block type: each row widened to f32 (ggml's layouts, model/ggml_types), then dotted with x in
// f32. The reference the other paths' block kernels are tested against.
bool blocks(GgmlType type, const std::byte* w, size_t rowBytes, int64_t cols, const BlockInput& in, float* y, int64_t r0, int64_t r1)
{
    const float* x = in.x;
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
        dequantizeRow(type, w + r * rowBytes, row.data(), cols);
        float acc[8] = {};
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
            for (int k = 0; k < 8; ++k)
                acc[k] += row[static_cast<size_t>(c + k)] * x[c + k];
        float s = 0;
        for (; c < cols; ++c)
            s += row[static_cast<size_t>(c)] * x[c];
        for (float a : acc)
            s += a;
        y[r] = s;
    }
    return true;
}

} // namespace

const Table& portableTable()
{
    static const Table t{f32, bf16, q8, blocks, nullptr};
    return t;
}

} // namespace together::kernels::detail
