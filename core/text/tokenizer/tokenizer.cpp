// SPDX-License-Identifier: MIT
// Tokenizer: loading tokenizer.json (each section read where its stage lives) and tokenizer_config.json, the
// checks every section shares, and the lookups.
#include "text/tokenizer/internal.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "model/gguf.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

namespace together {

namespace tokenizer::detail {

void checkSequenceDepth(int depth, const char* what)
{
    if (depth >= kMaxSequenceDepth)
        throw Error(std::string(what) + " Sequences nest deeper than " + std::to_string(kMaxSequenceDepth) + " levels");
}

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

} // namespace tokenizer::detail

using namespace tokenizer::detail;
namespace fs = std::filesystem;

namespace {

std::string getStringOrContent(const json& v)
{
    if (v.is_string())
        return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    return {};
}

} // namespace

Tokenizer::Tokenizer()
    : m(std::make_unique<Impl>())
{
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::fromDirectory(const std::string& dir)
{
    if (Gguf::isGguf(dir))
        return fromGguf(Gguf::open(dir, false));
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

} // namespace together
