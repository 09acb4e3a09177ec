// SPDX-License-Identifier: MIT
// libFuzzer target: a .safetensors file (8-byte header length, JSON header, data), opened as the loader opens
// a downloaded one, every tensor's view read through.
#include "base/error.h"
#include "model/safetensors.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    static const std::string path = "/tmp/together-fuzz-" + std::to_string(::getpid()) + ".safetensors";
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f)
        return 0;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
    try {
        together::SafeTensors st = together::SafeTensors::openFile(path);
        volatile unsigned sum = 0;
        for (const auto& [name, t] : st.tensors())
            if (t.data && t.nbytes > 0) // the first and last byte of every range (ASan: inside the mapping)
                sum = sum + static_cast<unsigned>(t.data[0]) + static_cast<unsigned>(t.data[t.nbytes - 1]);
    } catch (const together::Error&) {
    }
    return 0;
}
