// SPDX-License-Identifier: MIT
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

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
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void checkJsonNesting(const std::string& text, const std::string& where)
{
    int depth = 0;
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
        } else if (c == ']' || c == '}') {
            --depth;
        }
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
