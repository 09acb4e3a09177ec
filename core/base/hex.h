// SPDX-License-Identifier: MIT
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace together {

// Lower-case hexadecimal of raw bytes.
std::string toHex(std::string_view raw);
// Lower-case hexadecimal back to raw bytes; nullopt for an odd length or any other character.
std::optional<std::string> fromHex(std::string_view hex);
// `bytes` random bytes (from the OS's generator) as hexadecimal: ids of launches and masters.
std::string randomHex(size_t bytes);

} // namespace together
