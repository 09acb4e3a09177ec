// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "test_support.h"
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <sys/wait.h>
#include <unistd.h>

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

namespace {

// The named shapes are the one table: each writes a model whose config says its numbers.
TEST(ModelShapes, EachNameIsAShapeAndAnUnknownNameListsThem)
{
    std::set<std::string> names;
    for (auto& s : modelShapes()) {
        EXPECT_TRUE(names.insert(s.name).second) << s.name << " twice";
        EXPECT_FALSE(s.what.empty()) << s.name;
        EXPECT_GT(s.spec.hiddenSize, 0) << s.name;
        EXPECT_EQ(s.spec.hiddenSize % s.spec.numHeads, 0) << s.name;
    }
    for (const char* needed : {"default", "tiny", "small", "large-margin", "accuracy", "layer-overhead", "tinyllama-1.1b", "llama3-8b"})
        EXPECT_TRUE(names.count(needed)) << needed;
    EXPECT_EQ(modelShape("tinyllama-1.1b").hiddenSize, 2048);
    EXPECT_EQ(modelShape("tinyllama-1.1b", 3).numLayers, 3);
    EXPECT_EQ(modelShape("llama3-8b").vocabSize, 128256);
    try {
        modelShape("llama-70b");
        FAIL() << "an unknown shape must be refused";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unknown model shape 'llama-70b'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("tinyllama-1.1b"), std::string::npos) << e.what();
    }
    const std::string dir = test::makeTempDir("shape");
    writeRandomModel(dir, modelShape("tiny"));
    const ModelConfig c = ModelConfig::fromDirectory(dir);
    EXPECT_EQ(c.hiddenSize, 16);
    EXPECT_EQ(c.numLayers, 1);
}

// Processes that need the same model at once each get a whole one: written into a folder of its own and renamed,
// the first finished is kept and nothing else is left beside it.
TEST(ModelShapes, EnsureWritesOnceEvenWhenProcessesRace)
{
    const std::string parent = test::makeTempDir("ensure");
    const std::string dir = parent + "/default-model";
    std::vector<pid_t> pids;
    for (int i = 0; i < 3; ++i) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            try {
                ensureRandomModel(dir, modelShape("tiny"));
                ::_exit(isModelFolder(dir) ? 0 : 2);
            } catch (...) {
                ::_exit(1);
            }
        }
        pids.push_back(pid);
    }
    for (pid_t pid : pids) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    EXPECT_NO_THROW(SafeTensors::open(dir));
    EXPECT_EQ(ModelConfig::fromDirectory(dir).hiddenSize, 16);
    std::vector<std::string> left;
    for (auto& e : std::filesystem::directory_iterator(parent))
        left.push_back(e.path().filename().string());
    std::sort(left.begin(), left.end());
    EXPECT_EQ(left, (std::vector<std::string>{".default-model.lock", "default-model"}));
    EXPECT_EQ(std::filesystem::status(dir).permissions() & std::filesystem::perms::others_read, std::filesystem::perms::others_read)
        << "a model folder is readable as create_directories makes one, not private like its temporary folder";
    // What interrupted writers left (a partial folder of this version, an older one's "<name>.partial") goes.
    std::filesystem::create_directories(parent + "/together-next-partial-AbC123/deep");
    std::filesystem::create_directories(parent + "/next.partial");
    ensureRandomModel(parent + "/next", modelShape("tiny"));
    EXPECT_FALSE(std::filesystem::exists(parent + "/together-next-partial-AbC123"));
    EXPECT_FALSE(std::filesystem::exists(parent + "/next.partial"));
    EXPECT_TRUE(isModelFolder(parent + "/next"));
    // A folder an interrupted writer left (no model in it) is replaced.
    const std::string broken = parent + "/broken";
    std::filesystem::create_directories(broken);
    std::ofstream(broken + "/config.json") << "{";
    ensureRandomModel(broken, modelShape("tiny"));
    EXPECT_TRUE(isModelFolder(broken));
    EXPECT_EQ(ModelConfig::fromDirectory(broken).numLayers, 1);
}

} // namespace
