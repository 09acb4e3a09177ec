// SPDX-License-Identifier: MIT
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace together::jinja {

// Text with a per-byte mark of where it came from. Strings from "untrusted" inputs (the content of chat
// messages) carry the mark through every string operation of the template, so the renderer's output says
// which bytes a user typed. The tokenizer then refuses to read special tokens there.
struct MarkedText {
    std::string text;
    std::vector<bool> untrusted; // one flag per byte of text
};

// A Jinja template as chat templates use it: for/if/set (with namespace), macros, filters, tests,
// string/dict methods, slicing, loop variables, break/continue, raise_exception. Environment settings are those
// Hugging Face renders chat templates with: trim_blocks and lstrip_blocks on, no autoescape.
class Template {
public:
    explicit Template(const std::string& source); // throws Error with line on a syntax error
    ~Template();
    Template(Template&&) noexcept;

    // `context` is the variable scope (messages, add_generation_prompt, bos_token, ...). Strings found under
    // the keys in `untrustedKeys` at any depth of `context["messages"]` are marked untrusted.
    MarkedText render(const nlohmann::json& context, const std::vector<std::string>& untrustedMessageKeys = {}) const;
    std::string renderText(const nlohmann::json& context) const { return render(context).text; }

private:
    struct Impl;
    std::unique_ptr<Impl> m;
};

} // namespace together::jinja
