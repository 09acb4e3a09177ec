// SPDX-License-Identifier: MIT
#include "base/hex.h"

#include "base/error.h"

#include <openssl/rand.h>

#include <vector>

namespace together {

namespace {

int hexValue(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

} // namespace

std::string toHex(std::string_view raw)
{
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(raw.size() * 2);
    for (unsigned char c : raw) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

std::optional<std::string> fromHex(std::string_view hex)
{
    if (hex.size() % 2)
        return std::nullopt;
    std::string out;
    out.reserve(hex.size() / 2);
    for (size_t i = 0; i < hex.size(); i += 2) {
        const int hi = hexValue(hex[i]), lo = hexValue(hex[i + 1]);
        if (hi < 0 || lo < 0)
            return std::nullopt;
        out += static_cast<char>(hi * 16 + lo);
    }
    return out;
}

std::string randomHex(size_t bytes)
{
    std::vector<unsigned char> b(bytes);
    if (bytes && RAND_bytes(b.data(), static_cast<int>(bytes)) != 1)
        throw Error("cannot get random bytes from OpenSSL");
    return toHex(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

} // namespace together
