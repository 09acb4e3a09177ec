// SPDX-License-Identifier: MIT
#include "text/tokenizer.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "base/unicode.h"

#include <nlohmann/json.hpp>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <queue>

namespace together {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------------------
// Regex (PCRE2 in UTF + Unicode-property mode, which is what the hub's \p{L}/\p{N}/\s patterns mean).

class Regex {
public:
    explicit Regex(const std::string& pattern)
    {
        int err = 0;
        PCRE2_SIZE offset = 0;
        // The pattern comes from the downloaded file: PCRE2 checks it is valid UTF-8 (with NO_UTF_CHECK an
        // invalid one is undefined behaviour).
        m_code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &offset,
                               nullptr);
        if (!m_code) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(err, buf, sizeof buf);
            throw Error("regex '" + pattern + "' does not compile at offset " + std::to_string(offset) + ": " +
                        reinterpret_cast<char*>(buf));
        }
        pcre2_jit_compile(m_code, PCRE2_JIT_COMPLETE);
        // A pattern that backtracks without end (a file's "(a+)+$") fails a match with an error instead of
        // running for minutes: real pre-tokenizer patterns take a few hundred steps per match.
        m_context = pcre2_match_context_create(nullptr);
        if (!m_context)
            throw std::bad_alloc();
        pcre2_set_match_limit(m_context, 1000000);
        pcre2_set_depth_limit(m_context, 10000);
    }
    ~Regex()
    {
        pcre2_match_context_free(m_context);
        pcre2_code_free(m_code);
    }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // All non-overlapping matches as [begin, end) byte ranges.
    std::vector<std::pair<size_t, size_t>> findAll(std::string_view s) const
    {
        std::vector<std::pair<size_t, size_t>> out;
        pcre2_match_data* md = pcre2_match_data_create_from_pattern(m_code, nullptr);
        size_t start = 0;
        // Subjects are valid UTF-8 (encode() sanitizes its input), so skip PCRE2's per-call validity scan,
        // which would make a long text quadratic.
        while (start <= s.size()) {
            int rc = pcre2_match(m_code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, m_context);
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0) {
                pcre2_match_data_free(md);
                PCRE2_UCHAR buf[256];
                pcre2_get_error_message(rc, buf, sizeof buf);
                throw Error(std::string("tokenizer: a pre-tokenizer regex failed on this text: ") + reinterpret_cast<char*>(buf));
            }
            PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            size_t b = ov[0], e = ov[1];
            if (e == b) { // empty match: step over one code point
                if (b >= s.size())
                    break;
                start = b + unicode::utf8SequenceLength(static_cast<unsigned char>(s[b]));
                continue;
            }
            out.emplace_back(b, e);
            start = e;
        }
        pcre2_match_data_free(md);
        return out;
    }

private:
    pcre2_code* m_code = nullptr;
    pcre2_match_context* m_context = nullptr;
};

std::vector<std::pair<size_t, size_t>> findLiteral(std::string_view s, const std::string& lit)
{
    std::vector<std::pair<size_t, size_t>> out;
    if (lit.empty())
        return out;
    size_t pos = 0;
    while ((pos = s.find(lit, pos)) != std::string_view::npos) {
        out.emplace_back(pos, pos + lit.size());
        pos += lit.size();
    }
    return out;
}

const std::string kMetaspace = "\xE2\x96\x81"; // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

// The GPT-2 pre-tokenizer regex, used by ByteLevel when use_regex is true.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------------------
// Normalizers

// Real normalizers change a text's length a little (a space becomes the 3-byte "▁", NFKC expands ligatures).
constexpr size_t kMaxNormalizedGrowth = 8;
// Normalizers, pre-tokenizers or decoders one file may chain: real files use at most a handful.
constexpr size_t kMaxSequenceItems = 64;

// A normalizer's output may not exceed `limit` bytes: a downloaded file's Replace normalizers, chained, could
// otherwise multiply the text (each a 16-byte replacement of one byte, nine deep: 16^9 times).
struct Normalizer {
    virtual ~Normalizer() = default;
    virtual std::string apply(std::string s, size_t limit) const = 0;
};

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

std::string replaceAll(const std::string& s, const std::string& from, const std::string& to)
{
    return replaceRanges(s, findLiteral(s, from), to);
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

// Pattern objects in tokenizer.json: {"String": "..."} or {"Regex": "..."}.
void readPattern(const json& p, std::string& literal, std::unique_ptr<Regex>& regex, const std::string& where)
{
    if (p.contains("String"))
        literal = p.at("String").get<std::string>();
    else if (p.contains("Regex"))
        regex = std::make_unique<Regex>(p.at("Regex").get<std::string>());
    else
        throw Error(where + ": pattern must be String or Regex");
}

// Limits on what a downloaded tokenizer.json may ask for. Real files nest a Sequence once or twice and use
// ids below ~260k (the largest Llama-family vocabularies); these bound the recursion and the id table's memory.
constexpr int kMaxSequenceDepth = 16;
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;
// Added tokens are matched at every position of a text, each step one byte of the longest candidate: real ones
// are markers like "<|im_start|>" (a few dozen bytes), so this bounds the work per position, not real files.
constexpr size_t kMaxAddedTokenBytes = 1024;

void checkSequenceDepth(int depth, const char* what)
{
    if (depth >= kMaxSequenceDepth)
        throw Error(std::string(what) + " Sequences nest deeper than " + std::to_string(kMaxSequenceDepth) + " levels");
}

// A token id from the file: a whole number in [0, kMaxTokenId].
int tokenId(const json& v, const std::string& what)
{
    if (!v.is_number_integer())
        throw Error(what + " has id " + v.dump() + ", not a whole number");
    const int64_t id = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), uint64_t(INT64_MAX)))
                                              : v.get<int64_t>();
    if (id < 0)
        throw Error(what + " has a negative id (" + std::to_string(id) + ")");
    if (id > kMaxTokenId)
        throw Error(what + " has id " + std::to_string(id) + ", beyond the largest supported (" + std::to_string(kMaxTokenId) + ")");
    return static_cast<int>(id);
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

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizers: each maps a list of pieces to a finer list.

struct PreTokenizer {
    virtual ~PreTokenizer() = default;
    // `firstChunk` is true for the first chunk of the input (before any added token): Metaspace's "first"
    // prepend scheme only applies there.
    virtual std::vector<std::string> apply(std::vector<std::string> pieces, bool firstChunk) const = 0;
};

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

// ---------------------------------------------------------------------------------------------------------
// Decoders, applied token by token (every decoder on the hub for these families is per-token, except for
// the start-of-text rules, which `atStart` carries).

struct DecodeStep {
    enum Kind {
        ByteLevel,
        Replace,
        ByteFallback,
        Fuse,
        Strip,
        Metaspace,
    } kind;
    std::string from, to;
    int stripStart = 0, stripStop = 0;
    bool metaspaceStripFirst = true;
};

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

std::string getStringOrContent(const json& v)
{
    if (v.is_string())
        return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    return {};
}

} // namespace

// -------------------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
    // BPE model
    std::unordered_map<std::string, int> vocab;
    std::vector<std::string> idToTokenStr;
    struct PairHash {
        size_t operator()(uint64_t k) const { return std::hash<uint64_t>()(k * 0x9E3779B97F4A7C15ull); }
    };
    struct Merge {
        int rank;
        int merged;
    };
    std::unordered_map<uint64_t, Merge, PairHash> merges;
    bool byteFallback = false;
    bool ignoreMerges = false;
    bool fuseUnk = false;
    std::optional<int> unkId;
    std::array<int, 256> byteTokenIds{};

    std::unique_ptr<Normalizer> normalizer;
    std::unique_ptr<PreTokenizer> preTokenizer;
    std::vector<DecodeStep> decoders;

    // post-processor: ids before and after the sequence (TemplateProcessing "single")
    std::vector<int> prefixIds, suffixIds;

    std::vector<AddedToken> added;
    std::unordered_map<int, size_t> addedById;
    std::unordered_map<std::string, int> addedByContent;
    // Indices into `added`, sorted by content (equal contents in file order): the tokens that begin with a
    // given prefix are one contiguous run, so matching at a text position narrows a range byte by byte
    // (matchAdded) instead of comparing every added token there.
    std::vector<uint32_t> addedSorted;

    // The added tokens whose content starts `text` at `i`, longest first (equal contents in file order), into
    // `out.tokens`. Each step narrows the run to the tokens whose next byte is the text's: one binary search per
    // byte of the longest match, however many tokens there are.
    struct AddedMatches {
        std::vector<std::pair<size_t, size_t>> runs; // runs of addedSorted that end at successive depths
        std::vector<uint32_t> tokens;
    };
    void matchAdded(std::string_view text, size_t i, AddedMatches& out) const
    {
        out.runs.clear();
        out.tokens.clear();
        size_t lo = 0, hi = addedSorted.size();
        for (size_t d = 0; lo < hi; ++d) {
            // Sorted by content, the tokens of length d come first in a run sharing its first d bytes.
            size_t end = lo;
            while (end < hi && added[addedSorted[end]].content.size() == d)
                ++end;
            if (end > lo)
                out.runs.emplace_back(lo, end);
            lo = end;
            if (lo == hi || i + d >= text.size())
                break;
            const auto c = static_cast<unsigned char>(text[i + d]);
            auto byteAt = [&](uint32_t idx) { return static_cast<unsigned char>(added[idx].content[d]); };
            const auto first = std::partition_point(addedSorted.begin() + lo, addedSorted.begin() + hi,
                                                    [&](uint32_t idx) { return byteAt(idx) < c; });
            const auto last = std::partition_point(first, addedSorted.begin() + hi, [&](uint32_t idx) { return byteAt(idx) == c; });
            lo = first - addedSorted.begin();
            hi = last - addedSorted.begin();
        }
        for (auto r = out.runs.rbegin(); r != out.runs.rend(); ++r)
            for (size_t k = r->first; k < r->second; ++k)
                out.tokens.push_back(addedSorted[k]);
    }

    std::string bosToken, eosToken, chatTemplate;

    mutable std::mutex cacheMutex;
    mutable std::unordered_map<std::string, std::vector<int>> wordCache;

    static uint64_t pairKey(int a, int b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

    // Loading. fromJson calls these in this order, the normalizer, pre-tokenizer and decoders read between the
    // model and the added tokens: the order decides which fault a file with several is refused for.
    void readModel(const json& j);                    // "model", and the ids the id table must hold
    void readAddedTokens(const json& j);              // "added_tokens"
    void readPostProcessor(const json& p, int depth); // "post_processor"
    void readConfig(const std::string& tokenizerConfigJson, const std::string& where); // tokenizer_config.json

    void bpeWord(const std::string& word, std::vector<int>& out) const;
    void encodeChunk(const std::string& chunk, bool firstChunk, std::vector<int>& out) const;
};

void Tokenizer::Impl::bpeWord(const std::string& word, std::vector<int>& out) const
{
    if (ignoreMerges) {
        if (auto it = vocab.find(word); it != vocab.end()) {
            out.push_back(it->second);
            return;
        }
    }
    const bool cacheable = word.size() <= 64;
    if (cacheable) {
        std::lock_guard lock(cacheMutex);
        if (auto it = wordCache.find(word); it != wordCache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    // Symbols: one per code point, or per byte via <0xXX> where the code point is not in the vocabulary.
    struct Sym {
        int id;
        int prev, next;
        bool alive;
    };
    std::vector<Sym> syms;
    std::vector<int> result;
    bool lastUnk = false;
    auto pushSym = [&](int id) {
        int idx = static_cast<int>(syms.size());
        syms.push_back({id, idx - 1, idx + 1, true});
    };
    for (auto& cp : unicode::splitCodepoints(word)) {
        if (auto it = vocab.find(cp); it != vocab.end()) {
            pushSym(it->second);
            lastUnk = false;
            continue;
        }
        if (byteFallback) {
            bool all = true;
            for (unsigned char b : cp)
                all = all && byteTokenIds[b] >= 0;
            if (all) {
                for (unsigned char b : cp)
                    pushSym(byteTokenIds[b]);
                lastUnk = false;
                continue;
            }
        }
        if (!unkId)
            throw Error("text contains '" + cp + "', which the vocabulary cannot represent (no unk token)");
        if (!(fuseUnk && lastUnk))
            pushSym(*unkId);
        lastUnk = true;
    }
    if (!syms.empty())
        syms.back().next = -1;

    struct Cand {
        int rank;
        int left;
        int leftId, rightId;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int left) {
        if (left < 0)
            return;
        int right = syms[left].next;
        if (right < 0)
            return;
        auto it = merges.find(pairKey(syms[left].id, syms[right].id));
        if (it != merges.end())
            heap.push({it->second.rank, left, syms[left].id, syms[right].id});
    };
    for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i)
        consider(i);
    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        Sym& l = syms[c.left];
        if (!l.alive || l.id != c.leftId || l.next < 0)
            continue;
        Sym& r = syms[l.next];
        if (!r.alive || r.id != c.rightId)
            continue;
        l.id = merges.at(pairKey(c.leftId, c.rightId)).merged;
        r.alive = false;
        l.next = r.next;
        if (r.next >= 0)
            syms[r.next].prev = c.left;
        consider(l.prev);
        consider(c.left);
    }
    for (int i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next)
        result.push_back(syms[i].id);
    out.insert(out.end(), result.begin(), result.end());
    if (cacheable) {
        std::lock_guard lock(cacheMutex);
        if (wordCache.size() > 200000)
            wordCache.clear();
        wordCache.emplace(word, std::move(result));
    }
}

void Tokenizer::Impl::encodeChunk(const std::string& chunk, bool firstChunk, std::vector<int>& out) const
{
    std::string text = normalizer ? normalizer->apply(chunk, kMaxNormalizedGrowth * chunk.size() + 4096) : chunk;
    if (text.empty())
        return;
    std::vector<std::string> words{text};
    if (preTokenizer)
        words = preTokenizer->apply(std::move(words), firstChunk);
    for (auto& w : words)
        bpeWord(w, out);
}

Tokenizer::Tokenizer()
    : m(std::make_unique<Impl>())
{
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::fromDirectory(const std::string& dir)
{
    fs::path tj = fs::path(dir) / "tokenizer.json";
    if (!fs::exists(tj))
        throw Error(dir + ": no tokenizer.json (only Hugging Face fast-tokenizer files are supported)");
    fs::path tc = fs::path(dir) / "tokenizer_config.json";
    std::string config = fs::exists(tc) ? readTextFile(tc.string()) : std::string();
    return fromJson(readTextFile(tj.string()), config, tj.string());
}

Tokenizer Tokenizer::fromJson(const std::string& tokenizerJson, const std::string& tokenizerConfigJson,
                              const std::string& where)
{
    Tokenizer t;
    Impl& m = *t.m;
    json j = parseUntrustedJson(tokenizerJson, where);
    try {
        m.readModel(j);
        m.normalizer = makeNormalizer(j.value("normalizer", json()), where, 0);
        m.preTokenizer = makePreTokenizer(j.value("pre_tokenizer", json()), where, 0);
        readDecoders(j.value("decoder", json()), m.decoders, where, 0);
        m.readAddedTokens(j);
        m.readPostProcessor(j.value("post_processor", json()), 0);
    } catch (const Error& e) {
        throw Error(where + ": " + e.what());
    } catch (const json::exception& e) {
        throw Error(where + ": unexpected structure: " + e.what());
    }
    if (!tokenizerConfigJson.empty())
        m.readConfig(tokenizerConfigJson, where);
    return t;
}

// The id table spans the added tokens too, so their ids are read (and checked) here with the vocabulary's.
void Tokenizer::Impl::readModel(const json& j)
{
    const json& model = j.at("model");
    std::string type = model.value("type", "BPE");
    if (type != "BPE")
        throw Error("tokenizer model type '" + type + "' is not supported (only BPE)");
    int maxId = -1;
    for (auto& [tok, id] : model.at("vocab").items()) {
        const int i = tokenId(id, "vocabulary token '" + tok + "'");
        vocab[tok] = i;
        maxId = std::max(maxId, i);
    }
    for (auto& a : j.value("added_tokens", json::array()))
        maxId = std::max(maxId, tokenId(a.at("id"), "added token " + a.value("content", json("?")).dump()));
    idToTokenStr.assign(static_cast<size_t>(maxId + 1), std::string());
    for (auto& [tok, id] : vocab)
        idToTokenStr[static_cast<size_t>(id)] = tok;
    byteFallback = model.value("byte_fallback", false);
    ignoreMerges = model.value("ignore_merges", false);
    fuseUnk = model.value("fuse_unk", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
        auto it = vocab.find(model["unk_token"].get<std::string>());
        if (it != vocab.end())
            unkId = it->second;
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = vocab.find(name);
        byteTokenIds[b] = it == vocab.end() ? -1 : it->second;
    }
    int rank = 0;
    for (auto& mg : model.at("merges")) {
        std::string a, b;
        if (mg.is_string()) {
            std::string s = mg.get<std::string>();
            auto sp = s.find(' ', 1); // a merge's left side may itself be a lone space in some vocabularies
            if (sp == std::string::npos)
                throw Error("merge '" + s + "' has no space");
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else {
            a = mg.at(0).get<std::string>();
            b = mg.at(1).get<std::string>();
        }
        auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
        if (ia == vocab.end() || ib == vocab.end() || im == vocab.end())
            throw Error("merge '" + a + " " + b + "' uses tokens missing from the vocabulary");
        merges.emplace(pairKey(ia->second, ib->second), Merge{rank++, im->second});
    }
}

void Tokenizer::Impl::readAddedTokens(const json& j)
{
    for (auto& a : j.value("added_tokens", json::array())) {
        AddedToken tok;
        tok.id = tokenId(a.at("id"), "added token");
        tok.content = a.at("content").get<std::string>();
        tok.special = a.value("special", false);
        tok.lstrip = a.value("lstrip", false);
        tok.rstrip = a.value("rstrip", false);
        tok.singleWord = a.value("single_word", false);
        if (tok.content.empty())
            continue;
        if (tok.content.size() > kMaxAddedTokenBytes)
            throw Error("added token " + std::to_string(tok.id) + " is " + std::to_string(tok.content.size()) +
                        " bytes long (the limit is " + std::to_string(kMaxAddedTokenBytes) + ")");
        addedById[tok.id] = added.size();
        addedByContent[tok.content] = tok.id;
        idToTokenStr[static_cast<size_t>(tok.id)] = tok.content;
        added.push_back(tok);
    }
    addedSorted.resize(added.size());
    for (size_t i = 0; i < added.size(); ++i)
        addedSorted[i] = static_cast<uint32_t>(i);
    // Bytes compared as unsigned, as matchAdded narrows by them.
    std::stable_sort(addedSorted.begin(), addedSorted.end(), [&](uint32_t x, uint32_t y) {
        const std::string &a = added[x].content, &b = added[y].content;
        return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                            [](char p, char q) { return static_cast<unsigned char>(p) < static_cast<unsigned char>(q); });
    });
}

// TemplateProcessing's special tokens around the single sequence. Their ids must name tokens of this vocabulary
// (they are decoded like any other).
void Tokenizer::Impl::readPostProcessor(const json& p, int depth)
{
    auto checkedId = [&](int id) {
        if (static_cast<size_t>(id) >= idToTokenStr.size())
            throw Error("post_processor uses token id " + std::to_string(id) + ", outside the vocabulary (size " +
                        std::to_string(idToTokenStr.size()) + ")");
        return id;
    };
    if (p.is_null())
        return;
    std::string ptype = p.value("type", "");
    if (ptype == "Sequence") {
        checkSequenceDepth(depth, "post_processor");
        for (auto& x : p.at("processors"))
            readPostProcessor(x, depth + 1);
    } else if (ptype == "TemplateProcessing") {
        bool seenSeq = false;
        for (auto& item : p.at("single")) {
            if (item.contains("Sequence")) {
                seenSeq = true;
                continue;
            }
            std::string name = item.at("SpecialToken").at("id").get<std::string>();
            const json& st = p.at("special_tokens").at(name);
            for (auto& id : st.at("ids"))
                (seenSeq ? suffixIds : prefixIds).push_back(checkedId(tokenId(id, "post_processor token " + name)));
        }
    } else if (ptype == "ByteLevel") {
        // offsets only; ids unchanged
    } else if (ptype == "BertProcessing" || ptype == "RobertaProcessing") {
        auto cls = p.at("cls"), sep = p.at("sep");
        prefixIds.push_back(checkedId(tokenId(cls.at(1), "post_processor cls")));
        suffixIds.push_back(checkedId(tokenId(sep.at(1), "post_processor sep")));
    } else {
        throw Error("post_processor type '" + ptype + "' is not supported");
    }
}

void Tokenizer::Impl::readConfig(const std::string& tokenizerConfigJson, const std::string& where)
{
    json c = parseUntrustedJson(tokenizerConfigJson, where + ": tokenizer_config.json", SIZE_MAX);
    if (c.contains("bos_token"))
        bosToken = getStringOrContent(c["bos_token"]);
    if (c.contains("eos_token"))
        eosToken = getStringOrContent(c["eos_token"]);
    if (c.contains("chat_template")) {
        auto& ct = c["chat_template"];
        if (ct.is_string()) {
            chatTemplate = ct.get<std::string>();
        } else if (ct.is_array()) { // [{"name": "default", "template": ...}, ...]
            for (auto& e : ct)
                if (e.is_object() && e.contains("name") && e["name"] == "default") {
                    if (!e.contains("template") || !e["template"].is_string())
                        throw Error(where + ": tokenizer_config.json: the default chat_template is not a string");
                    chatTemplate = e["template"].get<std::string>();
                }
        }
    }
}

std::vector<int> Tokenizer::encode(std::string_view rawText, bool addSpecialTokens, const std::vector<bool>* specialAllowed) const
{
    // Invalid UTF-8 becomes U+FFFD first, as text reaching a Hugging Face tokenizer is always valid Unicode.
    // Replacement changes byte offsets, so the special-token mask is then dropped to "nowhere allowed" for
    // safety rather than misaligned.
    std::string cleaned = unicode::sanitizeUtf8(rawText);
    std::vector<bool> noneAllowed;
    if (cleaned.size() != rawText.size() && specialAllowed) {
        noneAllowed.assign(cleaned.size(), false);
        specialAllowed = &noneAllowed;
    }
    std::string_view text = cleaned;
    std::vector<int> out;
    if (addSpecialTokens)
        out = m->prefixIds;
    auto isWordChar = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
    size_t chunkStart = 0;
    bool firstChunk = true;
    size_t i = 0;
    Impl::AddedMatches candidates;
    while (i < text.size()) {
        const AddedToken* hit = nullptr;
        m->matchAdded(text, i, candidates);
        for (uint32_t idx : candidates.tokens) {
            const AddedToken& a = m->added[idx];
            if (a.special && specialAllowed) {
                bool ok = true;
                for (size_t k = i; k < i + a.content.size() && ok; ++k)
                    ok = (*specialAllowed)[k];
                if (!ok)
                    continue;
            }
            if (a.singleWord) {
                bool before = i > 0 && isWordChar(static_cast<unsigned char>(text[i - 1]));
                size_t e = i + a.content.size();
                bool after = e < text.size() && isWordChar(static_cast<unsigned char>(text[e]));
                if (before || after)
                    continue;
            }
            hit = &a;
            break;
        }
        if (!hit) {
            ++i;
            continue;
        }
        size_t chunkEnd = i;
        if (hit->lstrip)
            while (chunkEnd > chunkStart && unicode::isSpaceAscii(text[chunkEnd - 1]))
                --chunkEnd;
        m->encodeChunk(std::string(text.substr(chunkStart, chunkEnd - chunkStart)), firstChunk, out);
        out.push_back(hit->id);
        firstChunk = false;
        i += hit->content.size();
        if (hit->rstrip)
            while (i < text.size() && unicode::isSpaceAscii(text[i]))
                ++i;
        chunkStart = i;
    }
    m->encodeChunk(std::string(text.substr(chunkStart)), firstChunk, out);
    if (addSpecialTokens)
        out.insert(out.end(), m->suffixIds.begin(), m->suffixIds.end());
    return out;
}

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

int Tokenizer::vocabSize() const { return static_cast<int>(m->idToTokenStr.size()); }

std::optional<int> Tokenizer::tokenToId(std::string_view token) const
{
    if (auto it = m->addedByContent.find(std::string(token)); it != m->addedByContent.end())
        return it->second;
    if (auto it = m->vocab.find(std::string(token)); it != m->vocab.end())
        return it->second;
    return std::nullopt;
}

std::string Tokenizer::idToToken(int id) const
{
    if (id < 0 || id >= vocabSize())
        return {};
    return m->idToTokenStr[static_cast<size_t>(id)];
}

bool Tokenizer::isSpecial(int id) const
{
    auto it = m->addedById.find(id);
    return it != m->addedById.end() && m->added[it->second].special;
}

const std::vector<Tokenizer::AddedToken>& Tokenizer::addedTokens() const { return m->added; }
const std::string& Tokenizer::bosToken() const { return m->bosToken; }
const std::string& Tokenizer::eosToken() const { return m->eosToken; }
const std::string& Tokenizer::chatTemplate() const { return m->chatTemplate; }

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
