// SPDX-License-Identifier: MIT
#include "model/random_model.h"

#include "base/error.h"
#include "base/files.h"
#include "base/unicode.h"
#include "base/user_dirs.h"
#include "model/model_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

namespace together {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Training text for the generated tokenizer's merges: plain English, so that prompts tokenize into a
// realistic number of tokens.
const char* kCorpus =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "friends. One day, she saw a big red ball in the tree. She wanted to play with it, but it was too high. "
    "The little dog ran to the house and found a toy. They were happy and played together all day long. "
    "The sun was shining and the birds were singing in the sky. Her mother said that it was time to go home "
    "for dinner. He went to the store to buy some bread, milk and apples for his family. The computer in the "
    "living room was running a language model that answered questions about the weather, the news and the "
    "history of the world. What is the capital of France? The capital of France is Paris. How many legs does "
    "a cat have? A cat has four legs. Tell me a story about a dragon who wanted to learn how to read books. ";

constexpr int kMerges = 480;
const char* kSpecial[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"};

const char* kChatTemplate =
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const char* kSplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct TrainedBpe {
    std::vector<std::string> vocab; // id -> token string (byte-level alphabet)
    std::vector<std::pair<std::string, std::string>> merges;
};

// Greedy BPE training: repeatedly merge the most frequent adjacent pair (ties: first seen) within words.
TrainedBpe trainBpe()
{
    TrainedBpe t;
    for (int b = 0; b < 256; ++b)
        t.vocab.push_back(unicode::byteToUnicode(static_cast<unsigned char>(b)));
    // words: split on spaces, keeping the space with the following word as GPT-2 style does
    std::vector<std::vector<std::string>> words;
    std::string text = kCorpus;
    size_t i = 0;
    while (i < text.size()) {
        size_t j = i + 1;
        while (j < text.size() && text[j] != ' ')
            ++j;
        std::vector<std::string> w;
        for (size_t k = i; k < j; ++k)
            w.push_back(unicode::byteToUnicode(static_cast<unsigned char>(text[k])));
        words.push_back(w);
        i = j;
    }
    for (int m = 0; m < kMerges; ++m) {
        std::map<std::pair<std::string, std::string>, int> counts;
        std::vector<std::pair<std::string, std::string>> order;
        for (auto& w : words)
            for (size_t k = 0; k + 1 < w.size(); ++k) {
                auto key = std::make_pair(w[k], w[k + 1]);
                if (counts[key]++ == 0)
                    order.push_back(key);
            }
        if (order.empty())
            break;
        auto best = order.front();
        for (auto& p : order)
            if (counts[p] > counts[best])
                best = p;
        if (counts[best] < 2)
            break;
        std::string merged = best.first + best.second;
        if (std::find(t.vocab.begin(), t.vocab.end(), merged) != t.vocab.end())
            continue;
        t.merges.push_back(best);
        t.vocab.push_back(merged);
        for (auto& w : words) {
            std::vector<std::string> nw;
            for (size_t k = 0; k < w.size(); ++k) {
                if (k + 1 < w.size() && w[k] == best.first && w[k + 1] == best.second) {
                    nw.push_back(merged);
                    ++k;
                } else {
                    nw.push_back(w[k]);
                }
            }
            w = std::move(nw);
        }
    }
    return t;
}

const TrainedBpe& trainedBpe()
{
    static const TrainedBpe t = trainBpe();
    return t;
}

// xorshift-based uniform generator: fast enough to fill billions of weights for benchmark models.
class FastRng {
public:
    explicit FastRng(uint64_t seed)
        : m_s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull)
    {
    }
    // uniform in [-1, 1)
    float next()
    {
        m_s ^= m_s << 13;
        m_s ^= m_s >> 7;
        m_s ^= m_s << 17;
        return static_cast<float>(static_cast<int64_t>(m_s >> 11) - (1ll << 52)) * (1.0f / static_cast<float>(1ll << 52));
    }

private:
    uint64_t m_s;
};

} // namespace

int64_t randomTokenizerSize()
{
    return static_cast<int64_t>(trainedBpe().vocab.size()) + static_cast<int64_t>(std::size(kSpecial));
}

namespace {

// tokenizer.json: byte-level BPE as Llama 3 / Qwen ship it; ids past the tokenizer (up to `vocab`) are reserved
// tokens.
json tokenizerJson(const TrainedBpe& bpe, int64_t vocab)
{
    const int64_t baseVocab = static_cast<int64_t>(bpe.vocab.size());
    const int64_t tokVocab = randomTokenizerSize();
    const int64_t bos = baseVocab;
    json vocabJson = json::object();
    for (size_t id = 0; id < bpe.vocab.size(); ++id)
        vocabJson[bpe.vocab[id]] = id;
    json added = json::array();
    for (size_t k = 0; k < std::size(kSpecial); ++k)
        added.push_back({{"id", baseVocab + static_cast<int64_t>(k)}, {"content", kSpecial[k]}, {"single_word", false},
                         {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
    for (int64_t id = tokVocab; id < vocab; ++id)
        added.push_back({{"id", id}, {"content", "<|reserved_" + std::to_string(id - tokVocab) + "|>"}, {"single_word", false},
                         {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
    json merges = json::array();
    for (auto& [a, b] : bpe.merges)
        merges.push_back(a + " " + b);
    return {
        {"version", "1.0"},
        {"truncation", nullptr},
        {"padding", nullptr},
        {"added_tokens", added},
        {"normalizer", nullptr},
        {"pre_tokenizer",
         {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", kSplitRegex}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
        {"post_processor",
         {{"type", "TemplateProcessing"},
          {"single", {{{"SpecialToken", {{"id", kSpecial[0]}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair", json::array()},
          {"special_tokens", {{kSpecial[0], {{"id", kSpecial[0]}, {"ids", {bos}}, {"tokens", {kSpecial[0]}}}}}}}},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model",
         {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
          {"vocab", vocabJson}, {"merges", merges}}},
    };
}

json configJson(const RandomModelSpec& spec, int64_t vocab, int64_t bos, int64_t eos, int64_t imEnd)
{
    const int64_t headDim = spec.headDim > 0 ? spec.headDim : spec.hiddenSize / spec.numHeads;
    return {
        {"architectures", {spec.architecture}},
        {"model_type", "llama"},
        {"hidden_size", spec.hiddenSize},
        {"intermediate_size", spec.intermediateSize},
        {"num_hidden_layers", spec.numLayers},
        {"num_attention_heads", spec.numHeads},
        {"num_key_value_heads", spec.numKvHeads},
        {"head_dim", headDim},
        {"vocab_size", vocab},
        {"max_position_embeddings", spec.maxPositionEmbeddings},
        {"rms_norm_eps", 1e-5},
        {"rope_theta", spec.ropeTheta},
        {"hidden_act", "silu"},
        {"tie_word_embeddings", spec.tieWordEmbeddings},
        {"bos_token_id", bos},
        {"eos_token_id", {eos, imEnd}},
        {"torch_dtype", spec.dtype == DType::BF16 ? "bfloat16" : spec.dtype == DType::F16 ? "float16" : "float32"},
        {"together_random_weights", true},
    };
}

// The weights of every tensor `cfg` names. Projections are uniform with std 1/sqrt(fan_in), so activations stay
// O(1); norms start at 1 with a little noise so that a wrong norm weight shows up in tests.
std::vector<TensorToWrite> randomWeights(const ModelConfig& cfg, const RandomModelSpec& spec)
{
    FastRng rng(spec.seed);
    const size_t esize = dtypeSize(spec.dtype);
    auto fill = [&](const ModelConfig::TensorSpec& ts, float stdDev, float center) {
        TensorToWrite t;
        t.name = ts.name;
        t.dtype = spec.dtype;
        t.shape = ts.shape;
        size_t n = 1;
        for (auto d : ts.shape)
            n *= static_cast<size_t>(d);
        t.bytes.resize(n * esize);
        const float a = stdDev * std::sqrt(3.0f);
        for (size_t i = 0; i < n; ++i) {
            float v = center + a * rng.next();
            if (spec.dtype == DType::F32)
                std::memcpy(&t.bytes[i * 4], &v, 4);
            else {
                uint16_t h = spec.dtype == DType::BF16 ? floatToBf16(v) : floatToF16(v);
                std::memcpy(&t.bytes[i * 2], &h, 2);
            }
        }
        return t;
    };
    auto init = [&](const ModelConfig::TensorSpec& ts) {
        const std::string& n = ts.name;
        bool isNorm = n.find("norm") != std::string::npos;
        if (isNorm)
            return fill(ts, 0.1f, 1.0f);
        if (n.find(".bias") != std::string::npos)
            return fill(ts, 0.1f, 0.0f);
        if (n == "model.embed_tokens.weight")
            return fill(ts, spec.tieWordEmbeddings ? static_cast<float>(spec.logitScale) : 1.0f, 0.0f);
        float fanIn = static_cast<float>(ts.shape.back());
        float scale = n == "lm_head.weight" ? static_cast<float>(spec.logitScale) : 1.0f;
        return fill(ts, scale / std::sqrt(fanIn), 0.0f);
    };
    std::vector<TensorToWrite> tensors;
    for (auto& ts : cfg.globalTensors())
        tensors.push_back(init(ts));
    for (int64_t l = 0; l < cfg.numLayers; ++l)
        for (auto& ts : cfg.layerTensors(l))
            tensors.push_back(init(ts));
    return tensors;
}

} // namespace

void writeRandomModel(const std::string& dir, const RandomModelSpec& spec)
{
    fs::create_directories(dir);
    const TrainedBpe& bpe = trainedBpe();
    const int64_t baseVocab = static_cast<int64_t>(bpe.vocab.size());
    const int64_t tokVocab = randomTokenizerSize();
    const int64_t vocab = spec.vocabSize > 0 ? spec.vocabSize : tokVocab;
    if (vocab < tokVocab)
        throw Error("random model: vocab_size " + std::to_string(vocab) + " is smaller than the generated tokenizer (" +
                    std::to_string(tokVocab) + ")");
    const int64_t bos = baseVocab, eos = baseVocab + 1, imEnd = baseVocab + 3;
    atomicWrite((fs::path(dir) / "tokenizer.json").string(), tokenizerJson(bpe, vocab).dump(1));
    json tokConfig = {
        {"bos_token", kSpecial[0]}, {"eos_token", kSpecial[3]}, {"chat_template", kChatTemplate},
        {"tokenizer_class", "PreTrainedTokenizerFast"}, {"model_max_length", spec.maxPositionEmbeddings},
    };
    atomicWrite((fs::path(dir) / "tokenizer_config.json").string(), tokConfig.dump(1));
    const json config = configJson(spec, vocab, bos, eos, imEnd);
    atomicWrite((fs::path(dir) / "config.json").string(), config.dump(1));
    json gen = {{"bos_token_id", bos}, {"eos_token_id", {eos, imEnd}}, {"do_sample", true}, {"temperature", 0.8}, {"top_p", 0.95}};
    atomicWrite((fs::path(dir) / "generation_config.json").string(), gen.dump(1));
    const ModelConfig cfg = ModelConfig::fromJsonText(config.dump(), "generated config");
    writeSafeTensors((fs::path(dir) / "model.safetensors").string(), randomWeights(cfg, spec));
}

namespace {

RandomModelSpec spec(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kvHeads)
{
    RandomModelSpec s;
    s.hiddenSize = hidden;
    s.intermediateSize = intermediate;
    s.numLayers = layers;
    s.numHeads = heads;
    s.numKvHeads = kvHeads;
    return s;
}

std::vector<ModelShape> makeShapes()
{
    std::vector<ModelShape> v;
    v.push_back({"default", "the built-in default model", RandomModelSpec{}});
    v.push_back({"tiny", "hidden 16, 1 layer: plumbing", spec(16, 32, 1, 2, 1)});
    RandomModelSpec small = spec(128, 256, 4, 4, 2);
    small.maxPositionEmbeddings = 8192;
    v.push_back({"small", "hidden 128, 4 layers, 8192 positions: processes rather than numerics", small});
    RandomModelSpec margin = spec(96, 192, 5, 6, 2);
    margin.headDim = 16;
    margin.logitScale = 6.0;
    margin.seed = 21;
    v.push_back({"large-margin", "hidden 96, 5 layers, top logits far apart: the same greedy ids in every placement", margin});
    RandomModelSpec accuracy = spec(256, 688, 4, 8, 4);
    accuracy.vocabSize = 2048;
    accuracy.maxPositionEmbeddings = 512;
    v.push_back({"accuracy", "hidden 256, 4 layers, vocab 2048: bench --accuracy", accuracy});
    RandomModelSpec overhead = spec(64, 128, 1, 4, 2);
    overhead.vocabSize = 512; // the smallest the random model's tokenizer allows
    overhead.maxPositionEmbeddings = 256;
    v.push_back({"layer-overhead", "hidden 64, vocab 512: calibration's fixed cost per layer", overhead});
    RandomModelSpec tiny11 = spec(2048, 5632, 22, 32, 4);
    tiny11.vocabSize = 32000;
    tiny11.dtype = DType::BF16;
    v.push_back({"tinyllama-1.1b", "TinyLlama-1.1B's shape, bf16", tiny11});
    RandomModelSpec llama8 = spec(4096, 14336, 32, 32, 8);
    llama8.vocabSize = 128256;
    llama8.maxPositionEmbeddings = 8192;
    llama8.dtype = DType::BF16;
    v.push_back({"llama3-8b", "Llama-3-8B's shape, bf16 (16 GB)", llama8});
    return v;
}

} // namespace

const std::vector<ModelShape>& modelShapes()
{
    static const std::vector<ModelShape> shapes = makeShapes();
    return shapes;
}

RandomModelSpec modelShape(const std::string& name, int64_t layers)
{
    std::string names;
    for (auto& s : modelShapes()) {
        if (s.name == name) {
            RandomModelSpec spec = s.spec;
            if (layers > 0)
                spec.numLayers = layers;
            return spec;
        }
        names += (names.empty() ? "" : ", ") + s.name;
    }
    throw Error("unknown model shape '" + name + "' (the shapes: " + names + ")");
}

bool isModelFolder(const std::string& dir)
{
    std::error_code ec;
    return fs::exists(fs::path(dir) / "model.safetensors", ec) && fs::exists(fs::path(dir) / "config.json", ec);
}

std::string ensureRandomModel(const std::string& dir, const RandomModelSpec& spec)
{
    if (isModelFolder(dir))
        return dir;
    const fs::path target = fs::absolute(dir);
    const fs::path parent = target.parent_path();
    const std::string name = target.filename().string();
    fs::create_directories(parent);
    // One writer per model at a time: another process waits here, then finds the model. Under the lock nobody else
    // writes this model, so what an interrupted writer left is removed: its partial folder, an older version's
    // "<name>.partial", or a folder at the target without a whole model in it.
    FileLock lock((parent / ("." + name + ".lock")).string());
    if (isModelFolder(dir))
        return dir;
    std::error_code ec;
    const std::string partialPrefix = "together-" + name + "-partial-";
    for (auto& e : fs::directory_iterator(parent, ec)) {
        const std::string n = e.path().filename().string();
        if (n == name + ".partial" || (n.rfind(partialPrefix, 0) == 0 && n.size() == partialPrefix.size() + 6))
            fs::remove_all(e.path(), ec);
    }
    TempDir partial(name + "-partial", parent.string());
    writeRandomModel(partial.path(), spec);
    // A model folder as create_directories makes one (mkdtemp's is private).
    fs::permissions(partial.path(), static_cast<fs::perms>(0755 & ~currentUmask()));
    fs::remove_all(target);
    fs::rename(partial.path(), target);
    partial.release();
    return dir;
}

std::string ensureBenchModel(const std::string& cacheDir, int64_t layers) { return ensureBenchModel(cacheDir, "tinyllama-1.1b", layers); }

std::string ensureBenchModel(const std::string& cacheDir, const std::string& shape, int64_t layers)
{
    const RandomModelSpec spec = modelShape(shape, layers);
    std::string dtype = dtypeName(spec.dtype);
    std::transform(dtype.begin(), dtype.end(), dtype.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::string dir = cacheDir + "/bench-" + shape + "-" + std::to_string(spec.numLayers) + "l-" + dtype;
    if (!isModelFolder(dir))
        std::fprintf(stderr, "bench: writing a random %s-shaped model to %s (once)...\n", shape.c_str(), dir.c_str());
    return ensureRandomModel(dir, spec);
}

std::string defaultModelDir() { return cacheDir() + "/default-model"; }

std::string ensureDefaultModel() { return ensureRandomModel(defaultModelDir(), modelShape("default")); }

} // namespace together
