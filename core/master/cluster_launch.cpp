// SPDX-License-Identifier: MIT
// Cluster::launch: admit the plan, Hello every daemon, check the memory, start one shard per rank, give each rank
// its weights (from the worker's own folder, its slice cache, or streamed), then join the tensor-parallel groups
// and the ring.
#include "master/cluster.h"

#include "base/error.h"
#include "base/files.h"
#include "base/hex.h"
#include "base/user_dirs.h"
#include "master/cluster_parts.h"
#include "master/cost_model.h"
#include "model/hash_cache.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "net/rpc.h"
#include "wire/checks.h"
#include "wire/protocol.h"

#include <openssl/sha.h>

#include <algorithm>

namespace together {

using namespace cluster_parts;

namespace {

std::string sha256Of(const TensorView& v)
{
    unsigned char hash[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(v.data), v.nbytes, hash);
    return std::string(reinterpret_cast<const char*>(hash), sizeof hash);
}

std::string layersOf(const ShardSpec& spec) { return std::to_string(spec.firstLayer) + ".." + std::to_string(spec.lastLayer); }

} // namespace

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
    admit(plan, modelDir, dtype, contextLimit);
    SafeTensors tensors = SafeTensors::open(modelDir);
    m_config.validate(tensors);
    m_configJson = ModelConfig::configJsonText(modelDir);
    m_launchId = randomHex(8);
    nameWorkersAndRanks();
    for (auto& r : m_ranks)
        report(*r);

    helloWorkers(); // daemons: version and key check before anything else
    checkFits();
    startShards();

    // Give each rank exactly its slice.
    TensorHashCache hashes(cacheDir() + "/tensor-hashes.json");
    parallelFor(m_ranks.size(), [&](size_t i) { loadRank(*m_ranks[i], modelDir, tensors, hashes); });
    hashes.save();
    m_cb.log("tensor hashes: " + std::to_string(hashes.hits()) + " remembered, " + std::to_string(hashes.misses()) + " computed");

    // Tensor-parallel groups (gloo rendezvous through the stage's rank 0) and the ring's pipes, all at once:
    // a group's ranks must join together.
    parallelFor(m_ranks.size(), [&](size_t i) { connectRank(*m_ranks[i]); });
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

// The model's config against the plan, and the context.
void Cluster::admit(const Plan& plan, const std::string& modelDir, const std::string& dtype, int64_t contextLimit)
{
    m_workers.clear();
    m_ranks.clear();
    m_config = ModelConfig::fromDirectory(modelDir);
    plan.validate(m_config);
    m_plan = plan;
    if (contextLimit < 0)
        throw Error("the context length must be positive");
    m_contextLimit = contextLimit > 0 ? std::min(contextLimit, m_config.contextLimit()) : m_config.contextLimit();
    m_dtype = dtype;
    for (size_t s = 0; s < plan.stages.size(); ++s)
        if (const std::string bad = blockAlignmentProblem(m_config, static_cast<int>(plan.stages[s].ranks.size()), parseRunDtype(dtype)); !bad.empty())
            throw Error("stage " + std::to_string(s) + ": " + bad);
}

// A Worker per daemon the plan names, a Rank per plan rank (stage-major).
void Cluster::nameWorkersAndRanks()
{
    const Plan& plan = m_plan;
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
}

void Cluster::helloWorkers()
{
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
}

// Does it fit? Per worker against what it donates, per host against what is free (its daemons share it).
void Cluster::checkFits()
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
    const std::string tooBig = checkMemory(m_config, m_plan, parseRunDtype(m_dtype), m_contextLimit, machines);
    if (!tooBig.empty() && !m_beyondFreeMemory)
        fail("the placement does not fit in memory: " + tooBig + " (launch anyway with --force)");
    if (!tooBig.empty())
        m_cb.log("launching anyway (forced): " + tooBig);
}

// One shard per rank; each is watched from the moment it exists.
void Cluster::startShards()
{
    m_heartbeat = std::thread([this] { heartbeatLoop(); });
    parallelFor(m_ranks.size(), [&](size_t i) {
        Rank& r = *m_ranks[i];
        TrackedCall call(*this, std::chrono::seconds(90));
        v1::LaunchShardRequest req;
        req.set_launch_id(m_launchId);
        req.set_shard_index(static_cast<uint32_t>(i));
        req.set_bind_host(hostOf(r.worker->address));
        req.set_threads(static_cast<uint32_t>(m_plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].threads));
        req.set_memory_bytes(static_cast<uint64_t>(
            estimateShardMemory(m_config, m_plan.shardSpec(r.stage, r.rank), parseRunDtype(m_dtype), m_contextLimit).total()));
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
}

// Configure the rank, then its weights from the first place that has them: the worker's own model folder (when
// the plan names one), the worker's slice cache, else streamed from here.
void Cluster::loadRank(Rank& r, const std::string& modelDir, const SafeTensors& tensors, TensorHashCache& hashes)
{
    const ShardSpec spec = m_plan.shardSpec(r.stage, r.rank);
    configureRank(r, spec);
    const bool keepBlocks = parseRunDtype(m_dtype) == RunDtype::Native; // a GGUF's blocks travel as they are
    SafeTensorsWeights weights(tensors, keepBlocks);
    // The slice's per-tensor hashes, remembered by file, size and modification time (and by form: blocks, or
    // widened to f32).
    SliceHashes sliceHashes;
    uint64_t total = 0;
    for (auto& slice : shardTensors(m_config, spec)) {
        const TensorView& whole = tensors.tensors().at(slice.name);
        const bool blocks = keepsBlocks(whole, keepBlocks);
        const std::string key = slice.name + "#" + std::to_string(slice.dim) + ":" + std::to_string(slice.begin) + "-" +
                                std::to_string(slice.end) + (blocks ? "#blocks" : "");
        sliceHashes.emplace_back(slice.name, hashes.hash(whole.file ? whole.file->path() : modelDir, key, [&] {
            std::vector<std::byte> scratch;
            return sha256Of(weights.get(slice, scratch));
        }));
        TensorType type{whole.dtype, blocks ? whole.stored : std::nullopt};
        total += tensorTypeBytes(type, slice.shape()).value_or(0);
    }
    {
        std::lock_guard lock(m_mutex);
        r.progress.bytesTotal = total;
    }
    const std::string& localDir = m_plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].modelDir;
    if (!localDir.empty())
        loadFromWorkerFolder(r, spec, localDir, sliceHashes);
    else if (!loadFromSliceCache(r, spec, sliceHashes))
        streamSlice(r, spec, tensors, sliceHashes);
}

void Cluster::configureRank(Rank& r, const ShardSpec& spec)
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
    req.set_num_stages(static_cast<uint32_t>(m_plan.stages.size()));
    req.set_dtype(m_dtype);
    req.set_threads(static_cast<uint32_t>(m_plan.stages[r.stage].ranks[static_cast<size_t>(r.rank)].threads));
    req.set_context_limit(m_contextLimit);
    req.set_worker(r.worker->address);
    v1::ConfigureReply rep;
    grpc::Status s = r.stub->Configure(&call.ctx, req, &rep);
    if (!s.ok())
        fail("shard " + r.name() + ": " + s.error_message());
}

void Cluster::setPhase(Rank& r, RankProgress::Phase phase, const std::string& source)
{
    {
        std::lock_guard lock(m_mutex);
        r.progress.phase = phase;
        if (phase == RankProgress::Phase::FromCache)
            r.progress.bytesDone = 0;
        if (!source.empty())
            r.source = source;
    }
    report(r);
}

// The worker has its own copy: send only the hashes its slice must match.
void Cluster::loadFromWorkerFolder(Rank& r, const ShardSpec& spec, const std::string& folder, const SliceHashes& hashes)
{
    setPhase(r, RankProgress::Phase::Loading, "local folder");
    TrackedCall call(*this);
    v1::LoadLocalRequest req;
    req.set_model_dir(folder);
    for (auto& [name, hash] : hashes) {
        auto* h = req.add_hashes();
        h->set_name(name);
        h->set_sha256(hash);
    }
    v1::LoadWeightsReply rep;
    grpc::Status s = r.stub->LoadLocalWeights(&call.ctx, req, &rep);
    if (!s.ok())
        fail("shard " + r.name() + ": " + s.error_message());
    m_cb.log("shard " + r.name() + ": layers " + layersOf(spec) + ", weights read from " + folder + " on the worker");
}

// The worker's slice cache, checked against the hashes. False on a miss.
bool Cluster::loadFromSliceCache(Rank& r, const ShardSpec& spec, const SliceHashes& hashes)
{
    TrackedCall call(*this, std::chrono::seconds(600));
    v1::LoadCachedRequest req;
    for (auto& [name, hash] : hashes) {
        auto* h = req.add_hashes();
        h->set_name(name);
        h->set_sha256(hash);
    }
    v1::LoadCachedReply rep;
    grpc::Status s = r.stub->LoadCached(&call.ctx, req, &rep);
    if (!s.ok())
        fail("shard " + r.name() + ": " + s.error_message());
    if (!rep.found())
        return false;
    setPhase(r, RankProgress::Phase::FromCache, "from cache");
    m_cb.log("shard " + r.name() + ": layers " + layersOf(spec) + ", weights from the worker's slice cache (" + mib(rep.bytes()) +
             " MiB not transferred)");
    return true;
}

// Streams exactly the slice, in chunks of kChunkBytes; the first chunk of a tensor names it with its shape, size
// and dtype, the last carries its SHA-256. One progress event per chunk (4 MiB): a progress bar moves smoothly and
// a 4 GiB slice makes ~1000 events.
void Cluster::streamSlice(Rank& r, const ShardSpec& spec, const SafeTensors& tensors, const SliceHashes& hashes)
{
    setPhase(r, RankProgress::Phase::Transferring, "streamed");
    SafeTensorsWeights weights(tensors, parseRunDtype(m_dtype) == RunDtype::Native);
    TrackedCall call(*this);
    v1::LoadWeightsReply rep;
    auto writer = r.stub->LoadWeights(&call.ctx, &rep);
    uint64_t sent = 0;
    const auto started = Clock::now();
    size_t ti = 0;
    bool broken = false;
    for (auto& slice : shardTensors(m_config, spec)) {
        std::vector<std::byte> scratch;
        TensorView v = weights.get(slice, scratch);
        const std::string& hash = hashes[ti++].second;
        size_t off = 0;
        do {
            v1::WeightChunk c;
            if (off == 0) {
                c.set_name(slice.name);
                for (auto d : v.shape)
                    c.add_shape(d);
                c.set_total_bytes(v.nbytes);
                c.set_dtype(tensorTypeName(v.type()));
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
            {
                std::lock_guard lock(m_mutex);
                r.progress.bytesDone = sent;
                const double secs = std::chrono::duration<double>(Clock::now() - started).count();
                r.progress.bytesPerSecond = secs > 0 ? static_cast<double>(sent) / secs : 0;
            }
            report(r);
        } while (off < v.nbytes);
        if (broken)
            break;
    }
    writer->WritesDone();
    setPhase(r, RankProgress::Phase::Loading);
    grpc::Status s = writer->Finish();
    if (!s.ok())
        fail("shard " + r.name() + ": " + s.error_message());
    m_cb.log("shard " + r.name() + ": layers " + layersOf(spec) + ", " + mib(sent) + " MiB of weights streamed");
}

// The rank's tensor-parallel group (rendezvous on its stage's rank 0) and its pipes: stage s's rank i feeds the
// ranks j of stage s+1 with j % (ranks of stage s) == i; the last stage's rank 0 sends tokens to every stage-0 rank
// (to itself without a hop in a one-stage plan).
void Cluster::connectRank(Rank& r)
{
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
    for (size_t si = 0; si < m_plan.stages.size(); ++si)
        for (auto& pr : m_plan.stages[si].ranks)
            if (hostOf(pr.worker) == host)
                threads += static_cast<uint32_t>(pr.threads);
    req.set_busy_poll(threads <= cores);
    if (r.stage + 1 < m_plan.stages.size()) {
        const int here = static_cast<int>(m_plan.stages[r.stage].ranks.size());
        for (auto& x : m_ranks)
            if (x->stage == r.stage + 1 && x->rank % here == r.rank)
                req.add_next_addresses(x->address);
    }
    if (r.stage + 1 == m_plan.stages.size() && r.rank == 0)
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
}

} // namespace together
