// SPDX-License-Identifier: MIT
// libFuzzer target: config.json as a download holds it, and a plan (JSON) checked against it. The input is the
// config, a 0 byte, then the plan.
#include "base/error.h"
#include "model/model_config.h"
#include "model/plan.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string in(reinterpret_cast<const char*>(data), size);
    const size_t cut = in.find('\0');
    try {
        together::ModelConfig c = together::ModelConfig::fromJsonText(in.substr(0, cut), "fuzz/config.json");
        if (cut != std::string::npos) {
            together::Plan p = together::Plan::fromJson(in.substr(cut + 1), "fuzz/plan.json");
            p.validate(c, {});
        }
    } catch (const together::Error&) {
    }
    return 0;
}
