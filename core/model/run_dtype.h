// SPDX-License-Identifier: MIT
#pragma once

#include "model/safetensors.h"

#include <cstdint>
#include <string>

namespace together {

// The number format a run keeps its weights in (one per run, the whole cluster): f32, bf16, q8 (GGUF's Q8_0
// layout: blocks of 32 int8 weights along a row with one f16 scale each, quantized by the engine at load), q4
// (GGUF's Q4_K blocks, 4.5 bits a weight; Q4_0 for rows that are not whole 256-weight blocks; quantized at load),
// or native: each tensor in the type the model file stores it (a GGUF file's blocks as they are, a safetensors
// checkpoint's f32/bf16/f16), converted by nobody.
enum class RunDtype {
    F32,
    BF16,
    Q8,
    Q4,
    Native,
};
// "f32" | "bf16" | "q8" | "q4" | "native" (and "float32", "bfloat16", "q8_0"); throws Error naming the choices
// otherwise.
RunDtype parseRunDtype(const std::string& s);
bool isRunDtype(const std::string& s);
const char* runDtypeName(RunDtype d);
// The format a storage dtype runs as when a caller still speaks in checkpoint dtypes (f16 runs as bf16).
RunDtype runDtypeOf(DType d);

constexpr int64_t kQ8BlockSize = 32;
constexpr int64_t kQ8BlockBytes = 34; // 32 int8 + an f16 scale
constexpr int64_t kQ4BlockBytes = 18; // per 32 weights: Q4_K's 144 bytes per 256, Q4_0's 18 per 32
// Bytes of a [rows, cols] weight matrix in the format (q8, q4: rows padded to whole blocks of 32). Native:
// `storedBits` per weight (the model's own average, ModelConfig::storedBitsPerWeight).
int64_t matrixBytes(RunDtype d, int64_t rows, int64_t cols, double storedBits = 16);
// Average bytes per weight of large matrices (q8: 34/32), for rates in bytes per second.
double bytesPerWeight(RunDtype d, double storedBits = 16);

// "bf16" where this CPU has AVX-512 BF16, else "f32".
std::string defaultDtypeName();
// The run format a model gets when none is asked for: "native" for a GGUF file with quantized weights (its
// blocks as they are), else defaultDtypeName().
std::string defaultDtypeFor(const std::string& modelPath);

} // namespace together
