// SPDX-License-Identifier: MIT
// Tokenizer: the decoder chain, read from tokenizer.json and run per token (tokenBytes, decode, StreamDecoder).
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

namespace together {

namespace tokenizer::detail {

void readDecoders(const json& j, std::vector<DecodeStep>& out, const std::string& where, int depth)
{
    if (j.is_null())
        return;
    std::string type = j.value("type", "");
    if (type == "Sequence") {
        checkSequenceDepth(depth, "decoder");
        for (auto& d : j.at("decoders"))
            readDecoders(d, out, where, depth + 1);
        if (out.size() > kMaxSequenceItems)
            throw Error(where + ": more than " + std::to_string(kMaxSequenceItems) + " decoders");
    } else if (type == "ByteLevel") {
        out.push_back({DecodeStep::ByteLevel, {}, {}});
    } else if (type == "Replace") {
        DecodeStep s{DecodeStep::Replace, {}, {}};
        if (!j.at("pattern").contains("String"))
            throw Error(where + ": decoder Replace supports only String patterns");
        s.from = j.at("pattern")["String"].get<std::string>();
        s.to = j.at("content").get<std::string>();
        out.push_back(s);
    } else if (type == "ByteFallback") {
        out.push_back({DecodeStep::ByteFallback, {}, {}});
    } else if (type == "Fuse") {
        // Concatenating per-token output is what Fuse does.
    } else if (type == "Strip") {
        DecodeStep s{DecodeStep::Strip, {}, {}};
        s.from = j.value("content", " ");
        if (s.from.empty())
            throw Error(where + ": decoder Strip needs a character to strip");
        s.stripStart = j.value("start", 0);
        s.stripStop = j.value("stop", 0);
        if (s.stripStop != 0)
            throw Error(where + ": decoder Strip with stop > 0 is not supported");
        out.push_back(s);
    } else if (type == "Metaspace") {
        DecodeStep s{DecodeStep::Metaspace, {}, {}};
        s.from = j.value("replacement", kMetaspace);
        std::string scheme = j.contains("prepend_scheme") ? j.at("prepend_scheme").get<std::string>()
                                                          : (j.value("add_prefix_space", true) ? "always" : "never");
        s.metaspaceStripFirst = scheme != "never";
        out.push_back(s);
    } else {
        throw Error(where + ": decoder type '" + type + "' is not supported");
    }
}

} // namespace tokenizer::detail

namespace {

std::optional<unsigned char> parseByteToken(const std::string& t)
{
    // "<0xAB>"
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>')
        return std::nullopt;
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9')
            return c - '0';
        if (c >= 'A' && c <= 'F')
            return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
            return c - 'a' + 10;
        return -1;
    };
    int hi = hex(t[3]), lo = hex(t[4]);
    if (hi < 0 || lo < 0)
        return std::nullopt;
    return static_cast<unsigned char>(hi * 16 + lo);
}

} // namespace

using namespace tokenizer::detail;

std::string Tokenizer::tokenBytes(int id, bool atStart) const
{
    if (id < 0 || id >= vocabSize())
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(vocabSize()) + ")");
    if (m->addedById.count(id))
        return m->added[m->addedById.at(id)].content;
    std::string s = m->idToTokenStr[static_cast<size_t>(id)];
    for (auto& d : m->decoders) {
        switch (d.kind) {
        case DecodeStep::ByteLevel: {
            std::string bytes;
            size_t pos = 0;
            while (pos < s.size()) {
                size_t start = pos;
                char32_t cp = unicode::decodeCodepoint(s, pos);
                int b = unicode::unicodeToByte(cp);
                if (b >= 0)
                    bytes.push_back(static_cast<char>(b));
                else
                    bytes.append(s, start, pos - start);
            }
            s = bytes;
            break;
        }
        case DecodeStep::Replace:
            s = replaceAll(s, d.from, d.to);
            break;
        case DecodeStep::ByteFallback:
            if (auto b = parseByteToken(s))
                s = std::string(1, static_cast<char>(*b));
            break;
        case DecodeStep::Fuse:
            break;
        case DecodeStep::Strip:
            if (atStart)
                for (int k = 0; k < d.stripStart && s.compare(0, d.from.size(), d.from) == 0; ++k)
                    s.erase(0, d.from.size());
            break;
        case DecodeStep::Metaspace:
            s = replaceAll(s, d.from, " ");
            if (atStart && d.metaspaceStripFirst && !s.empty() && s[0] == ' ')
                s.erase(0, 1);
            break;
        }
    }
    return s;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skipSpecialTokens) const
{
    std::string bytes;
    bool atStart = true;
    for (int id : ids) {
        if (skipSpecialTokens && isSpecial(id))
            continue;
        bytes += tokenBytes(id, atStart);
        atStart = false;
    }
    return unicode::sanitizeUtf8(bytes);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skipSpecialTokens)
    : m_tokenizer(tokenizer)
    , m_skipSpecial(skipSpecialTokens)
{
}

std::string StreamDecoder::push(int id)
{
    if (m_skipSpecial && m_tokenizer.isSpecial(id))
        return {};
    m_pending += m_tokenizer.tokenBytes(id, false);
    size_t hold = unicode::incompleteUtf8Tail(m_pending);
    std::string ready = unicode::sanitizeUtf8(std::string_view(m_pending).substr(0, m_pending.size() - hold));
    m_pending.erase(0, m_pending.size() - hold);
    return ready;
}

std::string StreamDecoder::flush()
{
    std::string rest = unicode::sanitizeUtf8(m_pending);
    m_pending.clear();
    return rest;
}

} // namespace together
