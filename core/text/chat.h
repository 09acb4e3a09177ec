// SPDX-License-Identifier: MIT
#pragma once

#include "text/jinja/jinja.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace together {

class Tokenizer;

// A chat prompt rendered with the model's own chat_template (tokenizer_config.json). The text holds BOS where
// the template puts it, so it is tokenized without adding special tokens again. Message content is marked as
// typed by a user: special tokens inside it are read as plain text.
struct ChatPrompt {
    jinja::MarkedText rendered;
    bool usedFallbackTemplate = false;
};

// `messages` is an OpenAI-style array of {"role", "content"}. Throws Error on a malformed array or a
// template that fails.
ChatPrompt renderChat(const Tokenizer& tokenizer, const nlohmann::json& messages, bool addGenerationPrompt = true);
std::vector<int> encodeChat(const Tokenizer& tokenizer, const ChatPrompt& prompt);

// The template used when a model ships none: plain "role: content" turns.
extern const char* kFallbackChatTemplate;

} // namespace together
