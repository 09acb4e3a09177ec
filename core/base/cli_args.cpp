// SPDX-License-Identifier: MIT
#include "base/cli_args.h"

#include "base/error.h"

#include <charconv>

namespace together {

CliArgs::CliArgs(const std::vector<std::string>& args, const std::vector<Spec>& specs)
{
    for (size_t i = 0; i < args.size(); ++i) {
        std::string arg = args[i];
        if (arg.rfind("--", 0) != 0)
            throw Error("unexpected argument '" + arg + "' (flags start with --)");
        std::string name = arg.substr(2);
        std::string value;
        bool inlineValue = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            inlineValue = true;
        }
        const Spec* spec = nullptr;
        for (const auto& s : specs)
            if (s.name == name)
                spec = &s;
        if (!spec)
            throw Error("unknown flag --" + name);
        if (spec->takesValue && !inlineValue) {
            if (i + 1 >= args.size())
                throw Error("flag --" + name + " needs a value");
            value = args[++i];
        } else if (!spec->takesValue && inlineValue) {
            throw Error("flag --" + name + " takes no value");
        }
        auto& slot = m_values[name];
        if (!slot.empty() && !spec->repeatable)
            throw Error("flag --" + name + " given more than once");
        slot.push_back(value);
    }
}

bool CliArgs::has(const std::string& name) const { return m_values.count(name) > 0; }

std::string CliArgs::get(const std::string& name, const std::string& fallback) const
{
    auto it = m_values.find(name);
    return it == m_values.end() ? fallback : it->second.back();
}

std::vector<std::string> CliArgs::all(const std::string& name) const
{
    auto it = m_values.find(name);
    return it == m_values.end() ? std::vector<std::string>{} : it->second;
}

int CliArgs::getInt(const std::string& name, int fallback) const
{
    if (!has(name))
        return fallback;
    std::string v = get(name);
    int out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size())
        throw Error("flag --" + name + " needs a whole number, got '" + v + "'");
    return out;
}

unsigned long long CliArgs::getU64(const std::string& name, unsigned long long fallback) const
{
    if (!has(name))
        return fallback;
    std::string v = get(name);
    unsigned long long out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size())
        throw Error("flag --" + name + " needs a non-negative whole number, got '" + v + "'");
    return out;
}

double CliArgs::getDouble(const std::string& name, double fallback) const
{
    if (!has(name))
        return fallback;
    std::string v = get(name);
    try {
        size_t used = 0;
        double d = std::stod(v, &used);
        if (used != v.size())
            throw Error("");
        return d;
    } catch (...) {
        throw Error("flag --" + name + " needs a number, got '" + v + "'");
    }
}

} // namespace together
