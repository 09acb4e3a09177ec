// SPDX-License-Identifier: MIT
#pragma once

#include <QJsonObject>
#include <QString>

#include <vector>

namespace together {
class Tokenizer;
}

namespace together::gui {

struct ChatMessage {
    enum class Role { User, Assistant, Notice };
    Role role = Role::User;
    QString text;
    // Assistant: the ids it was generated as (so "Continue" and the next turn in Complete mode feed exactly
    // them). Cleared when the text is edited by hand.
    std::vector<int> ids;
    // Assistant: how it went, kept under the reply.
    double ttftMs = -1;
    double tokensPerSecond = 0; // decode
    double msPerToken = 0;
    int tokens = 0;
    QString end; // "eos", "max tokens", "stopped", "failed"
    bool error = false; // Notice: an error (red) rather than information
};

struct Conversation {
    QString title;
    QString systemPrompt;
    bool complete = false; // Complete mode: the reply continues the text; no chat template
    std::vector<ChatMessage> messages;

    QJsonObject toJson() const;
    static Conversation fromJson(const QJsonObject& o);
    // The title from the first user message.
    void retitle();
};

// The token ids to feed for the next answer. Chat mode renders the model's chat template (with the system
// prompt) over the user and assistant messages and adds the generation prompt; Complete mode concatenates
// the text (BOS first), feeding assistant replies as the ids they were generated as. With `continueLast`,
// the last message is an assistant reply that goes on: its ids are appended after the generation prompt.
// Notices are not part of the prompt. `fallback` is set when the model has no chat template.
std::vector<int> promptIds(const Conversation& c, const Tokenizer& tokenizer, bool continueLast, bool* fallback = nullptr);

// Every conversation, saved as one JSON file (mode 0600, replaced whole by atomicWrite: base/files.h).
struct ConversationStore {
    std::vector<Conversation> conversations;
    int current = 0;
    QString problem; // why the file could not be read ("" when it was, or was not there)
    // A missing file: one empty conversation. An unreadable one is renamed aside (never overwritten) and
    // `problem` says so.
    static ConversationStore load(const QString& path);
    QString save(const QString& path) const; // "" or why it could not be written

    static QString defaultPath(); // $config/conversations.json
};

} // namespace together::gui
