// SPDX-License-Identifier: MIT
// The command-line contract scripts rely on: together-worker generate and together-cli tokenize /
// chat-template, their output, and their errors.
#include "core/random_model.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace together;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {


std::string quote(const std::string& s)
{
    std::string q = "'";
    for (char c : s)
        q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

TEST(WorkerGenerate, StreamsExactlyTheGeneratedTextAndWritesATrace)
{
    SKIP_WITHOUT_STORIES();
    json ref = test::storiesReference();
    auto& c = ref["cases"][0];
    std::string trace = test::makeTempDir("cli") + "/trace.jsonl";
    std::string out, err;
    int rc = test::runCommand(test::workerBin() + " generate --model " + test::stories260KDir() + "/hf --prompt " + quote(c["prompt"]) +
                                  " --temperature 0 --max-tokens 60 --dtype f32 --threads 1 --trace " + trace,
                              &out, &err);
    ASSERT_EQ(rc, 0) << err;
    EXPECT_EQ(out, c["generated_text"].get<std::string>());
    EXPECT_NE(err.find("tokens/s"), std::string::npos) << err;
    std::ifstream in(trace);
    std::string line;
    std::vector<int> ids;
    while (std::getline(in, line)) {
        json j = json::parse(line);
        ids.push_back(j["token"]);
        EXPECT_EQ(j["top"].size(), 10u);
        EXPECT_EQ(j["top"][0][0], j["token"]); // greedy: the token is the top logit
    }
    EXPECT_EQ(ids, c["generated_ids"].get<std::vector<int>>());
}

TEST(WorkerGenerate, StopStringAndMaxTokens)
{
    SKIP_WITHOUT_STORIES();
    std::string out, err;
    int rc = test::runCommand(test::workerBin() + " generate --model " + test::stories260KDir() +
                                  "/hf --prompt 'Once upon a time' --temperature 0 --max-tokens 60 --stop Lily",
                              &out, &err);
    ASSERT_EQ(rc, 0) << err;
    EXPECT_EQ(out, ", there was a little girl named ");
    EXPECT_NE(err.find("stop string"), std::string::npos) << err;
}

TEST(WorkerGenerate, BuiltInDefaultModelSaysItIsNoise)
{
    std::string cache = test::makeTempDir("default");
    std::string out, err;
    int rc = test::runCommand("TOGETHER_CACHE_DIR=" + cache + " " + test::workerBin() + " generate --prompt Hello --max-tokens 8 --seed 3", &out, &err);
    ASSERT_EQ(rc, 0) << err;
    EXPECT_NE(err.find("random-weight"), std::string::npos) << err;
    EXPECT_NE(err.find("--model"), std::string::npos) << err;
    EXPECT_TRUE(fs::exists(cache + "/default-model/model.safetensors"));
    // same seed, same noise
    std::string out2;
    test::runCommand("TOGETHER_CACHE_DIR=" + cache + " " + test::workerBin() + " generate --prompt Hello --max-tokens 8 --seed 3", &out2, &err);
    EXPECT_EQ(out, out2);
}

TEST(WorkerGenerate, BadInputGetsAClearErrorAndNonZeroExit)
{
    std::string out, err;
    EXPECT_NE(test::runCommand(test::workerBin() + " generate --model /nonexistent --prompt x", &out, &err), 0);
    EXPECT_NE(err.find("no config.json"), std::string::npos) << err;
    EXPECT_NE(test::runCommand(test::workerBin() + " generate --prompt x --frobnicate", &out, &err), 0);
    EXPECT_NE(err.find("unknown flag --frobnicate"), std::string::npos) << err;
    EXPECT_NE(test::runCommand(test::workerBin() + " generate --prompt x --temperature warm", &out, &err), 0);
    EXPECT_NE(err.find("--temperature needs a number"), std::string::npos) << err;
    EXPECT_NE(test::runCommand(test::workerBin() + " generate --prompt x --dtype f8", &out, &err), 0);

    // A truncated weights file: named, no crash.
    std::string dir = test::writeTinyModel("corrupt");
    fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
    EXPECT_EQ(test::runCommand(test::workerBin() + " generate --model " + dir + " --prompt x", &out, &err), 1);
    EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
    EXPECT_NE(err.find("truncated"), std::string::npos) << err;
    EXPECT_EQ(err.find("terminate"), std::string::npos) << err;
}

TEST(Cli, TokenizePrintsIdsOnOneLine)
{
    SKIP_WITHOUT_STORIES();
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " tokenize --model " + test::stories260KDir() + "/hf --text 'Hello world'", &out, &err), 0) << err;
    EXPECT_EQ(out, "1 346 306 414 263 304 341\n");
}

TEST(Cli, ChatTemplateRendersMessagesFile)
{
    std::string dir = test::writeTinyModel("chatcli");
    std::ofstream(dir + "/messages.json") << R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}])";
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " chat-template --model " + dir + " --messages " + dir + "/messages.json", &out, &err), 0) << err;
    EXPECT_EQ(out, "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    std::ofstream(dir + "/bad.json") << R"({"role":"user"})";
    EXPECT_EQ(test::runCommand(test::cliBin() + " chat-template --model " + dir + " --messages " + dir + "/bad.json", &out, &err), 1);
    EXPECT_NE(err.find("array"), std::string::npos) << err;
}

} // namespace

// The cost model from the command line: machine profiles from a file, the auto placement with its reasons,
// a hand plan with its what-if table, and a clear error for a bad profile.
TEST(Cli, PredictPlacesAndExplains)
{
    const std::string dir = test::makeTempDir("predict");
    const std::string model = test::smallModel("predict");
    std::ofstream(dir + "/machines.json") << R"({"machines": [
        {"worker": "10.0.0.5:7600", "host": "desk", "threads": 2, "free_memory_gib": 12, "read_gbps": [13, 26], "matvec_gbps": {"bf16": [4, 8], "f32": [10, 20]}},
        {"worker": "10.0.0.6:7600", "host": "laptop", "threads": 2, "free_memory_gib": 12, "read_gbps": [10, 18], "matvec_gbps": {"bf16": [3, 6], "f32": [8, 14]}}],
        "default_link": "Wi-Fi 5"})";
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " predict --model " + model + " --auto --machines " + dir + "/machines.json", &out, &err), 0) << err;
    EXPECT_NE(out.find("on 10.0.0.5:7600"), std::string::npos) << out; // the faster machine
    EXPECT_NE(out.find("Predicted"), std::string::npos) << out;
    EXPECT_NE(out.find("| Wi-Fi 5 |"), std::string::npos) << out;
    EXPECT_NE(out.find("\"stages\""), std::string::npos) << out;
    std::ofstream(dir + "/plan.json") << R"({"stages": [{"layers": [0, 1], "ranks": [{"worker": "10.0.0.5:7600"}]},
        {"layers": [2, 3], "ranks": [{"worker": "10.0.0.6:7600"}]}]})";
    ASSERT_EQ(test::runCommand(test::cliBin() + " predict --model " + model + " --plan " + dir + "/plan.json --machines " + dir + "/machines.json",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(out.find("| 1 | 2-3 | 10.0.0.6:7600 |"), std::string::npos) << out;
    std::ofstream(dir + "/bad.json") << R"({"machines": [{"worker": "x:1", "free_memory_gib": 1, "read_gbps": [2, 1], "matvec_gbps": {"f32": [1, 2]}}]})";
    EXPECT_NE(test::runCommand(test::cliBin() + " predict --model " + model + " --auto --machines " + dir + "/bad.json", &out, &err), 0);
    EXPECT_NE(err.find("bad.json: machines[0].read_gbps"), std::string::npos) << err;
}
