// SPDX-License-Identifier: MIT
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <fstream>

namespace together {

void rethrowWithContext(const std::string& context)
{
    try {
        throw;
    } catch (const Error& e) {
        throw Error(context + ": " + e.what());
    } catch (const std::exception& e) {
        throw Error(context + ": " + e.what());
    }
}

std::string readTextFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Error("cannot open " + path + ": " + std::strerror(errno));
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
        throw Error(path + " is not a regular file");
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec && size > kMaxTextFileBytes)
        throw Error(path + " is larger than " + std::to_string(kMaxTextFileBytes >> 20) + " MiB");
    std::string text;
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        text.append(buf, static_cast<size_t>(in.gcount()));
        if (text.size() > kMaxTextFileBytes)
            throw Error(path + " is larger than " + std::to_string(kMaxTextFileBytes >> 20) + " MiB");
    }
    if (in.bad())
        throw Error("cannot read " + path + ": " + std::strerror(errno));
    return text;
}

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

void writeTextFile(const std::string& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out)
        throw Error("cannot write " + path + ": " + std::strerror(errno));
    out << text;
    if (!out.flush())
        throw Error("cannot write " + path + ": " + std::strerror(errno));
}

} // namespace together
