// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <string>

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

} // namespace together
