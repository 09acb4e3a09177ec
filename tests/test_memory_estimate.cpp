// SPDX-License-Identifier: MIT
// The shard memory estimate (estimateShardMemory in core/shard_spec.h, which checkMemory and autoPlace use)
// against the peak RSS of real shards: worker daemons and shard processes on loopback, weights streamed by
// the master, a prompt that fills the context and a short generation, then each shard's peak (VmHWM, as the
// shard's Status and its daemon's Health report it to the master) must be within 15% of the estimate for its
// slice.
#include "base/process.h"
#include "base/sanitizers.h"
#include "master/cluster.h"
#include "master/local_daemons.h"
#include "model/gguf_model.h"
#include "model/random_model.h"
#include "model/shard_spec.h"
#include "net/cluster_key.h"
#include "net/credentials.h"
#include "test_support.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

using namespace together;
namespace fs = std::filesystem;

namespace {

double mib(double bytes) { return bytes / 1048576.0; }

// Fields of /proc/PID/status in bytes (VmHWM, VmRSS, RssAnon, RssFile, ...); empty when the process is gone.
std::map<std::string, int64_t> procStatus(pid_t pid)
{
    std::map<std::string, int64_t> out;
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos || line.find(" kB") == std::string::npos)
            continue;
        out[line.substr(0, colon)] = std::atoll(line.c_str() + colon + 1) * 1024;
    }
    return out;
}

// A random model of TinyLlama's vocabulary written once per test run (and reused by later runs of the same
// build: writing a few hundred MiB of random weights takes seconds).
std::string modelFor(const std::string& tag, const RandomModelSpec& spec)
{
    const std::string dir = std::string(TOGETHER_TEST_CACHE) + "/memory-estimate/" + tag;
    if (!fs::exists(dir + "/model.safetensors")) {
        // CTest runs the placements in parallel: each writes its own copy and the first rename wins.
        const std::string partial = dir + ".partial-" + std::to_string(::getpid());
        fs::remove_all(partial);
        writeRandomModel(partial, spec);
        std::error_code ec;
        fs::rename(partial, dir, ec);
        if (ec)
            fs::remove_all(partial);
    }
    if (!fs::exists(dir + "/model.safetensors"))
        throw std::runtime_error("cannot write the test model in " + dir);
    return dir;
}

RandomModelSpec modelSpec(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kvHeads, DType dtype)
{
    RandomModelSpec s;
    s.hiddenSize = hidden;
    s.intermediateSize = intermediate;
    s.numLayers = layers;
    s.numHeads = heads;
    s.numKvHeads = kvHeads;
    s.vocabSize = 32000;
    s.maxPositionEmbeddings = 4096;
    s.dtype = dtype;
    s.seed = 7;
    return s;
}

struct ShardRow {
    std::string name;
    ShardSpec spec;
    ShardMemoryEstimate estimate;
    uint64_t peakRss = 0;                     // from the cluster (the daemon's Health / the shard's Status)
    std::map<std::string, int64_t> status; // /proc/PID/status of the shard process at the end
    double ratio() const { return static_cast<double>(peakRss) / static_cast<double>(estimate.total()); }
};

// Launches the model as tp x pp shards on fresh local daemons (weights streamed by this master), runs a
// generation of `genTokens` after a prompt of `promptTokens`, and returns each shard's numbers.
std::vector<ShardRow> measure(const std::string& modelDir, int tp, int pp, const std::string& dtype, int64_t context, int promptTokens,
                              int genTokens)
{
    const std::string dir = test::makeTempDir("memory");
    const std::string keyFile = dir + "/key";
    const ClusterKey key = ClusterKey::generate();
    key.writeFile(keyFile);
    LocalDaemons daemons(static_cast<size_t>(tp * pp), keyFile);
    const ModelConfig config = ModelConfig::fromDirectory(modelDir);
    const Plan plan = Plan::even(config, tp, pp, daemons.addresses(), 1);
    Cluster cluster(std::make_shared<const Credentials>(key, newMasterIdentity()), {});
    cluster.launch(plan, modelDir, dtype, context);
    RingRequest req;
    for (int i = 0; i < promptTokens; ++i)
        req.tokens.push_back(1 + (i * 37) % 1000);
    req.sampling.temperature = 0;
    req.maxTokens = static_cast<uint32_t>(genTokens);
    cluster.generate(req, [](const RingToken&) { return true; });
    // The shards' peaks reach the master with their next Status (every 0.5 s) and the daemons' next Health.
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    const auto memory = cluster.shardMemory();
    std::vector<ShardRow> rows;
    const RunDtype dt = parseRunDtype(dtype);
    size_t i = 0;
    for (size_t s = 0; s < plan.stages.size(); ++s)
        for (int r = 0; r < static_cast<int>(plan.stages[s].ranks.size()); ++r, ++i) {
            ShardRow row;
            row.spec = plan.shardSpec(s, r);
            row.estimate = estimateShardMemory(config, row.spec, dt, cluster.contextLimit());
            row.name = memory.at(i).name;
            row.peakRss = memory.at(i).peakRssBytes;
            // Plan::even gives rank i (stage-major) to daemon i.
            for (pid_t p : test::descendants(daemons.processes().at(i).pid))
                if (test::cmdline(p).find(" shard ") != std::string::npos)
                    row.status = procStatus(p);
            rows.push_back(std::move(row));
        }
    cluster.stop();
    return rows;
}

void print(const std::string& what, const std::vector<ShardRow>& rows)
{
    for (auto& r : rows) {
        auto get = [&](const char* k) { return r.status.count(k) ? mib(static_cast<double>(r.status.at(k))) : -1.0; };
        std::printf("%-34s %-26s est %7.1f MiB (weights %6.1f + kv %5.1f + runtime %5.1f)  peak %7.1f MiB  %+6.1f%%"
                    "  [VmHWM %.0f VmRSS %.0f anon %.0f file %.0f]\n",
                    what.c_str(), r.name.substr(r.name.find('(')).c_str(), mib(static_cast<double>(r.estimate.total())),
                    mib(static_cast<double>(r.estimate.weightBytes)), mib(static_cast<double>(r.estimate.kvCacheBytes)),
                    mib(static_cast<double>(r.estimate.runtimeBytes)), mib(static_cast<double>(r.peakRss)), (r.ratio() - 1) * 100,
                    get("VmHWM"), get("VmRSS"), get("RssAnon"), get("RssFile"));
    }
    std::fflush(stdout);
}

// The model of the test: hidden 1024, 8 layers, TinyLlama's vocabulary, a bf16 checkpoint as Hugging Face
// publishes them: 305 MiB of weights, so a shard's weights are 32-48% of its estimate.
RandomModelSpec testModelSpec() { return modelSpec(1024, 2816, 8, 16, 8, DType::BF16); }

struct Placement {
    std::string name;
    int tp, pp;
};

void PrintTo(const Placement& p, std::ostream* os) { *os << p.name; }

class MemoryEstimatePlacements : public ::testing::TestWithParam<Placement> {};

} // namespace

// A prompt that fills the context but for the 8 tokens generated after it: the run reaches every term of the
// estimate (the slice received and converted, the KV cache at its limit, the prefill chunk that attends over
// the whole context).
TEST_P(MemoryEstimatePlacements, PeakRssOfRealShardsIsWithin15PercentOfTheEstimate)
{
    if (kSanitized)
        GTEST_SKIP() << "built with AddressSanitizer: resident memory includes its shadow and redzones (2-3x), not what a user's build uses";
    const Placement& p = GetParam();
    const std::string model = modelFor("h1024-l8-bf16", testModelSpec());
    const int64_t context = 512;
    const int tokens = 8;
    const auto rows = measure(model, p.tp, p.pp, "bf16", context, static_cast<int>(context) - tokens, tokens);
    print(p.name + " bf16 ctx" + std::to_string(context), rows);
    ASSERT_EQ(rows.size(), static_cast<size_t>(p.tp * p.pp));
    for (auto& r : rows) {
        SCOPED_TRACE(r.name);
        ASSERT_GT(r.peakRss, 0u) << "the shard's peak RSS never reached the master (daemon Health / shard Status)";
        // The shard still runs when it is read: what the master holds is its VmHWM now (the peak was during the
        // prefill, reported by the polls since).
        ASSERT_TRUE(r.status.count("VmHWM")) << "the shard process was not found under its daemon";
        EXPECT_NEAR(static_cast<double>(r.status.at("VmHWM")) / static_cast<double>(r.peakRss), 1.0, 0.03);
        // The weights are a real share of what is estimated (the test is not about the fixed overhead alone).
        EXPECT_GE(10 * r.estimate.weightBytes, 3 * r.estimate.total());
        EXPECT_NEAR(r.ratio(), 1.0, 0.15) << "peak " << mib(static_cast<double>(r.peakRss)) << " MiB, estimate "
                                          << mib(static_cast<double>(r.estimate.total())) << " MiB";
    }
}

INSTANTIATE_TEST_SUITE_P(Shards, MemoryEstimatePlacements,
                         ::testing::Values(Placement{"tp1", 1, 1}, Placement{"tp2", 2, 1}, Placement{"pp2", 1, 2}),
                         [](const auto& info) { return info.param.name; });

// The same model as a Q4_K GGUF run native: each shard receives and holds the file's blocks, costed tensor by
// tensor in their own type (the F32 norms, the Q4_K matrices). Its weights are a smaller share of the estimate
// (4.5 bits a weight), so only the whole ratio is checked.
TEST(MemoryEstimate, NativeQ4_KShardsAreWithin15PercentOfTheEstimate)
{
    if (kSanitized)
        GTEST_SKIP() << "built with AddressSanitizer: resident memory includes its shadow and redzones (2-3x), not what a user's build uses";
    const std::string folder = modelFor("h1024-l8-bf16", testModelSpec());
    const std::string gguf = std::string(TOGETHER_TEST_CACHE) + "/memory-estimate/h1024-l8-Q4_K.gguf";
    if (!fs::exists(gguf)) {
        const std::string partial = gguf + ".partial-" + std::to_string(::getpid());
        exportGguf(folder, partial, GgmlType::Q4_K);
        std::error_code ec;
        fs::rename(partial, gguf, ec);
        if (ec)
            fs::remove(partial);
    }
    const ModelConfig config = ModelConfig::fromDirectory(gguf);
    ASSERT_FALSE(config.storedTensorTypes.empty()) << "the GGUF's config names no tensor types";
    for (const auto& [tp, pp] : {std::pair{1, 1}, std::pair{1, 2}}) {
        const int64_t context = 512;
        const int tokens = 8;
        const auto rows = measure(gguf, tp, pp, "native", context, static_cast<int>(context) - tokens, tokens);
        print("native Q4_K tp" + std::to_string(tp) + " pp" + std::to_string(pp) + " ctx512", rows);
        for (auto& r : rows) {
            SCOPED_TRACE(r.name);
            ASSERT_GT(r.peakRss, 0u);
            EXPECT_NEAR(r.ratio(), 1.0, 0.15) << "peak " << mib(static_cast<double>(r.peakRss)) << " MiB, estimate "
                                              << mib(static_cast<double>(r.estimate.total())) << " MiB";
        }
    }
}

// A sweep of shapes, placements, checkpoint and run dtypes and contexts: the numbers behind kShardRuntimeBytes
// and the load and prefill terms of estimateShardMemory (a few minutes). Run by hand, narrowed by SWEEP_ONLY
// (a model tag), SWEEP_DTYPES, SWEEP_PLACEMENTS ("tp1pp1 tp2pp1 tp1pp2"), SWEEP_CONTEXTS, SWEEP_PROMPT
// (tokens; a large value fills each context) and SWEEP_TOKENS:
//   SWEEP_PROMPT=100000 test_memory_estimate --gtest_also_run_disabled_tests --gtest_filter='*Sweep*'
TEST(MemoryEstimate, DISABLED_Sweep)
{
    struct Model {
        std::string tag;
        RandomModelSpec spec;
    };
    const std::vector<Model> models = {
        {"h64-l2-bf16", modelSpec(64, 172, 2, 4, 2, DType::BF16)},
        {"h512-l4-bf16", modelSpec(512, 1376, 4, 8, 4, DType::BF16)},
        {"h1024-l8-bf16", modelSpec(1024, 2816, 8, 16, 8, DType::BF16)},
        {"h1024-l8-f32", modelSpec(1024, 2816, 8, 16, 8, DType::F32)},
        {"h2048-l4-bf16", modelSpec(2048, 5632, 4, 32, 4, DType::BF16)},
    };
    auto env = [](const char* name, const char* fallback) {
        const char* v = std::getenv(name);
        return std::string(v && *v ? v : fallback);
    };
    const std::string only = env("SWEEP_ONLY", ""), dtypes = env("SWEEP_DTYPES", "bf16 f32"),
                      placements = env("SWEEP_PLACEMENTS", "tp1pp1 tp2pp1 tp1pp2"), contexts = env("SWEEP_CONTEXTS", "512 2048");
    const int prompt = std::stoi(env("SWEEP_PROMPT", "8")), tokens = std::stoi(env("SWEEP_TOKENS", "8"));
    for (auto& m : models) {
        if (!only.empty() && m.tag.find(only) == std::string::npos)
            continue;
        const std::string dir = modelFor(m.tag, m.spec);
        std::istringstream ds(dtypes);
        for (std::string dtype; ds >> dtype;) {
            std::istringstream ps(placements);
            for (std::string p; ps >> p;) {
                const int tp = p[2] - '0', pp = p[5] - '0';
                std::istringstream cs(contexts);
                for (int64_t context; cs >> context;) {
                    std::ostringstream what;
                    what << m.tag << " " << dtype << " " << p << " ctx" << context << " p" << prompt;
                    print(what.str(), measure(dir, tp, pp, dtype, context, static_cast<int>(std::min<int64_t>(prompt, context - tokens)), tokens));
                }
            }
        }
    }
}
