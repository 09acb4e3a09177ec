// SPDX-License-Identifier: MIT
// The AVX-512 F/BW/VL/DQ path (compiled with those flags only; chosen at run time). See kernels_avx512.inc.
#include "kernels/paths.h"

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

#include <cstring>
#include <vector>

namespace together::kernels::detail {
#if defined(__AVX512BW__)
namespace {
#define TOGETHER_AVX512_NATIVE 0
#include "kernels/kernels_avx512.inc"
} // namespace

const Table& avx512Table()
{
    static const Table t{f32, bf16, q8, blocks512, dequant};
    return t;
}

#else
// Built for another architecture: the path is never supported() there, and its table is the portable one.
const Table& avx512Table() { return portableTable(); }
#endif

} // namespace together::kernels::detail
