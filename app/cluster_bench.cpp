// SPDX-License-Identifier: MIT
#include "app/cluster_bench.h"

#include "core/cluster_key.h"
#include "core/credentials.h"
#include "core/cli_args.h"
#include "core/cluster.h"
#include "core/error.h"
#include "core/process.h"
#include "core/random_model.h"
#include "core/run_options.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include <unistd.h>

namespace together {

namespace fs = std::filesystem;

namespace {

struct Placement {
    std::string name;
    int tp, pp, threads;
};

struct Result {
    double tokensPerSecond = 0;
    double allReduceMsPerToken = 0; // per stage, its slowest rank's time inside all-reduces, summed
    double hopMsPerToken = 0;       // the ring's links (half the round trip of each message and its acknowledgement)
    std::vector<Cluster::ShardMemory> memory;
};

Result measure(const std::string& modelDir, const Placement& p, int tokens, const std::string& dtype)
{
    std::string keyDir = (fs::temp_directory_path() / ("together-bench-" + std::to_string(::getpid()))).string();
    fs::create_directories(keyDir);
    std::string keyFile = keyDir + "/key";
    fs::remove(keyFile);
    const ClusterKey key = ClusterKey::generate();
    key.writeFile(keyFile);
    LocalDaemons daemons(static_cast<size_t>(p.tp * p.pp), keyFile);
    ModelConfig config = ModelConfig::fromDirectory(modelDir);
    Plan plan = Plan::even(config, p.tp, p.pp, daemons.addresses(), p.threads);
    SessionMetrics metrics;
    Cluster::Callbacks callbacks;
    callbacks.step = [&metrics](const StepRecord& s) { metrics.add(s); };
    Cluster cluster(std::make_shared<const Credentials>(key, newMasterIdentity()), callbacks);
    cluster.launch(plan, modelDir, dtype, 4096);
    RingRequest warm;
    warm.tokens = {1, 2, 3, 4, 5, 6, 7, 8};
    warm.sampling.temperature = 0;
    warm.maxTokens = 2;
    cluster.generate(warm, [](const RingToken&) { return true; }); // warm-up
    RingRequest run = warm;
    run.tokens = {1, 10, 20, 30, 40, 50, 60, 70};
    run.maxTokens = static_cast<uint32_t>(tokens + 1);
    run.window = 0;
    std::chrono::steady_clock::time_point first, last;
    cluster.generate(run, [&](const RingToken& t) {
        (t.index == 0 ? first : last) = std::chrono::steady_clock::now();
        return true;
    });
    cluster.syncRecords();
    Result r;
    const double secs = std::chrono::duration<double>(last - first).count();
    r.tokensPerSecond = secs > 0 ? tokens / secs : 0;
    // From the ranks' own records of the measured generation's decode steps.
    double ar = 0, links = 0;
    int steps = 0;
    for (auto& s : metrics.generation(2)) {
        if (s.step == 0)
            continue;
        ++steps;
        std::map<int, double> stageAr;
        for (auto& x : s.ranks) {
            stageAr[x.stage] = std::max(stageAr[x.stage], x.allReduceMs);
            if (x.linkMs > 0)
                links += x.linkMs;
        }
        for (auto& [stage, ms] : stageAr)
            ar += ms;
    }
    r.allReduceMsPerToken = steps ? ar / steps : 0;
    r.hopMsPerToken = steps ? links / steps : 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(700)); // one more heartbeat for peak RSS
    r.memory = cluster.shardMemory();
    cluster.stop();
    fs::remove_all(keyDir);
    return r;
}

} // namespace

int runClusterBench(const std::vector<std::string>& rest)
{
    CliArgs args(rest, {{"cache"}, {"tokens"}, {"dtype"}, {"layers"}, {"model"}});
    const int tokens = args.getInt("tokens", 64);
    const std::string dtype = args.get("dtype", "bf16");
    std::string dir = args.get("model");
    if (dir.empty())
        dir = ensureBenchModel(args.get("cache", fs::path(defaultModelDir()).parent_path().string()), args.getInt("layers", 22));
    const std::vector<Placement> placements = {
        {"TP1 (1 process x 1 thread)", 1, 1, 1},
        {"TP2 (2 processes x 1 thread)", 2, 1, 1},
        {"PP2 (2 processes x 1 thread)", 1, 2, 1},
        {"TP1 (1 process x 2 threads)", 1, 1, 2},
    };
    std::printf("| placement | decode tok/s (%d) | vs TP1 | all-reduce ms/token | links ms/token |\n", tokens);
    std::printf("|---|---|---|---|---|\n");
    double base = 0;
    std::vector<std::pair<std::string, std::vector<Cluster::ShardMemory>>> memory;
    for (auto& p : placements) {
        Result r = measure(dir, p, tokens, dtype);
        if (base == 0)
            base = r.tokensPerSecond;
        std::printf("| %s | %.2f | %.2fx | %.2f | %.2f |\n", p.name.c_str(), r.tokensPerSecond, r.tokensPerSecond / base,
                    r.allReduceMsPerToken, r.hopMsPerToken);
        std::fflush(stdout);
        memory.emplace_back(p.name, r.memory);
    }
    std::printf("\n| placement | shard | peak RSS | weights slice (%s) |\n|---|---|---|---|\n", dtype.c_str());
    for (auto& [name, shards] : memory)
        for (auto& m : shards)
            std::printf("| %s | %s | %.0f MiB | %.0f MiB |\n", name.c_str(), m.name.substr(m.name.find('(')).c_str(),
                        m.peakRssBytes / 1048576.0, m.sliceBytes / 1048576.0);
    return 0;
}

} // namespace together
