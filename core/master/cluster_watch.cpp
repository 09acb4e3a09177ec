// SPDX-License-Identifier: MIT
// The watch over a launch: every daemon's Health (exits, and the launch's lease) and every rank's Status (liveness,
// progress, errors, step records) every half second, on threads of their own. A fault becomes the launch's fatal
// error, naming the worker and what it was doing, and cancels every call in flight.
#include "master/cluster.h"

#include "base/error.h"
#include "master/cluster_parts.h"
#include "wire/checks.h"

#include <thread>

namespace together {

using namespace cluster_parts;

void Cluster::heartbeatLoop()
{
    while (!m_stopThreads) {
        for (auto& w : m_workers) {
            healthOnce(*w);
            if (m_stopThreads)
                break;
        }
        for (int i = 0; i < 5 && !m_stopThreads; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

// One Health to the daemon: it renews the launch's lease, and says which of its shards exited and why.
void Cluster::healthOnce(Worker& w)
{
    grpc::ClientContext ctx;
    ctx.set_deadline(in(std::chrono::milliseconds(1500)));
    v1::HealthRequest req;
    req.set_launch_id(m_launchId);
    v1::HealthReply rep;
    grpc::Status s = w.stub->Health(&ctx, req, &rep);
    if (m_stopThreads)
        return;
    if (!s.ok()) {
        if (++w.failures >= 2)
            setFatal("worker " + w.address + " is not responding (" + s.error_message() + "): it died or its machine is unreachable", w.address);
        return;
    }
    w.failures = 0;
    if (!rep.ended().empty())
        setFatal("worker " + w.address + " stopped this launch: " + rep.ended(), w.address);
    for (auto& sh : rep.shards()) {
        if (sh.shard_index() < m_ranks.size()) {
            std::lock_guard lock(m_mutex);
            auto& r = *m_ranks[sh.shard_index()];
            r.peakRss = std::max(r.peakRss, sh.peak_rss_bytes());
        }
        if (!sh.running()) {
            std::string who = "worker " + w.address;
            if (sh.shard_index() < m_ranks.size())
                who = "worker " + m_ranks[sh.shard_index()]->name();
            setFatal(who + ": shard process " + sh.exit_reason(), w.address);
        }
    }
}

void Cluster::statusLoop(size_t index)
{
    Rank& r = *m_ranks[index];
    {
        std::lock_guard lock(m_mutex);
        r.lastAnswer = Clock::now();
    }
    while (!m_stopThreads) {
        pollOnce(r);
        for (int i = 0; i < 5 && !m_stopThreads; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

void Cluster::pollOnce(Rank& r)
{
    std::lock_guard pollLock(r.pollMutex);
    grpc::ClientContext ctx;
    ctx.set_deadline(in(std::chrono::milliseconds(1000)));
    v1::StatusRequest req;
    {
        std::lock_guard lock(m_mutex);
        req.set_records_after(r.recordsAfter);
    }
    v1::StatusReply rep;
    const int64_t sentUs = wallMicros();
    grpc::Status s = r.stub->Status(&ctx, req, &rep);
    const int64_t recvUs = wallMicros();
    if (m_stopThreads)
        return;
    if (!s.ok()) {
        onSilence(r, s.error_message());
        return;
    }
    if (std::string bad = wire::check(rep); !bad.empty()) {
        setFatal("worker " + r.name() + " sent a malformed status: " + bad, r.worker->address);
        return;
    }
    onStatus(r, rep, sentUs, recvUs);
}

// What a rank answered: its activity and memory, a clock sample, its loading progress, its step records, and
// an error it hit.
void Cluster::onStatus(Rank& r, const v1::StatusReply& rep, int64_t sentUs, int64_t recvUs)
{
    std::vector<Incoming> records;
    bool loading = false;
    {
        std::lock_guard lock(m_mutex);
        r.lastAnswer = Clock::now();
        r.activity = rep.activity();
        r.peakRss = std::max(r.peakRss, rep.peak_rss_bytes());
        m_offsets[r.worker->address].addSample(sentUs, rep.unix_us(), recvUs);
        if (r.progress.phase == RankProgress::Phase::Loading && rep.layers_total() > 0 && rep.layers_loaded() != r.progress.layersDone) {
            r.progress.layersDone = std::min(rep.layers_loaded(), rep.layers_total());
            r.progress.layersTotal = rep.layers_total();
            loading = true;
        }
        for (auto& x : rep.records()) {
            r.recordsAfter = std::max(r.recordsAfter, x.sequence());
            Incoming in;
            in.key = {x.generation(), x.step()};
            in.record = fromProto(x);
            in.record.stage = static_cast<int>(r.stage);
            in.record.rank = r.rank;
            in.record.worker = r.worker->address;
            in.endToEndUs = x.end_to_end_us();
            in.token = x.token();
            in.inputTokens = static_cast<int>(x.input_tokens());
            records.push_back(std::move(in));
        }
    }
    if (loading)
        report(r);
    checkMoving();
    // End-to-end time and the token come with the last stage's rank 0 record.
    if (!records.empty())
        addRecords(std::move(records));
    if (!rep.error().empty()) {
        // A rank that lost a peer (a broken link, a failed all-reduce) is usually not the culprit: give the
        // other watchers a moment to name the process that died or stalled.
        bool now = !rep.peer_failed();
        {
            std::lock_guard lock(m_mutex);
            if (r.peerErrorSince == Clock::time_point())
                r.peerErrorSince = Clock::now();
            now = now || Clock::now() - r.peerErrorSince > std::chrono::milliseconds(kStallMs + 1000);
        }
        if (now)
            setFatal("worker " + r.name() + " failed: " + rep.error(), rep.peer_failed() ? "" : r.worker->address);
    }
}

// No answer: a rank silent for kStallMs is stalled (SIGSTOPped, swapping, a hung machine).
void Cluster::onSilence(Rank& r, const std::string& rpcError)
{
    std::string activity;
    Clock::duration silent;
    {
        std::lock_guard lock(m_mutex);
        activity = r.activity;
        silent = Clock::now() - r.lastAnswer;
    }
    if (silent > std::chrono::milliseconds(kStallMs))
        setFatal("worker " + r.name() + " stopped responding while " + (activity.empty() ? std::string("idle") : activity) + " (no answer for " +
                     std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count() / 1000.0).substr(0, 3) +
                     " s: the process is stalled, or its machine is overloaded or unreachable; " + rpcError + ")",
                 r.worker->address);
}

void Cluster::checkMoving()
{
    std::string activities;
    {
        std::lock_guard lock(m_mutex);
        if (!m_generating)
            return;
        for (auto& x : m_ranks) {
            if (x->activity.rfind("computing", 0) == 0 || x->activity.rfind("sending", 0) == 0)
                m_lastProgress = Clock::now();
            activities += (activities.empty() ? "" : "; ") + x->name() + ": " + x->activity;
        }
        if (Clock::now() - m_lastProgress < std::chrono::milliseconds(kStuckMs))
            return;
    }
    setFatal("the ring stopped moving: no token for " + std::to_string(kStuckMs / 1000) + " s while no rank computes (" + activities + ")", "");
}

void Cluster::fail(const std::string& rpcError)
{
    // A broken link usually means a dead process: give the watchers a moment to name it.
    for (int i = 0; i < 40 && fatal().empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string f = fatal();
    throw Error(f.empty() ? rpcError : f);
}

} // namespace together
