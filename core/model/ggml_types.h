// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace together {

// The tensor types of GGUF files (ggml's type ids, as the file stores them). A quantized type stores each row
// as blocks of `blockSize` weights in `blockBytes` bytes, so a row's length must be a multiple of blockSize.
enum class GgmlType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
};

struct GgmlTypeInfo {
    GgmlType type;
    const char* name; // as llama.cpp prints it: "Q4_K", "F16"
    int64_t blockSize;
    int64_t blockBytes;
    bool runnable; // together reads its weights (dequantizeRow knows it)
};

// Nullptr for an id no ggml version assigned (or one it retired).
const GgmlTypeInfo* ggmlTypeInfo(uint32_t id);
const GgmlTypeInfo& ggmlTypeInfo(GgmlType type);
const char* ggmlTypeName(GgmlType type);

// Bytes of `n` weights (n a multiple of the block size; checked by the caller).
inline int64_t ggmlRowBytes(GgmlType type, int64_t n)
{
    const GgmlTypeInfo& t = ggmlTypeInfo(type);
    return n / t.blockSize * t.blockBytes;
}

// Widens `n` weights of a runnable type (n a multiple of its block size) to f32. The block layouts are ggml's:
//  Q4_0  32 weights: f16 d, 16 bytes of nibbles (weight j in the low nibble of byte j, weight j+16 in its high
//        nibble); w = d * (q - 8)
//  Q4_1  as Q4_0 with an f16 minimum m after d; w = d * q + m
//  Q5_0  f16 d, 32 high bits (bit j: weight j's fifth bit), 16 bytes of nibbles as Q4_0; w = d * (q - 16)
//  Q5_1  as Q5_0 with m; w = d * q + m
//  Q8_0  f16 d, 32 int8; w = d * q
//  Q4_K  256 weights: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and mins, 128 bytes of nibbles (each 64
//        weights: 32 bytes, low nibbles the first 32 weights, high nibbles the next); w = d*sc*q - dmin*m
//  Q5_K  as Q4_K with 32 bytes of fifth bits between the scales and the nibbles
//  Q6_K  256 weights: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales, f16 d;
//        w = d * scale * (q - 32)
void dequantizeRow(GgmlType type, const std::byte* src, float* dst, int64_t n);

// The inverse for the types make-model writes (F32, F16, BF16, Q8_0, Q4_0, Q4_K): round-to-nearest with the
// scale chosen from each block's largest magnitude (Q4_K: per sub-block scale and minimum, 6-bit quantized).
// `dst` holds ggmlRowBytes(type, n) bytes.
void quantizeRow(GgmlType type, const float* src, std::byte* dst, int64_t n);

} // namespace together
