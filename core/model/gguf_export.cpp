// SPDX-License-Identifier: MIT
// A Hugging Face model folder written as one GGUF file (see exportGguf in model/gguf_model.h): for make-model's
// test files and for checking the reader against llama.cpp.
#include "model/gguf_model.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "model/model_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>

namespace together {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Meta = std::vector<std::pair<std::string, GgufValue>>;

std::string tokenText(const json& v) { return v.is_string() ? v.get<std::string>() : v.is_object() ? v.value("content", "") : ""; }

bool isByteToken(const std::string& t)
{
    return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
           std::isxdigit(static_cast<unsigned char>(t[4]));
}

std::pair<std::string, std::string> splitMerge(const json& m)
{
    if (m.is_array())
        return {m.at(0).get<std::string>(), m.at(1).get<std::string>()};
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ', 1);
    if (sp == std::string::npos)
        throw Error("merge '" + s + "' has no space");
    return {s.substr(0, sp), s.substr(sp + 1)};
}

// The name of the byte-level split pattern the tokenizer.json uses.
std::string preTokenizerName(const json& pre)
{
    if (pre.is_object() && pre.value("type", "") == "ByteLevel" && pre.value("use_regex", true))
        return "default";
    if (pre.is_object() && pre.value("type", "") == "Sequence")
        for (const json& p : pre.value("pretokenizers", json::array()))
            if (p.value("type", "") == "Split" && p.contains("pattern") && p["pattern"].contains("Regex"))
                for (const GgufPreTokenizer& k : ggufPreTokenizers())
                    if (p["pattern"]["Regex"] == k.pattern)
                        return k.name;
    throw Error("the tokenizer's split pattern has no GGUF name (known: llama-bpe, qwen2, default)");
}

bool prependsSpace(const json& t)
{
    const std::string text = t.dump();
    return text.find("\"Prepend\"") != std::string::npos ||
           (text.find("\"Metaspace\"") != std::string::npos && text.find("\"never\"") == std::string::npos);
}

// Whether the post-processor puts a special token before the text.
bool addsBos(const json& post)
{
    if (!post.is_object())
        return false;
    if (post.value("type", "") == "Sequence") {
        for (const json& p : post.value("processors", json::array()))
            if (addsBos(p))
                return true;
        return false;
    }
    return post.value("type", "") == "TemplateProcessing" && post.contains("single") && !post["single"].empty() &&
           post["single"][0].contains("SpecialToken");
}

} // namespace

std::vector<std::pair<std::string, GgufValue>> ggufTokenizerMetadata(const std::string& dir, std::optional<int64_t> configBos,
                                                                     const std::vector<int64_t>& configEos)
{
    Meta meta;
    const std::string tjPath = (fs::path(dir) / "tokenizer.json").string();
    const json tj = parseUntrustedJson(readTextFile(tjPath), tjPath);
    const fs::path tcPath = fs::path(dir) / "tokenizer_config.json";
    const json tc = fs::exists(tcPath) ? parseUntrustedJson(readTextFile(tcPath.string()), tcPath.string()) : json::object();
    const json& model = tj.at("model");
    if (model.value("type", "BPE") != "BPE")
        throw Error(tjPath + ": only BPE vocabularies can be written as GGUF");
    std::map<std::string, int64_t> ids;
    int64_t n = 0;
    for (const auto& [tok, id] : model.at("vocab").items()) {
        ids[tok] = id.get<int64_t>();
        n = std::max(n, id.get<int64_t>() + 1);
    }
    std::map<int64_t, bool> added; // id -> special
    for (const json& a : tj.value("added_tokens", json::array())) {
        const int64_t id = a.at("id").get<int64_t>();
        ids[a.at("content").get<std::string>()] = id;
        added[id] = a.value("special", false);
        n = std::max(n, id + 1);
    }
    std::vector<std::string> tokens(static_cast<size_t>(n));
    std::vector<int64_t> types(static_cast<size_t>(n), gguf_token::Unused);
    for (int64_t id = 0; id < n; ++id)
        tokens[static_cast<size_t>(id)] = "[PAD" + std::to_string(id) + "]";
    const bool spm = model.value("byte_fallback", false);
    const std::string unk = model.contains("unk_token") && model["unk_token"].is_string() ? model["unk_token"].get<std::string>() : "";
    for (const auto& [tok, id] : ids) {
        tokens[static_cast<size_t>(id)] = tok;
        const auto a = added.find(id);
        types[static_cast<size_t>(id)] = tok == unk ? gguf_token::Unknown
                                         : a != added.end() ? (a->second ? gguf_token::Control : gguf_token::UserDefined)
                                         : spm && isByteToken(tok) ? gguf_token::Byte
                                                                   : gguf_token::Normal;
    }
    meta.emplace_back("tokenizer.ggml.model", ggufString(spm ? "llama" : "gpt2"));
    const json& merges = model.at("merges");
    if (spm) {
        // llama.cpp merges by score: a merge's rank, negated, is the score of the token it makes.
        std::vector<double> scores(static_cast<size_t>(n), -1e9);
        for (size_t r = merges.size(); r-- > 0;) {
            const auto [a, b] = splitMerge(merges[r]);
            if (auto it = ids.find(a + b); it != ids.end())
                scores[static_cast<size_t>(it->second)] = -static_cast<double>(r);
        }
        meta.emplace_back("tokenizer.ggml.tokens", ggufStrings(tokens));
        meta.emplace_back("tokenizer.ggml.scores", ggufFloats(std::move(scores)));
        meta.emplace_back("tokenizer.ggml.add_space_prefix", ggufBool(prependsSpace(tj.value("normalizer", json())) ||
                                                                      prependsSpace(tj.value("pre_tokenizer", json()))));
    } else {
        std::vector<std::string> lines;
        for (const json& m : merges) {
            const auto [a, b] = splitMerge(m);
            lines.push_back(a + " " + b);
        }
        meta.emplace_back("tokenizer.ggml.pre", ggufString(preTokenizerName(tj.value("pre_tokenizer", json()))));
        meta.emplace_back("tokenizer.ggml.tokens", ggufStrings(tokens));
        meta.emplace_back("tokenizer.ggml.merges", ggufStrings(std::move(lines)));
    }
    meta.emplace_back("tokenizer.ggml.token_type", ggufInts(std::move(types)));
    auto idOf = [&](const json& v) -> std::optional<int64_t> {
        auto it = ids.find(tokenText(v));
        return it == ids.end() ? std::nullopt : std::optional<int64_t>(it->second);
    };
    int64_t bos = configBos.value_or(-1);
    if (bos < 0 && tc.contains("bos_token"))
        bos = idOf(tc["bos_token"]).value_or(-1);
    std::vector<int64_t> eos;
    if (tc.contains("eos_token"))
        if (auto id = idOf(tc["eos_token"]))
            eos.push_back(*id);
    for (int64_t id : configEos)
        if (std::find(eos.begin(), eos.end(), id) == eos.end())
            eos.push_back(id);
    if (bos >= 0)
        meta.emplace_back("tokenizer.ggml.bos_token_id", ggufInt(bos));
    const char* eosKeys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    for (size_t k = 0; k < eos.size() && k < 3; ++k)
        meta.emplace_back(eosKeys[k], ggufInt(eos[k]));
    if (spm && !unk.empty() && ids.count(unk))
        meta.emplace_back("tokenizer.ggml.unknown_token_id", ggufInt(ids[unk]));
    meta.emplace_back("tokenizer.ggml.add_bos_token", ggufBool(addsBos(tj.value("post_processor", json()))));
    meta.emplace_back("tokenizer.ggml.add_eos_token", ggufBool(false));
    if (tc.contains("chat_template") && tc["chat_template"].is_string())
        meta.emplace_back("tokenizer.chat_template", ggufString(tc["chat_template"].get<std::string>()));
    return meta;
}

namespace {

const char* archName(const ModelConfig& c)
{
    if (c.architecture == "Qwen2ForCausalLM")
        return "qwen2";
    if (c.architecture == "Qwen3ForCausalLM")
        return "qwen3";
    if (c.slidingWindow > 0)
        throw Error("a sliding-window model cannot be written as GGUF here");
    return "llama";
}

Meta modelMetadata(const ModelConfig& c, GgmlType matrices)
{
    const std::string a = archName(c);
    Meta meta = {
        {"general.architecture", ggufString(a)},
        {"general.name", ggufString("together " + a + " " + ggmlTypeName(matrices))},
        {a + ".context_length", ggufInt(c.maxPositionEmbeddings)},
        {a + ".embedding_length", ggufInt(c.hiddenSize)},
        {a + ".block_count", ggufInt(c.numLayers)},
        {a + ".feed_forward_length", ggufInt(c.intermediateSize)},
        {a + ".attention.head_count", ggufInt(c.numHeads)},
        {a + ".attention.head_count_kv", ggufInt(c.numKvHeads)},
        {a + ".attention.key_length", ggufInt(c.headDim)},
        {a + ".attention.value_length", ggufInt(c.headDim)},
        {a + ".attention.layer_norm_rms_epsilon", ggufFloat(c.rmsNormEps)},
        {a + ".rope.freq_base", ggufFloat(c.ropeTheta)},
        {a + ".rope.dimension_count", ggufInt(c.headDim)},
        {a + ".vocab_size", ggufInt(c.vocabSize)},
    };
    return meta;
}

// The tensor `hf` as GGUF writes it: rows reordered for interleaved rotary, then each row in its type.
GgufTensorToWrite convertTensor(const SafeTensors& st, const std::string& hf, const ModelConfig& c, GgmlType matrices, bool interleave)
{
    const TensorView& v = st.get(hf);
    const GgmlType source = v.dtype == DType::F16 ? GgmlType::F16 : v.dtype == DType::BF16 ? GgmlType::BF16 : GgmlType::F32;
    const bool matrix = v.shape.size() == 2;
    const int64_t cols = matrix ? v.shape[1] : v.shape[0], rows = matrix ? v.shape[0] : 1;
    GgmlType type = GgmlType::F32;
    if (matrix) {
        type = cols % ggmlTypeInfo(matrices).blockSize == 0 ? matrices : cols % 32 == 0 ? GgmlType::Q8_0 : GgmlType::F16;
        if (matrices == GgmlType::F32 || matrices == GgmlType::F16 || matrices == GgmlType::BF16)
            type = matrices;
    }
    std::vector<float> wide(static_cast<size_t>(rows * cols));
    dequantizeRow(source, v.data, wide.data(), rows * cols);
    const bool qk = hf.find("q_proj") != std::string::npos || hf.find("k_proj") != std::string::npos;
    if (interleave && qk) {
        const int64_t n = matrix ? rows : cols, width = matrix ? cols : 1, head = c.headDim;
        std::vector<float> out(wide.size());
        for (int64_t r = 0; r < n; ++r) { // file row 2i <- row i, file row 2i+1 <- row i + head/2
            const int64_t i = r % head, src = r - i + (i % 2) * (head / 2) + i / 2;
            std::copy_n(wide.begin() + src * width, width, out.begin() + r * width);
        }
        wide.swap(out);
    }
    GgufTensorToWrite t{ggufTensorName(hf), type, v.shape, {}};
    const int64_t rowBytes = ggmlRowBytes(type, cols);
    t.bytes.resize(static_cast<size_t>(rows * rowBytes));
    for (int64_t r = 0; r < rows; ++r)
        quantizeRow(type, wide.data() + r * cols, t.bytes.data() + r * rowBytes, cols);
    return t;
}

} // namespace

void exportGguf(const std::string& dir, const std::string& file, GgmlType matrices)
{
    const ModelConfig c = ModelConfig::fromDirectory(dir);
    const SafeTensors st = SafeTensors::open(dir);
    c.validate(st);
    Meta meta = modelMetadata(c, matrices);
    for (auto& kv : ggufTokenizerMetadata(dir, c.bosTokenId, c.eosTokenIds))
        meta.push_back(std::move(kv));
    const bool interleave = std::string(archName(c)) == "llama";
    std::vector<GgufTensorToWrite> tensors;
    for (const auto& s : c.globalTensors())
        tensors.push_back(convertTensor(st, s.name, c, matrices, interleave));
    if (c.ropeScaling.type == "llama3") {
        const RopeScaling& r = c.ropeScaling;
        if (r.lowFreqFactor != 1.0 || r.highFreqFactor != 4.0 || r.originalMaxPositionEmbeddings != 8192)
            throw Error(dir + ": only Llama 3's published rotary scaling (low 1, high 4, 8192 positions) can be written as GGUF");
        std::vector<float> d;
        for (double x : llama3RopeDivisors(c.ropeTheta, c.headDim, r.factor, r.lowFreqFactor, r.highFreqFactor,
                                           static_cast<double>(r.originalMaxPositionEmbeddings)))
            d.push_back(static_cast<float>(x));
        std::vector<std::byte> bytes(d.size() * 4);
        std::memcpy(bytes.data(), d.data(), bytes.size());
        tensors.push_back({"rope_freqs.weight", GgmlType::F32, {static_cast<int64_t>(d.size())}, std::move(bytes)});
    }
    for (int64_t l = 0; l < c.numLayers; ++l)
        for (const auto& s : c.layerTensors(l))
            tensors.push_back(convertTensor(st, s.name, c, matrices, interleave));
    writeGguf(file, meta, tensors);
}

} // namespace together
