// SPDX-License-Identifier: MIT
#include "core/cluster.h"

#include "core/error.h"
#include "core/protocol.h"
#include "core/rpc.h"
#include "core/safetensors.h"
#include "core/shard_spec.h"
#include "proto/together.grpc.pb.h"

#include <openssl/sha.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <random>

namespace together {

namespace {

std::chrono::system_clock::time_point in(std::chrono::milliseconds d) { return std::chrono::system_clock::now() + d; }

std::string hostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

std::string randomHex(size_t bytes)
{
    std::random_device rd;
    std::string s;
    static const char* d = "0123456789abcdef";
    for (size_t i = 0; i < bytes; ++i) {
        unsigned v = rd() & 0xff;
        s += d[v >> 4];
        s += d[v & 15];
    }
    return s;
}

std::string sha256Of(const TensorView& v)
{
    unsigned char hash[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(v.data), v.nbytes, hash);
    return std::string(reinterpret_cast<const char*>(hash), sizeof hash);
}

// Runs f(i) for i in [0, n) on threads and rethrows the first error.
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

} // namespace

// A call's context, registered so that a fatal error from the heartbeat cancels it wherever it is
// (launching, streaming weights, joining a group, or stepping).
class Cluster::TrackedCall {
public:
    explicit TrackedCall(Cluster& c, std::chrono::milliseconds timeout = std::chrono::milliseconds(0))
        : m_cluster(c)
    {
        if (timeout.count() > 0)
            ctx.set_deadline(in(timeout));
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
};

struct Cluster::Rank {
    size_t stage = 0;
    int rank = 0;
    size_t index = 0; // in m_ranks
    Worker* worker = nullptr;
    std::string address; // the shard's
    std::unique_ptr<v1::Shard::Stub> stub;
    std::string name() const { return worker->address + " (stage " + std::to_string(stage) + " rank " + std::to_string(rank) + ")"; }
};

Cluster::Cluster(std::shared_ptr<const Credentials> credentials, Log log)
    : m_credentials(std::move(credentials))
    , m_log(std::move(log))
{
}

Cluster::~Cluster() { stop(); }

void Cluster::launch(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit)
{
    m_config = ModelConfig::fromDirectory(modelDir);
    plan.validate(m_config);
    m_plan = plan;
    m_contextLimit = contextLimit > 0 ? std::min(contextLimit, m_config.contextLimit()) : m_config.contextLimit();
    SafeTensors tensors = SafeTensors::open(modelDir);
    m_config.validate(tensors);
    SafeTensorsWeights weights(tensors);
    m_launchId = randomHex(8);
    m_dtype = dtype;

    // Daemons: hello (version and key check) before anything else.
    for (auto& st : plan.stages)
        for (auto& r : st.ranks) {
            bool known = false;
            for (auto& w : m_workers)
                known = known || w->address == r.worker;
            if (!known) {
                auto w = std::make_unique<Worker>();
                w->address = r.worker;
                w->stub = v1::WorkerControl::NewStub(openChannel(*m_credentials, r.worker));
                m_workers.push_back(std::move(w));
            }
        }
    parallelFor(m_workers.size(), [&](size_t i) {
        Worker& w = *m_workers[i];
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(10)));
        v1::HelloRequest req;
        req.set_protocol_version(kProtocolVersion);
        v1::HelloReply rep;
        grpc::Status s = w.stub->Hello(&ctx, req, &rep);
        if (!s.ok())
            throw Error("worker " + describeRpcError(s, w.address));
        w.cores = std::max<uint32_t>(1, rep.cores());
        m_log("worker " + w.address + ": " + rep.hostname() + ", " + std::to_string(rep.cores()) + " cores, " +
              std::to_string(rep.free_memory_bytes() >> 20) + " MiB free");
    });

    // One shard per rank.
    for (size_t si = 0; si < plan.stages.size(); ++si)
        for (size_t ri = 0; ri < plan.stages[si].ranks.size(); ++ri) {
            auto r = std::make_unique<Rank>();
            r->stage = si;
            r->rank = static_cast<int>(ri);
            r->index = m_ranks.size();
            for (auto& w : m_workers)
                if (w->address == plan.stages[si].ranks[ri].worker)
                    r->worker = w.get();
            m_ranks.push_back(std::move(r));
        }
    m_heartbeat = std::thread([this] { heartbeatLoop(); });
    parallelFor(m_ranks.size(), [&](size_t i) {
        Rank& r = *m_ranks[i];
        TrackedCall call(*this, std::chrono::seconds(90));
        v1::LaunchShardRequest req;
        req.set_launch_id(m_launchId);
        req.set_shard_index(static_cast<uint32_t>(i));
        req.set_bind_host(hostOf(r.worker->address));
        req.set_threads(static_cast<uint32_t>(plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].threads));
        req.set_memory_bytes(static_cast<uint64_t>(
            estimateShardMemory(m_config, plan.shardSpec(r.stage, r.rank), dtype == "bf16" ? DType::BF16 : DType::F32, m_contextLimit).total()));
        req.set_lease_ms(kLeaseMs);
        v1::LaunchShardReply rep;
        grpc::Status s = r.worker->stub->LaunchShard(&call.ctx, req, &rep);
        if (!s.ok())
            fail("worker " + r.name() + ": " + s.error_message());
        r.address = rep.address();
        r.stub = v1::Shard::NewStub(openChannel(*m_credentials, r.address));
    });

    // Configure and stream each rank exactly its slice, checked by size and SHA-256 on arrival.
    const std::string configJson = readTextFile(modelDir + "/config.json");
    parallelFor(m_ranks.size(), [&](size_t i) {
        Rank& r = *m_ranks[i];
        ShardSpec spec = plan.shardSpec(r.stage, r.rank);
        {
            TrackedCall call(*this, std::chrono::seconds(30));
            v1::ShardConfig req;
            req.set_launch_id(m_launchId);
            req.set_config_json(configJson);
            req.set_first_layer(spec.firstLayer);
            req.set_last_layer(spec.lastLayer);
            req.set_tp_rank(static_cast<uint32_t>(spec.tpRank));
            req.set_tp_size(static_cast<uint32_t>(spec.tpSize));
            req.set_stage(static_cast<uint32_t>(r.stage));
            req.set_num_stages(static_cast<uint32_t>(plan.stages.size()));
            req.set_dtype(dtype);
            req.set_threads(static_cast<uint32_t>(plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].threads));
            req.set_context_limit(m_contextLimit);
            v1::ConfigureReply rep;
            grpc::Status s = r.stub->Configure(&call.ctx, req, &rep);
            if (!s.ok())
                fail("shard " + r.name() + ": " + s.error_message());
        }
        const std::string& localDir = plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].modelDir;
        uint64_t sent = 0;
        if (!localDir.empty()) {
            // The worker has its own copy: send only the hashes its slice must match.
            TrackedCall call(*this);
            v1::LoadLocalRequest req;
            req.set_model_dir(localDir);
            for (auto& slice : shardTensors(m_config, spec)) {
                std::vector<std::byte> scratch;
                auto* h = req.add_hashes();
                h->set_name(slice.name);
                h->set_sha256(sha256Of(weights.get(slice, scratch)));
            }
            v1::LoadWeightsReply rep;
            grpc::Status s = r.stub->LoadLocalWeights(&call.ctx, req, &rep);
            if (!s.ok())
                fail("shard " + r.name() + ": " + s.error_message());
            m_log("shard " + r.name() + ": layers " + std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer) +
                  ", weights read from " + localDir + " on the worker");
            return;
        }
        TrackedCall call(*this);
        v1::LoadWeightsReply rep;
        auto writer = r.stub->LoadWeights(&call.ctx, &rep);
        for (auto& slice : shardTensors(m_config, spec)) {
            std::vector<std::byte> scratch;
            TensorView v = weights.get(slice, scratch);
            const std::string hash = sha256Of(v);
            size_t off = 0;
            do {
                v1::WeightChunk c;
                if (off == 0) {
                    c.set_name(slice.name);
                    for (auto d : v.shape)
                        c.add_shape(d);
                    c.set_total_bytes(v.nbytes);
                    c.set_dtype(dtypeName(v.dtype));
                }
                size_t n = std::min(kChunkBytes, v.nbytes - off);
                c.set_data(reinterpret_cast<const char*>(v.data) + off, n);
                off += n;
                if (off == v.nbytes) {
                    c.set_last(true);
                    c.set_sha256(hash);
                }
                if (!writer->Write(c))
                    break; // the shard ended the stream; Finish() says why
                sent += n;
            } while (off < v.nbytes);
        }
        writer->WritesDone();
        grpc::Status s = writer->Finish();
        if (!s.ok())
            fail("shard " + r.name() + ": " + s.error_message());
        m_log("shard " + r.name() + ": layers " + std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer) + ", " +
              std::to_string(sent >> 20) + " MiB of weights");
    });

    // Tensor-parallel groups (gloo rendezvous through the stage's rank 0) and pipeline links, all at once:
    // a group's ranks must join together.
    parallelFor(m_ranks.size(), [&](size_t i) {
        Rank& r = *m_ranks[i];
        TrackedCall call(*this, std::chrono::seconds(120));
        v1::ConnectRequest req;
        const Rank* rank0 = nullptr;
        for (auto& x : m_ranks)
            if (x->stage == r.stage && x->rank == 0)
                rank0 = x.get();
        req.set_store_address(rank0->address);
        req.set_gloo_host(hostOf(r.worker->address));
        req.set_collective_timeout_ms(600000); // long enough for a real prefill; liveness is the heartbeat's job
        // Busy-poll only where every compute thread of the machine has its own core: daemons on one host
        // (by address) share its cores.
        const std::string host = hostOf(r.worker->address);
        uint32_t cores = 0, threads = 0;
        for (auto& w : m_workers)
            if (hostOf(w->address) == host)
                cores = std::max(cores, w->cores);
        for (size_t si = 0; si < plan.stages.size(); ++si)
            for (auto& pr : plan.stages[si].ranks)
                if (hostOf(pr.worker) == host)
                    threads += static_cast<uint32_t>(pr.threads);
        req.set_busy_poll(threads <= cores);
        if (r.stage + 1 < plan.stages.size()) {
            const int here = static_cast<int>(plan.stages[r.stage].ranks.size());
            for (auto& x : m_ranks)
                if (x->stage == r.stage + 1 && x->rank % here == r.rank)
                    req.add_next_addresses(x->address);
        }
        v1::ConnectReply rep;
        grpc::Status s = r.stub->Connect(&call.ctx, req, &rep);
        if (!s.ok())
            fail("shard " + r.name() + ": " + s.error_message());
    });
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
}

StepOutput Cluster::step(const std::vector<int>& tokens, int64_t startPos, const SamplingParams& sampling, bool newSequence)
{
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    const size_t maxRows = std::max<size_t>(1, kChunkBytes / (static_cast<size_t>(m_config.hiddenSize) * 4));
    StepOutput out;
    size_t done = 0;
    while (done < tokens.size()) {
        const size_t n = std::min(maxRows, tokens.size() - done);
        const bool last = done + n == tokens.size();
        v1::StepRequest req;
        req.set_step(++m_step);
        req.set_start_pos(startPos + static_cast<int64_t>(done));
        for (size_t i = done; i < done + n; ++i)
            req.add_tokens(tokens[i]);
        req.mutable_sampling()->set_temperature(sampling.temperature);
        req.mutable_sampling()->set_top_k(sampling.topK);
        req.mutable_sampling()->set_top_p(sampling.topP);
        req.mutable_sampling()->set_seed(sampling.seed);
        req.set_new_sequence(newSequence && done == 0);
        req.set_sample(last);
        req.set_top_logits(10);
        // Every rank of stage 0 gets the input directly.
        std::vector<Rank*> first;
        for (auto& r : m_ranks)
            if (r->stage == 0)
                first.push_back(r.get());
        std::vector<std::unique_ptr<TrackedCall>> ctxs(first.size());
        for (auto& c : ctxs)
            c = std::make_unique<TrackedCall>(*this);
        std::vector<std::future<std::pair<grpc::Status, v1::StepReply>>> calls;
        for (size_t i = 0; i < first.size(); ++i)
            calls.push_back(std::async(std::launch::async, [&, i] {
                v1::StepReply rep;
                grpc::Status s = first[i]->stub->Step(&ctxs[i]->ctx, req, &rep);
                return std::make_pair(s, rep);
            }));
        std::string error;
        v1::StepReply withToken;
        bool got = false;
        std::vector<v1::StageTiming> timings;
        for (auto& c : calls) {
            auto [s, rep] = c.get();
            if (!s.ok() && error.empty())
                error = s.error_message();
            if (rep.has_token()) {
                withToken = rep;
                got = true;
            }
            timings.insert(timings.end(), rep.timings().begin(), rep.timings().end());
        }
        ctxs.clear();
        if (!error.empty())
            fail(error);
        done += n;
        if (last) {
            if (!got)
                throw Error("the last stage returned no token");
            out.token = withToken.token();
            for (int i = 0; i < withToken.top_ids_size() && i < withToken.top_logits_size(); ++i)
                out.top.emplace_back(withToken.top_ids(i), withToken.top_logits(i));
        }
        for (auto& t : timings) {
            ShardTiming x;
            x.stage = static_cast<int>(t.stage());
            x.rank = static_cast<int>(t.rank());
            x.computeMs = t.compute_us() / 1000.0;
            x.allReduceMs = t.allreduce_us() / 1000.0;
            x.allReduces = static_cast<int>(t.allreduces());
            x.downstreamMs = t.downstream_us() / 1000.0;
            out.timings.push_back(x);
        }
    }
    return out;
}

void Cluster::fail(const std::string& rpcError)
{
    // A broken link usually means a dead process: give the heartbeat a moment to name it.
    for (int i = 0; i < 30 && fatal().empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string f = fatal();
    throw Error(f.empty() ? rpcError : f);
}

void Cluster::setFatal(const std::string& message)
{
    std::lock_guard lock(m_mutex);
    if (!m_fatal.empty())
        return;
    m_fatal = message;
    for (void* c : m_inflight)
        static_cast<grpc::ClientContext*>(c)->TryCancel();
}

std::string Cluster::fatal()
{
    std::lock_guard lock(m_mutex);
    return m_fatal;
}

void Cluster::heartbeatLoop()
{
    while (!m_stopHeartbeat) {
        for (auto& w : m_workers) {
            grpc::ClientContext ctx;
            ctx.set_deadline(in(std::chrono::milliseconds(1500)));
            v1::HealthRequest req;
            req.set_launch_id(m_launchId);
            v1::HealthReply rep;
            grpc::Status s = w->stub->Health(&ctx, req, &rep);
            if (!s.ok()) {
                if (++w->failures >= 2)
                    setFatal("worker " + w->address + " is not responding (" + s.error_message() + "): it died or its machine is unreachable");
                continue;
            }
            w->failures = 0;
            if (!rep.ended().empty())
                setFatal("worker " + w->address + " stopped this launch: " + rep.ended());
            for (auto& sh : rep.shards()) {
                {
                    std::lock_guard lock(m_mutex);
                    if (sh.shard_index() < m_ranks.size()) {
                        m_peakRss.resize(m_ranks.size());
                        m_peakRss[sh.shard_index()] = std::max(m_peakRss[sh.shard_index()], sh.peak_rss_bytes());
                    }
                }
                if (!sh.running()) {
                    std::string who = "worker " + w->address;
                    if (sh.shard_index() < m_ranks.size())
                        who = "worker " + m_ranks[sh.shard_index()]->name();
                    setFatal(who + ": shard process " + sh.exit_reason());
                }
            }
        }
        for (int i = 0; i < 5 && !m_stopHeartbeat; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

std::vector<Cluster::ShardMemory> Cluster::shardMemory()
{
    std::vector<ShardMemory> out;
    std::lock_guard lock(m_mutex);
    for (size_t i = 0; i < m_ranks.size(); ++i) {
        ShardMemory m;
        m.name = m_ranks[i]->name();
        m.peakRssBytes = i < m_peakRss.size() ? m_peakRss[i] : 0;
        m.sliceBytes = shardBytes(m_config, m_plan.shardSpec(m_ranks[i]->stage, m_ranks[i]->rank),
                                  m_dtype == "bf16" ? DType::BF16 : DType::F32);
        out.push_back(m);
    }
    return out;
}

void Cluster::stop()
{
    m_stopHeartbeat = true;
    if (m_heartbeat.joinable())
        m_heartbeat.join();
    if (m_launchId.empty())
        return;
    for (auto& w : m_workers) {
        grpc::ClientContext ctx;
        ctx.set_deadline(in(std::chrono::seconds(5)));
        v1::StopShardsRequest req;
        req.set_launch_id(m_launchId);
        v1::StopShardsReply rep;
        w->stub->StopShards(&ctx, req, &rep); // best effort: a dead daemon's shards died with it
    }
    m_launchId.clear();
}

StepOutput ClusterStepper::step(const std::vector<int>& tokens, int64_t startPos)
{
    StepOutput o = m_cluster.step(tokens, startPos, m_sampling, m_new);
    m_new = false;
    return o;
}

} // namespace together
