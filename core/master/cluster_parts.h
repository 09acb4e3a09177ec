// SPDX-License-Identifier: MIT
#pragma once

// The private parts of Cluster that its files share (cluster.cpp, cluster_launch.cpp, cluster_ring.cpp,
// cluster_watch.cpp, cluster_records.cpp): the workers and ranks of a launch, the tracked call, and small helpers.
// Not for use outside those files.

#include "master/cluster.h"
#include "proto/together.grpc.pb.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace together {

namespace cluster_parts {

using Clock = std::chrono::steady_clock;

inline std::chrono::system_clock::time_point in(std::chrono::milliseconds d) { return std::chrono::system_clock::now() + d; }

inline int64_t wallMicros()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline std::string hostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

// Runs f(i) for i in [0, n) on threads and rethrows the first error.
void parallelFor(size_t n, const std::function<void(size_t)>& f);

// "12.3" (MiB, one decimal)
std::string mib(uint64_t bytes);

// A rank's step record as it sent it (cluster_records.cpp).
RankStepRecord fromProto(const v1::RankRecord& r);

} // namespace cluster_parts

// A call's context, registered so that a fatal error cancels it wherever it is (launching, streaming
// weights, joining a group, or generating).
class Cluster::TrackedCall {
public:
    explicit TrackedCall(Cluster& c, std::chrono::milliseconds timeout = std::chrono::milliseconds(0))
        : m_cluster(c)
    {
        if (timeout.count() > 0)
            ctx.set_deadline(cluster_parts::in(timeout));
        std::lock_guard lock(c.m_mutex);
        c.m_inflight.push_back(&ctx);
        if (!c.m_fatal.empty())
            ctx.TryCancel();
    }
    ~TrackedCall()
    {
        std::lock_guard lock(m_cluster.m_mutex);
        auto& v = m_cluster.m_inflight;
        v.erase(std::remove(v.begin(), v.end(), static_cast<void*>(&ctx)), v.end());
    }
    grpc::ClientContext ctx;

private:
    Cluster& m_cluster;
};

struct Cluster::Worker {
    std::string address;
    std::unique_ptr<v1::WorkerControl::Stub> stub;
    int failures = 0;
    uint32_t cores = 1;
    std::string hostname;
    uint64_t freeMemoryBytes = 0, maxMemoryBytes = 0;
};

struct Cluster::Rank {
    size_t stage = 0;
    int rank = 0;
    size_t index = 0; // in m_ranks
    Worker* worker = nullptr;
    std::string address; // the shard's
    std::unique_ptr<v1::Shard::Stub> stub;
    std::string name() const { return worker->address + " (stage " + std::to_string(stage) + " rank " + std::to_string(rank) + ")"; }
    // Guarded by Cluster::m_mutex.
    RankProgress progress;
    std::string activity = "starting";
    std::string source;
    uint64_t peakRss = 0;
    uint64_t recordsAfter = 0;
    cluster_parts::Clock::time_point lastAnswer = cluster_parts::Clock::now();
    std::mutex pollMutex;
    cluster_parts::Clock::time_point peerErrorSince;
};

} // namespace together
