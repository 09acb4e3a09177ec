// SPDX-License-Identifier: MIT
#include "model/run_dtype.h"

#include "base/error.h"
#include "model/gguf.h"

#include <fstream>

namespace together {

RunDtype parseRunDtype(const std::string& s)
{
    if (s == "f32" || s == "fp32" || s == "float32")
        return RunDtype::F32;
    if (s == "bf16" || s == "bfloat16")
        return RunDtype::BF16;
    if (s == "q8" || s == "q8_0")
        return RunDtype::Q8;
    if (s == "q4")
        return RunDtype::Q4;
    if (s == "native")
        return RunDtype::Native;
    throw Error("unknown dtype '" + s + "' (use bf16, q8, q4, native or f32)");
}

bool isRunDtype(const std::string& s)
{
    try {
        parseRunDtype(s);
        return true;
    } catch (const Error&) {
        return false;
    }
}

const char* runDtypeName(RunDtype d)
{
    switch (d) {
    case RunDtype::BF16:
        return "bf16";
    case RunDtype::Q8:
        return "q8";
    case RunDtype::Q4:
        return "q4";
    case RunDtype::Native:
        return "native";
    case RunDtype::F32:
        break;
    }
    return "f32";
}

RunDtype runDtypeOf(DType d) { return d == DType::F32 ? RunDtype::F32 : RunDtype::BF16; }

int64_t matrixBytes(RunDtype d, int64_t rows, int64_t cols, double storedBits)
{
    switch (d) {
    case RunDtype::F32:
        return rows * cols * 4;
    case RunDtype::BF16:
        return rows * cols * 2;
    case RunDtype::Q8:
        return rows * ((cols + kQ8BlockSize - 1) / kQ8BlockSize) * kQ8BlockBytes;
    case RunDtype::Q4:
        return rows * ((cols + kQ8BlockSize - 1) / kQ8BlockSize) * kQ4BlockBytes;
    case RunDtype::Native:
        return static_cast<int64_t>(static_cast<double>(rows) * static_cast<double>(cols) * storedBits / 8.0 + 0.5);
    }
    return 0;
}

double bytesPerWeight(RunDtype d, double storedBits)
{
    switch (d) {
    case RunDtype::F32:
        return 4.0;
    case RunDtype::BF16:
        return 2.0;
    case RunDtype::Q8:
        return static_cast<double>(kQ8BlockBytes) / kQ8BlockSize;
    case RunDtype::Q4:
        return static_cast<double>(kQ4BlockBytes) / kQ8BlockSize;
    case RunDtype::Native:
        break;
    }
    return storedBits / 8.0;
}

std::string defaultDtypeName()
{
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0)
            return line.find(" avx512_bf16") != std::string::npos ? "bf16" : "f32";
    return "f32";
}

std::string defaultDtypeFor(const std::string& modelPath)
{
    if (Gguf::isGguf(modelPath)) {
        const Gguf g = Gguf::open(modelPath, false);
        for (const auto& [name, t] : g.tensors())
            if (t.type != GgmlType::F32 && t.type != GgmlType::F16 && t.type != GgmlType::BF16)
                return "native";
    }
    return defaultDtypeName();
}

} // namespace together
