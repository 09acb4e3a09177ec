// SPDX-License-Identifier: MIT
#pragma once

#include "net/credentials.h"
#include "proto/together.grpc.pb.h"
#include "shard/step_queue.h"
#include "shard/token_stream.h"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace together {

class GlooCommunicator;
class OutPipe;
class Sampler;
class ShardStatus;
class ShardWeights;

// This rank's place in the ring: its tensor-parallel group and its links (Connect), and the runner thread that
// computes the queued steps one at a time, in arrival order. A step is computed on the model, then forwarded to
// the next stage's ranks, or, on the last stage's rank 0, sampled, reported on the token stream and fed back to
// stage 0 (at most `window` tokens ahead of the master's acknowledgements).
//
//  - The queue (StepQueue) and the token stream (TokenStream) have their own mutexes; the OutPipes theirs.
//  - connect() and startRunner() run under the service's launch mutex, and set the group and the links before
//    connected() turns true (an atomic); from then on those, and everything the runner keeps (the generation,
//    step and token counts, the header, the sampler), belong to the runner thread alone, without a lock.
class ShardRing {
public:
    ShardRing(const Credentials& credentials, ShardWeights& weights, ShardStatus& status);
    ~ShardRing(); // shutdown()

    // Connect: joins the tensor-parallel group and opens the links to the next stage (or, from the last stage,
    // back to stage 0). Throws on failure (the shard stays unconnected).
    void connect(const v1::ConnectRequest& request);
    // After connect: the ring is connected and its runner starts.
    void startRunner();
    bool connected() const { return m_connected; }

    // Start: the prompt, in chunks of at most prefillChunkRows rows; only the last one samples. False when its
    // generation is not newer than the last one started (nothing is queued).
    bool start(const v1::StartRequest& request);
    // A pipe's step (waits while the queue is full); false at shutdown.
    bool receive(Work work) { return m_queue.pushFromPipe(std::move(work)); }
    // Observe: serves the master's token stream; true when a newer stream took over.
    bool observe(grpc::ServerContext& ctx, grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>& stream)
    {
        return m_tokens.serve(ctx, stream);
    }

    // Wakes every waiter, joins the runner and closes the links.
    void shutdown();

private:
    void run();
    void failRank(const Work& w, const std::string& message, bool peerFailed);
    void process(Work& w);
    bool beginStep(const Work& w);
    at::Tensor compute(const Work& w, int64_t& rows, v1::RankRecord& rec);
    void forward(const Work& w, const at::Tensor& out, v1::RankRecord& rec);
    void sample(const Work& w, const at::Tensor& out, int64_t rows, v1::RankRecord& rec);
    void feedBack(const Work& w, int token, int64_t nextPos, v1::RankRecord& rec);

    const Credentials& m_credentials;
    ShardWeights& m_weights;
    ShardStatus& m_status;
    StepQueue m_queue;
    TokenStream m_tokens{m_queue};
    std::unique_ptr<GlooCommunicator> m_comm;
    std::vector<std::unique_ptr<OutPipe>> m_next;
    std::vector<std::unique_ptr<OutPipe>> m_tokenPipes;
    bool m_feedSelf = false;
    std::atomic<bool> m_connected{false};

    // The runner's state (its thread only).
    std::unique_ptr<Sampler> m_sampler;
    uint64_t m_generation = 0;
    uint64_t m_nextStep = 0;
    uint64_t m_produced = 0;
    int64_t m_promptStart = 0;
    v1::GenerationHeader m_header;
    std::chrono::steady_clock::time_point m_lastSample;
    std::thread m_runner;
};

} // namespace together
