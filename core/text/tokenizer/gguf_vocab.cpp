// SPDX-License-Identifier: MIT
// Tokenizer: a GGUF file's vocabulary (tokenizer.ggml.*) as the tokenizer.json of the same model would give it,
// so one pipeline serves both formats.
//  - "llama": SentencePiece-style. Tokens with scores and types; a word is merged pair by pair, the pair whose
//    joined token has the highest score first (leftmost on ties), with byte fallback. That is BPE whose merges are
//    every split of a vocabulary token into two vocabulary tokens, ranked by the joined token's score (equal
//    scores, equal ranks), after the "▁" normalizer Llama's tokenizer.json has.
//  - "gpt2": byte-level BPE with the file's merges, after the split pattern named by tokenizer.ggml.pre.
// Control and unknown tokens are special added tokens; user-defined ones are added tokens that are not special.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/unicode.h"
#include "model/gguf.h"
#include "model/gguf_model.h"

#include <algorithm>
#include <cmath>

namespace together {

using namespace tokenizer::detail;

namespace {

const GgufPreTokenizer& preTokenizerOf(const Gguf& g)
{
    std::string pre = g.getString("tokenizer.ggml.pre").value_or("default");
    if (pre == "llama3" || pre == "llama-v3")
        pre = "llama-bpe";
    if (pre == "gpt-2")
        pre = "default";
    for (const auto& k : ggufPreTokenizers())
        if (pre == k.name)
            return k;
    throw Error("tokenizer.ggml.pre '" + pre + "' is not supported (llama-bpe, qwen2 and default are)");
}

json textReplace(const std::string& from, const std::string& to)
{
    return {{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
}

// The post-processor that adds BOS (and EOS) as the file's flags ask.
json postProcessor(const std::vector<std::string>& tokens, std::optional<int64_t> bos, std::optional<int64_t> eos, bool addBos,
                   bool addEos)
{
    json single = json::array(), special = json::object();
    auto add = [&](int64_t id) {
        const std::string& name = tokens.at(static_cast<size_t>(id));
        single.push_back({{"SpecialToken", {{"id", name}, {"type_id", 0}}}});
        special[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
    };
    if (addBos && bos)
        add(*bos);
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (addEos && eos)
        add(*eos);
    return {{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", special}};
}

std::optional<int64_t> tokenIdKey(const Gguf& g, const char* key, size_t vocab)
{
    std::optional<int64_t> id = g.getInt(key);
    if (id && (*id < 0 || static_cast<size_t>(*id) >= vocab))
        throw Error(std::string(key) + " is " + std::to_string(*id) + ", outside the vocabulary of " + std::to_string(vocab));
    return id;
}

} // namespace

Tokenizer Tokenizer::fromGguf(const Gguf& g)
{
    const std::string where = g.where();
    try {
        const std::string model = g.getString("tokenizer.ggml.model").value_or("");
        const std::vector<std::string>* tokens = g.getStrings("tokenizer.ggml.tokens");
        if (!tokens || tokens->empty())
            throw Error("no vocabulary (tokenizer.ggml.tokens)");
        const size_t n = tokens->size();
        const std::vector<int64_t>* types = g.getInts("tokenizer.ggml.token_type");
        if (types && types->size() != n)
            throw Error("tokenizer.ggml.token_type has " + std::to_string(types->size()) + " entries for " + std::to_string(n) + " tokens");
        auto typeOf = [&](size_t id) { return types ? (*types)[id] : int64_t{gguf_token::Normal}; };
        const bool spm = model == "llama";
        if (!spm && model != "gpt2")
            throw Error("tokenizer.ggml.model '" + model + "' is not supported (llama and gpt2 are)");
        const auto bos = tokenIdKey(g, "tokenizer.ggml.bos_token_id", n);
        const auto eos = tokenIdKey(g, "tokenizer.ggml.eos_token_id", n);
        const auto unk = tokenIdKey(g, "tokenizer.ggml.unknown_token_id", n);

        json j;
        json vocab = json::object();
        for (size_t id = 0; id < n; ++id) {
            if (unicode::sanitizeUtf8((*tokens)[id]) != (*tokens)[id])
                throw Error("token " + std::to_string(id) + " is not valid UTF-8");
            if (!vocab.contains((*tokens)[id]))
                vocab[(*tokens)[id]] = id;
        }
        j["model"] = {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", json::array()}};
        json added = json::array();
        for (size_t id = 0; id < n; ++id) {
            const int64_t t = typeOf(id);
            if (t == gguf_token::Control || t == gguf_token::Unknown || t == gguf_token::UserDefined)
                added.push_back({{"id", id}, {"content", (*tokens)[id]}, {"special", t != gguf_token::UserDefined}});
        }
        j["added_tokens"] = std::move(added);
        const bool addBos = g.getBool("tokenizer.ggml.add_bos_token").value_or(spm);
        const bool addEos = g.getBool("tokenizer.ggml.add_eos_token").value_or(false);
        j["post_processor"] = postProcessor(*tokens, bos, eos, addBos, addEos);
        if (spm) {
            const bool prefix = g.getBool("tokenizer.ggml.add_space_prefix").value_or(true);
            j["model"]["byte_fallback"] = true;
            j["model"]["fuse_unk"] = true;
            j["model"]["unk_token"] = (*tokens)[static_cast<size_t>(unk.value_or(0))];
            j["normalizer"] = prefix ? json{{"type", "Sequence"},
                                            {"normalizers", {{{"type", "Prepend"}, {"prepend", kMetaspace}}, textReplace(" ", kMetaspace)}}}
                                     : textReplace(" ", kMetaspace);
            json decoders = {textReplace(kMetaspace, " "), {{"type", "ByteFallback"}}, {{"type", "Fuse"}}};
            if (prefix)
                decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
            j["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
        } else {
            const GgufPreTokenizer& pre = preTokenizerOf(g);
            const std::vector<std::string>* merges = g.getStrings("tokenizer.ggml.merges");
            if (!merges)
                throw Error("no merges (tokenizer.ggml.merges) for a gpt2 vocabulary");
            j["model"]["merges"] = *merges;
            j["model"]["ignore_merges"] = pre.ignoreMerges;
            if (pre.nfc)
                j["normalizer"] = {{"type", "NFC"}};
            j["pre_tokenizer"] = {{"type", "Sequence"},
                                  {"pretokenizers",
                                   {{{"type", "Split"}, {"pattern", {{"Regex", pre.pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}};
            j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
        }
        json config = json::object();
        if (bos)
            config["bos_token"] = (*tokens)[static_cast<size_t>(*bos)];
        if (eos)
            config["eos_token"] = (*tokens)[static_cast<size_t>(*eos)];
        if (auto tmpl = g.getString("tokenizer.chat_template"))
            config["chat_template"] = *tmpl;
        Tokenizer t = fromJson(j.dump(-1, ' ', false, json::error_handler_t::replace), config.dump(-1, ' ', false, json::error_handler_t::replace),
                               where);
        if (spm)
            t.m->mergesFromScores(*tokens, g.getFloats("tokenizer.ggml.scores"), typeOf);
        return t;
    } catch (const Error& e) {
        if (std::string_view(e.what()).substr(0, where.size()) == where)
            throw;
        throw Error(where + ": " + e.what());
    }
}

void Tokenizer::Impl::mergesFromScores(const std::vector<std::string>& tokens, const std::vector<double>* scores,
                                       const std::function<int64_t(size_t)>& typeOf)
{
    if (!scores || scores->size() != tokens.size())
        throw Error("tokenizer.ggml.scores must hold one score per token");
    // Each normal token is tried at every split: bounded so a file cannot make that quadratic in a long token.
    constexpr size_t kMaxTokenBytes = 1024;
    std::vector<double> distinct;
    for (size_t id = 0; id < tokens.size(); ++id) {
        if (!std::isfinite((*scores)[id]))
            throw Error("token " + std::to_string(id) + " has the score " + std::to_string((*scores)[id]) + ", not a number");
        if (typeOf(id) != gguf_token::Normal)
            continue;
        if (tokens[id].size() > kMaxTokenBytes)
            throw Error("token " + std::to_string(id) + " is " + std::to_string(tokens[id].size()) + " bytes long, more than the " +
                        std::to_string(kMaxTokenBytes) + " a SentencePiece-style vocabulary may have");
        distinct.push_back((*scores)[id]);
    }
    std::sort(distinct.begin(), distinct.end(), std::greater<>());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (size_t id = 0; id < tokens.size(); ++id) {
        if (typeOf(id) != gguf_token::Normal)
            continue;
        const std::string& tok = tokens[id];
        if (auto self = vocab.find(tok); self == vocab.end() || self->second != static_cast<int>(id))
            continue; // a second copy of a token: its first id is the one merges make (as the vocabulary maps it)
        const int rank = static_cast<int>(std::lower_bound(distinct.begin(), distinct.end(), (*scores)[id], std::greater<>()) - distinct.begin());
        for (size_t k = unicode::nextCodepoint(tok, 0); k < tok.size(); k = unicode::nextCodepoint(tok, k)) {
            auto a = vocab.find(tok.substr(0, k)), b = vocab.find(tok.substr(k));
            if (a == vocab.end() || b == vocab.end())
                continue;
            auto [it, fresh] = merges.emplace(pairKey(a->second, b->second), Merge{rank, static_cast<int>(id)});
            if (!fresh && rank < it->second.rank)
                it->second = Merge{rank, static_cast<int>(id)};
        }
    }
}

} // namespace together
