// SPDX-License-Identifier: MIT
#include "shard/shard_server.h"

#include "base/error.h"
#include "base/process.h"
#include "engine/kv_store.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "shard/shard_ring.h"
#include "shard/shard_status.h"
#include "shard/shard_weights.h"
#include "wire/checks.h"

#include <sys/resource.h>
#include <memory>
#include <mutex>

namespace together {

namespace {

grpc::Status fail(grpc::StatusCode code, const std::string& msg) { return grpc::Status(code, msg); }

// The Shard service of one rank: every call is checked (who sends it, in which state, what it carries) and handed
// to the part that holds its state: the weights (Configure, the loads), the ring (Connect, Start, Pipe, Observe)
// or the status (Status).
//
// m_mutex, the launch mutex, serialises the launch calls (Configure, LoadWeights, LoadCached, LoadLocalWeights,
// Connect): they build the weights and the ring's links, which the other calls then read without a lock once the
// atomics that say so (ShardWeights::loaded, ShardRing::connected) are set. Status, Start, Pipe and Observe never
// take it; the parts' own mutexes are described with them.
class ShardService final : public v1::Shard::Service {
public:
    ShardService(const Credentials& credentials, const ShardOptions& options)
        : m_owner(options.owner)
        , m_weights(options, m_status)
        , m_ring(credentials, m_weights, m_status)
    {
        // Our own certificate name is "shard <index> <launch tag>@<worker id>".
        const auto at = options.name.find('@');
        const auto sp = options.name.rfind(' ', at);
        if (options.name.rfind("shard ", 0) == 0 && at != std::string::npos && sp != std::string::npos && sp + 1 < at)
            m_launchTag = options.name.substr(sp + 1, at - sp - 1);
    }

    // ---- launch ----

    grpc::Status Configure(grpc::ServerContext* ctx, const v1::ShardConfig* req, v1::ConfigureReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "configure"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        return m_weights.configure(*req, rep);
    }

    grpc::Status LoadWeights(grpc::ServerContext* ctx, grpc::ServerReader<v1::WeightChunk>* reader, v1::LoadWeightsReply* rep) override
    {
        return load(*ctx, "loadweights", [&] { return m_weights.receive(*reader, rep); });
    }

    grpc::Status LoadCached(grpc::ServerContext* ctx, const v1::LoadCachedRequest* req, v1::LoadCachedReply* rep) override
    {
        return load(*ctx, "loadcached", [&] { return m_weights.loadCached(*req, rep); });
    }

    grpc::Status LoadLocalWeights(grpc::ServerContext* ctx, const v1::LoadLocalRequest* req, v1::LoadWeightsReply* rep) override
    {
        return load(*ctx, "loadlocalweights", [&] { return m_weights.loadLocal(*req, rep); });
    }

    grpc::Status Connect(grpc::ServerContext* ctx, const v1::ConnectRequest* req, v1::ConnectReply*) override
    {
        if (grpc::Status s = fromOwner(*ctx, "connect"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (!m_weights.hasModel())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "connect: weights are not loaded");
        if (m_ring.connected())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "connect: already connected");
        if (std::string bad = wire::check(*req); !bad.empty())
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "connect: " + bad);
        try {
            m_ring.connect(*req);
        } catch (const std::exception& e) {
            m_status.setActivity("failed to connect");
            return fail(grpc::StatusCode::UNAVAILABLE, std::string("connect: ") + e.what());
        }
        m_ring.startRunner();
        return grpc::Status::OK;
    }

    // ---- liveness ----

    grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "status"); !s.ok())
            return s;
        m_status.reportState(rep);
        rep->set_unix_us(wallMicros());
        rep->set_layers_loaded(m_weights.layersLoaded());
        rep->set_layers_total(m_weights.layersTotal());
        struct rusage ru {};
        ::getrusage(RUSAGE_SELF, &ru);
        rep->set_peak_rss_bytes(static_cast<uint64_t>(ru.ru_maxrss) * 1024);
        m_status.reportRecords(req->records_after(), rep);
        return grpc::Status::OK;
    }

    // ---- generation ----

    grpc::Status Start(grpc::ServerContext* ctx, const v1::StartRequest* req, v1::StartReply*) override
    {
        if (grpc::Status s = fromOwner(*ctx, "start"); !s.ok())
            return s;
        if (!m_ring.connected() || !m_weights.spec().firstStage)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "start: " + (m_weights.me().empty() ? std::string("this shard") : m_weights.me()) +
                                                                   (m_ring.connected() ? " is not a first-stage rank" : " is not connected"));
        if (std::string e = m_status.error(); !e.empty())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, e);
        if (std::string bad = wire::check(*req, m_weights.limits()); !bad.empty())
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "start: " + bad);
        if (!m_ring.start(*req))
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "start: generation " + std::to_string(req->header().generation()) + " is not new");
        return grpc::Status::OK;
    }

    grpc::Status Observe(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>* stream) override
    {
        if (grpc::Status s = fromOwner(*ctx, "observe"); !s.ok())
            return s;
        if (!m_ring.connected() || !(m_weights.spec().lastStage && m_weights.spec().tpRank == 0))
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "observe: only the last stage's rank 0 samples tokens");
        if (m_ring.observe(*ctx, *stream))
            return grpc::Status(grpc::StatusCode::ABORTED, m_weights.me() + ": another master connection took over this shard's token stream");
        return grpc::Status::OK;
    }

    grpc::Status Pipe(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::PipeAck, v1::PipeMessage>* stream) override
    {
        if (grpc::Status s = fromLaunchPeer(*ctx, "pipe"); !s.ok())
            return s;
        // The previous stage may open its pipe while this rank still joins its group: holding the weights is
        // enough to check and queue messages (the runner starts once connected).
        if (!m_weights.loaded())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "pipe: this shard holds no weights");
        const wire::ShardLimits shard = m_weights.limits();
        v1::PipeMessage m;
        while (stream->Read(&m)) {
            // Everything a peer sends is checked against this shard's limits before it is used.
            if (const std::string bad = wire::check(m, shard); !bad.empty()) {
                // The sender is at fault, not this rank: reported as a peer failure, so the master does not
                // blame (or fail over away from) the rank that refused it.
                m_status.setError(m_weights.me() + ": a malformed pipeline message from " + peerIdentity(*ctx) + ": " + bad, true);
                return fail(grpc::StatusCode::INVALID_ARGUMENT, m_weights.me() + ": " + bad);
            }
            Work w;
            w.generation = m.generation();
            w.step = m.step();
            w.startPos = m.start_pos();
            w.sample = m.sample();
            if (m.has_header())
                w.header = m.header();
            if (shard.firstStage) {
                w.tokens.assign(1, m.tokens(0));
            } else {
                w.rows = m.rows();
                w.hidden = std::move(*m.mutable_hidden());
            }
            v1::PipeAck ack;
            ack.set_generation(m.generation());
            ack.set_step(m.step());
            stream->Write(ack);
            // Waits while the queue is full: this pipe stops reading, and gRPC's flow control holds the sender.
            if (!m_ring.receive(std::move(w)))
                return grpc::Status::OK;
        }
        return grpc::Status::OK;
    }

    // Calls that steer this shard come from the master that launched it (the daemon names it); the ring's
    // pipes and the rendezvous store from shards of the same launch. Every key holder can mint any name, so
    // this keeps launches of honest masters apart (a second app, a stale master), not a malicious key holder.
    grpc::Status fromOwner(const grpc::ServerContext& ctx, const char* call) const
    {
        const std::string peer = peerIdentity(ctx);
        if (m_owner.empty() || peer == m_owner)
            return grpc::Status::OK;
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, std::string(call) + ": this shard belongs to a launch of " + m_owner + ", not of " +
                                                                      (peer.empty() ? std::string("an unnamed peer") : peer));
    }
    grpc::Status fromLaunchPeer(const grpc::ServerContext& ctx, const char* call) const
    {
        const std::string peer = peerIdentity(ctx);
        if (m_launchTag.empty() || peer == m_owner || (peer.rfind("shard ", 0) == 0 && peer.find(" " + m_launchTag + "@") != std::string::npos))
            return grpc::Status::OK;
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, std::string(call) + ": " + (peer.empty() ? std::string("an unnamed peer") : peer) +
                                                                      " is not a shard of this launch");
    }

private:
    // The three ways to get weights share their checks: the call comes from the owner, runs under the launch
    // mutex, on a shard that is configured and holds no weights yet.
    template <typename Load>
    grpc::Status load(const grpc::ServerContext& ctx, const char* call, Load&& loadWeights)
    {
        if (grpc::Status s = fromOwner(ctx, call); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (grpc::Status s = canLoad(); !s.ok())
            return s;
        return loadWeights();
    }

    grpc::Status canLoad()
    {
        if (!m_weights.configured())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: the shard is not configured");
        // Weights never change under a connected ring (a failed reload must not leave it without a model).
        if (m_ring.connected() || m_weights.hasModel())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: this shard already holds its weights");
        return grpc::Status::OK;
    }

    std::string m_owner;     // the launching master's certificate name ("" = anyone with the key: tests)
    std::string m_launchTag; // the launch id's prefix in every shard name of this launch
    std::mutex m_mutex;      // the launch calls: Configure, the loads, Connect
    // Declared in this order: the ring (its runner and links, which report to the status and use the weights) is
    // destroyed, and so shut down, first.
    ShardStatus m_status;
    ShardWeights m_weights;
    ShardRing m_ring;
};

} // namespace

int runShard(const ShardOptions& o)
{
    dieWithParent(o.parentPid);
    try {
        const Credentials credentials(ClusterKey::fromFile(o.keyFile), o.name.empty() ? std::string("shard") : o.name.substr(0, 64));
        ShardService service(credentials, o);
        // gloo rendezvous for this stage (used when this shard is rank 0), for shards of the same launch.
        KvStoreService store([&service](const grpc::ServerContext& ctx) { return service.fromLaunchPeer(ctx, "store"); });
        // The first free port of the range (several shards of one machine share it).
        auto [lo, hi] = parsePortRange(o.ports);
        std::unique_ptr<grpc::Server> server;
        int port = 0;
        for (uint32_t p = lo; p <= hi && !server; ++p) {
            grpc::ServerBuilder builder;
            builder.RegisterService(static_cast<v1::Shard::Service*>(&service));
            builder.RegisterService(&store);
            server = startServer(builder, credentials, o.host + ":" + std::to_string(p), &port);
        }
        if (!server)
            throw Error(lo == 0 ? "cannot listen on " + o.host
                                : "no free port in " + o.ports + " on " + o.host + " (every shard port of this worker is in use; widen serve --ports)");
        writeReport(o.reportFd, "listening " + o.host + ":" + std::to_string(port));
        server->Wait();
    } catch (const std::exception& e) {
        writeReport(o.reportFd, std::string("error: ") + e.what());
        std::fprintf(stderr, "together-worker shard: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

} // namespace together
