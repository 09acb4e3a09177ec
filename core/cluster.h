// SPDX-License-Identifier: MIT
#pragma once

#include "core/credentials.h"
#include "core/generation.h"
#include "core/model_config.h"
#include "core/plan.h"
#include "core/sampler.h"

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace together {

// The master's side of a launch. It only dials out, over mutual TLS: to each worker daemon (hello, launch
// shards, health) and to each shard (configure, weights, connect, steps). Liveness comes from heartbeats to
// the daemons every half second, so a dead shard or machine is named within a few seconds even in a long
// step; the step in flight is then cancelled and step() throws an Error naming the worker. The heartbeats
// also renew the launch's lease on each daemon: if this process dies or stops, the daemons stop its shards
// when the lease runs out (kLeaseMs).
class Cluster {
public:
    using Log = std::function<void(const std::string&)>;
    Cluster(std::shared_ptr<const Credentials> credentials, Log log);
    static constexpr uint32_t kLeaseMs = 5000;
    ~Cluster(); // stops the launch's shards

    // Hello to every worker, start one shard per rank, stream each its slice of `modelDir`'s weights,
    // and join the tensor-parallel groups and pipeline links.
    void launch(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit);
    // One step through the pipeline. Long inputs are sent in chunks under the message limit.
    StepOutput step(const std::vector<int>& tokens, int64_t startPos, const SamplingParams& sampling, bool newSequence);
    void stop();

    const ModelConfig& config() const { return m_config; }
    struct ShardMemory {
        std::string name;        // "host:port (stage s rank r)"
        uint64_t peakRssBytes = 0;
        int64_t sliceBytes = 0;  // its weights at the run's dtype
    };
    // From the latest heartbeat.
    std::vector<ShardMemory> shardMemory();
    int64_t contextLimit() const { return m_contextLimit; }

private:
    struct Worker;
    struct Rank;
    class TrackedCall;
    void heartbeatLoop();
    void setFatal(const std::string& message);
    std::string fatal();
    // Throws the heartbeat's diagnosis if it has one (waiting briefly for it), else `rpcError`.
    [[noreturn]] void fail(const std::string& rpcError);

    std::shared_ptr<const Credentials> m_credentials;
    Log m_log;
    ModelConfig m_config;
    Plan m_plan;
    int64_t m_contextLimit = 0;
    std::string m_launchId;
    std::string m_dtype;
    std::vector<uint64_t> m_peakRss; // by rank index, from heartbeats
    std::vector<std::unique_ptr<Worker>> m_workers;
    std::vector<std::unique_ptr<Rank>> m_ranks; // stage-major
    uint64_t m_step = 0;

    std::mutex m_mutex;
    std::string m_fatal;
    std::vector<void*> m_inflight; // grpc::ClientContext* of calls in flight: cancelled on a fatal error
    std::atomic<bool> m_stopHeartbeat{false};
    std::thread m_heartbeat;
};

// TokenStepper over a Cluster, so the same generation loop drives one process or many.
class ClusterStepper : public TokenStepper {
public:
    ClusterStepper(Cluster& cluster, const SamplingParams& sampling)
        : m_cluster(cluster)
        , m_sampling(sampling)
    {
    }
    StepOutput step(const std::vector<int>& tokens, int64_t startPos) override;
    int64_t contextLimit() const override { return m_cluster.contextLimit(); }
    // Reseeds the last stage's sampler on the next step (a new answer).
    void newSequence(uint64_t seed)
    {
        m_sampling.seed = seed;
        m_new = true;
    }

private:
    Cluster& m_cluster;
    SamplingParams m_sampling;
    bool m_new = true;
};

} // namespace together
