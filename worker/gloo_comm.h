// SPDX-License-Identifier: MIT
#pragma once

#include "core/auth.h"
#include "worker/llama_model.h"

#include <chrono>
#include <memory>
#include <string>

namespace gloo {
class Context;
}

namespace together {

// Tensor-parallel all-reduce over gloo's TCP transport. Rendezvous goes through the KvStore service of the
// stage's rank 0 (authenticated gRPC), under a per-launch key prefix, so a relaunch never reads stale
// addresses. gloo's own traffic is not authenticated: it binds to the plan's interface (docs/SECURITY.md).
// Every call carries an increasing tag; all ranks call in the same order (two per layer).
class GlooCommunicator : public Communicator {
public:
    GlooCommunicator(const ClusterKey& key, const std::string& storeAddress, const std::string& prefix, const std::string& bindHost,
                     int rank, int size, std::chrono::milliseconds timeout);
    ~GlooCommunicator() override;
    void allReduceSum(float* data, size_t count) override;

    // Time spent inside all-reduces since the last reset, and how many there were.
    double takeSeconds(uint32_t* calls);

private:
    std::shared_ptr<gloo::Context> m_context;
    uint32_t m_tag = 0;
    double m_seconds = 0;
    uint32_t m_calls = 0;
};

} // namespace together
