// SPDX-License-Identifier: MIT
#pragma once
// The tokenizer's insides (text/tokenizer.h is its interface), one file per stage of tokenizer.json's pipeline:
//   patterns.cpp        String and Regex patterns (PCRE2), as normalizers and pre-tokenizers match them
//   normalizers.cpp     normalizers, and how much longer they may make a text
//   pre_tokenizers.cpp  pre-tokenizers: a text into the words the model encodes
//   bpe.cpp             the BPE model: its vocabulary and merges, a word into ids
//   added_tokens.cpp    added tokens and the post-processor; encode, which runs the pipeline between them
//   decoders.cpp        the decoder chain: a token's bytes, decode, StreamDecoder
//   tokenizer.cpp       loading tokenizer.json and tokenizer_config.json; the lookups
//   gguf_vocab.cpp      a GGUF file's vocabulary, as the tokenizer.json it amounts to
// A tokenizer.json comes with a downloaded model: the limits below bound what it may ask for.
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace together::tokenizer::detail {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// Limits on what a downloaded tokenizer.json may ask for. Real files nest a Sequence once or twice and use
// ids below ~260k (the largest Llama-family vocabularies); these bound the recursion and the id table's memory.

constexpr int kMaxSequenceDepth = 16;
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;
// Added tokens are matched at every position of a text, each step one byte of the longest candidate: real ones
// are markers like "<|im_start|>" (a few dozen bytes), so this bounds the work per position, not real files.
constexpr size_t kMaxAddedTokenBytes = 1024;
// Real normalizers change a text's length a little (a space becomes the 3-byte "▁", NFKC expands ligatures).
constexpr size_t kMaxNormalizedGrowth = 8;
// Normalizers, pre-tokenizers or decoders one file may chain: real files use at most a handful.
constexpr size_t kMaxSequenceItems = 64;

// Refuses a Sequence (of normalizers, pre-tokenizers, decoders or post-processors) nested `depth` deep.
void checkSequenceDepth(int depth, const char* what);
// A token id from the file: a whole number in [0, kMaxTokenId].
int tokenId(const json& v, const std::string& what);

inline const std::string kMetaspace = "\xE2\x96\x81"; // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

// ---------------------------------------------------------------------------------------------------------
// Patterns (patterns.cpp)

// A regex as the hub's patterns mean it (PCRE2 in UTF + Unicode-property mode, for \p{L}/\p{N}/\s).
class Regex {
public:
    explicit Regex(const std::string& pattern);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // All non-overlapping matches as [begin, end) byte ranges.
    std::vector<std::pair<size_t, size_t>> findAll(std::string_view s) const;

private:
    pcre2_code* m_code = nullptr;
    pcre2_match_context* m_context = nullptr;
};

std::vector<std::pair<size_t, size_t>> findLiteral(std::string_view s, const std::string& lit);
// Pattern objects in tokenizer.json: {"String": "..."} or {"Regex": "..."}.
void readPattern(const json& p, std::string& literal, std::unique_ptr<Regex>& regex, const std::string& where);

// ---------------------------------------------------------------------------------------------------------
// Normalizers (normalizers.cpp)

// A normalizer's output may not exceed `limit` bytes: a downloaded file's Replace normalizers, chained, could
// otherwise multiply the text (each a 16-byte replacement of one byte, nine deep: 16^9 times).
struct Normalizer {
    virtual ~Normalizer() = default;
    virtual std::string apply(std::string s, size_t limit) const = 0;
};

// Null for a null normalizer.
std::unique_ptr<Normalizer> makeNormalizer(const json& j, const std::string& where, int depth);
// `s` with every occurrence of `from` replaced by `to`.
std::string replaceAll(const std::string& s, const std::string& from, const std::string& to);

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizers (pre_tokenizers.cpp): each maps a list of pieces to a finer list.

struct PreTokenizer {
    virtual ~PreTokenizer() = default;
    // `firstChunk` is true for the first chunk of the input (before any added token): Metaspace's "first"
    // prepend scheme only applies there.
    virtual std::vector<std::string> apply(std::vector<std::string> pieces, bool firstChunk) const = 0;
};

// Null for a null pre-tokenizer.
std::unique_ptr<PreTokenizer> makePreTokenizer(const json& j, const std::string& where, int depth);

// ---------------------------------------------------------------------------------------------------------
// Decoders (decoders.cpp), applied token by token (every decoder on the hub for these families is per-token,
// except for the start-of-text rules, which `atStart` carries).

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

// Appends the decoder `j` (a Sequence flattened) to `out`.
void readDecoders(const json& j, std::vector<DecodeStep>& out, const std::string& where, int depth);

} // namespace together::tokenizer::detail

namespace together {

struct Tokenizer::Impl {
    using Normalizer = tokenizer::detail::Normalizer;
    using PreTokenizer = tokenizer::detail::PreTokenizer;
    using DecodeStep = tokenizer::detail::DecodeStep;
    using json = tokenizer::detail::json;

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
    void matchAdded(std::string_view text, size_t i, AddedMatches& out) const;

    std::string bosToken, eosToken, chatTemplate;

    mutable std::mutex cacheMutex;
    mutable std::unordered_map<std::string, std::vector<int>> wordCache;

    static uint64_t pairKey(int a, int b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

    // Loading. fromJson calls these in this order, the normalizer, pre-tokenizer and decoders read between the
    // model and the added tokens: the order decides which fault a file with several is refused for.
    void readModel(const json& j);                    // bpe.cpp: "model", and the ids the id table must hold
    void readAddedTokens(const json& j);              // added_tokens.cpp: "added_tokens"
    void readPostProcessor(const json& p, int depth); // added_tokens.cpp: "post_processor"
    void readConfig(const std::string& tokenizerConfigJson, const std::string& where); // tokenizer_config.json

    // gguf_vocab.cpp: a SentencePiece-style vocabulary's merges, from its scores (see there).
    void mergesFromScores(const std::vector<std::string>& tokens, const std::vector<double>* scores,
                          const std::function<int64_t(size_t)>& typeOf);

    void bpeWord(const std::string& word, std::vector<int>& out) const;
    void encodeChunk(const std::string& chunk, bool firstChunk, std::vector<int>& out) const;
};

} // namespace together
