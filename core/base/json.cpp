// SPDX-License-Identifier: MIT
#include "base/json.h"

#include "base/error.h"

#include <nlohmann/json.hpp>

namespace together {

void checkJsonNesting(const std::string& text, const std::string& where, size_t maxValues)
{
    int depth = 0;
    size_t values = 0;
    bool inString = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (inString) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                inString = false;
        } else if (c == '"') {
            inString = true;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxJsonDepth)
                throw Error(where + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
            ++values;
        } else if (c == ']' || c == '}') {
            --depth;
        } else if (c == ',') {
            ++values;
        } else {
            continue;
        }
        if (values > maxValues)
            throw Error(where + ": more than " + std::to_string(maxValues) + " JSON values");
    }
}

nlohmann::json parseUntrustedJson(const std::string& text, const std::string& where, size_t maxValues, const char* what)
{
    checkJsonNesting(text, where, maxValues);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw Error(where + ": " + what + ": " + e.what());
    }
}

} // namespace together
