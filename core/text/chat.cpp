// SPDX-License-Identifier: MIT
#include "text/chat.h"

#include "base/error.h"
#include "text/tokenizer.h"

namespace together {

const char* kFallbackChatTemplate =
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

ChatPrompt renderChat(const Tokenizer& tokenizer, const nlohmann::json& messages, bool addGenerationPrompt)
{
    if (!messages.is_array())
        throw Error("chat messages must be a JSON array of {\"role\", \"content\"} objects");
    for (size_t i = 0; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
            throw Error("chat message " + std::to_string(i) + " has no string \"role\"");
        if (!m.contains("content") || !(m["content"].is_string() || m["content"].is_null()))
            throw Error("chat message " + std::to_string(i) + " has no string \"content\"");
    }
    ChatPrompt p;
    std::string source = tokenizer.chatTemplate();
    if (source.empty()) {
        source = kFallbackChatTemplate;
        p.usedFallbackTemplate = true;
    }
    nlohmann::json ctx = {
        {"messages", messages},
        {"add_generation_prompt", addGenerationPrompt},
        {"bos_token", tokenizer.bosToken()},
        {"eos_token", tokenizer.eosToken()},
    };
    try {
        jinja::Template t(source);
        // Everything a message carries besides its role is the user's (or the model's) words.
        p.rendered = t.render(ctx, {"content", "reasoning_content"});
    } catch (const Error& e) {
        throw Error(std::string("chat template: ") + e.what());
    }
    return p;
}

std::vector<int> encodeChat(const Tokenizer& tokenizer, const ChatPrompt& prompt)
{
    std::vector<bool> allowed(prompt.rendered.untrusted.size());
    for (size_t i = 0; i < allowed.size(); ++i)
        allowed[i] = !prompt.rendered.untrusted[i];
    return tokenizer.encode(prompt.rendered.text, /*addSpecialTokens=*/false, &allowed);
}

} // namespace together
