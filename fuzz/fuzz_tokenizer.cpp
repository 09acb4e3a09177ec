// SPDX-License-Identifier: MIT
// libFuzzer target: tokenizer.json (and tokenizer_config.json) as a download holds them, then encoding and
// decoding with what loaded. The input is the tokenizer file, a 0 byte, the config file, a 0 byte, and text.
#include "base/error.h"
#include "text/tokenizer.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string in(reinterpret_cast<const char*>(data), size);
    const size_t a = in.find('\0'), b = a == std::string::npos ? a : in.find('\0', a + 1);
    const std::string tokenizer = in.substr(0, a);
    const std::string config = a == std::string::npos ? std::string() : in.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
    const std::string text = b == std::string::npos ? std::string("Hello, world! <s> ünïcödé 123") : in.substr(b + 1);
    try {
        together::Tokenizer t = together::Tokenizer::fromJson(tokenizer, config, "fuzz/tokenizer.json");
        std::vector<int> ids = t.encode(text, true);
        (void)t.decode(ids, false);
        (void)t.decode(ids, true);
        for (int id : {0, 1, t.vocabSize() - 1})
            if (id >= 0 && id < t.vocabSize())
                (void)t.tokenBytes(id, true);
    } catch (const together::Error&) {
    }
    return 0;
}
