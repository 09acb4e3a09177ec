// SPDX-License-Identifier: MIT
// Cluster: its lifetime, progress, faults and getters. The launch is in cluster_launch.cpp, a generation through
// the ring in cluster_ring.cpp, the watch over daemons and ranks in cluster_watch.cpp, the step records in
// cluster_records.cpp; the private parts they share in cluster_parts.h.
#include "master/cluster.h"

#include "base/error.h"
#include "master/cluster_parts.h"
#include "model/run_dtype.h"
#include "model/shard_spec.h"

#include <cmath>
#include <cstdio>
#include <future>

namespace together {

using namespace cluster_parts;

namespace cluster_parts {

void parallelFor(size_t n, const std::function<void(size_t)>& f)
{
    std::vector<std::future<void>> fs;
    for (size_t i = 0; i < n; ++i)
        fs.push_back(std::async(std::launch::async, f, i));
    std::string first;
    for (auto& x : fs) {
        try {
            x.get();
        } catch (const std::exception& e) {
            if (first.empty())
                first = e.what();
        }
    }
    if (!first.empty())
        throw Error(first);
}

std::string mib(uint64_t bytes)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", static_cast<double>(bytes) / (1 << 20));
    return b;
}

} // namespace cluster_parts

const char* phaseName(RankProgress::Phase p)
{
    switch (p) {
    case RankProgress::Phase::Connecting:
        return "connecting";
    case RankProgress::Phase::Transferring:
        return "transferring";
    case RankProgress::Phase::Loading:
        return "loading";
    case RankProgress::Phase::Ready:
        return "ready";
    case RankProgress::Phase::FromCache:
        return "from cache";
    }
    return "?";
}

std::string describeProgress(const RankProgress& p)
{
    std::string s = "stage " + std::to_string(p.stage) + " rank " + std::to_string(p.rank) + " on " + p.worker + ": " + phaseName(p.phase);
    if (p.phase == RankProgress::Phase::Transferring && p.bytesDone == 0)
        s += " " + mib(p.bytesTotal) + " MiB";
    else if (p.phase == RankProgress::Phase::Transferring) {
        s += " " + mib(p.bytesDone) + " of " + mib(p.bytesTotal) + " MiB (" + mib(static_cast<uint64_t>(p.bytesPerSecond)) + " MiB/s";
        if (p.bytesPerSecond > 0 && p.bytesTotal > p.bytesDone)
            s += ", " + std::to_string(static_cast<long long>(std::ceil(static_cast<double>(p.bytesTotal - p.bytesDone) / p.bytesPerSecond))) +
                 " s left";
        s += ")";
    } else if (p.phase == RankProgress::Phase::Loading && p.layersTotal)
        s += " (" + std::to_string(p.layersDone) + " of " + std::to_string(p.layersTotal) + " layers done)";
    else if (p.phase == RankProgress::Phase::FromCache)
        s += " (the worker kept this slice: no transfer)";
    return s;
}

Cluster::Cluster(std::shared_ptr<const Credentials> credentials, Callbacks callbacks)
    : m_credentials(std::move(credentials))
    , m_cb(std::move(callbacks))
{
    if (!m_cb.log)
        m_cb.log = [](const std::string&) {};
}

Cluster::~Cluster() { stop(); }

void Cluster::report(Rank& r)
{
    RankProgress p;
    {
        std::lock_guard lock(m_mutex);
        p = r.progress;
    }
    if (m_cb.progress)
        m_cb.progress(p);
}

void Cluster::cancel(const std::string& why) { setFatal(why, ""); }

void Cluster::requestStop()
{
    std::lock_guard lock(m_mutex);
    if (m_stopNow)
        m_stopNow();
}

void Cluster::setFatal(const std::string& message, const std::string& worker)
{
    std::lock_guard lock(m_mutex);
    if (!m_fatal.empty())
        return;
    m_fatal = message;
    m_failedWorker = worker;
    for (void* c : m_inflight)
        static_cast<grpc::ClientContext*>(c)->TryCancel();
}

std::string Cluster::fatal()
{
    std::lock_guard lock(m_mutex);
    return m_fatal;
}

std::string Cluster::failedWorker()
{
    std::lock_guard lock(m_mutex);
    return m_failedWorker;
}

std::map<std::string, ClockOffset> Cluster::clockOffsets()
{
    std::lock_guard lock(m_mutex);
    return m_offsets;
}

std::vector<Cluster::ShardMemory> Cluster::shardMemory()
{
    std::vector<ShardMemory> out;
    std::lock_guard lock(m_mutex);
    for (size_t i = 0; i < m_ranks.size(); ++i) {
        ShardMemory m;
        m.name = m_ranks[i]->name();
        m.peakRssBytes = m_ranks[i]->peakRss;
        m.sliceBytes = shardBytes(m_config, m_plan.shardSpec(m_ranks[i]->stage, m_ranks[i]->rank), parseRunDtype(m_dtype.empty() ? "bf16" : m_dtype));
        out.push_back(m);
    }
    return out;
}

std::vector<std::string> Cluster::weightSources()
{
    std::vector<std::string> out;
    std::lock_guard lock(m_mutex);
    for (auto& r : m_ranks)
        out.push_back(r->source);
    return out;
}

void Cluster::stop()
{
    m_stopThreads = true;
    if (m_heartbeat.joinable())
        m_heartbeat.join();
    for (auto& t : m_status)
        if (t.joinable())
            t.join();
    m_status.clear();
    m_launched = false;
    if (m_launchId.empty())
        return;
    parallelFor(m_workers.size(), [&](size_t i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(5)));
        v1::StopShardsRequest req;
        req.set_launch_id(m_launchId);
        v1::StopShardsReply rep;
        m_workers[i]->stub->StopShards(&ctx, req, &rep); // best effort: a dead daemon's shards died with it
    });
    m_launchId.clear();
}

} // namespace together
