// SPDX-License-Identifier: MIT
#pragma once

#include <map>
#include <string>
#include <vector>

namespace together {

// Flags of the form --name VALUE, --name=VALUE, or --flag (boolean). A flag is declared before parsing
// with whether it takes a value and whether it may repeat; anything else is an error naming the flag.
class CliArgs {
public:
    struct Spec {
        std::string name;
        bool takesValue = true;
        bool repeatable = false;
    };

    // Throws Error on an unknown flag, a missing value or a repeated single-valued flag.
    CliArgs(const std::vector<std::string>& args, const std::vector<Spec>& specs);

    bool has(const std::string& name) const;
    std::string get(const std::string& name, const std::string& fallback = {}) const;
    std::vector<std::string> all(const std::string& name) const;
    int getInt(const std::string& name, int fallback) const;
    double getDouble(const std::string& name, double fallback) const;
    unsigned long long getU64(const std::string& name, unsigned long long fallback) const;

private:
    std::map<std::string, std::vector<std::string>> m_values;
};

} // namespace together
