// SPDX-License-Identifier: MIT
#pragma once
// The per-path entry points behind kernels.h: each path's translation unit fills one table.

#include "kernels/kernels.h"
#include "model/ggml_types.h"

#include <cstddef>
#include <cstdint>

namespace together::kernels::detail {

struct Table {
    void (*f32)(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1);
    void (*bf16)(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1);
    // qs: rows × blocks × 32 int8, d: rows × blocks f16; xq: blocks × 32 int8, xd: blocks f32.
    void (*q8)(const int8_t* qs, const uint16_t* d, int64_t blocks, const int8_t* xq, const float* xd, float* y, int64_t r0,
               int64_t r1);
    // Rows [r0, r1) of a block matrix (rows of rowBytes, cols weights) times x prepared for its type. False
    // when this path has no kernel for the type.
    bool (*blocks)(GgmlType type, const std::byte* w, size_t rowBytes, int64_t cols, const BlockInput& x, float* y, int64_t r0, int64_t r1);
    // n weights of one row widened to f32; false (or nullptr) when this path leaves the type to the portable code.
    bool (*dequant)(GgmlType type, const std::byte* src, float* dst, int64_t n);
};

const Table& portableTable();
const Table& avx2Table();
const Table& avx512Table();
const Table& avx512Bf16Table();

} // namespace together::kernels::detail
