// SPDX-License-Identifier: MIT
// Tokenizer: the pre-tokenizers, which cut a text into the words the model encodes.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

namespace together::tokenizer::detail {

namespace {

// The GPT-2 pre-tokenizer regex, used by ByteLevel when use_regex is true.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct PreTokenizerSequence : PreTokenizer {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    std::vector<std::string> apply(std::vector<std::string> pieces, bool firstChunk) const override
    {
        for (auto& p : items)
            pieces = p->apply(std::move(pieces), firstChunk);
        return pieces;
    }
};

enum class SplitBehavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
};

// Splits one piece at the given match ranges according to the behaviour.
std::vector<std::string> splitBy(const std::string& s, const std::vector<std::pair<size_t, size_t>>& matches,
                                 SplitBehavior behavior, bool invert)
{
    // Build alternating segments (isMatch, text), then combine.
    std::vector<std::pair<bool, std::string>> segs;
    size_t prev = 0;
    for (auto [b, e] : matches) {
        if (b > prev)
            segs.emplace_back(invert, s.substr(prev, b - prev));
        segs.emplace_back(!invert, s.substr(b, e - b));
        prev = e;
    }
    if (prev < s.size())
        segs.emplace_back(invert, s.substr(prev));
    std::vector<std::string> out;
    switch (behavior) {
    case SplitBehavior::Removed:
        for (auto& [m, t] : segs)
            if (!m)
                out.push_back(t);
        break;
    case SplitBehavior::Isolated:
        for (auto& [m, t] : segs)
            out.push_back(t);
        break;
    case SplitBehavior::Contiguous: {
        bool lastMatch = false;
        for (auto& [m, t] : segs) {
            if (m && lastMatch && !out.empty())
                out.back() += t;
            else
                out.push_back(t);
            lastMatch = m;
        }
        break;
    }
    case SplitBehavior::MergedWithPrevious: {
        bool lastWasMatch = true;
        for (auto& [m, t] : segs) {
            if (m && !out.empty() && !lastWasMatch)
                out.back() += t;
            else
                out.push_back(t);
            lastWasMatch = m;
        }
        break;
    }
    case SplitBehavior::MergedWithNext: {
        std::string carry;
        for (auto& [m, t] : segs) {
            if (m) {
                if (!carry.empty())
                    out.push_back(carry);
                carry = t;
            } else {
                out.push_back(carry + t);
                carry.clear();
            }
        }
        if (!carry.empty())
            out.push_back(carry);
        break;
    }
    }
    return out;
}

SplitBehavior parseBehavior(const std::string& b, const std::string& where)
{
    if (b == "Removed")
        return SplitBehavior::Removed;
    if (b == "Isolated")
        return SplitBehavior::Isolated;
    if (b == "MergedWithPrevious")
        return SplitBehavior::MergedWithPrevious;
    if (b == "MergedWithNext")
        return SplitBehavior::MergedWithNext;
    if (b == "Contiguous")
        return SplitBehavior::Contiguous;
    throw Error(where + ": split behavior '" + b + "' is not supported");
}

struct SplitPreTokenizer : PreTokenizer {
    std::string literal;
    std::unique_ptr<Regex> regex;
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    std::vector<std::string> apply(std::vector<std::string> pieces, bool) const override
    {
        std::vector<std::string> out;
        for (auto& p : pieces) {
            auto matches = regex ? regex->findAll(p) : findLiteral(p, literal);
            for (auto& s : splitBy(p, matches, behavior, invert))
                if (!s.empty())
                    out.push_back(std::move(s));
        }
        return out;
    }
};

struct ByteLevelPreTokenizer : PreTokenizer {
    bool addPrefixSpace = false;
    std::unique_ptr<Regex> regex; // set when use_regex
    std::vector<std::string> apply(std::vector<std::string> pieces, bool firstChunk) const override
    {
        std::vector<std::string> out;
        for (size_t i = 0; i < pieces.size(); ++i) {
            std::string p = pieces[i];
            if (addPrefixSpace && i == 0 && !p.empty() && p[0] != ' ')
                p = " " + p;
            std::vector<std::string> parts;
            if (regex) {
                for (auto [b, e] : regex->findAll(p))
                    parts.push_back(p.substr(b, e - b));
            } else {
                parts.push_back(p);
            }
            for (auto& part : parts) {
                std::string mapped;
                for (unsigned char c : part)
                    mapped += unicode::byteToUnicode(c);
                if (!mapped.empty())
                    out.push_back(std::move(mapped));
            }
        }
        return out;
    }
};

struct MetaspacePreTokenizer : PreTokenizer {
    std::string replacement = kMetaspace;
    std::string prependScheme = "always"; // always | first | never
    bool split = true;
    std::vector<std::string> apply(std::vector<std::string> pieces, bool firstChunk) const override
    {
        std::vector<std::string> out;
        for (size_t i = 0; i < pieces.size(); ++i) {
            std::string p = replaceAll(pieces[i], " ", replacement);
            bool prepend = prependScheme == "always" || (prependScheme == "first" && firstChunk && i == 0);
            if (prepend && p.rfind(replacement, 0) != 0)
                p = replacement + p;
            if (!split) {
                out.push_back(p);
                continue;
            }
            for (auto& s : splitBy(p, findLiteral(p, replacement), SplitBehavior::MergedWithNext, false))
                if (!s.empty())
                    out.push_back(std::move(s));
        }
        return out;
    }
};

struct RegexPreTokenizer : PreTokenizer { // Whitespace, Digits: keep matches, drop the rest or isolate
    std::unique_ptr<Regex> regex;
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    std::vector<std::string> apply(std::vector<std::string> pieces, bool) const override
    {
        std::vector<std::string> out;
        for (auto& p : pieces)
            for (auto& s : splitBy(p, regex->findAll(p), behavior, invert))
                if (!s.empty())
                    out.push_back(std::move(s));
        return out;
    }
};

} // namespace

std::unique_ptr<PreTokenizer> makePreTokenizer(const json& j, const std::string& where, int depth)
{
    if (j.is_null())
        return nullptr;
    std::string type = j.value("type", "");
    if (type == "Sequence") {
        checkSequenceDepth(depth, "pre_tokenizer");
        auto seq = std::make_unique<PreTokenizerSequence>();
        for (auto& p : j.at("pretokenizers"))
            if (auto made = makePreTokenizer(p, where, depth + 1))
                seq->items.push_back(std::move(made));
        if (seq->items.size() > kMaxSequenceItems)
            throw Error(where + ": more than " + std::to_string(kMaxSequenceItems) + " pre-tokenizers in a Sequence");
        return seq;
    }
    if (type == "Split") {
        auto s = std::make_unique<SplitPreTokenizer>();
        readPattern(j.at("pattern"), s->literal, s->regex, where);
        s->behavior = parseBehavior(j.value("behavior", "Isolated"), where);
        s->invert = j.value("invert", false);
        return s;
    }
    if (type == "ByteLevel") {
        auto b = std::make_unique<ByteLevelPreTokenizer>();
        b->addPrefixSpace = j.value("add_prefix_space", false);
        if (j.value("use_regex", true))
            b->regex = std::make_unique<Regex>(kGpt2Pattern);
        return b;
    }
    if (type == "Metaspace") {
        auto m = std::make_unique<MetaspacePreTokenizer>();
        m->replacement = j.value("replacement", kMetaspace);
        if (j.contains("prepend_scheme"))
            m->prependScheme = j.at("prepend_scheme").get<std::string>();
        else if (j.contains("add_prefix_space"))
            m->prependScheme = j.at("add_prefix_space").get<bool>() ? "always" : "never";
        m->split = j.value("split", true);
        return m;
    }
    if (type == "Whitespace") {
        auto r = std::make_unique<RegexPreTokenizer>();
        r->regex = std::make_unique<Regex>(R"(\w+|[^\w\s]+)");
        r->behavior = SplitBehavior::Removed;
        r->invert = true;
        return r;
    }
    if (type == "WhitespaceSplit") {
        auto r = std::make_unique<RegexPreTokenizer>();
        r->regex = std::make_unique<Regex>(R"(\s+)");
        r->behavior = SplitBehavior::Removed;
        return r;
    }
    if (type == "Digits") {
        auto r = std::make_unique<RegexPreTokenizer>();
        r->regex = std::make_unique<Regex>(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
        return r;
    }
    throw Error(where + ": pre_tokenizer type '" + type + "' is not supported");
}

} // namespace together::tokenizer::detail
