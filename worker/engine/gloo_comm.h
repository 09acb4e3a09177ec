// SPDX-License-Identifier: MIT
#pragma once

#include "engine/llama_model.h"
#include "net/credentials.h"

#include <chrono>
#include <memory>
#include <vector>
#include <string>

namespace gloo {
class Context;
}

namespace together {

// Tensor-parallel all-reduce over gloo's TCP transport. Rendezvous goes through the KvStore service of the
// stage's rank 0 (gRPC over mutual TLS), under a per-launch key prefix, so a relaunch never reads stale
// addresses. gloo's own traffic is not authenticated: it binds to the plan's interface (docs/SECURITY.md).
// Every call carries an increasing tag; all ranks call in the same order (two per layer).
class GlooCommunicator : public Communicator {
public:
    // `busyPoll`: wait for peers by spinning on the socket in the calling thread instead of handing off to
    // gloo's event-loop thread. On loopback that took an all-reduce of one token's hidden state from
    // ~250 us to ~36 us; it costs a core while waiting, so the master asks for it only when the machine has
    // a core for every compute thread it hosts.
    GlooCommunicator(const Credentials& credentials, const std::string& storeAddress, const std::string& prefix, const std::string& bindHost,
                     int rank, int size, std::chrono::milliseconds timeout, bool busyPoll);
    ~GlooCommunicator() override;
    void allReduceSum(float* data, size_t count) override;
    // Returns once every rank has called it (through the rendezvous store), so no rank closes its sockets while
    // another still reads its last all-reduce: a rank that has its result can be done before its peer has read
    // the last bytes, and a close then can reset the connection under the peer ("connection closed by peer").
    void finish(std::chrono::milliseconds timeout);

    // Time spent inside all-reduces since the last reset, and how many there were.
    double takeSeconds(uint32_t* calls);
    // Everything since the last take: time, calls, bytes each rank contributed, and each call's wall-clock span (µs).
    struct Usage {
        double seconds = 0;
        uint32_t calls = 0;
        uint64_t bytes = 0;
        std::vector<std::pair<int64_t, int64_t>> spans;
    };
    Usage take();

private:
    struct Cached;
    Cached& algorithmFor(size_t count);
    std::shared_ptr<gloo::Context> m_context;
    Credentials m_credentials;
    std::string m_storeAddress, m_prefix;
    int m_rank = 0, m_size = 1;
    std::vector<std::unique_ptr<Cached>> m_cache; // one halving-doubling instance per buffer size, most recent last
    uint32_t m_tag = 0;
    double m_seconds = 0;
    uint32_t m_calls = 0;
    uint64_t m_bytes = 0;
    std::vector<std::pair<int64_t, int64_t>> m_spans;
};

} // namespace together
