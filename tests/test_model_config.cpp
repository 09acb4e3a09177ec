// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/model_config.h"

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

} // namespace
