// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/model_config.h"
#include "model/shard_spec.h"

#include <gtest/gtest.h>

using namespace together;

namespace {

std::string base(const std::string& arch, const std::string& extra = "")
{
    return R"({"architectures":[")" + arch + R"("],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
              "num_attention_heads":8,"num_key_value_heads":2,"vocab_size":100,"max_position_embeddings":512)" +
           extra + "}";
}

std::string errorOf(const std::string& json)
{
    try {
        ModelConfig::fromJsonText(json, "config.json");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(ModelConfig, LlamaDefaults)
{
    ModelConfig c = ModelConfig::fromJsonText(base("LlamaForCausalLM", R"(,"eos_token_id":[5,6],"rope_theta":500000.0)"), "c");
    EXPECT_EQ(c.headDim, 8);
    EXPECT_EQ(c.numKvHeads, 2);
    EXPECT_FALSE(c.attentionBias);
    EXPECT_FALSE(c.qkNorm);
    EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{5, 6}));
    EXPECT_EQ(c.ropeTheta, 500000.0);
    EXPECT_EQ(c.contextLimit(), 512);
    EXPECT_EQ(c.layerTensors(1).size(), 9u);
    EXPECT_EQ(c.globalTensors().size(), 3u);
}

TEST(ModelConfig, QwenVariants)
{
    ModelConfig q2 = ModelConfig::fromJsonText(base("Qwen2ForCausalLM", R"(,"tie_word_embeddings":true)"), "c");
    EXPECT_TRUE(q2.attentionBias);
    EXPECT_EQ(q2.layerTensors(0).size(), 12u);
    EXPECT_EQ(q2.globalTensors().size(), 2u);
    ModelConfig q3 = ModelConfig::fromJsonText(base("Qwen3ForCausalLM", R"(,"head_dim":16)"), "c");
    EXPECT_TRUE(q3.qkNorm);
    EXPECT_EQ(q3.headDim, 16);
    EXPECT_EQ(q3.layerTensors(0)[1].shape, (std::vector<int64_t>{128, 64})); // q_proj: heads * head_dim
}

TEST(ModelConfig, Llama3RopeScalingAndMistralWindow)
{
    ModelConfig c = ModelConfig::fromJsonText(
        base("LlamaForCausalLM", R"(,"rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192})"),
        "c");
    EXPECT_EQ(c.ropeScaling.type, "llama3");
    EXPECT_EQ(c.ropeScaling.factor, 32.0);
    ModelConfig m = ModelConfig::fromJsonText(base("MistralForCausalLM", R"(,"sliding_window":256)"), "c");
    EXPECT_EQ(m.contextLimit(), 256);
    EXPECT_NE(errorOf(base("LlamaForCausalLM", R"(,"rope_scaling":{"type":"yarn","factor":4.0})")).find("yarn"), std::string::npos);
}

TEST(ModelConfig, RefusesByName)
{
    EXPECT_NE(errorOf(base("GPT2LMHeadModel")).find("architecture GPT2LMHeadModel is not supported"), std::string::npos);
    EXPECT_NE(errorOf(base("LlamaForCausalLM", R"(,"quantization_config":{"quant_method":"gptq"})")).find("quantized checkpoint (gptq)"),
              std::string::npos);
    EXPECT_NE(errorOf(R"({"architectures":["LlamaForCausalLM"]})").find("hidden_size"), std::string::npos);
    EXPECT_NE(errorOf("{not json").find("malformed JSON"), std::string::npos);
    EXPECT_NE(errorOf(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
              "num_attention_heads":6,"num_key_value_heads":4,"head_dim":8,"vocab_size":100})")
                  .find("not a multiple"),
              std::string::npos);
}

// A GGUF's config names each matrix's stored type; the estimates count a native run's slices in it.
TEST(ModelConfig, StoredTensorTypesAreCheckedAndCounted)
{
    const ModelConfig c = ModelConfig::fromJsonText(
        base("LlamaForCausalLM", R"(,"gguf_matrix_bits":5.0,"gguf_tensor_types":{"model.layers.0.mlp.down_proj.weight":"Q6_K",
             "model.layers.0.self_attn.q_proj.weight":"Q4_0","model.embed_tokens.weight":"F16"})"),
        "c");
    ASSERT_EQ(c.storedTensorTypes.size(), 3u);
    EXPECT_EQ(c.storedTensorTypes.at("model.layers.0.mlp.down_proj.weight"), "Q6_K");
    EXPECT_NE(errorOf(base("LlamaForCausalLM", R"(,"gguf_tensor_types":{"model.layers.0.mlp.up_proj.weight":"IQ2_XS"})"))
                  .find("gguf_tensor_types: model.layers.0.mlp.up_proj.weight: unknown tensor type 'IQ2_XS'"),
              std::string::npos);
    EXPECT_NE(errorOf(base("LlamaForCausalLM", R"(,"gguf_tensor_types":["Q4_K"])")).find("must map tensor names"), std::string::npos);
    EXPECT_NE(errorOf(base("LlamaForCausalLM", R"(,"gguf_tensor_types":{"a":4})")).find("the type of a is not a type name"), std::string::npos);
    // Each tensor by its own type: down_proj [64, 128] in Q6_K is 64 rows of 128/256 -> 1 block of 210 bytes
    // (not whole: a row is never split), q_proj [64, 64] in Q4_0 is 64 x 2 blocks of 18 bytes; layer 1's untyped
    // matrices at the average 5 bits.
    ShardSpec layer0{0, 0, 0, 1, false, false};
    const int64_t layer0Bytes = shardBytes(c, layer0, RunDtype::Native);
    EXPECT_EQ(layer0Bytes, 64 * 210 + 64 * 2 * 18 + matrixBytes(RunDtype::Native, 16, 64, 5.0) * 2 + matrixBytes(RunDtype::Native, 64, 64, 5.0) +
                               matrixBytes(RunDtype::Native, 128, 64, 5.0) * 2 + 2 * 64 * 4);
}

} // namespace
