// SPDX-License-Identifier: MIT
#pragma once

#include "master/metrics.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "net/credentials.h"
#include "text/generation.h"
#include "text/sampler.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace together {

class SafeTensors;
class TensorHashCache;
struct ShardSpec;
namespace v1 {
class StartRequest;
class StatusReply;
}

// Where one rank's launch stands.
struct RankProgress {
    enum class Phase { Connecting, Transferring, Loading, Ready, FromCache };
    size_t index = 0; // the rank's index in the plan (stage-major)
    int stage = 0;
    int rank = 0;
    std::string worker;
    Phase phase = Phase::Connecting;
    uint64_t bytesDone = 0, bytesTotal = 0;
    double bytesPerSecond = 0;
    uint32_t layersDone = 0, layersTotal = 0;
};
const char* phaseName(RankProgress::Phase p);
// "stage 1 rank 0 on 10.0.0.5:7600: transferring 120 of 400 MiB (85 MiB/s)"
std::string describeProgress(const RankProgress& p);

// One sampled token as it left the last stage.
struct RingToken {
    uint64_t index = 0; // 0 = the token after the prompt
    int token = -1;
    int64_t pos = 0;    // position of the last input token (whose logits were sampled)
    int inputTokens = 0;
    std::vector<std::pair<int, float>> top;
};

struct RingRequest {
    std::vector<int> tokens; // fed at [startPos, startPos + size)
    int64_t startPos = 0;
    SamplingParams sampling;
    bool newSequence = true;
    uint32_t maxTokens = 0;   // 0: until EOS, Stop or the context
    std::vector<int64_t> eosIds;
    uint32_t window = 4;      // tokens the ring may run ahead of this master
    uint32_t topLogits = 10;
};

// The master's side of one launch: shards on worker daemons, joined into a ring (see proto/together.proto).
// It only dials out, over mutual TLS. Every call has a deadline, and liveness is watched two ways: each
// shard's Status every half second (a rank that answers nothing for kStallMs, e.g. SIGSTOPped or hung, or
// reports an error, fails the launch naming it and what it was doing) and each daemon's Health (a process
// that exited; it also renews the launch's lease, so shards of a master that died are stopped). Every call
// in flight is then cancelled and the shards are stopped.
//
// Threads: launch() and generate() block their caller; cancel(), requestStop() and the getters may be called
// from any thread. Callbacks run on the cluster's own threads.
class Cluster {
public:
    struct Callbacks {
        std::function<void(const std::string&)> log;
        std::function<void(const RankProgress&)> progress;
        std::function<void(const StepRecord&)> step; // complete records, as they arrive
    };
    Cluster(std::shared_ptr<const Credentials> credentials, Callbacks callbacks);
    static constexpr uint32_t kLeaseMs = 5000;
    static constexpr int kStallMs = 3000;
    // A generation during which no token arrives and no rank computes for this long has stopped moving
    // (a lost message, a peer that broke the protocol): it fails rather than hangs.
    static constexpr int kStuckMs = 15000;
    ~Cluster(); // stops the launch's shards

    // Hello to every worker, start one shard per rank, give each its slice (from the worker's slice cache, its
    // own model folder, or streamed), join the tensor-parallel groups and the ring. contextLimit 0: the model's.
    // A placement that needs more memory than a worker has free (or donates) is refused, naming the numbers,
    // unless `beyondFreeMemory` (the user forced it; the daemons still hold to what they donate).
    void launch(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit, bool beyondFreeMemory = false);
    // One generation through the ring. `onToken` sees each token in order; returning false stops the ring
    // (Stop: the shards finish the step in flight and keep their caches). Returns how it ended: "eos",
    // "max tokens", "context full" or "stopped". Throws Error naming the worker when a rank fails.
    std::string generate(const RingRequest& request, const std::function<bool(const RingToken&)>& onToken);
    // Fails whatever is in flight (launch or generation) with `why`, from any thread.
    void cancel(const std::string& why);
    // Ends the generation in flight now, as if onToken had returned false (from any thread; no-op when idle).
    void requestStop();
    // Stops the shards (frees the workers' memory; their slice caches stay).
    void stop();
    // Fetches the step records still on the ranks (the end of a generation), so metrics are complete.
    void syncRecords();

    bool launched() const { return m_launched; }
    const ModelConfig& config() const { return m_config; }
    const Plan& plan() const { return m_plan; }
    int64_t contextLimit() const { return m_contextLimit; }
    // The daemon address of the worker whose fault ended the launch, if one did.
    std::string failedWorker();
    std::map<std::string, ClockOffset> clockOffsets();
    struct ShardMemory {
        std::string name;        // "host:port (stage s rank r)"
        uint64_t peakRssBytes = 0;
        int64_t sliceBytes = 0;  // its weights at the run's dtype
    };
    std::vector<ShardMemory> shardMemory();
    // How each rank got its weights in the last launch ("from cache", "streamed", "local folder").
    std::vector<std::string> weightSources();

private:
    struct Worker;
    struct Rank;
    class TrackedCall;
    // Step records as they come from the ranks, merged by (generation, step).
    struct Incoming {
        std::pair<uint64_t, uint64_t> key;
        RankStepRecord record;
        int64_t endToEndUs = -1; // the last stage's rank 0
        int token = -1;
        int inputTokens = 0;
    };
    struct Pending {
        std::vector<RankStepRecord> ranks;
        int64_t endToEndUs = -1;
        int token = -1;
        int inputTokens = 0;
    };
    // Each tensor of a rank's slice with the SHA-256 of its slice bytes, in the order the rank receives them.
    using SliceHashes = std::vector<std::pair<std::string, std::string>>;

    // A launch, in its order (cluster_launch.cpp): admit the plan, name its workers and ranks, Hello, check that it
    // fits, start a shard per rank, load each rank's weights, connect the groups and the ring.
    void admit(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit);
    void nameWorkersAndRanks();
    void helloWorkers();
    void checkFits();
    void startShards();
    void loadRank(Rank& r, const std::string& modelDir, const SafeTensors& tensors, TensorHashCache& hashes);
    void configureRank(Rank& r, const ShardSpec& spec);
    void loadFromWorkerFolder(Rank& r, const ShardSpec& spec, const std::string& folder, const SliceHashes& hashes);
    bool loadFromSliceCache(Rank& r, const ShardSpec& spec, const SliceHashes& hashes);
    void streamSlice(Rank& r, const ShardSpec& spec, const SafeTensors& tensors, const SliceHashes& hashes);
    void connectRank(Rank& r);
    void setPhase(Rank& r, RankProgress::Phase phase, const std::string& source = {});

    // A generation (cluster_ring.cpp): the prompt to every stage-0 rank.
    void startRing(const v1::StartRequest& start);

    // The watch (cluster_watch.cpp): every daemon's Health, every rank's Status.
    void heartbeatLoop();
    void healthOnce(Worker& w);
    void statusLoop(size_t rank);
    void pollOnce(Rank& r);
    void onStatus(Rank& r, const v1::StatusReply& reply, int64_t sentUs, int64_t receivedUs);
    void onSilence(Rank& r, const std::string& rpcError);
    void checkMoving();
    void setFatal(const std::string& message, const std::string& worker);
    std::string fatal();
    [[noreturn]] void fail(const std::string& rpcError);
    void report(Rank& r);

    // The records (cluster_records.cpp).
    void addRecords(std::vector<Incoming> records);

    std::shared_ptr<const Credentials> m_credentials;
    Callbacks m_cb;
    ModelConfig m_config;
    Plan m_plan;
    std::string m_configJson;
    int64_t m_contextLimit = 0;
    std::string m_launchId;
    std::string m_dtype;
    std::vector<std::unique_ptr<Worker>> m_workers;
    std::vector<std::unique_ptr<Rank>> m_ranks; // stage-major
    std::atomic<bool> m_launched{false};
    bool m_beyondFreeMemory = false;
    uint64_t m_generation = 0;

    std::mutex m_mutex;
    std::string m_fatal;
    std::string m_failedWorker;
    std::vector<void*> m_inflight; // grpc::ClientContext* of calls in flight: cancelled on a fatal error
    std::atomic<bool> m_stopThreads{false};
    std::thread m_heartbeat;
    std::vector<std::thread> m_status;
    std::map<std::string, ClockOffset> m_offsets;
    std::map<std::pair<uint64_t, uint64_t>, Pending> m_partial; // (generation, step) -> ranks so far
    std::map<uint64_t, std::pair<uint64_t, double>> m_prefill; // generation -> (chunks, master-measured prefill ms)
    std::function<void()> m_stopNow;                          // set while a generation runs
    bool m_generating = false;
    std::chrono::steady_clock::time_point m_lastProgress;      // a token arrived or a rank computed
};

} // namespace together
