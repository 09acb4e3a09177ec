// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace together {

// Every expected failure (bad file, bad flag, bad template) is an Error with a message a person can act on.
// Errors are thrown inside a unit, given context on the way up, and turned into an exit status or a
// protocol status at the boundary (main(), an RPC handler). Nothing else catches them.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message)
        : std::runtime_error(message)
    {
    }
};

// Prefixes an Error's message with where it happened ("model.safetensors: tensor x: ...").
[[noreturn]] void rethrowWithContext(const std::string& context);

// A whole text file (JSON of a model folder, a plan, messages). Refuses what is not a regular file (a symlink
// to /dev/zero in a downloaded folder would never end) and files over kMaxTextFileBytes, naming the path.
constexpr size_t kMaxTextFileBytes = size_t{256} << 20;
std::string readTextFile(const std::string& path);

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
void writeTextFile(const std::string& path, const std::string& text);

} // namespace together
