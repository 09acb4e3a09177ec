// SPDX-License-Identifier: MIT
#pragma once

#include "master/cluster.h"
#include "model/plan.h"
#include "text/generation.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace together {

class Tokenizer;

// What the controller reports. Events arrive on the controller's own threads, in order; a GUI must not
// touch its widgets from the callback (see docs/ARCHITECTURE.md: post them to the GUI thread).
struct ControllerEvent {
    enum class Kind {
        Progress,     // progress: one rank's launch phase changed or moved on
        Launched,     // text: a one-line summary of the placement
        LaunchFailed, // text: why (nothing is left running)
        Token,        // token, text: the text this token completed (often empty until a character is whole)
        Step,         // step: one step's per-rank, per-link record
        Ended,        // result: the answer, its stop reason and speed
        Failed,       // text: why, naming the worker; result: the answer so far (kept)
        Notice,       // text: something the user should know (failover)
        Log,          // text: a line of the cluster's log (which worker, where weights came from)
        Unloaded,     // the shards are stopped
    };
    Kind kind = Kind::Notice;
    std::string text;
    RankProgress progress;
    RingToken token;
    StepRecord step;
    GenerationResult result;
};
const char* eventKindName(ControllerEvent::Kind k);

struct LaunchRequest {
    Plan plan;
    std::string modelDir;
    std::string dtype = "f32";
    int64_t contextLength = 0; // KV cache positions per rank; 0: the model's own limit
    bool failover = false;     // after a worker dies or stalls, place the model over the rest and continue
    std::vector<std::string> spareWorkers; // failover may also use these (ready workers outside the plan)
    bool force = false;        // launch even when the placement needs more memory than is free
};

struct GenerateRequest {
    // The whole conversation's tokens so far. The shards keep what they hold of it (the longest common
    // prefix with the previous turn) and only the rest is prefilled.
    std::vector<int> ids;
    GenerationParams params;
    SamplingParams sampling;
    uint32_t window = 4; // tokens the ring may run ahead of the master
};

// The asynchronous controller the app and the CLI drive: operations are queued and run one at a time on
// the controller's thread; stop() and cancel() act at once from any thread. Qt-free.
class Controller {
public:
    using Listener = std::function<void(const ControllerEvent&)>;
    Controller(std::shared_ptr<const Credentials> credentials, std::shared_ptr<const Tokenizer> tokenizer, Listener listener);
    ~Controller(); // cancels what runs and stops the shards

    void launch(LaunchRequest request);
    void generate(GenerateRequest request);
    // Ends the answer in flight (the shards keep a consistent cache; the next turn continues from it).
    void stop();
    // Aborts the launch or generation in flight and drops queued operations; a cancelled launch leaves no shard.
    void cancel();
    // Stops the shards, freeing the workers' memory (their slice caches stay, so a relaunch is quick).
    void unload();
    // Blocks until every queued operation has finished (for the CLI and tests).
    void wait();

    // Read from any thread.
    bool launched();
    std::vector<StepRecord> records();
    std::vector<LinkSummary> linkSummary();
    SessionMetrics::Totals totals();
    std::string chromeTrace(size_t lastSteps = 0); // 0: every step of the session
    // Waits (briefly) for the step records of what already ran to arrive from the ranks.
    void syncRecords();
    std::vector<Cluster::ShardMemory> shardMemory();
    std::vector<std::string> weightSources();
    Plan plan();

private:
    void post(std::function<void()> op);
    void loop();
    void emit(ControllerEvent e);
    void doLaunch(const LaunchRequest& request);
    void doGenerate(const GenerateRequest& request);
    // After `failed` failed with `why`: the model placed again over the workers still alive (when failover is on,
    // the user did not stop it and a worker was to blame), or null with why not in `failure`.
    std::shared_ptr<Cluster> failOver(Cluster& failed, const std::string& why, std::string& failure);
    std::unique_ptr<Cluster> newCluster();

    std::shared_ptr<const Credentials> m_credentials;
    std::shared_ptr<const Tokenizer> m_tokenizer;
    Listener m_listener;
    LaunchRequest m_launch;

    std::mutex m_mutex; // guards the queue, m_cluster (the pointer) and the flags
    std::condition_variable m_cv;
    std::deque<std::function<void()>> m_queue;
    bool m_busy = false;
    bool m_quit = false;
    bool m_stop = false;
    uint64_t m_cancelEpoch = 0;
    std::shared_ptr<Cluster> m_cluster;
    SessionMetrics m_metrics; // the session's records, across relaunches
    std::vector<int> m_held;  // tokens whose keys and values the shards hold
    std::thread m_thread;
};

} // namespace together
