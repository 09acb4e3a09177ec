// SPDX-License-Identifier: MIT
#include "model/ggml_types.h"

#include "base/error.h"
#include "model/safetensors.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace together {

namespace {

using T = GgmlType;

constexpr std::array<GgmlTypeInfo, 32> kTypes = {{
    {T::F32, "F32", 1, 4, true},
    {T::F16, "F16", 1, 2, true},
    {T::Q4_0, "Q4_0", 32, 18, true},
    {T::Q4_1, "Q4_1", 32, 20, true},
    {T::Q5_0, "Q5_0", 32, 22, true},
    {T::Q5_1, "Q5_1", 32, 24, true},
    {T::Q8_0, "Q8_0", 32, 34, true},
    {T::Q8_1, "Q8_1", 32, 36, false},
    {T::Q2_K, "Q2_K", 256, 84, false},
    {T::Q3_K, "Q3_K", 256, 110, false},
    {T::Q4_K, "Q4_K", 256, 144, true},
    {T::Q5_K, "Q5_K", 256, 176, true},
    {T::Q6_K, "Q6_K", 256, 210, true},
    {T::Q8_K, "Q8_K", 256, 292, false},
    {T::IQ2_XXS, "IQ2_XXS", 256, 66, false},
    {T::IQ2_XS, "IQ2_XS", 256, 74, false},
    {T::IQ3_XXS, "IQ3_XXS", 256, 98, false},
    {T::IQ1_S, "IQ1_S", 256, 50, false},
    {T::IQ4_NL, "IQ4_NL", 32, 18, false},
    {T::IQ3_S, "IQ3_S", 256, 110, false},
    {T::IQ2_S, "IQ2_S", 256, 82, false},
    {T::IQ4_XS, "IQ4_XS", 256, 136, false},
    {T::I8, "I8", 1, 1, false},
    {T::I16, "I16", 1, 2, false},
    {T::I32, "I32", 1, 4, false},
    {T::I64, "I64", 1, 8, false},
    {T::F64, "F64", 1, 8, false},
    {T::IQ1_M, "IQ1_M", 256, 56, false},
    {T::BF16, "BF16", 1, 2, true},
    {T::TQ1_0, "TQ1_0", 256, 54, false},
    {T::TQ2_0, "TQ2_0", 256, 66, false},
    {T::MXFP4, "MXFP4", 32, 17, false},
}};

float f16At(const std::byte* p)
{
    uint16_t v;
    std::memcpy(&v, p, 2);
    return f16ToFloat(v);
}

void putF16(std::byte* p, float f)
{
    const uint16_t v = floatToF16(f);
    std::memcpy(p, &v, 2);
}

uint8_t u8(const std::byte* p, int64_t i) { return static_cast<uint8_t>(p[i]); }

// Q4_K and Q5_K: sub-block j's 6-bit scale and minimum from the 12 packed bytes.
void scaleMinK4(int j, const std::byte* q, int& sc, int& m)
{
    if (j < 4) {
        sc = u8(q, j) & 63;
        m = u8(q, j + 4) & 63;
    } else {
        sc = (u8(q, j + 4) & 0xF) | ((u8(q, j - 4) >> 6) << 4);
        m = (u8(q, j + 4) >> 4) | ((u8(q, j) >> 6) << 4);
    }
}

// Q4_0 / Q4_1 / Q5_0 / Q5_1: `mins` when the block stores a minimum after d, `high` when it stores fifth bits.
void dequantizeLegacy(const std::byte* b, float* y, bool mins, bool high)
{
    const float d = f16At(b);
    const float m = mins ? f16At(b + 2) : 0.0f;
    const std::byte* p = b + (mins ? 4 : 2);
    uint32_t qh = 0;
    if (high) {
        std::memcpy(&qh, p, 4);
        p += 4;
    }
    const int offset = mins ? 0 : (high ? 16 : 8);
    for (int j = 0; j < 16; ++j) {
        const int h0 = high ? static_cast<int>((qh >> j) & 1u) << 4 : 0;
        const int h1 = high ? static_cast<int>((qh >> (j + 16)) & 1u) << 4 : 0;
        y[j] = static_cast<float>(((u8(p, j) & 0xF) | h0) - offset) * d + m;
        y[j + 16] = static_cast<float>(((u8(p, j) >> 4) | h1) - offset) * d + m;
    }
}

void dequantizeQ8_0(const std::byte* b, float* y)
{
    const float d = f16At(b);
    for (int j = 0; j < 32; ++j)
        y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
}

// Q4_K (high == nullptr) and Q5_K.
void dequantizeK45(const std::byte* b, float* y, bool five)
{
    const float d = f16At(b), dmin = f16At(b + 2);
    const std::byte* scales = b + 4;
    const std::byte* qh = five ? b + 16 : nullptr;
    const std::byte* q = b + (five ? 48 : 16);
    for (int c = 0; c < 4; ++c) {
        int sc0, m0, sc1, m1;
        scaleMinK4(2 * c, scales, sc0, m0);
        scaleMinK4(2 * c + 1, scales, sc1, m1);
        const float d0 = d * static_cast<float>(sc0), dm0 = dmin * static_cast<float>(m0);
        const float d1 = d * static_cast<float>(sc1), dm1 = dmin * static_cast<float>(m1);
        for (int l = 0; l < 32; ++l) {
            const int h0 = five && (u8(qh, l) & (1 << (2 * c))) ? 16 : 0;
            const int h1 = five && (u8(qh, l) & (2 << (2 * c))) ? 16 : 0;
            y[64 * c + l] = d0 * static_cast<float>((u8(q, 32 * c + l) & 0xF) + h0) - dm0;
            y[64 * c + 32 + l] = d1 * static_cast<float>((u8(q, 32 * c + l) >> 4) + h1) - dm1;
        }
    }
}

void dequantizeQ6_K(const std::byte* b, float* y)
{
    const std::byte* ql = b;
    const std::byte* qh = b + 128;
    const std::byte* sc = b + 192;
    const float d = f16At(b + 208);
    for (int h = 0; h < 2; ++h) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int hi = u8(qh, 32 * h + l);
            const int lo0 = u8(ql, 64 * h + l), lo1 = u8(ql, 64 * h + l + 32);
            const int q[4] = {(lo0 & 0xF) | ((hi & 3) << 4), (lo1 & 0xF) | (((hi >> 2) & 3) << 4),
                              (lo0 >> 4) | (((hi >> 4) & 3) << 4), (lo1 >> 4) | (((hi >> 6) & 3) << 4)};
            for (int k = 0; k < 4; ++k) {
                const auto s = static_cast<int8_t>(sc[8 * h + is + 2 * k]);
                y[128 * h + 32 * k + l] = d * static_cast<float>(s) * static_cast<float>(q[k] - 32);
            }
        }
    }
}

void quantizeQ8_0(const float* x, std::byte* b)
{
    float amax = 0;
    for (int j = 0; j < 32; ++j)
        amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    putF16(b, d);
    const float id = d > 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j)
        b[2 + j] = static_cast<std::byte>(static_cast<int8_t>(std::lround(std::clamp(x[j] * id, -127.0f, 127.0f))));
}

void quantizeQ4_0(const float* x, std::byte* b)
{
    float max = 0; // the value of largest magnitude, with its sign: it maps to -8, the end with one more step
    for (int j = 0; j < 32; ++j)
        if (std::fabs(x[j]) > std::fabs(max))
            max = x[j];
    const float d = max / -8.0f;
    putF16(b, d);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    auto q = [&](float v) { return static_cast<int>(std::clamp<long>(std::lround(v * id) + 8, 0, 15)); };
    for (int j = 0; j < 16; ++j)
        b[2 + j] = static_cast<std::byte>(q(x[j]) | (q(x[j + 16]) << 4));
}

void quantizeQ4_K(const float* x, std::byte* b)
{
    float scale[8], minimum[8]; // per sub-block: w ~ scale * q - minimum, q in 0..15, minimum >= 0
    for (int s = 0; s < 8; ++s) {
        float lo = 0, hi = 0;
        for (int l = 0; l < 32; ++l) {
            lo = std::min(lo, x[32 * s + l]);
            hi = std::max(hi, x[32 * s + l]);
        }
        scale[s] = (hi - lo) / 15.0f;
        minimum[s] = -lo;
    }
    const float maxScale = *std::max_element(scale, scale + 8), maxMin = *std::max_element(minimum, minimum + 8);
    const float d = maxScale / 63.0f, dmin = maxMin / 63.0f;
    putF16(b, d);
    putF16(b + 2, dmin);
    const float dq = f16At(b), dminq = f16At(b + 2);
    int sc[8], m[8];
    for (int s = 0; s < 8; ++s) {
        sc[s] = d > 0 ? static_cast<int>(std::clamp<long>(std::lround(scale[s] / d), 0, 63)) : 0;
        m[s] = dmin > 0 ? static_cast<int>(std::clamp<long>(std::lround(minimum[s] / dmin), 0, 63)) : 0;
    }
    std::byte* packed = b + 4;
    for (int j = 0; j < 4; ++j) {
        packed[j] = static_cast<std::byte>(sc[j] | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = static_cast<std::byte>(m[j] | ((m[j + 4] >> 4) << 6));
        packed[j + 8] = static_cast<std::byte>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
    std::byte* q = b + 16;
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
            int nib[2];
            for (int half = 0; half < 2; ++half) {
                const int s = 2 * c + half;
                const float step = dq * static_cast<float>(sc[s]);
                const float v = x[32 * s + l] + dminq * static_cast<float>(m[s]);
                nib[half] = step > 0 ? static_cast<int>(std::clamp<long>(std::lround(v / step), 0, 15)) : 0;
            }
            q[32 * c + l] = static_cast<std::byte>(nib[0] | (nib[1] << 4));
        }
}

} // namespace

const GgmlTypeInfo* ggmlTypeInfo(uint32_t id)
{
    for (const auto& t : kTypes)
        if (static_cast<uint32_t>(t.type) == id)
            return &t;
    return nullptr;
}

const GgmlTypeInfo& ggmlTypeInfo(GgmlType type)
{
    const GgmlTypeInfo* t = ggmlTypeInfo(static_cast<uint32_t>(type));
    if (!t)
        throw Error("unknown GGML type id " + std::to_string(static_cast<uint32_t>(type)));
    return *t;
}

const char* ggmlTypeName(GgmlType type) { return ggmlTypeInfo(type).name; }

void dequantizeRow(GgmlType type, const std::byte* src, float* dst, int64_t n)
{
    const GgmlTypeInfo& t = ggmlTypeInfo(type);
    if (!t.runnable)
        throw Error(std::string("tensors of type ") + t.name + " are not supported");
    const int64_t blocks = n / t.blockSize;
    for (int64_t i = 0; i < blocks; ++i) {
        const std::byte* b = src + i * t.blockBytes;
        float* y = dst + i * t.blockSize;
        switch (type) {
        case T::F32:
            std::memcpy(y, b, 4);
            break;
        case T::F16:
            *y = f16At(b);
            break;
        case T::BF16: {
            uint16_t v;
            std::memcpy(&v, b, 2);
            *y = bf16ToFloat(v);
            break;
        }
        case T::Q4_0:
        case T::Q4_1:
        case T::Q5_0:
        case T::Q5_1:
            dequantizeLegacy(b, y, type == T::Q4_1 || type == T::Q5_1, type == T::Q5_0 || type == T::Q5_1);
            break;
        case T::Q8_0:
            dequantizeQ8_0(b, y);
            break;
        case T::Q4_K:
        case T::Q5_K:
            dequantizeK45(b, y, type == T::Q5_K);
            break;
        case T::Q6_K:
            dequantizeQ6_K(b, y);
            break;
        default:
            throw Error(std::string("tensors of type ") + t.name + " are not supported");
        }
    }
}

void quantizeRow(GgmlType type, const float* src, std::byte* dst, int64_t n)
{
    const GgmlTypeInfo& t = ggmlTypeInfo(type);
    const int64_t blocks = n / t.blockSize;
    for (int64_t i = 0; i < blocks; ++i) {
        const float* x = src + i * t.blockSize;
        std::byte* b = dst + i * t.blockBytes;
        switch (type) {
        case T::F32:
            std::memcpy(b, x, 4);
            break;
        case T::F16:
            putF16(b, *x);
            break;
        case T::BF16: {
            const uint16_t v = floatToBf16(*x);
            std::memcpy(b, &v, 2);
            break;
        }
        case T::Q8_0:
            quantizeQ8_0(x, b);
            break;
        case T::Q4_0:
            quantizeQ4_0(x, b);
            break;
        case T::Q4_K:
            quantizeQ4_K(x, b);
            break;
        default:
            throw Error(std::string("writing tensors of type ") + t.name + " is not supported");
        }
    }
}

} // namespace together
