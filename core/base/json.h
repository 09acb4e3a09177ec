// SPDX-License-Identifier: MIT
#pragma once

// JSON from a file or a peer: parsed only after its nesting and size are checked.

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace together {

// JSON from a downloaded file or a peer nests at most this deep. The JSON library parses iteratively but copies,
// compares and converts values recursively: 100 000 nested brackets in a tokenizer.json overflowed the stack.
constexpr int kMaxJsonDepth = 100;
// A linear scan of `text` (strings and escapes skipped); throws "<where>: JSON nested deeper than 100 levels",
// or, past `maxValues` lists, objects and separated items, "<where>: more than N JSON values" (a parsed value
// takes ten to forty times the bytes of its text: `[{},{},…]` in a 100 MiB header was 3 GB).
void checkJsonNesting(const std::string& text, const std::string& where, size_t maxValues = SIZE_MAX);
// JSON from a file or a peer: checkJsonNesting, then parsed; a syntax error becomes "<where>: <what>: <why>"
// ("malformed JSON" unless the caller names it otherwise).
nlohmann::json parseUntrustedJson(const std::string& text, const std::string& where, size_t maxValues = SIZE_MAX,
                                  const char* what = "malformed JSON");

} // namespace together
