// SPDX-License-Identifier: MIT
#include "master/cluster.h"

#include "base/error.h"
#include "base/files.h"
#include "base/hex.h"
#include "base/user_dirs.h"
#include "master/cost_model.h"
#include "model/hash_cache.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "wire/checks.h"
#include "wire/protocol.h"

#include <openssl/sha.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <random>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::system_clock::time_point in(std::chrono::milliseconds d) { return std::chrono::system_clock::now() + d; }

int64_t wallMicros()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

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

std::string mib(uint64_t bytes)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", static_cast<double>(bytes) / (1 << 20));
    return b;
}

RankStepRecord fromProto(const v1::RankRecord& r)
{
    RankStepRecord x;
    x.startUs = r.start_us();
    x.computeMs = r.compute_us() / 1000.0;
    x.allReduces = static_cast<int>(r.allreduces());
    x.allReduceMs = r.allreduce_us() / 1000.0;
    x.allReduceBytes = r.allreduce_bytes();
    for (int i = 0; i + 1 < r.allreduce_spans_size(); i += 2)
        x.allReduceSpans.emplace_back(r.allreduce_spans(i), r.allreduce_spans(i + 1));
    x.samplingMs = r.sampling_us() / 1000.0;
    x.linkName = r.link();
    x.linkStartUs = r.link_start_us();
    x.linkMs = r.link_us() < 0 ? -1 : r.link_us() / 1000.0;
    x.linkBytes = r.link_bytes();
    return x;
}

} // namespace

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

// A call's context, registered so that a fatal error cancels it wherever it is (launching, streaming
// weights, joining a group, or generating).
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
    Clock::time_point lastAnswer = Clock::now();
    std::mutex pollMutex;
    Clock::time_point peerErrorSince;
};

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

void Cluster::launch(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit, bool beyondFreeMemory)
{
    m_beyondFreeMemory = beyondFreeMemory;
    if (!m_launchId.empty())
        throw Error("this cluster is already launched: stop it first");
    {
        std::lock_guard lock(m_mutex);
        m_fatal.clear();
        m_failedWorker.clear();
    }
    m_stopThreads = false;
    m_workers.clear();
    m_ranks.clear();
    m_config = ModelConfig::fromDirectory(modelDir);
    plan.validate(m_config);
    m_plan = plan;
    if (contextLimit < 0)
        throw Error("the context length must be positive");
    m_contextLimit = contextLimit > 0 ? std::min(contextLimit, m_config.contextLimit()) : m_config.contextLimit();
    SafeTensors tensors = SafeTensors::open(modelDir);
    m_config.validate(tensors);
    m_configJson = readTextFile(modelDir + "/config.json");
    m_launchId = randomHex(8);
    m_dtype = dtype;

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
    for (size_t si = 0; si < plan.stages.size(); ++si)
        for (size_t ri = 0; ri < plan.stages[si].ranks.size(); ++ri) {
            auto r = std::make_unique<Rank>();
            r->stage = si;
            r->rank = static_cast<int>(ri);
            r->index = m_ranks.size();
            for (auto& w : m_workers)
                if (w->address == plan.stages[si].ranks[ri].worker)
                    r->worker = w.get();
            r->progress.index = r->index;
            r->progress.stage = static_cast<int>(si);
            r->progress.rank = static_cast<int>(ri);
            r->progress.worker = r->worker->address;
            r->progress.layersTotal = static_cast<uint32_t>(plan.stages[si].lastLayer - plan.stages[si].firstLayer + 1);
            m_ranks.push_back(std::move(r));
        }
    for (auto& r : m_ranks)
        report(*r);

    // Daemons: hello (version and key check) before anything else.
    parallelFor(m_workers.size(), [&](size_t i) {
        Worker& w = *m_workers[i];
        TrackedCall call(*this, std::chrono::seconds(10));
        v1::HelloRequest req;
        req.set_protocol_version(kProtocolVersion);
        v1::HelloReply rep;
        grpc::Status s = w.stub->Hello(&call.ctx, req, &rep);
        if (!s.ok())
            fail("worker " + describeRpcError(s, w.address));
        if (std::string bad = wire::check(rep); !bad.empty())
            fail("worker " + w.address + " sent a malformed Hello: " + bad);
        w.cores = std::max<uint32_t>(1, rep.cores());
        w.hostname = rep.hostname();
        w.freeMemoryBytes = rep.free_memory_bytes();
        w.maxMemoryBytes = rep.max_memory_bytes();
        m_cb.log("worker " + w.address + ": " + rep.hostname() + ", " + std::to_string(rep.cores()) + " cores, " +
                 std::to_string(rep.free_memory_bytes() >> 20) + " MiB free");
    });

    // Does it fit? Per worker against what it donates, per host against what is free (its daemons share it).
    {
        std::vector<MachineProfile> machines;
        for (auto& w : m_workers) {
            MachineProfile m;
            m.worker = w->address;
            m.host = w->hostname.empty() ? w->address : w->hostname;
            m.freeMemoryBytes = w->freeMemoryBytes;
            m.donatedMemoryBytes = w->maxMemoryBytes;
            machines.push_back(m);
        }
        const std::string tooBig = checkMemory(m_config, plan, parseRunDtype(dtype), m_contextLimit, machines);
        if (!tooBig.empty() && !m_beyondFreeMemory)
            fail("the placement does not fit in memory: " + tooBig + " (launch anyway with --force)");
        if (!tooBig.empty())
            m_cb.log("launching anyway (forced): " + tooBig);
    }

    // One shard per rank; each is watched from the moment it exists.
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
            estimateShardMemory(m_config, plan.shardSpec(r.stage, r.rank), parseRunDtype(dtype), m_contextLimit).total()));
        req.set_lease_ms(kLeaseMs);
        req.set_beyond_free_memory(m_beyondFreeMemory);
        v1::LaunchShardReply rep;
        grpc::Status s = r.worker->stub->LaunchShard(&call.ctx, req, &rep);
        if (!s.ok())
            fail("worker " + r.name() + ": " + s.error_message());
        r.address = rep.address();
        r.stub = v1::Shard::NewStub(openChannel(*m_credentials, r.address));
    });
    for (size_t i = 0; i < m_ranks.size(); ++i)
        m_status.emplace_back([this, i] { statusLoop(i); });

    // Configure each rank and give it exactly its slice.
    TensorHashCache hashes(cacheDir() + "/tensor-hashes.json");
    parallelFor(m_ranks.size(), [&](size_t i) {
        Rank& r = *m_ranks[i];
        ShardSpec spec = plan.shardSpec(r.stage, r.rank);
        {
            TrackedCall call(*this, std::chrono::seconds(30));
            v1::ShardConfig req;
            req.set_launch_id(m_launchId);
            req.set_config_json(m_configJson);
            req.set_first_layer(spec.firstLayer);
            req.set_last_layer(spec.lastLayer);
            req.set_tp_rank(static_cast<uint32_t>(spec.tpRank));
            req.set_tp_size(static_cast<uint32_t>(spec.tpSize));
            req.set_stage(static_cast<uint32_t>(r.stage));
            req.set_num_stages(static_cast<uint32_t>(plan.stages.size()));
            req.set_dtype(dtype);
            req.set_threads(static_cast<uint32_t>(plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].threads));
            req.set_context_limit(m_contextLimit);
            req.set_worker(r.worker->address);
            v1::ConfigureReply rep;
            grpc::Status s = r.stub->Configure(&call.ctx, req, &rep);
            if (!s.ok())
                fail("shard " + r.name() + ": " + s.error_message());
        }
        SafeTensorsWeights weights(tensors);
        auto slices = shardTensors(m_config, spec);
        // The slice's per-tensor hashes, remembered by file, size and modification time.
        std::vector<std::pair<std::string, std::string>> sliceHashes;
        uint64_t total = 0;
        for (auto& slice : slices) {
            const std::string key = slice.name + "#" + std::to_string(slice.dim) + ":" + std::to_string(slice.begin) + "-" + std::to_string(slice.end);
            const TensorView& whole = tensors.tensors().at(slice.name);
            sliceHashes.emplace_back(slice.name, hashes.hash(whole.file ? whole.file->path() : modelDir, key, [&] {
                std::vector<std::byte> scratch;
                return sha256Of(weights.get(slice, scratch));
            }));
            int64_t n = 1;
            for (auto d : slice.shape())
                n *= d;
            total += static_cast<uint64_t>(n) * dtypeSize(whole.dtype);
        }
        {
            std::lock_guard lock(m_mutex);
            r.progress.bytesTotal = total;
        }
        const std::string& localDir = plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].modelDir;
        if (!localDir.empty()) {
            // The worker has its own copy: send only the hashes its slice must match.
            {
                std::lock_guard lock(m_mutex);
                r.progress.phase = RankProgress::Phase::Loading;
                r.source = "local folder";
            }
            report(r);
            TrackedCall call(*this);
            v1::LoadLocalRequest req;
            req.set_model_dir(localDir);
            for (auto& [name, hash] : sliceHashes) {
                auto* h = req.add_hashes();
                h->set_name(name);
                h->set_sha256(hash);
            }
            v1::LoadWeightsReply rep;
            grpc::Status s = r.stub->LoadLocalWeights(&call.ctx, req, &rep);
            if (!s.ok())
                fail("shard " + r.name() + ": " + s.error_message());
            m_cb.log("shard " + r.name() + ": layers " + std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer) +
                     ", weights read from " + localDir + " on the worker");
            return;
        }
        // The worker's slice cache, checked against the hashes.
        {
            TrackedCall call(*this, std::chrono::seconds(600));
            v1::LoadCachedRequest req;
            for (auto& [name, hash] : sliceHashes) {
                auto* h = req.add_hashes();
                h->set_name(name);
                h->set_sha256(hash);
            }
            v1::LoadCachedReply rep;
            grpc::Status s = r.stub->LoadCached(&call.ctx, req, &rep);
            if (!s.ok())
                fail("shard " + r.name() + ": " + s.error_message());
            if (rep.found()) {
                {
                    std::lock_guard lock(m_mutex);
                    r.progress.phase = RankProgress::Phase::FromCache;
                    r.progress.bytesDone = 0;
                    r.source = "from cache";
                }
                report(r);
                m_cb.log("shard " + r.name() + ": layers " + std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer) +
                         ", weights from the worker's slice cache (" + mib(rep.bytes()) + " MiB not transferred)");
                return;
            }
        }
        {
            std::lock_guard lock(m_mutex);
            r.progress.phase = RankProgress::Phase::Transferring;
            r.source = "streamed";
        }
        report(r);
        TrackedCall call(*this);
        v1::LoadWeightsReply rep;
        auto writer = r.stub->LoadWeights(&call.ctx, &rep);
        uint64_t sent = 0;
        const auto started = Clock::now();
        size_t ti = 0;
        for (auto& slice : slices) {
            std::vector<std::byte> scratch;
            TensorView v = weights.get(slice, scratch);
            const std::string& hash = sliceHashes[ti++].second;
            size_t off = 0;
            bool broken = false;
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
                if (!writer->Write(c)) {
                    broken = true; // the shard ended the stream; Finish() says why
                    break;
                }
                sent += n;
                // One event per chunk (4 MiB): a progress bar moves smoothly and a 4 GiB slice makes ~1000 events.
                const auto now = Clock::now();
                {
                    {
                        std::lock_guard lock(m_mutex);
                        r.progress.bytesDone = sent;
                        const double secs = std::chrono::duration<double>(now - started).count();
                        r.progress.bytesPerSecond = secs > 0 ? static_cast<double>(sent) / secs : 0;
                    }
                    report(r);
                }
            } while (off < v.nbytes);
            if (broken)
                break;
        }
        writer->WritesDone();
        {
            std::lock_guard lock(m_mutex);
            r.progress.phase = RankProgress::Phase::Loading;
        }
        report(r);
        grpc::Status s = writer->Finish();
        if (!s.ok())
            fail("shard " + r.name() + ": " + s.error_message());
        m_cb.log("shard " + r.name() + ": layers " + std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer) + ", " +
                 mib(sent) + " MiB of weights streamed");
    });
    hashes.save();
    m_cb.log("tensor hashes: " + std::to_string(hashes.hits()) + " remembered, " + std::to_string(hashes.misses()) + " computed");

    // Tensor-parallel groups (gloo rendezvous through the stage's rank 0) and the ring's pipes, all at once:
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
        req.set_collective_timeout_ms(600000); // long enough for a real prefill; liveness is the Status poll's job
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
        if (r.stage + 1 == plan.stages.size() && r.rank == 0)
            for (auto& x : m_ranks)
                if (x->stage == 0) {
                    if (x.get() == &r)
                        req.set_feed_self(true);
                    else
                        req.add_token_addresses(x->address);
                }
        v1::ConnectReply rep;
        grpc::Status s = r.stub->Connect(&call.ctx, req, &rep);
        if (!s.ok())
            fail("shard " + r.name() + ": " + s.error_message());
    });
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    for (auto& r : m_ranks) {
        {
            std::lock_guard lock(m_mutex);
            if (r->progress.phase != RankProgress::Phase::FromCache)
                r->progress.phase = RankProgress::Phase::Ready;
            r->progress.layersDone = r->progress.layersTotal;
        }
        report(*r);
    }
    m_launched = true;
}

std::string Cluster::generate(const RingRequest& request, const std::function<bool(const RingToken&)>& onToken)
{
    if (!m_launched)
        throw Error("the model is not launched");
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    if (request.tokens.empty())
        throw Error("nothing to feed: the prompt is empty");
    if (request.startPos < 0 || request.startPos + static_cast<int64_t>(request.tokens.size()) > m_contextLimit)
        throw Error("the prompt needs " + std::to_string(request.startPos + static_cast<int64_t>(request.tokens.size())) +
                    " positions but the context holds " + std::to_string(m_contextLimit));
    const uint64_t generation = ++m_generation;
    const int64_t maxRows = prefillChunkRows(m_config.hiddenSize);
    const uint64_t chunks = static_cast<uint64_t>((static_cast<int64_t>(request.tokens.size()) + maxRows - 1) / maxRows);
    {
        std::lock_guard lock(m_mutex);
        m_prefill[generation] = {chunks, 0.0};
        while (m_prefill.size() > 64)
            m_prefill.erase(m_prefill.begin());
    }
    Rank* last = nullptr;
    for (auto& r : m_ranks)
        if (r->stage + 1 == m_plan.stages.size() && r->rank == 0)
            last = r.get();

    // The master's window on the ring: opened before Start, so no token is missed (the shard queues them).
    TrackedCall observe(*this);
    auto stream = last->stub->Observe(&observe.ctx);
    std::mutex writeMutex;
    auto send = [&](uint32_t acknowledged, bool stop) {
        v1::ObserveRequest req;
        req.set_generation(generation);
        req.set_acknowledged(acknowledged);
        req.set_stop(stop);
        std::lock_guard lock(writeMutex);
        return stream->Write(req);
    };
    send(0, false);

    v1::StartRequest start;
    auto* h = start.mutable_header();
    h->set_generation(generation);
    h->mutable_sampling()->set_temperature(request.sampling.temperature);
    h->mutable_sampling()->set_top_k(request.sampling.topK);
    h->mutable_sampling()->set_top_p(request.sampling.topP);
    h->mutable_sampling()->set_seed(request.sampling.seed);
    h->set_new_sequence(request.newSequence);
    h->set_max_tokens(request.maxTokens);
    for (auto id : request.eosIds)
        h->add_eos_ids(static_cast<int32_t>(id));
    h->set_window(request.window);
    h->set_top_logits(request.topLogits);
    start.set_start_pos(request.startPos);
    for (int t : request.tokens)
        start.add_tokens(t);
    const auto started = Clock::now();
    std::vector<Rank*> first;
    for (auto& r : m_ranks)
        if (r->stage == 0)
            first.push_back(r.get());
    parallelFor(first.size(), [&](size_t i) {
        TrackedCall call(*this, std::chrono::seconds(10));
        v1::StartReply rep;
        grpc::Status s = first[i]->stub->Start(&call.ctx, start, &rep);
        if (!s.ok())
            fail("shard " + first[i]->name() + ": " + s.error_message());
    });

    std::atomic<bool> stopping{false};
    std::atomic<uint32_t> taken{0};
    {
        std::lock_guard lock(m_mutex);
        m_generating = true;
        m_lastProgress = Clock::now();
        m_stopNow = [&] {
            if (!stopping.exchange(true))
                send(taken, true);
        };
    }
    struct Idle {
        Cluster& c;
        ~Idle()
        {
            std::lock_guard lock(c.m_mutex);
            c.m_stopNow = nullptr;
            c.m_generating = false;
        }
    } idle{*this};
    std::string end;
    v1::ObserveEvent ev;
    while (end.empty()) {
        if (!stream->Read(&ev)) {
            observe.ctx.TryCancel();
            grpc::Status s = stream->Finish();
            fail("shard " + last->name() + ": the token stream ended: " + s.error_message());
        }
        if (ev.generation() != generation)
            continue;
        if (std::string bad = wire::check(ev, m_config.vocabSize, request.topLogits); !bad.empty())
            fail("shard " + last->name() + " sent a malformed token event: " + bad);
        if (!ev.error().empty())
            fail(ev.error());
        if (ev.has_token() && !stopping) {
            RingToken t;
            t.index = ev.token().step();
            t.token = ev.token().token();
            t.pos = ev.token().pos();
            t.inputTokens = static_cast<int>(ev.token().input_tokens());
            for (int i = 0; i < ev.token().top_ids_size() && i < ev.token().top_logits_size(); ++i)
                t.top.emplace_back(ev.token().top_ids(i), ev.token().top_logits(i));
            {
                std::lock_guard lock(m_mutex);
                m_lastProgress = Clock::now();
                if (t.index == 0)
                    m_prefill[generation].second = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
            }
            ++taken;
            const bool more = onToken(t);
            if (!ev.end().empty())
                end = ev.end();
            else if (!more) {
                if (!stopping.exchange(true))
                    send(taken, true);
            } else {
                send(taken, false);
            }
        } else if (!ev.end().empty()) {
            end = ev.end();
        }
    }
    {
        std::lock_guard lock(writeMutex);
        stream->WritesDone();
    }
    observe.ctx.TryCancel();
    stream->Finish();
    if (std::string f = fatal(); !f.empty())
        throw Error(f);
    return stopping ? std::string("stopped") : end;
}

void Cluster::addRecords(std::vector<Incoming> records)
{
    std::vector<StepRecord> complete;
    {
        std::lock_guard lock(m_mutex);
        for (auto& in : records) {
            auto& p = m_partial[in.key];
            p.ranks.push_back(std::move(in.record));
            if (in.endToEndUs >= 0)
                p.endToEndUs = in.endToEndUs;
            if (in.token >= 0)
                p.token = in.token;
            p.inputTokens = std::max(p.inputTokens, in.inputTokens);
            if (p.ranks.size() < m_ranks.size())
                continue;
            StepRecord s;
            s.generation = in.key.first;
            const auto pre = m_prefill.find(s.generation);
            const uint64_t chunks = pre == m_prefill.end() ? 1 : std::max<uint64_t>(1, pre->second.first);
            s.step = in.key.second + 1 >= chunks ? in.key.second + 1 - chunks : 0;
            s.inputTokens = p.inputTokens;
            s.token = p.token;
            if (p.endToEndUs >= 0)
                s.endToEndMs = p.endToEndUs / 1000.0;
            else if (s.step == 0 && pre != m_prefill.end() && in.key.second + 1 == chunks)
                s.endToEndMs = pre->second.second; // the prefill, as the master timed it
            if (s.endToEndMs > 0)
                s.tokensPerSecond = (s.step == 0 ? s.inputTokens : 1) * 1000.0 / s.endToEndMs;
            std::sort(p.ranks.begin(), p.ranks.end(), [](auto& x, auto& y) { return std::tie(x.stage, x.rank) < std::tie(y.stage, y.rank); });
            s.ranks = std::move(p.ranks);
            m_partial.erase(in.key);
            complete.push_back(std::move(s));
        }
        while (m_partial.size() > 4096)
            m_partial.erase(m_partial.begin());
    }
    if (m_cb.step)
        for (auto& s : complete)
            m_cb.step(s);
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

void Cluster::syncRecords()
{
    if (m_ranks.empty() || !m_launched)
        return;
    // The last records of a generation wait for their links' acknowledgements: ask until every rank has
    // answered with all of them, or briefly.
    for (int attempt = 0; attempt < 10; ++attempt) {
        parallelFor(m_ranks.size(), [&](size_t i) { pollOnce(*m_ranks[i]); });
        std::lock_guard lock(m_mutex);
        if (m_partial.empty())
            return;
        (void)attempt;
    }
}

void Cluster::pollOnce(Rank& r)
{
    std::lock_guard pollLock(r.pollMutex);
    {
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
        if (s.ok())
            if (std::string bad = wire::check(rep); !bad.empty()) {
                setFatal("worker " + r.name() + " sent a malformed status: " + bad, r.worker->address);
                return;
            }
        if (s.ok()) {
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
        } else {
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
                             " s: the process is stalled, or its machine is overloaded or unreachable; " + s.error_message() + ")",
                         r.worker->address);
        }
    }
}

void Cluster::fail(const std::string& rpcError)
{
    // A broken link usually means a dead process: give the watchers a moment to name it.
    for (int i = 0; i < 40 && fatal().empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string f = fatal();
    throw Error(f.empty() ? rpcError : f);
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

void Cluster::heartbeatLoop()
{
    while (!m_stopThreads) {
        for (auto& w : m_workers) {
            grpc::ClientContext ctx;
            ctx.set_deadline(in(std::chrono::milliseconds(1500)));
            v1::HealthRequest req;
            req.set_launch_id(m_launchId);
            v1::HealthReply rep;
            grpc::Status s = w->stub->Health(&ctx, req, &rep);
            if (m_stopThreads)
                break;
            if (!s.ok()) {
                if (++w->failures >= 2)
                    setFatal("worker " + w->address + " is not responding (" + s.error_message() + "): it died or its machine is unreachable",
                             w->address);
                continue;
            }
            w->failures = 0;
            if (!rep.ended().empty())
                setFatal("worker " + w->address + " stopped this launch: " + rep.ended(), w->address);
            for (auto& sh : rep.shards()) {
                if (sh.shard_index() < m_ranks.size()) {
                    std::lock_guard lock(m_mutex);
                    auto& r = *m_ranks[sh.shard_index()];
                    r.peakRss = std::max(r.peakRss, sh.peak_rss_bytes());
                }
                if (!sh.running()) {
                    std::string who = "worker " + w->address;
                    if (sh.shard_index() < m_ranks.size())
                        who = "worker " + m_ranks[sh.shard_index()]->name();
                    setFatal(who + ": shard process " + sh.exit_reason(), w->address);
                }
            }
        }
        for (int i = 0; i < 5 && !m_stopThreads; ++i)
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
