// SPDX-License-Identifier: MIT
// GGUF files against llama.cpp itself (node-llama-cpp 3.21.1, its prebuilt CPU build; tests/js/llama-reference.mjs):
// the same greedy tokens on full-precision files and on the files make-model writes, top-1 agreement over
// teacher-forced steps on quantized files (llama.cpp quantizes activations for its dot products; together widens
// the blocks and computes in f32, so the two differ within the quantization's noise, reported), and the same
// token ids for text on the GGUF vocabularies.
#include "base/error.h"
#include "engine/llama_model.h"
#include "model/gguf_model.h"
#include "model/model_config.h"
#include "model/random_model.h"
#include "model/safetensors.h"
#include "test_support.h"
#include "text/tokenizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

using namespace together;
using json = nlohmann::json;

namespace {

const std::string kCache = std::string(TOGETHER_TEST_CACHE) + "/npm-llama-cpp";
const std::string kSource = TOGETHER_SOURCE_DIR;

std::string fetchOnce() { return test::fetchNpmOnce("fetch-llama-cpp.sh", kCache); }

json llamaCpp(const std::string& mode, const std::string& file, const json& input, const std::string& extra = "")
{
    const std::string in = test::makeTempDir("llama-cpp") + "/input.json";
    std::ofstream(in) << input.dump();
    std::string out, err;
    const int rc = test::runCommand("node " + kSource + "/tests/js/llama-reference.mjs " + kCache + " " + mode + " " + file + " " + in + " " + extra,
                                    &out, &err);
    if (rc != 0)
        throw Error("llama-reference.mjs " + mode + " " + file + " failed: " + err);
    return json::parse(out);
}

std::vector<float> logitsOf(const at::Tensor& t)
{
    const float* p = t.data_ptr<float>();
    return std::vector<float>(p, p + t.numel());
}

std::vector<int> greedy(const LlamaModel& m, const std::vector<int>& prompt, size_t n)
{
    KvCache cache = m.newCache();
    std::vector<int> out, input = prompt;
    for (size_t i = 0; i < n; ++i) {
        const std::vector<float> l = logitsOf(m.forward(input, cache));
        out.push_back(static_cast<int>(std::max_element(l.begin(), l.end()) - l.begin()));
        input = {out.back()};
    }
    return out;
}

struct Model {
    ModelConfig config;
    SafeTensors tensors;
    std::unique_ptr<LlamaModel> engine;
    explicit Model(const std::string& file, ComputeType compute = ComputeType::Native)
        : config(ModelConfig::fromDirectory(file))
        , tensors(SafeTensors::open(file))
        , engine(std::make_unique<LlamaModel>(config, tensors, compute))
    {
    }
};

// Teacher-forced (in the file's own blocks: a native run, what a quantized GGUF runs as) over llama.cpp's own greedy continuation of `steps` tokens: where llama.cpp's top two are more
// than 0.05 nat apart, how often together's top token is llama.cpp's, and the largest difference of the
// log-probability of llama.cpp's top token.
struct Agreement {
    int agree = 0, counted = 0;
    double worstLogp = 0;
};
Agreement teacherForced(const std::string& file, const std::string& prompt, int steps)
{
    Model m(file);
    const Tokenizer tok = Tokenizer::fromDirectory(file);
    std::vector<int> ids = tok.encode(prompt);
    const size_t start = ids.size();
    for (int t : llamaCpp("greedy", file, ids, std::to_string(steps))["ids"].get<std::vector<int>>())
        ids.push_back(t);
    ids.pop_back(); // the last token's successor is not needed
    const json ref = llamaCpp("forced", file, ids, std::to_string(start - 1));
    KvCache cache = m.engine->newCache();
    if (start > 1)
        (void)m.engine->forward(std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(start) - 1), cache);
    Agreement a;
    for (size_t i = start - 1; i < ids.size(); ++i) {
        const std::vector<float> l = logitsOf(m.engine->forward({ids[i]}, cache));
        const json& step = ref["steps"][i - (start - 1)];
        const int top = static_cast<int>(std::max_element(l.begin(), l.end()) - l.begin());
        const float mx = *std::max_element(l.begin(), l.end());
        double sum = 0;
        for (float v : l)
            sum += std::exp(static_cast<double>(v - mx));
        const int refTop = step["top"].get<int>();
        const double ours = l[static_cast<size_t>(refTop)] - mx - std::log(sum);
        a.worstLogp = std::max(a.worstLogp, std::fabs(ours - step["logp"].get<double>()));
        if (step["margin"].get<double>() > 0.05) {
            ++a.counted;
            a.agree += top == refTop;
        }
    }
    return a;
}

void expectAgreement(const Agreement& a, const std::string& what)
{
    std::printf("[ llama.cpp] %s: top-1 agrees on %d of %d teacher-forced steps with a margin over 0.05 nat (%.1f%%), "
                "largest |log-probability difference| of llama.cpp's top token %.4f\n",
                what.c_str(), a.agree, a.counted, a.counted ? 100.0 * a.agree / a.counted : 0.0, a.worstLogp);
    ASSERT_GT(a.counted, 20) << what;
    EXPECT_GE(a.agree * 100, a.counted * 97) << what;
}

class LlamaCpp : public ::testing::Test {
protected:
    void SetUp() override
    {
        at::set_num_threads(1);
        const std::string f = fetchOnce();
        if (f.rfind("skip:", 0) == 0)
            GTEST_SKIP() << "npm/node not installed (" << f << ") -- GGUF files are NOT checked against llama.cpp on this machine";
        ASSERT_EQ(f, "");
    }
    static std::string shared(const std::string& name)
    {
        const std::string p = test::sharedDir() + "/refmodels/gguf/" + name;
        return !test::sharedDir().empty() && std::ifstream(p) ? p : "";
    }
};

} // namespace

TEST_F(LlamaCpp, FullPrecisionFilesGiveLlamaCppsGreedyTokens)
{
    // (rand256's outputs are nearly uniform: its greedy text turns on rounding; it is checked step by step below.)
    for (const char* name : {"stories260K-F32.gguf", "stories260K-F16.gguf"}) {
        const std::string file = shared(name);
        if (file.empty())
            GTEST_SKIP() << "../shared/refmodels/gguf is not here";
        const Tokenizer tok = Tokenizer::fromDirectory(file);
        const std::vector<int> prompt = tok.encode("Once upon a time");
        const json ref = llamaCpp("greedy", file, prompt, "48");
        for (ComputeType ct : {ComputeType::F32, ComputeType::Native}) { // widened, and in the file's own type
            Model m(file, ct);
            EXPECT_EQ(greedy(*m.engine, prompt, 48), ref["ids"].get<std::vector<int>>()) << name << " " << computeTypeName(ct);
        }
    }
}

// llama.cpp's quantized files: step by step, together's top token is llama.cpp's (see teacherForced).
TEST_F(LlamaCpp, QuantizedFilesAgreeWithLlamaCppStepByStep)
{
    for (const char* name : {"stories260K-Q4_K_M.gguf", "rand256-Q8_0.gguf", "rand256-Q4_0.gguf", "rand256-Q4_K_M.gguf", "rand256-Q5_K_M.gguf",
                             "rand256-Q6_K.gguf"}) {
        const std::string file = shared(name);
        if (file.empty())
            GTEST_SKIP() << "../shared/refmodels/gguf is not here";
        expectAgreement(teacherForced(file, "Once upon a time", 200), name);
    }
}

// The files make-model writes (a random model with far-apart top logits) load in llama.cpp and give together's
// greedy tokens (F32, F16, Q8_0), or its top tokens step by step (Q4_0, Q4_K: llama.cpp quantizes activations).
TEST_F(LlamaCpp, FilesMakeModelWritesRunInLlamaCppToTheSameTokens)
{
    RandomModelSpec spec = modelShape("default");
    spec.numLayers = 2;
    spec.numHeads = 4;
    spec.numKvHeads = 2;
    spec.intermediateSize = 512;
    spec.logitScale = 8;
    spec.seed = 21;
    spec.maxPositionEmbeddings = 512;
    const std::string dir = test::makeTempDir("make-gguf");
    writeRandomModel(dir + "/m", spec);
    for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K}) {
        const std::string file = dir + "/m-" + ggmlTypeName(type) + ".gguf";
        exportGguf(dir + "/m", file, type);
        Model m(file);
        const Tokenizer tok = Tokenizer::fromDirectory(file);
        const std::vector<int> prompt = tok.encode("Once upon a time");
        const std::vector<int> ref = llamaCpp("greedy", file, prompt, "24")["ids"].get<std::vector<int>>();
        const std::vector<int> got = greedy(*m.engine, prompt, 24);
        size_t same = 0;
        while (same < got.size() && same < ref.size() && got[same] == ref[same])
            ++same;
        std::printf("[ llama.cpp] make-model %s: greedy agrees for %zu of 24 tokens\n", ggmlTypeName(type), same);
        if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::Q8_0) {
            EXPECT_EQ(got, ref) << ggmlTypeName(type);
        } else { // 4-bit: llama.cpp also quantizes the activations of its dot products; compared step by step
            expectAgreement(teacherForced(file, "Once upon a time", 200), std::string("make-model ") + ggmlTypeName(type));
        }
        // llama.cpp tokenizes a text from the file as together does.
        const json ids = llamaCpp("tokenize", file, json::array({"Hello world, how are you?", " leading space\n\nand 12345 numbers"}));
        EXPECT_EQ(ids["ids"][0].get<std::vector<int>>(), tok.encode("Hello world, how are you?", false));
        EXPECT_EQ(ids["ids"][1].get<std::vector<int>>(), tok.encode(" leading space\n\nand 12345 numbers", false));
    }
}
