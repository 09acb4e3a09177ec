// SPDX-License-Identifier: MIT
// libFuzzer target: a .gguf file (header, metadata, tensor infos, data), opened as the loader opens a downloaded
// one; every tensor of a type together reads has its first and last row widened (ASan: inside the mapping).
#include "base/error.h"
#include "model/ggml_types.h"
#include "model/gguf.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    static const std::string path = "/tmp/together-fuzz-" + std::to_string(::getpid()) + ".gguf";
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f)
        return 0;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
    try {
        const together::Gguf g = together::Gguf::open(path);
        for (const auto& [key, value] : g.metadata())
            (void)g.find(key);
        volatile float sum = 0;
        std::vector<float> row;
        for (const auto& [name, t] : g.tensors()) {
            if (!together::ggmlTypeInfo(t.type).runnable || t.rowLength() > (1 << 16))
                continue;
            row.resize(static_cast<size_t>(t.rowLength()));
            const int64_t rowBytes = together::ggmlRowBytes(t.type, t.rowLength());
            const int64_t rows = t.numel() / t.rowLength();
            together::dequantizeRow(t.type, t.data, row.data(), t.rowLength());
            together::dequantizeRow(t.type, t.data + (rows - 1) * rowBytes, row.data(), t.rowLength());
            sum = sum + row.front() + row.back();
        }
    } catch (const together::Error&) {
    }
    return 0;
}
