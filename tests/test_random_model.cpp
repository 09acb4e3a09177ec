// SPDX-License-Identifier: MIT
#include "core/model_config.h"
#include "core/random_model.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <cstring>

using namespace together;

namespace {

TEST(RandomModel, WritesAValidHuggingFaceFolder)
{
    for (std::string arch : {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"}) {
        std::string dir = test::makeTempDir("rm");
        RandomModelSpec s;
        s.architecture = arch;
        s.hiddenSize = 32;
        s.intermediateSize = 50;
        s.numLayers = 2;
        s.numHeads = 4;
        s.numKvHeads = 2;
        s.vocabSize = randomTokenizerSize() + 10;
        s.dtype = DType::BF16;
        s.tieWordEmbeddings = arch == "Qwen2ForCausalLM";
        writeRandomModel(dir, s);
        ModelConfig c = ModelConfig::fromDirectory(dir);
        EXPECT_EQ(c.architecture, arch);
        SafeTensors st = SafeTensors::open(dir);
        EXPECT_NO_THROW(c.validate(st)) << arch;
        EXPECT_EQ(st.get("model.norm.weight").dtype, DType::BF16);
        Tokenizer t = Tokenizer::fromDirectory(dir);
        EXPECT_EQ(t.vocabSize(), s.vocabSize); // padded with reserved special tokens
        EXPECT_FALSE(t.chatTemplate().empty());
    }
}

TEST(RandomModel, SameSeedSameWeights)
{
    std::string a = test::makeTempDir("rma"), b = test::makeTempDir("rmb");
    RandomModelSpec s;
    s.hiddenSize = 16;
    s.intermediateSize = 24;
    s.numLayers = 1;
    s.numHeads = 2;
    s.numKvHeads = 2;
    writeRandomModel(a, s);
    writeRandomModel(b, s);
    SafeTensors x = SafeTensors::open(a), y = SafeTensors::open(b);
    const auto& tx = x.get("model.layers.0.mlp.up_proj.weight");
    const auto& ty = y.get("model.layers.0.mlp.up_proj.weight");
    ASSERT_EQ(tx.nbytes, ty.nbytes);
    EXPECT_EQ(std::memcmp(tx.data, ty.data, tx.nbytes), 0);
    float f;
    std::memcpy(&f, tx.data, 4);
    EXPECT_NE(f, 0.0f);
}

} // namespace
