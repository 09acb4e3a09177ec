// SPDX-License-Identifier: MIT
#include "session/conversation.h"

#include "base/files.h"
#include "base/user_dirs.h"
#include "text/chat.h"
#include "text/tokenizer.h"

#include <QDateTime>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>

#include <nlohmann/json.hpp>

#include <algorithm>

namespace together::gui {

namespace {
const char* roleName(ChatMessage::Role r)
{
    switch (r) {
    case ChatMessage::Role::User:
        return "user";
    case ChatMessage::Role::Assistant:
        return "assistant";
    case ChatMessage::Role::Notice:
        return "notice";
    }
    return "notice";
}
} // namespace

QJsonObject Conversation::toJson() const
{
    QJsonArray msgs;
    for (auto& m : messages) {
        QJsonObject o{{"role", roleName(m.role)}, {"text", m.text}};
        if (!m.ids.empty()) {
            QJsonArray ids;
            for (int id : m.ids)
                ids.append(id);
            o["ids"] = ids;
        }
        if (m.role == ChatMessage::Role::Assistant) {
            o["ttft_ms"] = m.ttftMs;
            o["tokens_per_second"] = m.tokensPerSecond;
            o["ms_per_token"] = m.msPerToken;
            o["tokens"] = m.tokens;
            o["end"] = m.end;
        }
        if (m.error)
            o["error"] = true;
        msgs.append(o);
    }
    return {{"title", title}, {"system", systemPrompt}, {"complete", complete}, {"messages", msgs}};
}

Conversation Conversation::fromJson(const QJsonObject& o)
{
    Conversation c;
    c.title = o["title"].toString();
    c.systemPrompt = o["system"].toString();
    c.complete = o["complete"].toBool();
    for (const auto& v : o["messages"].toArray()) {
        const QJsonObject m = v.toObject();
        ChatMessage msg;
        const QString role = m["role"].toString();
        msg.role = role == "user" ? ChatMessage::Role::User : role == "assistant" ? ChatMessage::Role::Assistant : ChatMessage::Role::Notice;
        msg.text = m["text"].toString();
        for (const auto& id : m["ids"].toArray()) {
            const double v = id.toDouble(-1);
            if (!id.isDouble() || v < 0 || v > 1e9 || v != static_cast<double>(static_cast<int>(v))) {
                msg.ids.clear(); // not token ids: the text is encoded again when needed
                break;
            }
            msg.ids.push_back(static_cast<int>(v));
        }
        msg.ttftMs = m["ttft_ms"].toDouble(-1);
        msg.tokensPerSecond = m["tokens_per_second"].toDouble();
        msg.msPerToken = m["ms_per_token"].toDouble();
        msg.tokens = m["tokens"].toInt();
        msg.end = m["end"].toString();
        msg.error = m["error"].toBool();
        c.messages.push_back(std::move(msg));
    }
    return c;
}

void Conversation::retitle()
{
    for (auto& m : messages)
        if (m.role == ChatMessage::Role::User) {
            QString t = m.text.simplified();
            title = t.size() > 40 ? t.left(39) + "…" : t;
            return;
        }
    title.clear();
}

std::vector<int> promptIds(const Conversation& c, const Tokenizer& tokenizer, bool continueLast, bool* fallback)
{
    std::vector<const ChatMessage*> turns;
    for (auto& m : c.messages)
        if (m.role != ChatMessage::Role::Notice)
            turns.push_back(&m);
    const ChatMessage* last = nullptr;
    if (continueLast && !turns.empty() && turns.back()->role == ChatMessage::Role::Assistant) {
        last = turns.back();
        turns.pop_back();
    }
    // Ids saved with a reply are fed only when every one is a token of this model (the file may come from
    // another model, or be edited); otherwise the text is encoded again.
    const int vocab = tokenizer.vocabSize();
    auto validIds = [&](const std::vector<int>& ids) {
        return !ids.empty() && std::all_of(ids.begin(), ids.end(), [&](int id) { return id >= 0 && id < vocab; });
    };
    // Typed text is plain text: a special token written in it (a role marker) is not one.
    auto encodeTyped = [&](const QString& text, bool first) {
        const std::string t = text.toStdString();
        const std::vector<bool> plain(t.size(), false);
        return tokenizer.encode(t, first, &plain);
    };
    auto idsOf = [&](const ChatMessage& m, bool first) {
        if (m.role == ChatMessage::Role::Assistant && validIds(m.ids))
            return m.ids;
        return encodeTyped(m.text, first);
    };
    std::vector<int> ids;
    if (c.complete) {
        bool first = true;
        for (auto* m : turns) {
            auto part = idsOf(*m, first);
            ids.insert(ids.end(), part.begin(), part.end());
            first = false;
        }
        if (last) {
            auto part = idsOf(*last, ids.empty());
            ids.insert(ids.end(), part.begin(), part.end());
        }
        return ids;
    }
    nlohmann::json messages = nlohmann::json::array();
    if (!c.systemPrompt.trimmed().isEmpty())
        messages.push_back({{"role", "system"}, {"content", c.systemPrompt.toStdString()}});
    for (auto* m : turns)
        messages.push_back({{"role", m->role == ChatMessage::Role::User ? "user" : "assistant"}, {"content", m->text.toStdString()}});
    ChatPrompt p = renderChat(tokenizer, messages, true);
    if (fallback)
        *fallback = p.usedFallbackTemplate;
    ids = encodeChat(tokenizer, p);
    if (last) {
        auto part = validIds(last->ids) ? last->ids : encodeTyped(last->text, false);
        ids.insert(ids.end(), part.begin(), part.end());
    }
    return ids;
}

ConversationStore ConversationStore::load(const QString& path)
{
    ConversationStore s;
    QFile f(path);
    if (f.exists()) {
        QJsonParseError error{};
        QJsonDocument doc;
        if (f.open(QIODevice::ReadOnly)) {
            if (f.size() > (256ll << 20))
                error.error = QJsonParseError::DocumentTooLarge;
            else
                doc = QJsonDocument::fromJson(f.readAll(), &error);
            f.close();
        }
        if (error.error != QJsonParseError::NoError || !doc.isObject() || !doc.object()["conversations"].isArray()) {
            // Kept aside, never overwritten: the person may want it back.
            const QString aside = path + ".unreadable-" + QDateTime::currentDateTime().toString("yyyyMMdd-HHmmss");
            QFile::rename(path, aside);
            s.problem = "The saved conversations could not be read (" +
                        (error.error != QJsonParseError::NoError ? error.errorString() : QString("not a list of conversations")) +
                        "); the file was kept as " + aside + ".";
        } else {
            const QJsonObject o = doc.object();
            for (const auto& c : o["conversations"].toArray())
                if (c.isObject())
                    s.conversations.push_back(Conversation::fromJson(c.toObject()));
            s.current = o["current"].toInt();
        }
    }
    if (s.conversations.empty())
        s.conversations.emplace_back();
    s.current = std::clamp(s.current, 0, static_cast<int>(s.conversations.size()) - 1);
    return s;
}

QString ConversationStore::save(const QString& path) const
{
    QJsonArray all;
    for (auto& c : conversations)
        all.append(c.toJson());
    const QByteArray bytes = QJsonDocument(QJsonObject{{"conversations", all}, {"current", current}}).toJson(QJsonDocument::Compact);
    try {
        atomicWrite(path.toStdString(), std::string_view(bytes.constData(), static_cast<size_t>(bytes.size())), 0600);
    } catch (const std::exception& e) {
        return QString::fromStdString(e.what());
    }
    return {};
}

QString ConversationStore::defaultPath()
{
    const std::string dir = configDir();
    makePrivateDirs(dir);
    return QString::fromStdString(dir + "/conversations.json");
}

} // namespace together::gui
