// SPDX-License-Identifier: MIT
#include "model/model_config.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "model/gguf_model.h"
#include "model/safetensors.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace together {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// `max` bounds what a downloaded config may claim, far above real models (hidden 16k, intermediate 64k,
// vocabularies 260k, 128 layers), so every size computed from these (bytes of a shard, of the KV cache) fits in
// 64 bits: a hidden_size of 2^62 made a later division by zero (SIGFPE).
int64_t requireInt(const json& j, const char* key, const std::string& where, int64_t max)
{
    if (!j.contains(key) || !j[key].is_number_integer())
        throw Error(where + ": \"" + key + "\" is missing or not an integer");
    if (j[key].is_number_unsigned() && j[key].get<uint64_t>() > static_cast<uint64_t>(max))
        throw Error(where + ": \"" + key + "\" is " + j[key].dump() + ", more than the largest supported (" + std::to_string(max) + ")");
    int64_t v = j[key].get<int64_t>();
    if (v <= 0)
        throw Error(where + ": \"" + key + "\" must be positive, got " + std::to_string(v));
    if (v > max)
        throw Error(where + ": \"" + key + "\" is " + std::to_string(v) + ", more than the largest supported (" + std::to_string(max) + ")");
    return v;
}

std::vector<int64_t> idList(const json& v)
{
    std::vector<int64_t> out;
    if (v.is_number_integer())
        out.push_back(v.get<int64_t>());
    else if (v.is_array())
        for (auto& x : v)
            if (x.is_number_integer())
                out.push_back(x.get<int64_t>());
    return out;
}

} // namespace

ModelConfig ModelConfig::fromDirectory(const std::string& dir)
{
    return fromJsonText(configJsonText(dir), Gguf::isGguf(dir) ? dir : (fs::path(dir) / "config.json").string());
}

std::string ModelConfig::configJsonText(const std::string& path)
{
    if (Gguf::isGguf(path))
        return ggufConfigJson(Gguf::open(path, false));
    fs::path p = fs::path(path) / "config.json";
    if (!fs::exists(p))
        throw Error(path + ": no config.json (is this a Hugging Face model folder or a GGUF file?)");
    return readTextFile(p.string());
}

namespace {

// The fields of a parsed config.json. Fields read with a default (value()) throw the JSON library's type_error
// when present with another type; fromJsonText names the file around it.
ModelConfig configFromJson(json j, const std::string& where)
{
    if (!j.is_object())
        throw Error(where + ": not a JSON object");
    ModelConfig c;
    if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
        !j["architectures"][0].is_string())
        throw Error(where + ": no \"architectures\" list");
    c.architecture = j["architectures"][0].get<std::string>();
    static const char* supported[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
    bool ok = false;
    for (auto* s : supported)
        ok = ok || c.architecture == s;
    if (!ok)
        throw Error(where + ": architecture " + c.architecture +
                    " is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                    "Qwen3ForCausalLM)");
    if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
        std::string method = j["quantization_config"].value("quant_method", std::string("unknown"));
        throw Error(where + ": quantized checkpoint (" + method +
                    ") is not supported: use the model's F32, F16 or BF16 weights");
    }
    std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu")
        throw Error(where + ": hidden_act " + act + " is not supported (only silu)");

    c.hiddenSize = requireInt(j, "hidden_size", where, int64_t{1} << 20);
    c.intermediateSize = requireInt(j, "intermediate_size", where, int64_t{1} << 22);
    c.numLayers = requireInt(j, "num_hidden_layers", where, int64_t{1} << 12);
    c.numHeads = requireInt(j, "num_attention_heads", where, int64_t{1} << 12);
    c.numKvHeads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? requireInt(j, "num_key_value_heads", where, int64_t{1} << 12)
                       : c.numHeads;
    c.vocabSize = requireInt(j, "vocab_size", where, int64_t{1} << 22);
    c.maxPositionEmbeddings =
        j.contains("max_position_embeddings") ? requireInt(j, "max_position_embeddings", where, int64_t{1} << 24) : 2048;
    if (j.contains("head_dim") && !j["head_dim"].is_null())
        c.headDim = requireInt(j, "head_dim", where, int64_t{1} << 12);
    else {
        if (c.hiddenSize % c.numHeads != 0)
            throw Error(where + ": hidden_size " + std::to_string(c.hiddenSize) + " is not divisible by num_attention_heads " +
                        std::to_string(c.numHeads) + " and no head_dim is given");
        c.headDim = c.hiddenSize / c.numHeads;
    }
    if (c.headDim % 2 != 0)
        throw Error(where + ": head_dim " + std::to_string(c.headDim) + " must be even for rotary embeddings");
    if (c.numHeads % c.numKvHeads != 0)
        throw Error(where + ": num_attention_heads " + std::to_string(c.numHeads) +
                    " is not a multiple of num_key_value_heads " + std::to_string(c.numKvHeads));
    c.rmsNormEps = j.value("rms_norm_eps", 1e-6);
    c.ropeTheta = j.value("rope_theta", 10000.0);
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
        auto& rs = j["rope_scaling"];
        std::string type = rs.value("rope_type", rs.value("type", std::string()));
        if (type == "llama3") {
            c.ropeScaling.type = type;
            c.ropeScaling.factor = rs.value("factor", 8.0);
            c.ropeScaling.lowFreqFactor = rs.value("low_freq_factor", 1.0);
            c.ropeScaling.highFreqFactor = rs.value("high_freq_factor", 4.0);
            c.ropeScaling.originalMaxPositionEmbeddings = rs.value("original_max_position_embeddings", int64_t(8192));
        } else if (type != "default" && !type.empty()) {
            throw Error(where + ": rope_scaling type '" + type + "' is not supported (only llama3)");
        }
    }
    c.tieWordEmbeddings = j.value("tie_word_embeddings", false);
    if (c.architecture == "Qwen2ForCausalLM")
        c.attentionBias = true;
    else
        c.attentionBias = j.value("attention_bias", false);
    if (j.value("mlp_bias", false))
        throw Error(where + ": mlp_bias is not supported");
    c.qkNorm = c.architecture == "Qwen3ForCausalLM";
    bool useSliding = c.architecture == "MistralForCausalLM" || j.value("use_sliding_window", false);
    if (useSliding && j.contains("sliding_window") && j["sliding_window"].is_number_integer())
        c.slidingWindow = j["sliding_window"].get<int64_t>();
    c.torchDtype = j.value("torch_dtype", std::string());
    if (j.contains("gguf_matrix_bits")) {
        const auto& b = j["gguf_matrix_bits"];
        if (!b.is_number() || !(b.get<double>() > 0 && b.get<double>() <= 64))
            throw Error(where + ": gguf_matrix_bits must be a number of bits per weight in (0, 64]");
        c.storedBitsPerWeight = b.get<double>();
    }
    if (j.contains("gguf_block_weights")) {
        const auto& b = j["gguf_block_weights"];
        if (!b.is_number_unsigned() || b.get<uint64_t>() > 4096)
            throw Error(where + ": gguf_block_weights must be a block size in weights, at most 4096");
        c.storedBlockWeights = static_cast<int64_t>(b.get<uint64_t>());
    }
    if (j.contains("gguf_tensor_types")) {
        const auto& types = j["gguf_tensor_types"];
        if (!types.is_object())
            throw Error(where + ": gguf_tensor_types must map tensor names to their types");
        for (const auto& [name, type] : types.items()) {
            if (!type.is_string())
                throw Error(where + ": gguf_tensor_types: the type of " + name + " is not a type name");
            parseTensorType(type.get<std::string>(), where + ": gguf_tensor_types: " + name); // refuses unknown ones
            c.storedTensorTypes[name] = type.get<std::string>();
        }
    }
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
        c.bosTokenId = j["bos_token_id"].get<int64_t>();
    if (j.contains("eos_token_id"))
        c.eosTokenIds = idList(j["eos_token_id"]);
    return c;
}

} // namespace

ModelConfig ModelConfig::fromJsonText(const std::string& text, const std::string& where)
{
    json j = parseUntrustedJson(text, where);
    try {
        return configFromJson(std::move(j), where);
    } catch (const json::exception& e) {
        throw Error(where + ": a field has the wrong type: " + e.what());
    }
}

int64_t ModelConfig::contextLimit() const
{
    if (slidingWindow > 0 && slidingWindow < maxPositionEmbeddings)
        return slidingWindow;
    return maxPositionEmbeddings;
}

std::vector<ModelConfig::TensorSpec> ModelConfig::layerTensors(int64_t layer) const
{
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const int64_t q = numHeads * headDim, kv = numKvHeads * headDim;
    std::vector<TensorSpec> t = {
        {p + "input_layernorm.weight", {hiddenSize}},
        {p + "self_attn.q_proj.weight", {q, hiddenSize}},
        {p + "self_attn.k_proj.weight", {kv, hiddenSize}},
        {p + "self_attn.v_proj.weight", {kv, hiddenSize}},
        {p + "self_attn.o_proj.weight", {hiddenSize, q}},
        {p + "post_attention_layernorm.weight", {hiddenSize}},
        {p + "mlp.gate_proj.weight", {intermediateSize, hiddenSize}},
        {p + "mlp.up_proj.weight", {intermediateSize, hiddenSize}},
        {p + "mlp.down_proj.weight", {hiddenSize, intermediateSize}},
    };
    if (attentionBias) {
        t.push_back({p + "self_attn.q_proj.bias", {q}});
        t.push_back({p + "self_attn.k_proj.bias", {kv}});
        t.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (qkNorm) {
        t.push_back({p + "self_attn.q_norm.weight", {headDim}});
        t.push_back({p + "self_attn.k_norm.weight", {headDim}});
    }
    return t;
}

std::vector<ModelConfig::TensorSpec> ModelConfig::globalTensors() const
{
    std::vector<TensorSpec> t = {
        {"model.embed_tokens.weight", {vocabSize, hiddenSize}},
        {"model.norm.weight", {hiddenSize}},
    };
    if (!tieWordEmbeddings)
        t.push_back({"lm_head.weight", {vocabSize, hiddenSize}});
    return t;
}

void ModelConfig::validate(const SafeTensors& tensors) const
{
    for (auto& s : globalTensors())
        tensors.expect(s.name, s.shape);
    for (int64_t l = 0; l < numLayers; ++l)
        for (auto& s : layerTensors(l))
            tensors.expect(s.name, s.shape);
}

GenerationDefaults GenerationDefaults::fromDirectory(const std::string& dir)
{
    GenerationDefaults g;
    if (Gguf::isGguf(dir)) {
        g.eosTokenIds = ggufEosTokenIds(Gguf::open(dir, false));
        return g;
    }
    fs::path p = fs::path(dir) / "generation_config.json";
    if (!fs::exists(p))
        return g;
    json j = parseUntrustedJson(readTextFile(p.string()), p.string());
    if (j.contains("temperature") && j["temperature"].is_number())
        g.temperature = j["temperature"].get<double>();
    if (j.contains("top_k") && j["top_k"].is_number_integer())
        g.topK = j["top_k"].get<int>();
    if (j.contains("top_p") && j["top_p"].is_number())
        g.topP = j["top_p"].get<double>();
    if (j.contains("do_sample") && j["do_sample"].is_boolean())
        g.doSample = j["do_sample"].get<bool>();
    if (j.contains("eos_token_id"))
        g.eosTokenIds = idList(j["eos_token_id"]);
    return g;
}

} // namespace together
