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
