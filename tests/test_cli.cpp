// SPDX-License-Identifier: MIT
// The command-line contract scripts rely on: together-worker generate and together-cli tokenize /
// chat-template, predict, bench and verify, their output, and their errors.
#include "base/error.h"
#include "base/files.h"
#include "base/process.h"
#include "master/local_daemons.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/model_catalog.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "model/random_model.h"
#include "model/shard_spec.h"
#include "net/cluster_key.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
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

namespace {

// One CSV line into fields (RFC 4180 quoting).
std::vector<std::string> csvFields(const std::string& line)
{
    std::vector<std::string> out(1);
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
        const char c = line[i];
        if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"')
            out.back() += '"', ++i;
        else if (c == '"')
            quoted = !quoted;
        else if (c == ',' && !quoted)
            out.emplace_back();
        else
            out.back() += c;
    }
    return out;
}

} // namespace

// `bench` on a local cluster: both files, a row per placement with every cell filled (a prediction too), and
// the original together-LLM table's layout.
TEST(Cli, BenchWritesMarkdownAndCsvWithEveryCellFilled)
{
    const std::string dir = test::makeTempDir("bench");
    const std::string model = test::smallModel("bench-model");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " bench --model " + model + " --local tp=1,pp=1 --local tp=2,pp=1 --out " + dir +
                                   "/run --tokens 4 --prompt-tokens 8 --context 64 --dtype f32 --seed-table",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("[1/2 "), std::string::npos) << err; // progress while it runs
    EXPECT_NE(err.find("[2/2 "), std::string::npos) << err;
    std::ifstream csv(dir + "/run.csv");
    ASSERT_TRUE(csv) << "no run.csv";
    std::string line;
    ASSERT_TRUE(std::getline(csv, line));
    const std::vector<std::string> header = csvFields(line);
    const std::vector<std::string> want = {"placement", "TP", "PP", "machines", "dtype", "threads", "prefill tok/s", "decode tok/s", "TTFT ms", "ms/token",
                                           "compute ms", "all-reduce ms", "links ms", "scaling efficiency %", "predicted ms/token", "prediction error %"};
    for (auto& w : want)
        EXPECT_NE(std::find(header.begin(), header.end(), w), header.end()) << "no column " << w << " in " << line;
    std::vector<std::vector<std::string>> rows;
    while (std::getline(csv, line))
        rows.push_back(csvFields(line));
    ASSERT_EQ(rows.size(), 2u);
    for (auto& r : rows) {
        ASSERT_EQ(r.size(), header.size());
        for (size_t i = 0; i < r.size(); ++i)
            EXPECT_TRUE(!r[i].empty() && r[i] != "n/a") << header[i] << " is empty in " << r[1];
    }
    auto col = [&](const std::string& name) { return static_cast<size_t>(std::find(header.begin(), header.end(), name) - header.begin()); };
    EXPECT_EQ(rows[0][col("placement")], "local tp=1,pp=1");
    EXPECT_EQ(rows[1][col("TP")], "2");
    EXPECT_EQ(rows[0][col("scaling efficiency %")], "100");
    EXPECT_GT(std::stod(rows[1][col("decode tok/s")]), 0);
    EXPECT_GT(std::stod(rows[1][col("predicted ms/token")]), 0);
    EXPECT_GT(std::stod(rows[1][col("all-reduce ms")]), 0); // TP 2 all-reduces; TP 1 does not
    EXPECT_EQ(std::stod(rows[0][col("all-reduce ms")]), 0);

    std::ifstream mdFile(dir + "/run.md");
    ASSERT_TRUE(mdFile) << "no run.md";
    std::stringstream md;
    md << mdFile.rdbuf();
    EXPECT_NE(md.str().find("| model | placement | TP | PP |"), std::string::npos) << md.str();
    EXPECT_NE(md.str().find("| local tp=2,pp=1 | 2 | 1 | 2 |"), std::string::npos) << md.str();
    EXPECT_NE(md.str().find("| TP | " + fs::path(model).filename().string() + " |"), std::string::npos) << md.str();
    EXPECT_NE(md.str().find("| base | "), std::string::npos) << md.str();
    EXPECT_NE(md.str().find("| 2 | "), std::string::npos) << md.str();
    EXPECT_NE(md.str().find("tokens/s |"), std::string::npos) << md.str();

    // A bad placement is named, not run.
    EXPECT_NE(test::runCommand(test::cliBin() + " bench --model " + model + " --local tp=two --out " + dir + "/bad", &out, &err), 0);
    EXPECT_NE(err.find("--local takes tp=T,pp=P"), std::string::npos) << err;
}

// `verify`: a TP x PP placement against the whole model on one of its machines gives the same greedy ids and
// logits; when no machine can hold the whole model, each stage's group against the stage on one machine.
TEST(Cli, VerifyComparesAPlacementWithOneMachine)
{
    const std::string dir = test::makeTempDir("verify");
    const std::string model = test::smallModel("verify-model");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " verify --model " + model + " --local tp=2,pp=2 --steps 6 --dtype f32", &out, &err), 0) << out << err;
    EXPECT_NE(out.find("reference: the whole model on one machine"), std::string::npos) << out;
    EXPECT_NE(out.find("token ids: all 6 agree"), std::string::npos) << out;
    EXPECT_NE(out.find("largest logit difference: "), std::string::npos) << out;
    EXPECT_NE(out.find("verdict: the placement gives the same tokens"), std::string::npos) << out;

    // Workers that each donate enough for a stage but not for the whole model: halfway between the two
    // estimates. The layers outweigh the process's own memory (kShardRuntimeBytes) here, so that the halfway
    // point leaves a stage room under the daemon's watch of its shards' resident memory (10% over the
    // donation) even in a sanitizer build, whose shadow memory and redzones made the shard of a smaller model
    // measure 16-28% over its estimate.
    RandomModelSpec s;
    s.hiddenSize = 1024;
    s.intermediateSize = 11264;
    s.numLayers = 4;
    s.numHeads = 16;
    s.numKvHeads = 4;
    writeRandomModel(dir + "/big", s);
    const ModelConfig config = ModelConfig::fromDirectory(dir + "/big");
    const double whole = static_cast<double>(estimateShardMemory(config, ShardSpec::whole(config), DType::F32, 256).total());
    const double stage = static_cast<double>(std::max(estimateShardMemory(config, {0, 1, 0, 1, true, false}, DType::F32, 256).total(),
                                                      estimateShardMemory(config, {2, 3, 0, 1, false, true}, DType::F32, 256).total()));
    const double donation = (stage + whole) / 2;
    ASSERT_GT(whole, stage * 1.4) << "the donation must leave a stage 20% of room and refuse the whole model";
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(4, dir + "/key", {"--max-memory", std::to_string(donation / double(1ull << 30))});
    const auto& w = daemons.addresses();
    json plan = {{"stages",
                  {{{"layers", {0, 1}}, {"ranks", {{{"worker", w[0]}}, {{"worker", w[1]}}}}},
                   {{"layers", {2, 3}}, {"ranks", {{{"worker", w[2]}}, {{"worker", w[3]}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    ASSERT_EQ(test::runCommand(test::cliBin() + " verify --model " + dir + "/big --plan " + dir + "/plan.json --key-file " + dir +
                                   "/key --steps 4 --dtype f32 --context 256",
                               &out, &err),
              0)
        << out << err;
    EXPECT_NE(err.find("no machine holds the whole model"), std::string::npos) << err;
    EXPECT_NE(err.find("needs about"), std::string::npos) << err;
    EXPECT_NE(out.find("reference: each stage on one machine"), std::string::npos) << out;
    EXPECT_NE(out.find("token ids: all 4 agree"), std::string::npos) << out;

    // A pipeline alone has nothing smaller to compare against: verify says so.
    json pp = {{"stages", {{{"layers", {0, 1}}, {"ranks", {{{"worker", w[0]}}}}}, {{"layers", {2, 3}}, {"ranks", {{{"worker", w[1]}}}}}}}};
    std::ofstream(dir + "/pp.json") << pp.dump();
    EXPECT_NE(test::runCommand(test::cliBin() + " verify --model " + dir + "/big --plan " + dir + "/pp.json --key-file " + dir +
                                   "/key --steps 2 --dtype f32 --context 256",
                               &out, &err),
              0);
    EXPECT_NE(err.find("no tensor-parallel stage"), std::string::npos) << err;
}

// `run --auto`: finds the workers it is given (no broadcast), surveys them, prints the placement, why, and the
// prediction, runs it and compares; a set of workers the model cannot fit is refused with the numbers.
TEST(Cli, RunAutoPlacesOnTheWorkersFoundAndExplains)
{
    const std::string dir = test::makeTempDir("run-auto");
    const std::string model = test::smallModel("run-auto-model");
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(2, dir + "/key");
    const std::string env = "TOGETHER_CONFIG_DIR=" + dir + "/config ";
    std::string out, err;
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " run --model " + model + " --auto --no-broadcast --add " + daemons.addresses()[0] + " --add " +
                                   daemons.addresses()[1] + " --wait 0.5 --key-file " + dir + "/key --prompt hi --max-tokens 4 --temperature 0 " +
                                   "--dtype f32 --context 256 --save-plan " + dir + "/auto.json",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("placement: layers 0-3 on 127.0.0.1:"), std::string::npos) << err;
    EXPECT_NE(err.find("Predicted"), std::string::npos) << err; // the explanation
    EXPECT_NE(err.find("ms/token, measured"), std::string::npos) << err;
    EXPECT_FALSE(out.empty());
    const Plan saved = Plan::fromJson(readTextFile(dir + "/auto.json"), "auto.json");
    saved.validate(ModelConfig::fromDirectory(model), daemons.addresses());
    EXPECT_EQ(saved.dtype, "f32");

    LocalDaemons small(2, dir + "/key", {"--max-memory", "0.05"});
    EXPECT_NE(test::runCommand("TOGETHER_CONFIG_DIR=" + dir + "/config2 " + test::cliBin() + " run --model " + model + " --auto --no-broadcast --add " + small.addresses()[0] + " --add " +
                                   small.addresses()[1] + " --wait 0.5 --key-file " + dir + "/key --prompt hi --max-tokens 4 --dtype f32",
                               &out, &err),
              0);
    EXPECT_NE(err.find("no placement fits: the model needs about"), std::string::npos) << err;
}

// `workers --probe`: the ready workers' links, both transports, as a table (and as JSON lines).
TEST(Cli, WorkersProbeMeasuresEveryPair)
{
    const std::string dir = test::makeTempDir("workers-probe");
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(3, dir + "/key");
    const std::string base = "TOGETHER_CONFIG_DIR=" + dir + "/config " + test::cliBin() + " workers --no-broadcast --wait 0.5 --key-file " + dir +
                             "/key --probe --add " + daemons.addresses()[0] + " --add " + daemons.addresses()[1] + " --add " + daemons.addresses()[2];
    std::string out, err;
    ASSERT_EQ(test::runCommand(base, &out, &err), 0) << err;
    EXPECT_NE(out.find("| link | stream alpha us | stream MB/s | all-reduce alpha us |"), std::string::npos) << out;
    for (int a = 0; a < 3; ++a)
        for (int b = a + 1; b < 3; ++b) {
            const auto& x = daemons.addresses()[static_cast<size_t>(a)];
            const auto& y = daemons.addresses()[static_cast<size_t>(b)];
            EXPECT_TRUE(out.find("| " + x + " - " + y + " |") != std::string::npos || out.find("| " + y + " - " + x + " |") != std::string::npos)
                << x << " and " << y << " not probed:\n" << out;
        }
    ASSERT_EQ(test::runCommand(base + " --json", &out, &err), 0) << err;
    size_t probed = 0;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        const json j = json::parse(line);
        if (j.contains("stream_alpha_us")) {
            ++probed;
            EXPECT_GT(j["stream_beta_mbps"].get<double>(), 0) << line;
            EXPECT_TRUE(j["all_reduce_beta_mbps"].is_number()) << line;
        }
    }
    EXPECT_EQ(probed, 3u) << out;
}

// `models` finds GGUF files where people keep them: Ollama's store (by Ollama's names), LM Studio's folders,
// llama.cpp's cache and GGUF repositories in the Hugging Face cache, each with its quantization and whether it
// runs; a vision projector is not listed, a file with a type together does not run says which tensor.
TEST(Cli, ModelsFindsGgufFilesWherePeopleKeepThem)
{
    const std::string home = test::makeTempDir("gguf-home"), hub = home + "/hub";
    RandomModelSpec s = modelShape("default");
    s.numLayers = 1;
    writeRandomModel(home + "/src", s);
    const std::string q4 = home + "/q4.gguf";
    exportGguf(home + "/src", q4, GgmlType::Q4_K);
    const std::string digest(64, 'a');
    fs::create_directories(home + "/.ollama/models/blobs");
    fs::copy_file(q4, home + "/.ollama/models/blobs/sha256-" + digest);
    fs::create_directories(home + "/.ollama/models/manifests/registry.ollama.ai/library/tiny");
    std::ofstream(home + "/.ollama/models/manifests/registry.ollama.ai/library/tiny/q4")
        << json{{"schemaVersion", 2},
                {"layers", {{{"mediaType", "application/vnd.ollama.image.template"}, {"digest", "sha256:" + std::string(64, 'b')}},
                            {{"mediaType", "application/vnd.ollama.image.model"}, {"digest", "sha256:" + digest}}}}}
               .dump();
    fs::create_directories(home + "/.lmstudio/models/pub/tiny-GGUF");
    exportGguf(home + "/src", home + "/.lmstudio/models/pub/tiny-GGUF/tiny-Q8_0.gguf", GgmlType::Q8_0);
    fs::copy_file(q4, home + "/.lmstudio/models/pub/tiny-GGUF/mmproj-tiny-f16.gguf");
    fs::create_directories(home + "/.cache/llama.cpp");
    exportGguf(home + "/src", home + "/.cache/llama.cpp/pub_tiny-GGUF_tiny-F16.gguf", GgmlType::F16);
    const std::string snapshot = hub + "/models--pub--tiny-GGUF/snapshots/0123abcd";
    fs::create_directories(snapshot);
    fs::copy_file(q4, snapshot + "/tiny-Q4_K.gguf");
    test::rewriteGguf(q4, snapshot + "/tiny-Q2_K.gguf", [](GgufTensorToWrite& t) {
        if (t.name == "blk.0.ffn_up.weight")
            test::retypeWithZeros(t, GgmlType::Q2_K);
    });
    std::string out, err;
    ASSERT_EQ(test::runCommand("HOME=" + home + " OLLAMA_MODELS= LLAMA_CACHE= " + test::cliBin() + " models --json --hub " + hub, &out, &err), 0)
        << err;
    std::map<std::string, json> byName;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        const json j = json::parse(line);
        byName[j["name"].get<std::string>()] = j;
    }
    ASSERT_EQ(byName.size(), 5u) << out;
    const json& ollama = byName["tiny:q4"];
    EXPECT_EQ(ollama["store"], "Ollama");
    EXPECT_TRUE(ollama["runnable"].get<bool>()) << ollama;
    EXPECT_EQ(ollama["dtype"], "Q4_K") << ollama;
    EXPECT_TRUE(ollama["chat_template"].get<bool>());
    EXPECT_EQ(ollama["path"], home + "/.ollama/models/blobs/sha256-" + digest);
    EXPECT_EQ(byName["pub/tiny-GGUF/tiny-Q8_0.gguf"]["store"], "LM Studio");
    EXPECT_TRUE(byName["pub/tiny-GGUF/tiny-Q8_0.gguf"]["runnable"].get<bool>());
    EXPECT_EQ(byName["pub_tiny-GGUF_tiny-F16.gguf"]["store"], "llama.cpp cache");
    EXPECT_EQ(byName["pub_tiny-GGUF_tiny-F16.gguf"]["dtype"], "F16");
    EXPECT_EQ(byName["pub/tiny-GGUF: tiny-Q4_K.gguf"]["store"], "Hugging Face cache");
    const json& q2 = byName["pub/tiny-GGUF: tiny-Q2_K.gguf"];
    EXPECT_FALSE(q2["runnable"].get<bool>());
    EXPECT_NE(q2["reason"].get<std::string>().find("blk.0.ffn_up.weight is Q2_K"), std::string::npos) << q2;
    // The Ollama model runs by the path the listing gives.
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + ollama["path"].get<std::string>() +
                                   " --local tp=1,pp=1 --prompt 'Hello' --temperature 0 --max-tokens 4",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("native, 1 stage(s)"), std::string::npos) << err; // a quantized file runs in its own blocks by default
}

// `models`: a Hugging Face cache's models with what they are and whether together can run them, and why not.
TEST(Cli, ModelsListsTheHuggingFaceCacheWithWhyNot)
{
    const std::string hub = test::makeTempDir("hf-hub");
    auto snapshot = [&](const std::string& repo) { return hub + "/models--" + repo + "/snapshots/0123abcd"; };
    RandomModelSpec s;
    s.hiddenSize = 64;
    s.intermediateSize = 128;
    s.numLayers = 2;
    s.numHeads = 4;
    s.numKvHeads = 2;
    writeRandomModel(snapshot("org--Good-1B"), s);
    writeRandomModel(snapshot("org--Quant-1B"), s);
    {
        json c = json::parse(readTextFile(snapshot("org--Quant-1B") + "/config.json"));
        c["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
        std::ofstream(snapshot("org--Quant-1B") + "/config.json") << c.dump();
    }
    writeRandomModel(snapshot("org--Bin-1B"), s);
    fs::rename(snapshot("org--Bin-1B") + "/model.safetensors", snapshot("org--Bin-1B") + "/pytorch_model.bin");
    fs::create_directories(snapshot("org--Bert"));
    std::ofstream(snapshot("org--Bert") + "/config.json") << R"({"architectures": ["BertModel"], "hidden_size": 64})";

    std::string out, err;
    // HOME elsewhere: only the given cache, not the machine's Ollama, LM Studio or llama.cpp folders.
    const std::string env = "HOME=" + test::makeTempDir("no-home") + " OLLAMA_MODELS= LLAMA_CACHE= ";
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " models --json --hub " + hub, &out, &err), 0) << err;
    std::map<std::string, json> byName;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        const json j = json::parse(line);
        byName[j["name"].get<std::string>()] = j;
    }
    ASSERT_EQ(byName.size(), 4u) << out;
    const json& good = byName["org/Good-1B"];
    EXPECT_TRUE(good["runnable"].get<bool>()) << good.dump();
    EXPECT_EQ(good["architecture"], "LlamaForCausalLM");
    EXPECT_EQ(good["dtype"], "f32");
    EXPECT_GT(good["parameters"].get<uint64_t>(), 0u);
    EXPECT_GT(good["weight_bytes"].get<uint64_t>(), 0u);
    EXPECT_FALSE(byName["org/Quant-1B"]["runnable"].get<bool>());
    EXPECT_NE(byName["org/Quant-1B"]["reason"].get<std::string>().find("quantized checkpoint (gptq"), std::string::npos) << byName["org/Quant-1B"];
    EXPECT_NE(byName["org/Bin-1B"]["reason"].get<std::string>().find("PyTorch .bin"), std::string::npos) << byName["org/Bin-1B"];
    EXPECT_NE(byName["org/Bert"]["reason"].get<std::string>().find("BertModel is not supported"), std::string::npos) << byName["org/Bert"];

    // The human listing says the same; a model bigger than the machines' memory is named with the numbers.
    ASSERT_EQ(test::runCommand(env + test::cliBin() + " models --hub " + hub, &out, &err), 0) << err;
    EXPECT_NE(out.find("org/Good-1B"), std::string::npos) << out;
    EXPECT_NE(out.find("can run"), std::string::npos) << out;
    EXPECT_NE(out.find("cannot run: "), std::string::npos) << out;
    const ModelEntry tooBig = describeModelFolder(snapshot("org--Good-1B"), "f32", 1 << 20);
    EXPECT_FALSE(tooBig.runnable);
    EXPECT_NE(tooBig.reason.find("too big for the machines: needs about"), std::string::npos) << tooBig.reason;
}
