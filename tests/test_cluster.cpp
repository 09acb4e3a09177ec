// SPDX-License-Identifier: MIT
// End to end with real processes on loopback: worker daemons, shard processes, gloo groups and gRPC links.
// Distributed greedy decoding must give the single-process engine's tokens, and its per-step top logits
// within 1e-3 (compared through --trace).
#include "base/error.h"
#include "base/files.h"
#include "base/process.h"
#include "base/sanitizers.h"
#include "master/local_daemons.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/random_model.h"
#include "net/cluster_key.h"
#include "proto/together.grpc.pb.h"
#include "test_support.h"
#include "wire/protocol.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

using namespace together;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {


// Starts `args` (argv[0] a path) with stdout and stderr to files; -1 when it cannot start.
pid_t spawnWithOutput(std::vector<std::string> args, const std::string& outFile, const std::string& errFile)
{
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, outFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, errFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0)
        pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

long lineCount(const std::string& file)
{
    std::ifstream in(file);
    return static_cast<long>(std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n'));
}

struct Layout {
    std::string name;
    std::string model; // "stories" or a random-model tag
    std::string local; // --local value, or "" for an explicit plan
    std::vector<std::pair<int, int>> planLayers;
};

void PrintTo(const Layout& l, std::ostream* os) { *os << l.name; }

std::string modelFor(const Layout& l)
{
    if (l.model == "stories")
        return test::stories260KDir().empty() ? "" : test::stories260KDir() + "/hf";
    if (l.model == "kv2")
        return test::largeMarginModel("kv2", 4, 2, 160);
    return test::largeMarginModel("h6kv3", 6, 3, 100); // 100 columns over 3 ranks: 34, 33, 33
}

class ClusterLayouts : public ::testing::TestWithParam<Layout> {};

TEST_P(ClusterLayouts, GreedyMatchesSingleProcess)
{
    const Layout& l = GetParam();
    std::string model = modelFor(l);
    if (model.empty())
        GTEST_SKIP() << "../shared/refmodels/stories260K is absent: skipping the reference-model layout";
    const std::string prompt = "Once upon a time";
    const int tokens = 24;
    auto ref = test::readTrace(test::referenceTrace(model, prompt, tokens));
    std::string dir = test::makeTempDir("layout");
    std::string trace = dir + "/trace.jsonl";
    std::string placement;
    std::unique_ptr<LocalDaemons> daemons;
    std::string keyFile = dir + "/key";
    if (l.local.empty()) {
        ClusterKey::generate().writeFile(keyFile);
        daemons = std::make_unique<LocalDaemons>(l.planLayers.size(), keyFile);
        json plan = {{"stages", json::array()}};
        for (size_t i = 0; i < l.planLayers.size(); ++i)
            plan["stages"].push_back({{"layers", {l.planLayers[i].first, l.planLayers[i].second}},
                                      {"ranks", {{{"worker", daemons->addresses()[i]}, {"threads", 1}}}}});
        std::ofstream(dir + "/plan.json") << plan.dump();
        placement = "--plan " + dir + "/plan.json --key-file " + keyFile;
    } else {
        placement = "--local " + l.local;
    }
    std::string out, err;
    int rc = test::runCommand(test::cliBin() + " run --model " + model + " " + placement + " --prompt '" + prompt +
                                  "' --temperature 0 --dtype f32 --max-tokens " + std::to_string(tokens) + " --trace " + trace,
                              &out, &err);
    ASSERT_EQ(rc, 0) << err;
    test::expectSameTrace(ref, test::readTrace(trace), l.name);
}

INSTANTIATE_TEST_SUITE_P(
    Placements, ClusterLayouts,
    ::testing::Values(Layout{"stories_tp1_pp1", "stories", "tp=1,pp=1", {}}, Layout{"stories_tp2", "stories", "tp=2,pp=1", {}},
                      Layout{"stories_pp2", "stories", "tp=1,pp=2", {}},
                      Layout{"stories_pp3_uneven", "stories", "", {{0, 0}, {1, 3}, {4, 4}}},
                      Layout{"stories_tp2_pp2", "stories", "tp=2,pp=2", {}}, Layout{"random_tp1_pp1", "kv2", "tp=1,pp=1", {}},
                      Layout{"random_tp2", "kv2", "tp=2,pp=1", {}}, Layout{"random_pp2", "kv2", "tp=1,pp=2", {}},
                      Layout{"random_pp3_uneven", "kv2", "", {{0, 0}, {1, 3}, {4, 4}}},
                      Layout{"random_tp2_pp2", "kv2", "tp=2,pp=2", {}},
                      Layout{"random_tp4_replicated_kv", "kv2", "tp=4,pp=1", {}},
                      Layout{"random_tp3_uneven_intermediate", "h6kv3", "tp=3,pp=1", {}}),
    [](const auto& info) { return info.param.name; });

// A worker with its own copy of the model reads its slice locally; a different copy is refused by name.
TEST(ClusterLocalWeights, WorkerReadsItsSliceFromItsOwnFolder)
{
    std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    auto ref = test::readTrace(test::referenceTrace(model, "Once upon a time", 16));
    std::string dir = test::makeTempDir("localweights");
    ClusterKey::generate().writeFile(dir + "/key");
    fs::create_directories(dir + "/models");
    // The daemons may read the test's model and the copies under dir/models, nothing else.
    LocalDaemons daemons(2, dir + "/key", {"--models-root", model, "--models-root", dir + "/models"});
    auto run = [&](const std::string& workerCopy, std::string& err) {
        json plan = {{"stages",
                      {{{"layers", {0, 1}}, {"ranks", {{{"worker", daemons.addresses()[0]}}}}},
                       {{"layers", {2, 4}}, {"ranks", {{{"worker", daemons.addresses()[1]}, {"model_dir", workerCopy}}}}}}}};
        std::ofstream(dir + "/plan.json") << plan.dump();
        std::string out;
        return test::runCommand(test::cliBin() + " run --model " + model + " --plan " + dir + "/plan.json --key-file " + dir +
                                    "/key --prompt 'Once upon a time' --temperature 0 --dtype f32 --max-tokens 16 --trace " + dir + "/trace.jsonl",
                                &out, &err);
    };
    std::string err;
    ASSERT_EQ(run(model, err), 0) << err;
    EXPECT_NE(err.find("weights read from " + model + " on the worker"), std::string::npos) << err;
    test::expectSameTrace(ref, test::readTrace(dir + "/trace.jsonl"), "local weights");

    // Same config, other weights: caught by the slice hashes.
    RandomModelSpec s = test::largeMarginSpec(4, 2, 160);
    s.seed = 99;
    writeRandomModel(dir + "/models/other", s);
    EXPECT_NE(run(dir + "/models/other", err), 0);
    EXPECT_NE(err.find("differs from the master's copy"), std::string::npos) << err;
    // A different model altogether: caught by config.json.
    s.numLayers = 6;
    writeRandomModel(dir + "/models/bigger", s);
    EXPECT_NE(run(dir + "/models/bigger", err), 0);
    EXPECT_NE(err.find("config.json differs"), std::string::npos) << err;
    // A folder outside --models-root is never read, even through a path that starts inside it, or a symlink.
    fs::copy(model, dir + "/outside");
    EXPECT_NE(run(dir + "/outside", err), 0);
    EXPECT_NE(err.find("outside the model folders this worker allows"), std::string::npos) << err;
    EXPECT_NE(run(dir + "/models/../outside", err), 0);
    EXPECT_NE(err.find("outside the model folders this worker allows"), std::string::npos) << err;
    fs::create_directory_symlink(dir + "/outside", dir + "/models/link");
    EXPECT_NE(run(dir + "/models/link", err), 0);
    EXPECT_NE(err.find("outside the model folders this worker allows"), std::string::npos) << err;
}

// The same model as one GGUF file (q and k rows interleaved, as llama.cpp writes "llama" files): launched across
// TP2 x PP2 from the file, and with a worker reading its slice from its own copy of the file, the tokens and top
// logits are the folder's. The chat template comes from the file too.
// A Q4_K GGUF runs native across a tensor-parallel and pipelined placement: its blocks travel as they are (the
// bytes streamed are the file's tensor bytes, not 7x them widened), the outputs are the single process's in the
// same blocks, a worker's own copy of the file loads (checked block by block against the master's hashes), and a
// split whose shares are not whole blocks is refused before anything is sent, with the reason.
TEST(ClusterGguf, AQuantizedFileRunsNativeAcrossRanksInItsOwnBlocks)
{
    RandomModelSpec spec = modelShape("large-margin");
    spec.hiddenSize = 512;
    spec.intermediateSize = 1024;
    spec.numLayers = 3;
    spec.numHeads = 8;
    spec.numKvHeads = 4;
    spec.headDim = 64;
    spec.logitScale = 8;
    const std::string dir = test::makeTempDir("gguf-native");
    fs::create_directories(dir + "/models");
    writeRandomModel(dir + "/hf", spec);
    const std::string file = dir + "/models/m-Q4_K.gguf";
    exportGguf(dir + "/hf", file, GgmlType::Q4_K);
    uint64_t tensorBytes = 0;
    const Gguf header = Gguf::open(file, false);
    for (const auto& [name, t] : header.tensors())
        tensorBytes += t.nbytes;

    // The reference: one process, native.
    const std::string refTrace = dir + "/ref.jsonl";
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::workerBin() + " generate --model " + file + " --prompt 'Once upon a time' --temperature 0 --dtype native "
                                   "--threads 1 --max-tokens 12 --trace " + refTrace,
                               &out, &err),
              0)
        << err;
    const auto ref = test::readTrace(refTrace);

    auto streamedMiB = [](const std::string& log) {
        double total = 0;
        for (size_t at = 0; (at = log.find(" MiB of weights streamed", at)) != std::string::npos; ++at) {
            size_t b = log.rfind(", ", at);
            total += std::stod(log.substr(b + 2, at - b - 2));
        }
        return total;
    };
    for (const char* placement : {"tp=1,pp=1", "tp=2,pp=2"}) {
        ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + file + " --local " + placement +
                                       " --prompt 'Once upon a time' --temperature 0 --max-tokens 12 --trace " + dir + "/t.jsonl",
                                   &out, &err),
                  0)
            << err;
        EXPECT_NE(err.find("native, "), std::string::npos) << "a quantized GGUF runs native by default: " << err;
        const auto got = test::readTrace(dir + "/t.jsonl");
        ASSERT_EQ(got.size(), ref.size()) << placement;
        for (size_t i = 0; i < ref.size(); ++i)
            EXPECT_EQ(got[i].token, ref[i].token) << placement << " step " << i;
        const double mib = streamedMiB(err), file = static_cast<double>(tensorBytes) / (1 << 20);
        std::printf("[ native   ] %s: %.2f MiB streamed for %.2f MiB of tensors in the file\n", placement, mib, file);
        if (std::string(placement) == "tp=1,pp=1") { // every tensor once, as the file has it
            EXPECT_GT(mib, file * 0.95) << err;
            EXPECT_LT(mib, file * 1.05) << err;
        }
    }

    // A worker's own copy of the file.
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(2, dir + "/key", {"--models-root", dir + "/models"});
    json plan = {{"stages",
                  {{{"layers", {0, 0}}, {"ranks", {{{"worker", daemons.addresses()[0]}}}}},
                   {{"layers", {1, 2}}, {"ranks", {{{"worker", daemons.addresses()[1]}, {"model_dir", file}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + file + " --plan " + dir + "/plan.json --key-file " + dir +
                                   "/key --prompt 'Once upon a time' --temperature 0 --dtype native --max-tokens 12 --trace " + dir + "/local.jsonl",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("weights read from " + file + " on the worker"), std::string::npos) << err;
    const auto local = test::readTrace(dir + "/local.jsonl");
    ASSERT_EQ(local.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
        EXPECT_EQ(local[i].token, ref[i].token) << "read by the worker, step " << i;

    // Four ranks share o_proj's 512 columns in quarters of 128: not whole Q4_K blocks of 256.
    EXPECT_NE(test::runCommand(test::cliBin() + " run --model " + file + " --local tp=4,pp=1 --prompt 'x' --max-tokens 2", &out, &err), 0);
    EXPECT_NE(err.find("tensor-parallel size 4 cuts the model file's blocks of 256 weights"), std::string::npos) << err;
}

TEST(ClusterGguf, GgufFileRunsAsItsFolderDoes)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const std::string dir = test::makeTempDir("gguf-run");
    fs::create_directories(dir + "/models");
    const std::string file = dir + "/models/kv2-F32.gguf";
    exportGguf(model, file, GgmlType::F32);
    auto ref = test::readTrace(test::referenceTrace(model, "Once upon a time", 16));
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + file + " --local tp=2,pp=2 --prompt 'Once upon a time' --temperature 0 "
                                   "--dtype f32 --max-tokens 16 --trace " + dir + "/trace.jsonl",
                               &out, &err),
              0)
        << err;
    test::expectSameTrace(ref, test::readTrace(dir + "/trace.jsonl"), "gguf tp2 x pp2");

    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(2, dir + "/key", {"--models-root", dir + "/models"});
    json plan = {{"stages",
                  {{{"layers", {0, 1}}, {"ranks", {{{"worker", daemons.addresses()[0]}}}}},
                   {{"layers", {2, 4}}, {"ranks", {{{"worker", daemons.addresses()[1]}, {"model_dir", file}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + file + " --plan " + dir + "/plan.json --key-file " + dir +
                                   "/key --prompt 'Once upon a time' --temperature 0 --dtype f32 --max-tokens 16 --trace " + dir + "/local.jsonl",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("weights read from " + file + " on the worker"), std::string::npos) << err;
    test::expectSameTrace(ref, test::readTrace(dir + "/local.jsonl"), "gguf read by the worker");

    // Chat: the template and special tokens come from the file, so the prompt is the folder's.
    std::string folderOut, fileOut;
    for (auto [m, o] : {std::pair<std::string, std::string*>{model, &folderOut}, {file, &fileOut}})
        ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + m + " --local tp=1,pp=1 --chat --prompt 'Hi there' --temperature 0 "
                                       "--dtype f32 --max-tokens 8",
                                   o, &err),
                  0)
            << err;
    EXPECT_EQ(folderOut, fileOut);
}

TEST(ClusterInteractive, SecondAnswerMatchesSingleProcessAndOnlyNewTokensArePrefilled)
{
    std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    std::string dir = test::makeTempDir("interactive");
    std::ofstream(dir + "/in.txt") << "Tell me a story.\nAnd another one.\n";
    std::string out, err;
    int rc = test::runCommand(test::cliBin() + " run --model " + model + " --local tp=2,pp=1 --chat --interactive --temperature 0 --dtype f32 "
                                  "--max-tokens 12 --trace " + dir + "/trace.jsonl < " + dir + "/in.txt",
                              &out, &err);
    ASSERT_EQ(rc, 0) << err;
    auto steps = test::readTrace(dir + "/trace.jsonl");
    // Two answers of up to 12 steps; the second begins where n_input > 1 again.
    size_t second = 0;
    for (size_t i = 1; i < steps.size(); ++i)
        if (steps[i].nInput > 1)
            second = i;
    ASSERT_GT(second, 0u) << "no second prefill in the trace";
    const int64_t firstPrompt = steps[0].nInput;
    EXPECT_EQ(steps[0].pos, firstPrompt - 1);
    // Only the new tokens were prefilled: the second prompt starts past the first prompt, at the kept prefix.
    EXPECT_LT(steps[second].nInput, steps[second].pos + 1);
    EXPECT_GE(steps[second].pos + 1 - steps[second].nInput, firstPrompt);

    // The same conversation rendered whole in one process gives the same second answer.
    // stdout holds answer 1 "\n" answer 2 "\n".
    auto nl = out.find('\n');
    ASSERT_NE(nl, std::string::npos);
    std::string answer1 = out.substr(0, nl), answer2 = out.substr(nl + 1);
    ASSERT_FALSE(answer2.empty());
    answer2.pop_back();
    json messages = json::array({{{"role", "user"}, {"content", "Tell me a story."}},
                                 {{"role", "assistant"}, {"content", answer1}},
                                 {{"role", "user"}, {"content", "And another one."}}});
    std::ofstream(dir + "/messages.json") << messages.dump();
    std::string single, err2;
    rc = test::runCommand(test::workerBin() + " generate --model " + model + " --messages " + dir + "/messages.json --temperature 0 --dtype f32 --max-tokens 12",
                          &single, &err2);
    ASSERT_EQ(rc, 0) << err2;
    EXPECT_EQ(answer2, single);
}

// ---- failures ----

struct KillCase {
    std::string name;
    std::string victim; // "shard" or "serve"
    std::string local = "tp=2,pp=2";
    int signal = SIGKILL; // SIGSTOP: a stalled process, not a dead one
    int tp = 2;
};

void PrintTo(const KillCase& k, std::ostream* os) { *os << k.name; }

class WorkerDies : public ::testing::TestWithParam<KillCase> {};

TEST_P(WorkerDies, MasterNamesItKeepsTheTextAndLeavesNoProcess)
{
    std::string dir = test::makeTempDir("kill");
    RandomModelSpec s;
    s.hiddenSize = 256;
    s.intermediateSize = 512;
    s.numLayers = 4;
    s.numHeads = 8;
    s.numKvHeads = 4;
    s.maxPositionEmbeddings = 8192;
    writeRandomModel(dir + "/model", s);
    std::string outFile = dir + "/out.txt", errFile = dir + "/err.txt", traceFile = dir + "/trace.jsonl";
    const KillCase& k = GetParam();
    std::vector<std::string> args = {test::cliBin(), "run", "--model", dir + "/model", "--local", k.local, "--prompt", "Once upon a time",
                                     "--temperature", "0", "--max-tokens", "6000", "--ignore-eos", "--dtype", "f32", "--trace", traceFile};
    const pid_t master = spawnWithOutput(args, outFile, errFile);
    ASSERT_GT(master, 0);

    // Wait for generation to be well under way (trace lines), then kill one worker process of stage 1.
    auto steps = [&] { return lineCount(traceFile); };
    auto start = std::chrono::steady_clock::now();
    // Four daemons calibrate and load first: several times slower in sanitized builds.
    while (steps() < 20 && std::chrono::steady_clock::now() - start < std::chrono::seconds(60 * kSanitizerSlowdown))
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_GE(steps(), 20) << "generation did not start";
    std::vector<pid_t> tree = test::descendants(master);
    pid_t victim = -1;
    for (pid_t p : tree) {
        std::string c = test::cmdline(p);
        if (c.find("together-worker " + GetParam().victim + " ") != std::string::npos)
            victim = p; // the last one found: a stage-1 process
    }
    ASSERT_GT(victim, 0);
    // Which rank it runs: shards are named "shard <index in the plan> ...", stage-major.
    std::string who;
    if (k.victim == "shard") {
        const std::string c = test::cmdline(victim);
        const size_t at = c.find("--name shard ");
        ASSERT_NE(at, std::string::npos) << c;
        const int index = std::atoi(c.c_str() + at + 13);
        who = "(stage " + std::to_string(index / k.tp) + " rank " + std::to_string(index % k.tp) + ")";
    }
    ::kill(victim, k.signal);
    const auto killedAt = std::chrono::steady_clock::now();
    size_t printedAtKill = fs::file_size(outFile);
    auto errText = [&] {
        std::ifstream ef(errFile);
        return std::string((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
    };
    if (k.signal == SIGSTOP) {
        // A stalled process is named, by worker and rank, within seconds (the issue asks for 5; the bound here
        // only catches a hang on a loaded machine).
        ASSERT_TRUE(test::waitFor([&] { return errText().find("stopped responding") != std::string::npos; }, std::chrono::seconds(15)))
            << errText();
        const double named = std::chrono::duration<double>(std::chrono::steady_clock::now() - killedAt).count();
        std::printf("[ timing   ] the stalled shard was named %.2f s after SIGSTOP\n", named);
        EXPECT_NE(errText().find(who + " stopped responding while "), std::string::npos) << who << "\n" << errText();
    }

    int status = 0;
    pid_t w = 0;
    while ((w = ::waitpid(master, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - killedAt < std::chrono::seconds(60))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (w == 0) {
        ::kill(master, SIGKILL);
        ::waitpid(master, &status, 0);
        FAIL() << "the master hung after a worker died";
    }
    std::printf("[ timing   ] master exited %.2f s after the kill\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - killedAt).count());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
    std::ifstream ef(errFile);
    std::string err((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
    EXPECT_NE(err.find("error: worker 127.0.0.1:"), std::string::npos) << err;
    if (k.signal == SIGKILL) {
        EXPECT_TRUE(err.find("killed by signal 9") != std::string::npos || err.find("not responding") != std::string::npos) << err;
    }
    EXPECT_GE(fs::file_size(outFile), printedAtKill); // what was printed stays printed
    // Nothing left behind.
    bool anyAlive = true;
    for (int i = 0; i < 100 * kSanitizerSlowdown && anyAlive; ++i) {
        anyAlive = false;
        for (pid_t p : tree)
            anyAlive = anyAlive || test::alive(p);
        if (anyAlive)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (pid_t p : tree)
        EXPECT_FALSE(test::alive(p)) << "left behind: " << p << " " << test::cmdline(p);
}

INSTANTIATE_TEST_SUITE_P(Kill, WorkerDies,
                         ::testing::Values(KillCase{"shard", "shard"}, KillCase{"daemon", "serve"},
                                           KillCase{"stalled_shard_tp2", "shard", "tp=2,pp=1", SIGSTOP, 2},
                                           KillCase{"stalled_shard_pp2", "shard", "tp=1,pp=2", SIGSTOP, 1}),
                         [](const auto& info) { return info.param.name; });

// Failover: one of three pipeline workers dies mid-answer; the controller places the model on the two left,
// feeds the conversation and the answer so far again, and the answer completes exactly as one process's.
TEST(ClusterFailover, AnswerCompletesOnTheWorkersLeftAndEqualsOneProcess)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const std::string dir = test::makeTempDir("failover");
    const int tokens = 400;
    std::string reference, err;
    ASSERT_EQ(test::runCommand(test::workerBin() + " generate --model " + model + " --prompt 'Once upon a time' --temperature 0 --dtype f32 "
                                   "--ignore-eos --max-tokens " + std::to_string(tokens),
                               &reference, &err),
              0)
        << err;
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(3, dir + "/key");
    json plan = {{"stages",
                  {{{"layers", {0, 1}}, {"ranks", {{{"worker", daemons.addresses()[0]}}}}},
                   {{"layers", {2, 3}}, {"ranks", {{{"worker", daemons.addresses()[1]}}}}},
                   {{"layers", {4, 4}}, {"ranks", {{{"worker", daemons.addresses()[2]}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    const std::string outFile = dir + "/out.txt", errFile = dir + "/err.txt", traceFile = dir + "/trace.jsonl";
    std::vector<std::string> args = {test::cliBin(), "run", "--model", model, "--plan", dir + "/plan.json", "--key-file", dir + "/key",
                                     "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", std::to_string(tokens),
                                     "--ignore-eos", "--dtype", "f32", "--failover", "--trace", traceFile, "--window", "1"};
    const pid_t master = spawnWithOutput(args, outFile, errFile);
    ASSERT_GT(master, 0);
    auto lines = [&] { return lineCount(traceFile); };
    ASSERT_TRUE(test::waitFor([&] { return lines() >= 20; }, std::chrono::seconds(60))) << "generation did not start";
    // The middle stage's machine goes away: its daemon and, with it, its shard.
    ::kill(daemons.processes()[1].pid, SIGKILL);
    const long killedAt = lines();
    int status = 0;
    ASSERT_TRUE(test::waitFor([&] { return ::waitpid(master, &status, WNOHANG) == master; }, std::chrono::seconds(120)))
        << "the master hung after a worker died";
    std::ifstream ef(errFile), of(outFile);
    const std::string errText((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
    const std::string out((std::istreambuf_iterator<char>(of)), std::istreambuf_iterator<char>());
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << errText;
    EXPECT_LT(killedAt, tokens) << "the answer ended before the kill: nothing was failed over";
    EXPECT_NE(errText.find("failing over"), std::string::npos) << errText;
    EXPECT_NE(errText.find(daemons.addresses()[1]), std::string::npos) << "the notice does not name the worker\n" << errText;
    EXPECT_EQ(out, reference);
    // The trace has every token once, in order, as one process gave them.
    std::vector<int> got;
    for (auto& st : test::readTrace(traceFile))
        got.push_back(st.token);
    EXPECT_EQ(got.size(), static_cast<size_t>(tokens));
}

// The timeline of a generation is Chrome trace JSON (Perfetto opens it): one row per rank, compute and
// communication spans, and the clock offsets' uncertainty written in it.
TEST(ClusterTimeline, ChromeTraceHasOneRowPerRank)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const std::string dir = test::makeTempDir("timeline");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + model + " --local tp=2,pp=2 --prompt 'Once upon a time' --temperature 0 "
                                   "--dtype f32 --max-tokens 16 --ignore-eos --timeline " + dir + "/timeline.json --metrics " + dir + "/metrics.json",
                               &out, &err),
              0)
        << err;
    json trace = json::parse(readTextFile(dir + "/timeline.json"));
    ASSERT_TRUE(trace["traceEvents"].is_array());
    std::set<int> rows;
    int compute = 0, allReduce = 0, link = 0;
    for (auto& e : trace["traceEvents"]) {
        if (e["ph"] == "M" && e["name"] == "process_name")
            rows.insert(e["pid"].get<int>());
        if (e["ph"] == "X") {
            ASSERT_TRUE(e["ts"].is_number() && e["dur"].is_number() && e["pid"].is_number() && e["tid"].is_number()) << e.dump();
            const std::string name = e["name"];
            compute += name.find("compute") != std::string::npos;
            allReduce += name.find("all-reduce") != std::string::npos;
            link += name.find("->") != std::string::npos;
        }
    }
    EXPECT_EQ(rows.size(), 4u) << "one row per rank";
    EXPECT_GT(compute, 0);
    EXPECT_GT(allReduce, 0);
    EXPECT_GT(link, 0);
    EXPECT_TRUE(trace.contains("otherData")) << "the clock offsets and their uncertainty are not in the trace";
    // And the per-link summary names every link and all-reduce group.
    json metrics = json::parse(readTextFile(dir + "/metrics.json"));
    std::set<std::string> names;
    for (auto& l : metrics["links"])
        names.insert(l["name"].get<std::string>());
    EXPECT_TRUE(names.count("stage 0 -> 1")) << metrics.dump();
    EXPECT_TRUE(names.count("stage 1 -> 0 (token)")) << metrics.dump();
    EXPECT_GE(metrics["totals"]["steps"].get<int>(), 10);
}

// The default dtype (bf16) and sampled generation run through the ring too: the same seed gives the same
// answer, another seed (almost surely) another.
TEST(ClusterSampling, Bf16SampledAnswersRepeatWithTheSeed)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    auto run = [&](int seed) {
        std::string out, err;
        EXPECT_EQ(test::runCommand(test::cliBin() + " run --model " + model + " --local tp=2,pp=2 --prompt 'Once upon a time' --temperature 1.5 "
                                       "--top-k 0 --top-p 1 --dtype bf16 --max-tokens 24 --ignore-eos --seed " + std::to_string(seed),
                                   &out, &err),
                  0)
            << err;
        return out;
    };
    const std::string a = run(7), b = run(7), c = run(8);
    EXPECT_FALSE(a.empty());
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
}

// --context sets each shard's KV cache length: the ring ends the answer when it is full, exactly where one
// process with that context would.
TEST(ClusterContext, ContextLengthEndsTheAnswerWhenFull)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const std::string dir = test::makeTempDir("context");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + model + " --local tp=1,pp=2 --prompt 'Once upon a time' --temperature 0 "
                                   "--dtype f32 --max-tokens 100 --ignore-eos --context 24 --trace " + dir + "/trace.jsonl",
                               &out, &err),
              0)
        << err;
    EXPECT_NE(err.find("context 24"), std::string::npos) << err;
    EXPECT_NE(err.find("stopped by context full"), std::string::npos) << err;
    auto steps = test::readTrace(dir + "/trace.jsonl");
    ASSERT_FALSE(steps.empty());
    EXPECT_EQ(static_cast<int64_t>(steps.size()), 25 - steps[0].nInput) << "every position of the context used, none past it";
    EXPECT_EQ(steps.back().pos, 23);
    EXPECT_NE(test::runCommand(test::cliBin() + " run --model " + model + " --local tp=1,pp=1 --prompt hi --context 0", &out, &err), 0);
    EXPECT_NE(err.find("--context"), std::string::npos) << err;
}

// Failover where the model does not fit on the workers left: it stops with the reason and keeps the text.
TEST(ClusterFailover, WhenNothingFitsItStopsWithTheReasonAndKeepsTheText)
{
    const std::string dir = test::makeTempDir("failover-nofit");
    RandomModelSpec s;
    s.hiddenSize = 1024;
    s.intermediateSize = 2816;
    s.numLayers = 4;
    s.numHeads = 16;
    s.numKvHeads = 4;
    writeRandomModel(dir + "/model", s); // ~200 MB in f32: half of it fits a worker's 0.45 GiB (with the runtime), all of it not
    ClusterKey::generate().writeFile(dir + "/key");
    LocalDaemons daemons(2, dir + "/key", {"--max-memory", "0.45"});
    json plan = {{"stages",
                  {{{"layers", {0, 1}}, {"ranks", {{{"worker", daemons.addresses()[0]}}}}},
                   {{"layers", {2, 3}}, {"ranks", {{{"worker", daemons.addresses()[1]}}}}}}}};
    std::ofstream(dir + "/plan.json") << plan.dump();
    const std::string outFile = dir + "/out.txt", errFile = dir + "/err.txt", traceFile = dir + "/trace.jsonl";
    std::vector<std::string> args = {test::cliBin(), "run", "--model", dir + "/model", "--plan", dir + "/plan.json", "--key-file", dir + "/key",
                                     "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "400", "--ignore-eos", "--dtype",
                                     "f32", "--context", "512", "--failover", "--trace", traceFile};
    const pid_t master = spawnWithOutput(args, outFile, errFile);
    ASSERT_GT(master, 0);
    auto lines = [&] { return lineCount(traceFile); };
    ASSERT_TRUE(test::waitFor([&] { return lines() >= 5; }, std::chrono::seconds(60))) << "generation did not start";
    ::kill(daemons.processes()[1].pid, SIGKILL);
    const size_t printedAtKill = fs::file_size(outFile);
    int status = 0;
    ASSERT_TRUE(test::waitFor([&] { return ::waitpid(master, &status, WNOHANG) == master; }, std::chrono::seconds(120)))
        << "the master hung after a worker died";
    std::ifstream ef(errFile);
    const std::string errText((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << errText;
    EXPECT_NE(errText.find("failover failed"), std::string::npos) << errText;
    EXPECT_NE(errText.find("needs about"), std::string::npos) << "the reason is not given\n" << errText;
    EXPECT_GE(fs::file_size(outFile), printedAtKill) << "text was lost";
    EXPECT_GT(printedAtKill, 0u);
}

} // namespace

// q8 weights through the whole cluster path (the master's plan and memory checks, the shards' load and
// quantization of their slices, the ring): TP2 × PP2 gives the token ids one q8 process gives, on the
// large-margin model.
TEST(ClusterQ8, Tp2Pp2GivesTheTokensOfOneQ8Process)
{
    const std::string model = test::largeMarginModel("kv2", 4, 2, 160);
    const std::string dir = test::makeTempDir("q8");
    std::string out, err;
    ASSERT_EQ(test::runCommand(test::workerBin() + " generate --model " + model + " --prompt 'Once upon a time' --temperature 0 --dtype q8 "
                                   "--threads 1 --max-tokens 24 --ignore-eos --trace " + dir + "/one.jsonl",
                               &out, &err),
              0)
        << err;
    ASSERT_EQ(test::runCommand(test::cliBin() + " run --model " + model + " --local tp=2,pp=2 --prompt 'Once upon a time' --temperature 0 "
                                   "--dtype q8 --max-tokens 24 --ignore-eos --trace " + dir + "/cluster.jsonl",
                               &out, &err),
              0)
        << err;
    const auto one = test::readTrace(dir + "/one.jsonl"), cluster = test::readTrace(dir + "/cluster.jsonl");
    ASSERT_EQ(one.size(), 24u);
    ASSERT_EQ(cluster.size(), one.size());
    for (size_t i = 0; i < one.size(); ++i)
        EXPECT_EQ(cluster[i].token, one[i].token) << "step " << i;
    // and q8 is not silently f32: its logits differ from f32's in the low digits
    const auto f32 = test::readTrace(test::referenceTrace(model, "Once upon a time", 24));
    EXPECT_NE(one[0].top.front().second, f32[0].top.front().second);
}
