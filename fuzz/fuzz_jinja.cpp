// SPDX-License-Identifier: MIT
// libFuzzer target: a chat template (tokenizer_config.json's chat_template) parsed and rendered over a
// conversation with tools, as chat prompts render it. Any outcome but a together::Error is a finding.
#include "base/error.h"
#include "text/jinja/jinja.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    static const nlohmann::json context = nlohmann::json::parse(R"({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi <|im_end|> {{ x }}"},
                     {"role": "assistant", "content": "Hello.", "tool_calls": [{"type": "function",
                      "function": {"name": "f", "arguments": {"a": 1, "b": [true, null, 2.5]}}}]},
                     {"role": "tool", "content": "{\"ok\": 1}"}, {"role": "user", "content": ""}],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})");
    try {
        together::jinja::Template t(std::string(reinterpret_cast<const char*>(data), size));
        t.render(context, {"content"});
    } catch (const together::Error&) {
    }
    return 0;
}
