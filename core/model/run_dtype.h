// SPDX-License-Identifier: MIT
#pragma once

#include "model/safetensors.h"

#include <cstdint>
#include <string>

namespace together {

// The number format a run keeps its weights in (one per run, the whole cluster): f32, bf16, or q8 (GGUF's Q8_0
// layout: blocks of 32 int8 weights along a row with one f16 scale each, quantized by the engine at load).
enum class RunDtype {
    F32,
    BF16,
    Q8,
};
// "f32" | "bf16" | "q8" (and "float32", "bfloat16", "q8_0"); throws Error naming the choices otherwise.
RunDtype parseRunDtype(const std::string& s);
bool isRunDtype(const std::string& s);
const char* runDtypeName(RunDtype d);
// The format a storage dtype runs as when a caller still speaks in checkpoint dtypes (f16 runs as bf16).
RunDtype runDtypeOf(DType d);

constexpr int64_t kQ8BlockSize = 32;
constexpr int64_t kQ8BlockBytes = 34; // 32 int8 + an f16 scale
// Bytes of a [rows, cols] weight matrix in the format (q8: rows padded to whole blocks).
int64_t matrixBytes(RunDtype d, int64_t rows, int64_t cols);
// Average bytes per weight of large matrices (q8: 34/32), for rates in bytes per second.
double bytesPerWeight(RunDtype d);

// "bf16" where this CPU has AVX-512 BF16, else "f32".
std::string defaultDtypeName();
// The run format a model gets when none is asked for: "q8" for a GGUF file with quantized weights (the nearest
// format the engine runs; it widens 4- and 5-bit blocks at load), else defaultDtypeName().
std::string defaultDtypeFor(const std::string& modelPath);

} // namespace together
