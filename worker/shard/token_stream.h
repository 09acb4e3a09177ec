// SPDX-License-Identifier: MIT
#pragma once

#include "proto/together.grpc.pb.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

namespace together {

class StepQueue;

// The last stage's rank 0 and the master: the tokens it samples (and the end, or an error) go out on the
// Observe stream the master opened, and the master's acknowledgements and Stop come back on it. The ring runs
// at most `window` tokens ahead of the acknowledgements.
//
// m_mutex guards the events not yet written, which Observe stream is the current one, the last generation whose
// header reached the runner, the generation to stop and the last acknowledgement; m_cv wakes the stream's
// writer (an event, a newer stream, the reader's end, shutdown) and the runner waiting for the window (an
// acknowledgement, a Stop, shutdown). The queue's shuttingDown() is called with m_mutex held (tokens, then
// queue); no other lock is taken under it, and none is held while a stream is written.
class TokenStream {
public:
    explicit TokenStream(StepQueue& queue);

    // Serves one Observe stream until the master closes it, it breaks, the shard shuts down or a newer stream
    // takes over; true in that last case.
    bool serve(grpc::ServerContext& ctx, grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>& stream);

    // An event for the master (at most 100000 wait; more are dropped).
    void push(v1::ObserveEvent event);
    // The runner took the header of `generation`: a Stop or acknowledgement may now name the one after it.
    void seen(uint64_t generation);
    // Whether the master stopped `generation` (or a later one).
    bool stopped(uint64_t generation);
    // The runner, having produced `produced` tokens of `generation`: waits until the master has acknowledged
    // enough of them that it is fewer than `window` ahead, or stopped the generation, or the shard shuts down.
    // True when the generation was stopped.
    bool waitForWindow(uint64_t generation, uint64_t produced, uint64_t window);
    // Shutdown: every waiter looks again.
    void wake();

private:
    void readRequests(grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>& stream, std::atomic<bool>& readerDone);

    StepQueue& m_queue;
    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<v1::ObserveEvent> m_events;
    uint64_t m_observer = 0;       // the current stream's number; a newer stream ends the older one
    uint64_t m_seenGeneration = 0; // the last generation whose header reached the runner
    uint64_t m_stopGeneration = 0;
    uint64_t m_ackGeneration = 0;
    uint64_t m_acked = 0;
};

} // namespace together
