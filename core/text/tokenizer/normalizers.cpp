// SPDX-License-Identifier: MIT
// Tokenizer: the normalizers, each held to how much longer it may make a text.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"

#include <cstdint>

namespace together::tokenizer::detail {

namespace {

void checkNormalized(size_t size, size_t limit)
{
    if (size > limit)
        throw Error("tokenizer.json's normalizers make the text more than " + std::to_string(kMaxNormalizedGrowth) + " times longer");
}

std::string checked(std::string s, size_t limit)
{
    checkNormalized(s.size(), limit);
    return s;
}

// `s` with each of the (ordered, disjoint) ranges replaced by `to`; refused, before it is built past it, when
// the result would exceed `limit` bytes.
std::string replaceRanges(const std::string& s, const std::vector<std::pair<size_t, size_t>>& ranges, const std::string& to,
                          size_t limit = SIZE_MAX)
{
    std::string out;
    size_t prev = 0;
    for (auto [b, e] : ranges) {
        checkNormalized(out.size() + (b - prev) + to.size(), limit);
        out.append(s, prev, b - prev);
        out += to;
        prev = e;
    }
    checkNormalized(out.size() + (s.size() - prev), limit);
    out.append(s, prev, std::string::npos);
    return out;
}

struct NormalizerSequence : Normalizer {
    std::vector<std::unique_ptr<Normalizer>> items;
    std::string apply(std::string s, size_t limit) const override
    {
        for (auto& n : items)
            s = n->apply(std::move(s), limit);
        return s;
    }
};
struct NfcNormalizer : Normalizer {
    std::string apply(std::string s, size_t limit) const override { return checked(unicode::normalizeNfc(s), limit); }
};
struct NfkcNormalizer : Normalizer {
    std::string apply(std::string s, size_t limit) const override { return checked(unicode::normalizeNfkc(s), limit); }
};
struct LowercaseNormalizer : Normalizer {
    std::string apply(std::string s, size_t limit) const override { return checked(unicode::toLowerUnicode(s), limit); }
};
struct PrependNormalizer : Normalizer {
    std::string prefix;
    std::string apply(std::string s, size_t limit) const override
    {
        checkNormalized(s.empty() ? 0 : s.size() + prefix.size(), limit);
        return s.empty() ? s : prefix + s;
    }
};
struct ReplaceNormalizer : Normalizer {
    std::string from, to;
    std::unique_ptr<Regex> regex;
    std::string apply(std::string s, size_t limit) const override
    {
        return replaceRanges(s, regex ? regex->findAll(s) : findLiteral(s, from), to, limit);
    }
};

} // namespace

std::string replaceAll(const std::string& s, const std::string& from, const std::string& to)
{
    return replaceRanges(s, findLiteral(s, from), to);
}

std::unique_ptr<Normalizer> makeNormalizer(const json& j, const std::string& where, int depth)
{
    if (j.is_null())
        return nullptr;
    std::string type = j.value("type", "");
    if (type == "Sequence") {
        checkSequenceDepth(depth, "normalizer");
        auto seq = std::make_unique<NormalizerSequence>();
        for (auto& n : j.at("normalizers"))
            if (auto made = makeNormalizer(n, where, depth + 1))
                seq->items.push_back(std::move(made));
        if (seq->items.size() > kMaxSequenceItems)
            throw Error(where + ": more than " + std::to_string(kMaxSequenceItems) + " normalizers in a Sequence");
        return seq;
    }
    if (type == "NFC")
        return std::make_unique<NfcNormalizer>();
    if (type == "NFKC")
        return std::make_unique<NfkcNormalizer>();
    if (type == "Lowercase")
        return std::make_unique<LowercaseNormalizer>();
    if (type == "Prepend") {
        auto p = std::make_unique<PrependNormalizer>();
        p->prefix = j.at("prepend").get<std::string>();
        return p;
    }
    if (type == "Replace") {
        auto r = std::make_unique<ReplaceNormalizer>();
        readPattern(j.at("pattern"), r->from, r->regex, where);
        r->to = j.at("content").get<std::string>();
        return r;
    }
    throw Error(where + ": normalizer type '" + type + "' is not supported");
}

} // namespace together::tokenizer::detail
