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
    double allReduceMsPerToken = 0; // mean over ranks of the time inside all-reduces
    double hopMsPerToken = 0;       // pipeline: time between stages not spent computing
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
    Cluster cluster(std::make_shared<const Credentials>(key, newMasterIdentity()), [](const std::string&) {});
    cluster.launch(plan, modelDir, dtype, 4096);
    SamplingParams greedy;
    greedy.temperature = 0;
    // warm-up, then a fresh sequence: prompt, then `tokens` decode steps
    cluster.step({1, 2, 3, 4, 5, 6, 7, 8}, 0, greedy, true);
    cluster.step({9}, 8, greedy, false);
    StepOutput o = cluster.step({1, 10, 20, 30, 40, 50, 60, 70}, 0, greedy, true);
    int64_t pos = 8;
    Result r;
    std::map<std::pair<int, int>, ShardTiming> sum;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < tokens; ++i) {
        o = cluster.step({o.token}, pos++, greedy, false);
        for (auto& t : o.timings) {
            auto& s = sum[{t.stage, t.rank}];
            s.computeMs += t.computeMs;
            s.allReduceMs += t.allReduceMs;
            s.downstreamMs += t.downstreamMs;
        }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.tokensPerSecond = tokens / secs;
    double ar = 0, hop = 0;
    for (auto& [k, s] : sum) {
        ar += s.allReduceMs;
        if (s.downstreamMs > 0) {
            // what the next stage's rank-0 chain spent working, subtracted from the wait
            double next = 0;
            for (auto& [k2, s2] : sum)
                if (k2.first == k.first + 1 && k2.second == 0)
                    next = s2.computeMs + s2.allReduceMs + s2.downstreamMs;
            hop += s.downstreamMs - next;
        }
    }
    r.allReduceMsPerToken = sum.empty() ? 0 : ar / static_cast<double>(sum.size()) / tokens;
    r.hopMsPerToken = hop / tokens;
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
    std::printf("| placement | decode tok/s (%d) | vs TP1 | all-reduce ms/token | hop ms/token |\n", tokens);
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
