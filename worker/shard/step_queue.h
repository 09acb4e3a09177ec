// SPDX-License-Identifier: MIT
#pragma once

#include "proto/together.grpc.pb.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace together {

// One step's input, from the master (stage 0's prompt), the previous stage (a hidden state) or the last
// stage (the sampled token, to stage 0).
struct Work {
    uint64_t generation = 0;
    uint64_t step = 0;
    int64_t startPos = 0;
    bool sample = true;
    std::optional<v1::GenerationHeader> header;
    std::vector<int64_t> tokens;
    std::string hidden;
    uint32_t rows = 0;
    uint64_t queuedBytes = 0; // what it counts against the queue's limit (pipes only)
};

// The steps this rank is to compute, in arrival order: Start and the pipes only check and queue, the ring's
// runner thread takes them one at a time.
//
// m_mutex guards the queue, the bytes it holds, the shutdown flag and the last generation Start began; m_cv
// wakes the runner (a step, or shutdown) and the pipes waiting for room (a step taken, or shutdown). The
// runner's idle callback runs with m_mutex held and takes the status's state mutex (queue, then state); the
// token stream takes m_mutex, through shuttingDown(), while it holds its own (tokens, then queue).
class StepQueue {
public:
    // Start's prompt, in chunks: false (and nothing queued) when `generation` is not newer than the last one
    // started.
    bool startGeneration(uint64_t generation, std::vector<Work> items);
    // A pipe's message. Backpressure: while the queue is full (in steps or bytes) this waits, the pipe stops
    // reading, and gRPC's flow control holds the sender; a peer cannot make this rank hold more than the limit.
    // False at shutdown (nothing queued).
    bool pushFromPipe(Work w);
    // The last stage's rank 0 feeding its own token back (a one-stage ring): queued by the runner itself, which
    // takes it next, so nobody is woken.
    void pushOwn(Work w);
    // The runner: waits for the next step; `idle` runs (with m_mutex held) when there is none yet. False at
    // shutdown.
    bool pop(Work& w, const std::function<void()>& idle);

    void shutdown();
    bool shuttingDown();

private:
    static constexpr size_t kMaxQueuedSteps = 1024;
    static constexpr uint64_t kMaxQueuedBytes = 256u << 20;

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<Work> m_queue;
    uint64_t m_queuedBytes = 0;
    bool m_shutdown = false;
    uint64_t m_lastStarted = 0;
};

} // namespace together
