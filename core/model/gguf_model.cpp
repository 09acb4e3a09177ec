// SPDX-License-Identifier: MIT
#include "model/gguf_model.h"

#include "base/error.h"
#include "model/model_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <regex>

namespace together {

using json = nlohmann::json;

namespace {

struct Arch {
    const char* gguf;
    const char* huggingFace;
    bool interleavedRotary; // llama.cpp's converter permutes q and k rows (its "normal" rope); qwen uses NEOX
};
constexpr Arch kArchs[] = {
    {"llama", "LlamaForCausalLM", true},
    {"qwen2", "Qwen2ForCausalLM", false},
    {"qwen3", "Qwen3ForCausalLM", false},
};

const Arch& archOf(const Gguf& g)
{
    const std::optional<std::string> name = g.getString("general.architecture");
    if (!name)
        throw Error(g.where() + ": no general.architecture");
    for (const Arch& a : kArchs)
        if (*name == a.gguf)
            return a;
    throw Error(g.where() + ": architecture '" + *name + "' is not supported (llama, qwen2 and qwen3 are)");
}

int64_t required(const Gguf& g, const std::string& key)
{
    const std::optional<int64_t> v = g.getInt(key);
    if (!v)
        throw Error(g.where() + ": metadata " + key + " is missing");
    return *v;
}

} // namespace

std::vector<double> llama3RopeDivisors(double base, int64_t dims, double factor, double low, double high, double original)
{
    std::vector<double> out;
    const double lowWavelen = original / low, highWavelen = original / high;
    for (int64_t i = 0; i < dims; i += 2) {
        const double freq = 1.0 / std::pow(base, static_cast<double>(i) / static_cast<double>(dims));
        const double wavelen = 2 * M_PI / freq;
        if (wavelen < highWavelen)
            out.push_back(1.0);
        else if (wavelen > lowWavelen)
            out.push_back(factor);
        else {
            const double smooth = (original / wavelen - low) / (high - low);
            out.push_back(1.0 / ((1 - smooth) / factor + smooth));
        }
    }
    return out;
}

namespace {

// rope_freqs.weight as the config's rope_scaling, or an Error when it is not Llama 3's.
json ropeScalingOf(const Gguf& g, double base, int64_t headDim)
{
    const GgufTensor& t = g.get("rope_freqs.weight");
    if (headDim <= 0 || headDim % 2 != 0)
        throw Error(g.where() + ": heads of " + std::to_string(headDim) + " dimensions cannot have rotary scaling (an even size is needed)");
    if (t.type != GgmlType::F32 || t.numel() != headDim / 2)
        throw Error(g.where() + ": rope_freqs.weight is not " + std::to_string(headDim / 2) + " F32 values");
    std::vector<float> got(static_cast<size_t>(headDim / 2));
    if (t.data)
        std::memcpy(got.data(), t.data, got.size() * 4);
    else
        t.file->read(t.fileOffset, got.size() * 4, reinterpret_cast<std::byte*>(got.data()));
    for (size_t i = 0; i < got.size(); ++i)
        if (!std::isfinite(got[i]) || got[i] <= 0)
            throw Error(g.where() + ": rope_freqs.weight value " + std::to_string(i) + " is " + std::to_string(got[i]) +
                        ", not a positive number");
    const double factor = *std::max_element(got.begin(), got.end());
    const std::vector<double> want = llama3RopeDivisors(base, headDim, factor, 1.0, 4.0, 8192.0);
    for (size_t i = 0; i < want.size(); ++i)
        if (std::fabs(got[i] - want[i]) > 1e-3 * want[i])
            throw Error(g.where() + ": rope_freqs.weight is not Llama 3's rotary scaling (value " + std::to_string(i) + " is " +
                        std::to_string(got[i]) + ", expected " + std::to_string(want[i]) + "): not supported");
    return {{"rope_type", "llama3"}, {"factor", factor}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 8192}};
}

const char* torchDtypeOf(const Gguf& g)
{
    const GgmlType t = g.contains("token_embd.weight") ? g.get("token_embd.weight").type : GgmlType::F32;
    return t == GgmlType::F16 ? "float16" : t == GgmlType::BF16 ? "bfloat16" : "float32";
}

// The file's matrices as stored: their average bits per weight (3 decimals: the JSON stays stable), their
// largest block, in weights, and each one's type.
void matrixStorage(const Gguf& g, json& j)
{
    double bits = 0, weights = 0;
    int64_t block = 0;
    for (const auto& [name, t] : g.tensors()) {
        if (t.shape.size() != 2)
            continue;
        const GgmlTypeInfo& info = ggmlTypeInfo(t.type);
        const double n = static_cast<double>(t.shape[0]) * static_cast<double>(t.shape[1]);
        weights += n;
        bits += n * 8.0 * static_cast<double>(info.blockBytes) / static_cast<double>(info.blockSize);
        block = std::max(block, info.blockSize);
        // Types the loader refuses (Q2_K...) are left out here: it names them with their tensor.
        const bool runnable = info.runnable || t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16;
        if (const std::string hf = huggingFaceTensorName(name); runnable && !hf.empty())
            j["gguf_tensor_types"][hf] = info.name;
    }
    j["gguf_matrix_bits"] = weights > 0 ? std::round(bits / weights * 1000) / 1000 : 16.0;
    j["gguf_block_weights"] = block;
}

} // namespace

std::vector<int64_t> ggufEosTokenIds(const Gguf& g)
{
    std::vector<int64_t> ids;
    for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
        if (const std::optional<int64_t> id = g.getInt(key); id && std::find(ids.begin(), ids.end(), *id) == ids.end())
            ids.push_back(*id);
    return ids;
}

std::string ggufConfigJson(const Gguf& g)
{
    const Arch& arch = archOf(g);
    const std::string a = arch.gguf;
    json j;
    j["architectures"] = {arch.huggingFace};
    j["model_type"] = a;
    j["hidden_size"] = required(g, a + ".embedding_length");
    j["intermediate_size"] = required(g, a + ".feed_forward_length");
    j["num_hidden_layers"] = required(g, a + ".block_count");
    const int64_t heads = required(g, a + ".attention.head_count");
    j["num_attention_heads"] = heads;
    j["num_key_value_heads"] = g.getInt(a + ".attention.head_count_kv").value_or(heads);
    const int64_t hidden = j["hidden_size"].get<int64_t>();
    const int64_t headDim = g.getInt(a + ".attention.key_length").value_or(heads > 0 ? hidden / heads : 0);
    j["head_dim"] = headDim;
    if (const auto v = g.getInt(a + ".attention.value_length"); v && *v != headDim)
        throw Error(g.where() + ": value heads of " + std::to_string(*v) + " and key heads of " + std::to_string(headDim) +
                    " are not supported (they must be equal)");
    if (const auto rot = g.getInt(a + ".rope.dimension_count"); rot && *rot != headDim)
        throw Error(g.where() + ": rotary embedding over " + std::to_string(*rot) + " of each head's " + std::to_string(headDim) +
                    " dimensions is not supported");
    if (!g.contains("token_embd.weight"))
        throw Error(g.where() + ": no token_embd.weight");
    j["vocab_size"] = g.get("token_embd.weight").shape.front();
    j["max_position_embeddings"] = g.getInt(a + ".context_length").value_or(2048);
    j["rms_norm_eps"] = g.getFloat(a + ".attention.layer_norm_rms_epsilon").value_or(1e-6);
    const double base = g.getFloat(a + ".rope.freq_base").value_or(10000.0);
    j["rope_theta"] = base;
    const std::string scaling = g.getString(a + ".rope.scaling.type").value_or("none");
    if (scaling != "none")
        throw Error(g.where() + ": rope scaling '" + scaling + "' is not supported");
    if (g.contains("rope_freqs.weight"))
        j["rope_scaling"] = ropeScalingOf(g, base, headDim);
    j["tie_word_embeddings"] = !g.contains("output.weight");
    j["attention_bias"] = g.contains("blk.0.attn_q.bias");
    j["torch_dtype"] = torchDtypeOf(g);
    matrixStorage(g, j);
    if (const auto bos = g.getInt("tokenizer.ggml.bos_token_id"))
        j["bos_token_id"] = *bos;
    const std::vector<int64_t> eos = ggufEosTokenIds(g);
    if (!eos.empty())
        j["eos_token_id"] = eos;
    j["source_format"] = "gguf";
    return j.dump(2);
}

namespace {

const std::map<std::string, std::string>& globalNames()
{
    static const std::map<std::string, std::string> names = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output_norm.weight", "model.norm.weight"},
        {"output.weight", "lm_head.weight"},
    };
    return names;
}

const std::map<std::string, std::string>& layerNames()
{
    static const std::map<std::string, std::string> names = {
        {"attn_norm.weight", "input_layernorm.weight"},     {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},       {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_q.bias", "self_attn.q_proj.bias"},           {"attn_k.bias", "self_attn.k_proj.bias"},
        {"attn_v.bias", "self_attn.v_proj.bias"},           {"attn_output.weight", "self_attn.o_proj.weight"},
        {"attn_q_norm.weight", "self_attn.q_norm.weight"}, {"attn_k_norm.weight", "self_attn.k_norm.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},           {"ffn_down.weight", "mlp.down_proj.weight"},
    };
    return names;
}

} // namespace

std::string huggingFaceTensorName(const std::string& n)
{
    if (auto it = globalNames().find(n); it != globalNames().end())
        return it->second;
    static const std::regex blk(R"(blk\.(\d{1,4})\.(.+))");
    std::smatch m;
    if (!std::regex_match(n, m, blk))
        return "";
    auto it = layerNames().find(m[2].str());
    return it == layerNames().end() ? "" : "model.layers." + m[1].str() + "." + it->second;
}

std::string ggufTensorName(const std::string& hf)
{
    for (const auto& [g, h] : globalNames())
        if (h == hf)
            return g;
    static const std::regex layer(R"(model\.layers\.(\d{1,4})\.(.+))");
    std::smatch m;
    if (!std::regex_match(hf, m, layer))
        return "";
    for (const auto& [g, h] : layerNames())
        if (h == m[2].str())
            return "blk." + m[1].str() + "." + g;
    return "";
}

const std::vector<GgufPreTokenizer>& ggufPreTokenizers()
{
    static const std::vector<GgufPreTokenizer> kinds = {
        {"llama-bpe",
         R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
         false, true},
        {"qwen2",
         R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
         true, false},
        {"default", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", false, false},
    };
    return kinds;
}

SafeTensors ggufTensors(const Gguf& g, const ModelConfig& config)
{
    const bool interleaved = archOf(g).interleavedRotary;
    std::map<std::string, TensorView> views;
    for (const auto& [name, t] : g.tensors()) {
        const std::string hf = huggingFaceTensorName(name);
        if (hf.empty())
            continue;
        const GgmlTypeInfo& type = ggmlTypeInfo(t.type);
        if (!type.runnable)
            throw Error(g.where() + ": tensor " + name + " is " + type.name +
                        ", a type together does not run (it runs F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K "
                        "and Q6_K)");
        TensorView v;
        v.name = hf;
        v.shape = t.shape;
        v.data = t.data;
        v.nbytes = t.nbytes;
        v.fileOffset = t.fileOffset;
        v.file = t.file;
        if (t.type == GgmlType::F16 || t.type == GgmlType::BF16 || t.type == GgmlType::F32) {
            v.dtype = t.type == GgmlType::F16 ? DType::F16 : t.type == GgmlType::BF16 ? DType::BF16 : DType::F32;
        } else {
            v.dtype = DType::F32; // what a slice of it widens to
            v.stored = t.type;
        }
        const bool qk = name.find(".attn_q.") != std::string::npos || name.find(".attn_k.") != std::string::npos;
        if (interleaved && qk)
            v.interleavedHead = config.headDim;
        views.emplace(hf, std::move(v));
    }
    return SafeTensors::fromViews(std::move(views));
}

std::string ggufTypeMix(const Gguf& g)
{
    std::map<std::string, int> count;
    for (const auto& [name, t] : g.tensors())
        ++count[ggmlTypeName(t.type)];
    std::vector<std::pair<int, std::string>> order;
    for (const auto& [type, n] : count)
        order.emplace_back(-n, type);
    std::sort(order.begin(), order.end());
    std::string out;
    for (const auto& [n, type] : order)
        out += (out.empty() ? "" : ", ") + type + " " + std::to_string(-n);
    return out;
}

} // namespace together
