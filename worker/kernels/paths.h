// SPDX-License-Identifier: MIT
#pragma once
// The per-path entry points behind kernels.h: each path's translation unit fills one table.

#include <cstdint>

namespace together::kernels::detail {

struct Table {
    void (*f32)(const float* w, const float* x, float* y, int64_t cols, int64_t r0, int64_t r1);
    void (*bf16)(const uint16_t* w, const uint16_t* x, float* y, int64_t cols, int64_t r0, int64_t r1);
    // qs: rows × blocks × 32 int8, d: rows × blocks f16; xq: blocks × 32 int8, xd: blocks f32.
    void (*q8)(const int8_t* qs, const uint16_t* d, int64_t blocks, const int8_t* xq, const float* xd, float* y, int64_t r0,
               int64_t r1);
};

const Table& portableTable();
const Table& avx2Table();
const Table& avx512Table();
const Table& avx512Bf16Table();

} // namespace together::kernels::detail
