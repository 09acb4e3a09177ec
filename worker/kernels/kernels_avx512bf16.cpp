// SPDX-License-Identifier: MIT
// The AVX-512 BF16 + VNNI path (compiled with those flags; chosen at run time). See kernels_avx512.inc.
#include "kernels/paths.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <cstring>
#include <vector>

namespace together::kernels::detail {
#if defined(__AVX512BF16__)
namespace {
#define TOGETHER_AVX512_NATIVE 1
#include "kernels/kernels_avx512.inc"
} // namespace

const Table& avx512Bf16Table()
{
    static const Table t{f32, bf16, q8, blocks512, dequant};
    return t;
}

#else
// Built for another architecture: the path is never supported() there, and its table is the portable one.
const Table& avx512Bf16Table() { return portableTable(); }
#endif

} // namespace together::kernels::detail
