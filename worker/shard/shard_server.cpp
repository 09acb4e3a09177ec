// SPDX-License-Identifier: MIT
#include "shard/shard_server.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "base/process.h"
#include "base/user_dirs.h"
#include "engine/gloo_comm.h"
#include "engine/kv_store.h"
#include "engine/llama_model.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "net/credentials.h"
#include "net/rpc.h"
#include "proto/together.grpc.pb.h"
#include "shard/slice_cache.h"
#include "text/sampler.h"
#include "wire/checks.h"
#include "wire/protocol.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <openssl/evp.h>

#include <condition_variable>
#include <deque>
#include <optional>
#include <thread>

#include <sys/resource.h>
#include <filesystem>
#include <cstring>
#include <future>
#include <map>
#include <mutex>

namespace together {

namespace {

using Clock = std::chrono::steady_clock;

uint64_t micros(Clock::duration d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count()); }

grpc::Status fail(grpc::StatusCode code, const std::string& msg) { return grpc::Status(code, msg); }

// Weights received from the master, exactly this shard's slices.
class ReceivedWeights : public WeightProvider {
public:
    struct Tensor {
        DType dtype = DType::F32;
        std::vector<int64_t> shape;
        std::vector<std::byte> bytes;
    };
    mutable std::map<std::string, Tensor> tensors;

    void release(const TensorSlice& slice) const override { tensors.erase(slice.name); }

    TensorView get(const TensorSlice& slice, std::vector<std::byte>&) const override
    {
        auto it = tensors.find(slice.name);
        if (it == tensors.end())
            throw Error("tensor " + slice.name + " was not received");
        TensorView v;
        v.name = slice.name;
        v.dtype = it->second.dtype;
        v.shape = it->second.shape;
        v.data = it->second.bytes.data();
        v.nbytes = it->second.bytes.size();
        return v;
    }
};

// A local checkpoint's slices, each checked against the master's SHA-256 before the model uses it.
class VerifiedWeights : public WeightProvider {
public:
    VerifiedWeights(const SafeTensors& files, const std::map<std::string, std::string>& hashes, std::string dir)
        : m_inner(files)
        , m_hashes(hashes)
        , m_dir(std::move(dir))
    {
    }
    TensorView get(const TensorSlice& slice, std::vector<std::byte>& scratch) const override
    {
        TensorView v = m_inner.get(slice, scratch);
        auto it = m_hashes.find(slice.name);
        if (it == m_hashes.end())
            throw Error("the master sent no hash for tensor " + slice.name);
        unsigned char hash[32];
        unsigned int len = 0;
        EVP_Digest(v.data, v.nbytes, hash, &len, EVP_sha256(), nullptr);
        if (it->second.size() != 32 || std::memcmp(hash, it->second.data(), 32) != 0)
            throw Error("tensor " + slice.name + " in " + m_dir + " differs from the master's copy (SHA-256 mismatch)");
        m_bytes += v.nbytes;
        return v;
    }
    uint64_t bytesRead() const { return m_bytes; }

private:
    SafeTensorsWeights m_inner;
    const std::map<std::string, std::string>& m_hashes;
    std::string m_dir;
    mutable uint64_t m_bytes = 0;
};

// A failure talking to a peer: the peer may be the one at fault.
struct PeerError : Error {
    using Error::Error;
};

int64_t wallMicros()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Counts the layers whose tensors the model has taken, for "loading layer N of M" progress.
class ProgressWeights : public WeightProvider {
public:
    ProgressWeights(const WeightProvider& inner, std::atomic<uint32_t>& layersDone)
        : m_inner(inner)
        , m_done(layersDone)
    {
    }
    TensorView get(const TensorSlice& slice, std::vector<std::byte>& scratch) const override
    {
        const std::string prefix = "model.layers.";
        if (slice.name.rfind(prefix, 0) == 0) {
            const int64_t layer = std::atoll(slice.name.c_str() + prefix.size());
            if (layer != m_current) {
                if (m_current >= 0)
                    ++m_done;
                m_current = layer;
            }
        }
        return m_inner.get(slice, scratch);
    }
    void release(const TensorSlice& slice) const override { m_inner.release(slice); }

private:
    const WeightProvider& m_inner;
    std::atomic<uint32_t>& m_done;
    mutable int64_t m_current = -1;
};

// One step's input, from the master (stage 0's prompt), the previous stage (a hidden state) or the last
// stage (the sampled token, to stage 0).
struct Work {
    uint64_t generation = 0;
    uint64_t step = 0;
    int64_t startPos = 0;
    bool sample = true;
    std::optional<v1::GenerationHeader> header;
    std::vector<int64_t> tokens;
    std::string hidden;
    uint32_t rows = 0;
    uint64_t queuedBytes = 0; // what it counts against the queue's limit (pipes only)
};

class ShardService;

// A link of the ring this rank sends on: one long-lived bidirectional stream; the peer acknowledges each
// message, and the round trip (halved) is the link's time in this rank's step record.
class OutPipe {
public:
    OutPipe(const Credentials& credentials, std::string address, ShardService& owner);
    ~OutPipe();
    // False when the stream broke (the peer died); the caller names the link.
    bool send(const v1::PipeMessage& message, uint64_t recordSequence);
    const std::string& address() const { return m_address; }

private:
    void readAcks();
    std::string m_address;
    ShardService& m_owner;
    std::unique_ptr<v1::Shard::Stub> m_stub;
    grpc::ClientContext m_ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::PipeMessage, v1::PipeAck>> m_stream;
    std::mutex m_mutex;
    struct Pending {
        Clock::time_point sent;
        int64_t sentUs = 0;
        uint64_t record = 0;
    };
    std::map<std::pair<uint64_t, uint64_t>, Pending> m_pending;
    std::thread m_reader;
};

class ShardService final : public v1::Shard::Service {
public:
    ShardService(const Credentials& credentials, const ShardOptions& options)
        : m_credentials(credentials)
        , m_threads(options.threads)
        , m_admittedThreads(options.threads)
        , m_modelsRoots(options.modelsRoots)
        , m_owner(options.owner)
    {
        // Our own certificate name is "shard <index> <launch tag>@<worker id>".
        const auto at = options.name.find('@');
        const auto sp = options.name.rfind(' ', at);
        if (options.name.rfind("shard ", 0) == 0 && at != std::string::npos && sp != std::string::npos && sp + 1 < at)
            m_launchTag = options.name.substr(sp + 1, at - sp - 1);
        if (!options.cacheDir.empty() && options.cacheBytes > 0) {
            try {
                m_sliceCache = std::make_unique<SliceCache>(options.cacheDir, options.cacheBytes);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "slice cache off: %s\n", e.what());
            }
        }
    }

    ~ShardService() override { shutdown(); }

    void shutdown()
    {
        {
            std::lock_guard lock(m_queueMutex);
            m_shutdown = true;
        }
        m_queueCv.notify_all();
        m_observeCv.notify_all();
        if (m_runner.joinable())
            m_runner.join();
        m_next.clear();
        m_tokenPipes.clear();
    }

    // ---- launch ----

    grpc::Status Configure(grpc::ServerContext* ctx, const v1::ShardConfig* req, v1::ConfigureReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "configure"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        try {
            if (!m_slices.empty() || m_model)
                throw Error("this shard is already configured");
            m_config = ModelConfig::fromJsonText(req->config_json(), "config.json from the master");
            m_configJson = req->config_json();
            if (std::string bad = wire::check(*req, m_config); !bad.empty())
                throw Error(bad);
            m_spec = ShardSpec{req->first_layer(), req->last_layer(), static_cast<int>(req->tp_rank()), static_cast<int>(req->tp_size()),
                               req->stage() == 0, req->stage() + 1 == req->num_stages()};
            m_stage = req->stage();
            m_launchId = req->launch_id();
            m_worker = req->worker().substr(0, 256);
            m_compute = parseComputeType(req->dtype());
            m_contextLimit = req->context_limit();
            // Never more than the daemon admitted this shard with (its --threads): that is what the machine donates.
            if (req->threads() > 0)
                m_threads = std::min(static_cast<int>(req->threads()), m_admittedThreads);
            m_slices.clear();
            int64_t bytes = 0;
            for (auto& s : shardTensors(m_config, m_spec)) {
                int64_t n = 1;
                for (auto d : s.shape()) {
                    if (d < 0 || (d > 0 && n > (int64_t(1) << 40) / d))
                        throw Error("tensor " + s.name + " of shape " + shapeString(s.shape()) + " is too large");
                    n *= d;
                }
                bytes += n * 4; // at most f32
                if (bytes > (int64_t(1) << 42))
                    throw Error("this shard's slice would exceed 4 TiB");
                m_slices.emplace(s.name, s);
            }
            m_layersTotal = static_cast<uint32_t>(m_spec.lastLayer - m_spec.firstLayer + 1);
            m_me = "stage " + std::to_string(m_stage) + " rank " + std::to_string(m_spec.tpRank) + (m_worker.empty() ? "" : " on " + m_worker);
            rep->set_expected_bytes(bytes);
            rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
            m_weights = ReceivedWeights();
            setActivity("configured");
        } catch (const std::exception& e) {
            m_slices.clear();
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("configure: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status LoadWeights(grpc::ServerContext* ctx, grpc::ServerReader<v1::WeightChunk>* reader, v1::LoadWeightsReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "loadweights"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (grpc::Status s = canLoad(); !s.ok())
            return s;
        setActivity("receiving weights");
        v1::WeightChunk chunk;
        std::string current;
        uint64_t received = 0;
        std::map<std::string, std::string> hashes;
        EVP_MD_CTX* md = EVP_MD_CTX_new();
        auto cleanup = [&] { EVP_MD_CTX_free(md); };
        try {
            while (reader->Read(&chunk)) {
                if (!chunk.name().empty()) {
                    if (!current.empty())
                        throw Error("tensor " + current + " ended without its last chunk");
                    current = chunk.name();
                    auto it = m_slices.find(current);
                    if (it == m_slices.end())
                        throw Error("tensor " + current + " is not part of this shard's slice");
                    if (m_weights.tensors.count(current))
                        throw Error("tensor " + current + " sent twice");
                    // Shape, dtype and size are checked against the plan before any allocation.
                    wire::FirstChunk first;
                    if (std::string bad = wire::checkFirstChunk(chunk, it->second.shape(), first); !bad.empty())
                        throw Error(bad);
                    auto& t = m_weights.tensors[current];
                    t.dtype = first.dtype;
                    t.shape = it->second.shape();
                    t.bytes.reserve(first.bytes);
                    EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
                } else if (current.empty()) {
                    throw Error("weight chunk without a tensor name");
                }
                auto& t = m_weights.tensors[current];
                if (t.bytes.size() + chunk.data().size() > t.bytes.capacity())
                    throw Error("tensor " + current + ": more bytes than announced");
                const auto* p = reinterpret_cast<const std::byte*>(chunk.data().data());
                t.bytes.insert(t.bytes.end(), p, p + chunk.data().size());
                EVP_DigestUpdate(md, chunk.data().data(), chunk.data().size());
                received += chunk.data().size();
                if (chunk.last()) {
                    if (t.bytes.size() != t.bytes.capacity())
                        throw Error("tensor " + current + ": " + std::to_string(t.bytes.size()) + " bytes received, " +
                                    std::to_string(t.bytes.capacity()) + " announced");
                    unsigned char hash[32];
                    unsigned int len = 0;
                    EVP_DigestFinal_ex(md, hash, &len);
                    if (chunk.sha256().size() != 32 || std::memcmp(hash, chunk.sha256().data(), 32) != 0)
                        throw Error("tensor " + current + ": SHA-256 mismatch (corrupted in transfer)");
                    hashes[current] = chunk.sha256();
                    current.clear();
                }
            }
            if (!current.empty())
                throw Error("the stream ended inside tensor " + current);
            for (auto& [name, s] : m_slices)
                if (!m_weights.tensors.count(name))
                    throw Error("tensor " + name + " was not sent");
            cleanup();
            md = nullptr;
            storeInCache(hashes);
            buildModel(m_weights);
            m_weights = ReceivedWeights(); // the model holds converted copies
        } catch (const std::exception& e) {
            if (md)
                cleanup();
            m_weights = ReceivedWeights();
            m_model.reset();
            setActivity("configured");
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load weights: ") + e.what());
        }
        rep->set_bytes(received);
        rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
        return grpc::Status::OK;
    }

    grpc::Status LoadCached(grpc::ServerContext* ctx, const v1::LoadCachedRequest* req, v1::LoadCachedReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "loadcached"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (grpc::Status s = canLoad(); !s.ok())
            return s;
        rep->set_found(false);
        if (!m_sliceCache)
            return grpc::Status::OK;
        try {
            std::map<std::string, std::string> expected;
            std::vector<std::pair<std::string, std::string>> ordered;
            for (auto& h : req->hashes()) {
                if (!m_slices.count(h.name()) || h.sha256().size() != 32)
                    throw Error("hash for " + h.name() + " does not belong to this slice");
                expected[h.name()] = h.sha256();
                ordered.emplace_back(h.name(), h.sha256());
            }
            if (expected.size() != m_slices.size())
                return grpc::Status::OK;
            setActivity("reading weights from the slice cache");
            std::map<std::string, std::vector<int64_t>> shapes;
            for (auto& [name, slice] : m_slices)
                shapes[name] = slice.shape();
            auto found = m_sliceCache->load(SliceCache::key(m_configJson, sliceDescription(), ordered), expected, shapes);
            if (!found)
                return grpc::Status::OK;
            uint64_t bytes = 0;
            for (auto& t : *found) {
                auto it = m_slices.find(t.name);
                if (it == m_slices.end() || t.shape != it->second.shape())
                    return grpc::Status::OK;
                auto& r = m_weights.tensors[t.name];
                r.dtype = parseDType(t.dtype, "cached tensor " + t.name);
                r.shape = t.shape;
                bytes += t.bytes.size();
                r.bytes = std::move(t.bytes);
            }
            found.reset();
            buildModel(m_weights);
            m_weights = ReceivedWeights();
            rep->set_found(true);
            rep->set_bytes(bytes);
        } catch (const std::exception& e) {
            m_weights = ReceivedWeights();
            m_model.reset();
            setActivity("configured");
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load cached weights: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status LoadLocalWeights(grpc::ServerContext* ctx, const v1::LoadLocalRequest* req, v1::LoadWeightsReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "loadlocalweights"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (grpc::Status s = canLoad(); !s.ok())
            return s;
        try {
            const std::string& dir = req->model_dir();
            checkModelFolderAllowed(dir, m_modelsRoots);
            // Every file read by name is checked too (each may be a symlink), before it is opened.
            for (const char* name : {"config.json", "model.safetensors.index.json", "model.safetensors"})
                if (std::filesystem::exists(dir + "/" + name) || std::string(name) == "config.json")
                    checkModelFolderAllowed(dir + "/" + name, m_modelsRoots);
            // Same model as the master's? config.json first, then every slice by hash.
            const nlohmann::json local = parseUntrustedJson(readTextFile(dir + "/config.json"), dir + "/config.json");
            const nlohmann::json master = parseUntrustedJson(m_configJson, "config.json from the master");
            if (local != master)
                throw Error("the model in " + dir + " on this worker is not the master's model (config.json differs)");
            std::map<std::string, std::string> hashes;
            for (auto& h : req->hashes())
                hashes[h.name()] = h.sha256();
            SafeTensors files = SafeTensors::open(dir, /*map=*/false); // headers only: the slice is read by pread
            for (auto& [name, view] : files.tensors())
                checkModelFolderAllowed(view.file->path(), m_modelsRoots); // shard files may be symlinks (HF cache)
            VerifiedWeights weights(files, hashes, dir);
            setActivity("reading weights from " + dir);
            buildModel(weights);
            rep->set_bytes(weights.bytesRead());
            rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
        } catch (const std::exception& e) {
            m_model.reset();
            setActivity("configured");
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load local weights: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status Connect(grpc::ServerContext* ctx, const v1::ConnectRequest* req, v1::ConnectReply*) override
    {
        if (grpc::Status s = fromOwner(*ctx, "connect"); !s.ok())
            return s;
        std::lock_guard lock(m_mutex);
        if (!m_model)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "connect: weights are not loaded");
        if (m_connected)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "connect: already connected");
        if (std::string bad = wire::check(*req); !bad.empty())
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "connect: " + bad);
        try {
            setActivity("joining the tensor-parallel group");
            if (m_spec.tpSize > 1) {
                auto timeout = std::chrono::milliseconds(req->collective_timeout_ms() ? req->collective_timeout_ms() : 600000);
                m_comm = std::make_unique<GlooCommunicator>(m_credentials, req->store_address(), m_launchId + "/stage" + std::to_string(m_stage),
                                                            req->gloo_host(), m_spec.tpRank, m_spec.tpSize, timeout,
                                                            req->busy_poll());
                m_model->setCommunicator(m_comm.get());
            }
            setActivity("opening pipeline links");
            for (auto& a : req->next_addresses())
                m_next.push_back(std::make_unique<OutPipe>(m_credentials, a, *this));
            for (auto& a : req->token_addresses())
                m_tokenPipes.push_back(std::make_unique<OutPipe>(m_credentials, a, *this));
            m_feedSelf = req->feed_self();
        } catch (const std::exception& e) {
            setActivity("failed to connect");
            return fail(grpc::StatusCode::UNAVAILABLE, std::string("connect: ") + e.what());
        }
        m_connected = true;
        setActivity("idle");
        m_runner = std::thread([this] { run(); });
        return grpc::Status::OK;
    }

    // ---- liveness ----

    grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req, v1::StatusReply* rep) override
    {
        if (grpc::Status s = fromOwner(*ctx, "status"); !s.ok())
            return s;
        {
            std::lock_guard lock(m_stateMutex);
            rep->set_activity(m_activity);
            rep->set_error(m_error);
            rep->set_peer_failed(m_peerFailed);
        }
        rep->set_unix_us(wallMicros());
        rep->set_layers_loaded(m_layersLoaded.load());
        rep->set_layers_total(m_layersTotal);
        struct rusage ru {};
        ::getrusage(RUSAGE_SELF, &ru);
        rep->set_peak_rss_bytes(static_cast<uint64_t>(ru.ru_maxrss) * 1024);
        std::lock_guard lock(m_recordMutex);
        const auto now = Clock::now();
        for (auto& r : m_records) {
            if (r.record.sequence() <= req->records_after())
                continue;
            // A record waits (briefly) for its link's acknowledgement; records go out in order.
            if (!r.complete && now - r.created < std::chrono::seconds(2))
                break;
            *rep->add_records() = r.record;
            if (rep->records_size() >= 2000)
                break;
        }
        return grpc::Status::OK;
    }

    // ---- generation ----

    grpc::Status Start(grpc::ServerContext* ctx, const v1::StartRequest* req, v1::StartReply*) override
    {
        if (grpc::Status s = fromOwner(*ctx, "start"); !s.ok())
            return s;
        if (!m_connected || !m_spec.firstStage)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "start: " + (m_me.empty() ? std::string("this shard") : m_me) +
                                                                   (m_connected ? " is not a first-stage rank" : " is not connected"));
        if (std::string e = error(); !e.empty())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, e);
        if (std::string bad = wire::check(*req, limits()); !bad.empty())
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "start: " + bad);
        const auto& h = req->header();
        const int64_t n = req->tokens_size();
        const int64_t maxRows = prefillChunkRows(m_config.hiddenSize);
        std::vector<Work> items;
        for (int64_t done = 0; done < n; done += maxRows) {
            Work w;
            w.generation = h.generation();
            w.step = items.size();
            w.startPos = req->start_pos() + done;
            w.sample = done + maxRows >= n;
            if (done == 0)
                w.header = h;
            w.tokens.assign(req->tokens().begin() + done, req->tokens().begin() + std::min(n, done + maxRows));
            items.push_back(std::move(w));
        }
        {
            std::lock_guard lock(m_queueMutex);
            if (h.generation() <= m_lastStarted)
                return fail(grpc::StatusCode::INVALID_ARGUMENT, "start: generation " + std::to_string(h.generation()) + " is not new");
            m_lastStarted = h.generation();
            for (auto& w : items)
                m_queue.push_back(std::move(w));
        }
        m_queueCv.notify_all();
        return grpc::Status::OK;
    }

    grpc::Status Observe(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::ObserveEvent, v1::ObserveRequest>* stream) override
    {
        if (grpc::Status s = fromOwner(*ctx, "observe"); !s.ok())
            return s;
        if (!m_connected || !(m_spec.lastStage && m_spec.tpRank == 0))
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "observe: only the last stage's rank 0 samples tokens");
        uint64_t me;
        {
            std::lock_guard lock(m_observeMutex);
            me = ++m_observer;
        }
        m_observeCv.notify_all();
        std::atomic<bool> readerDone{false};
        std::thread reader([&] {
            v1::ObserveRequest r;
            while (stream->Read(&r)) {
                std::lock_guard lock(m_observeMutex);
                // Only the running generation or the next one (the master may stop a generation whose prompt
                // has not reached this stage yet): a far-future number must not stop or stall later answers.
                if (r.generation() == 0 || r.generation() > m_seenGeneration + 1)
                    continue;
                if (r.stop())
                    m_stopGeneration = std::max(m_stopGeneration, r.generation());
                if (r.generation() > m_ackGeneration || (r.generation() == m_ackGeneration && r.acknowledged() > m_acked)) {
                    m_ackGeneration = r.generation();
                    m_acked = r.acknowledged();
                }
                m_observeCv.notify_all();
            }
            readerDone = true;
            m_observeCv.notify_all();
        });
        bool ok = true;
        while (ok) {
            std::unique_lock lock(m_observeMutex);
            m_observeCv.wait_for(lock, std::chrono::milliseconds(200),
                                 [&] { return !m_events.empty() || readerDone || m_observer != me || shuttingDown(); });
            if (readerDone || m_observer != me || shuttingDown() || ctx->IsCancelled())
                break;
            while (!m_events.empty() && ok) {
                v1::ObserveEvent e = std::move(m_events.front());
                m_events.pop_front();
                lock.unlock();
                ok = stream->Write(e);
                lock.lock();
            }
        }
        bool replaced;
        {
            std::lock_guard lock(m_observeMutex);
            replaced = m_observer != me;
        }
        ctx->TryCancel();
        reader.join();
        if (replaced)
            return grpc::Status(grpc::StatusCode::ABORTED, m_me + ": another master connection took over this shard's token stream");
        return grpc::Status::OK;
    }

    grpc::Status Pipe(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::PipeAck, v1::PipeMessage>* stream) override
    {
        if (grpc::Status s = fromLaunchPeer(*ctx, "pipe"); !s.ok())
            return s;
        // The previous stage may open its pipe while this rank still joins its group: holding the weights is
        // enough to check and queue messages (the runner starts once connected).
        if (!m_loaded)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "pipe: this shard holds no weights");
        const wire::ShardLimits shard = limits();
        v1::PipeMessage m;
        while (stream->Read(&m)) {
            // Everything a peer sends is checked against this shard's limits before it is used.
            if (const std::string bad = wire::check(m, shard); !bad.empty()) {
                // The sender is at fault, not this rank: reported as a peer failure, so the master does not
                // blame (or fail over away from) the rank that refused it.
                setError(m_me + ": a malformed pipeline message from " + peerIdentity(*ctx) + ": " + bad, true);
                return fail(grpc::StatusCode::INVALID_ARGUMENT, m_me + ": " + bad);
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
            {
                // Backpressure: while the queue is full (in steps or bytes) this pipe stops reading, and gRPC's
                // flow control holds the sender; a peer cannot make this rank hold more than the limit.
                std::unique_lock lock(m_queueMutex);
                const uint64_t size = w.hidden.size() + w.tokens.size() * 8 + 1024;
                m_queueCv.wait(lock, [&] {
                    return m_shutdown || m_queue.empty() || (m_queue.size() < kMaxQueuedSteps && m_queuedBytes + size <= kMaxQueuedBytes);
                });
                if (m_shutdown)
                    return grpc::Status::OK;
                m_queuedBytes += size;
                w.queuedBytes = size;
                m_queue.push_back(std::move(w));
            }
            m_queueCv.notify_all();
        }
        return grpc::Status::OK;
    }

    // From an OutPipe's reader: the acknowledgement of a message sent for record `sequence`.
    void linkMeasured(uint64_t sequence, int64_t sentUs, int64_t halfRoundTripUs)
    {
        std::lock_guard lock(m_recordMutex);
        for (auto it = m_records.rbegin(); it != m_records.rend(); ++it)
            if (it->record.sequence() == sequence) {
                it->record.set_link_start_us(it->record.link_start_us() ? it->record.link_start_us() : sentUs);
                it->record.set_link_us(std::max(it->record.link_us(), halfRoundTripUs));
                if (--it->pendingAcks <= 0)
                    it->complete = true;
                return;
            }
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
    struct Record {
        v1::RankRecord record;
        Clock::time_point created;
        int pendingAcks = 0;
        bool complete = true;
    };

    wire::ShardLimits limits() const
    {
        wire::ShardLimits l;
        l.contextLimit = m_contextLimit;
        l.vocabSize = m_config.vocabSize;
        l.hiddenSize = m_config.hiddenSize;
        l.firstStage = m_spec.firstStage;
        return l;
    }

    grpc::Status canLoad()
    {
        if (m_slices.empty())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: the shard is not configured");
        // Weights never change under a connected ring (a failed reload must not leave it without a model).
        if (m_connected || m_model)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: this shard already holds its weights");
        return grpc::Status::OK;
    }

    std::string sliceDescription() const
    {
        return "layers " + std::to_string(m_spec.firstLayer) + "-" + std::to_string(m_spec.lastLayer) + " tp " + std::to_string(m_spec.tpRank) + "/" +
               std::to_string(m_spec.tpSize) + (m_spec.firstStage ? " first" : "") + (m_spec.lastStage ? " last" : "");
    }

    void storeInCache(const std::map<std::string, std::string>& hashes)
    {
        if (!m_sliceCache)
            return;
        try {
            setActivity("keeping the weights in the slice cache");
            std::vector<std::pair<std::string, std::string>> ordered;
            std::vector<CachedTensor> tensors;
            tensors.reserve(m_slices.size());
            for (auto& s : shardTensors(m_config, m_spec)) {
                ordered.emplace_back(s.name, hashes.at(s.name));
            }
            // The cache takes views: move the bytes in and back out, no copy.
            std::vector<const CachedTensor*> views;
            for (auto& [name, hash] : ordered) {
                auto& r = m_weights.tensors.at(name);
                CachedTensor t;
                t.name = name;
                t.dtype = dtypeName(r.dtype);
                t.shape = r.shape;
                t.sha256 = hash;
                t.bytes = std::move(r.bytes);
                tensors.push_back(std::move(t));
            }
            for (auto& t : tensors)
                views.push_back(&t);
            std::string error;
            try {
                m_sliceCache->store(SliceCache::key(m_configJson, sliceDescription(), ordered), views);
            } catch (const std::exception& e) {
                error = e.what();
            }
            for (auto& t : tensors)
                m_weights.tensors.at(t.name).bytes = std::move(t.bytes);
            if (!error.empty())
                std::fprintf(stderr, "slice cache: %s\n", error.c_str());
        } catch (const std::exception& e) {
            std::fprintf(stderr, "slice cache: %s\n", e.what());
        }
    }

    void buildModel(const WeightProvider& weights)
    {
        setActivity("loading layers");
        m_layersLoaded = 0;
        setComputeThreads(m_threads);
        ProgressWeights progress(weights, m_layersLoaded);
        m_model = std::make_unique<LlamaModel>(m_config, progress, m_compute, m_spec, nullptr);
        m_layersLoaded = m_layersTotal;
        m_cache = std::make_unique<KvCache>(m_model->newCache(m_contextLimit));
        m_loaded = true;
        setActivity("weights loaded");
    }

    void setActivity(const std::string& a)
    {
        std::lock_guard lock(m_stateMutex);
        m_activity = a;
    }
    void setError(const std::string& e, bool peerFailed = false)
    {
        std::lock_guard lock(m_stateMutex);
        if (m_error.empty()) {
            m_error = e;
            m_peerFailed = peerFailed;
        }
        m_activity = "failed";
    }
    std::string error()
    {
        std::lock_guard lock(m_stateMutex);
        return m_error;
    }
    bool shuttingDown()
    {
        std::lock_guard lock(m_queueMutex);
        return m_shutdown;
    }

    void pushEvent(v1::ObserveEvent e)
    {
        {
            std::lock_guard lock(m_observeMutex);
            if (m_events.size() < 100000)
                m_events.push_back(std::move(e));
        }
        m_observeCv.notify_all();
    }

    uint64_t addRecord(v1::RankRecord r, int pendingAcks)
    {
        std::lock_guard lock(m_recordMutex);
        r.set_sequence(++m_recordSequence);
        Record x;
        x.record = std::move(r);
        x.created = Clock::now();
        x.pendingAcks = pendingAcks;
        x.complete = pendingAcks == 0;
        m_records.push_back(std::move(x));
        while (m_records.size() > 20000)
            m_records.pop_front();
        return m_recordSequence;
    }

    // The ring's worker: one step at a time, in arrival order.
    void run()
    {
        setComputeThreads(m_threads); // OpenMP's thread count is per calling thread
        for (;;) {
            Work w;
            {
                std::unique_lock lock(m_queueMutex);
                if (m_queue.empty())
                    setActivity(!m_spec.firstStage ? "waiting for stage " + std::to_string(m_stage - 1)
                                : m_generation == 0 ? std::string("idle")
                                                    : "waiting for a token from the last stage, or a new prompt");
                m_queueCv.wait(lock, [&] { return m_shutdown || !m_queue.empty(); });
                if (m_shutdown)
                    return;
                w = std::move(m_queue.front());
                m_queue.pop_front();
                m_queuedBytes -= w.queuedBytes;
            }
            m_queueCv.notify_all(); // a pipe waiting for room
            if (!error().empty())
                continue; // a failed rank computes nothing more; the master stops the launch
            try {
                process(w);
            } catch (const PeerError& e) {
                failRank(w, m_me + ": " + e.what(), true);
            } catch (const std::exception& e) {
                failRank(w, m_me + ": " + e.what(), false);
            }
        }
    }

    // The rank computes nothing more; the master hears it from Status (and the token stream) and stops the launch.
    void failRank(const Work& w, const std::string& message, bool peerFailed)
    {
        setError(message, peerFailed);
        std::fprintf(stderr, "%s\n", message.c_str());
        if (m_spec.lastStage && m_spec.tpRank == 0) {
            v1::ObserveEvent ev;
            ev.set_generation(w.generation);
            ev.set_error(message);
            pushEvent(std::move(ev));
        }
    }

    void process(Work& w)
    {
        if (w.header) {
            if (w.generation <= m_generation)
                throw Error("generation " + std::to_string(w.generation) + " arrived after generation " + std::to_string(m_generation));
            m_generation = w.generation;
            {
                std::lock_guard lock(m_observeMutex);
                m_seenGeneration = w.generation;
            }
            m_header = *w.header;
            m_promptStart = w.startPos;
            m_nextStep = 0;
            m_produced = 0;
            if (m_spec.lastStage && m_spec.tpRank == 0 && (m_header.new_sequence() || !m_sampler)) {
                SamplingParams p;
                p.temperature = m_header.sampling().temperature();
                p.topK = m_header.sampling().top_k();
                p.topP = m_header.sampling().top_p() > 0 ? m_header.sampling().top_p() : 1.0;
                p.seed = m_header.sampling().seed();
                m_sampler = std::make_unique<Sampler>(p);
            }
        }
        if (w.generation != m_generation)
            return; // a token of a generation that was stopped: nothing to do
        if (w.step != m_nextStep)
            throw Error("desynchronised: expected step " + std::to_string(m_nextStep) + " of generation " + std::to_string(m_generation) + ", got " +
                        std::to_string(w.step));
        ++m_nextStep;
        setActivity("computing step " + std::to_string(w.step) + " of generation " + std::to_string(w.generation));
        if (w.startPos > m_cache->length())
            throw Error("start position " + std::to_string(w.startPos) + " is past the " + std::to_string(m_cache->length()) + " cached positions");
        m_cache->truncate(w.startPos);
        at::Tensor input;
        int64_t rows = 0;
        if (m_spec.firstStage) {
            input = at::tensor(w.tokens, at::kLong);
            rows = static_cast<int64_t>(w.tokens.size());
        } else {
            rows = w.rows;
            input = at::empty({rows, m_config.hiddenSize}, at::kFloat);
            std::memcpy(input.data_ptr<float>(), w.hidden.data(), w.hidden.size());
        }
        v1::RankRecord rec;
        rec.set_generation(w.generation);
        rec.set_step(w.step);
        rec.set_input_tokens(static_cast<uint32_t>(rows));
        rec.set_start_us(wallMicros());
        rec.set_link_us(-1);
        rec.set_end_to_end_us(-1);
        rec.set_token(-1);
        const auto t0 = Clock::now();
        at::Tensor out;
        try {
            out = m_model->forwardShard(input, *m_cache);
        } catch (const std::exception& e) {
            if (m_comm && std::string(e.what()).find("all-reduce failed") != std::string::npos)
                throw PeerError(e.what());
            throw;
        }
        const auto t1 = Clock::now();
        if (m_comm) {
            auto u = m_comm->take();
            rec.set_allreduces(u.calls);
            rec.set_allreduce_us(static_cast<uint64_t>(u.seconds * 1e6));
            rec.set_allreduce_bytes(u.bytes);
            for (auto& [a, b] : u.spans) {
                rec.add_allreduce_spans(a);
                rec.add_allreduce_spans(b);
            }
        }
        rec.set_compute_us(micros(t1 - t0) - std::min<uint64_t>(micros(t1 - t0), rec.allreduce_us()));

        if (!m_spec.lastStage) {
            v1::PipeMessage msg;
            msg.set_generation(w.generation);
            msg.set_step(w.step);
            msg.set_start_pos(w.startPos);
            if (w.header)
                *msg.mutable_header() = *w.header;
            msg.set_rows(static_cast<uint32_t>(out.size(0)));
            msg.set_hidden(std::string(reinterpret_cast<const char*>(out.data_ptr<float>()), static_cast<size_t>(out.numel()) * 4));
            msg.set_sample(w.sample);
            rec.set_link("stage " + std::to_string(m_stage) + " -> " + std::to_string(m_stage + 1));
            rec.set_link_bytes(msg.hidden().size() * m_next.size());
            rec.set_link_start_us(wallMicros());
            const uint64_t seq = addRecord(rec, static_cast<int>(m_next.size()));
            setActivity("sending step " + std::to_string(w.step) + " to stage " + std::to_string(m_stage + 1));
            for (auto& p : m_next)
                if (!p->send(msg, seq))
                    throw PeerError("the link to stage " + std::to_string(m_stage + 1) + " at " + p->address() + " broke");
            return;
        }
        if (m_spec.tpRank != 0 || !w.sample) {
            addRecord(rec, 0);
            return;
        }
        // The last stage's rank 0: sample, report, and feed the token back to stage 0 unless the answer ended.
        const auto s0 = Clock::now();
        const float* p = out.data_ptr<float>();
        const size_t n = static_cast<size_t>(out.numel());
        const int token = m_sampler->sample(p, n);
        v1::ObserveEvent ev;
        ev.set_generation(w.generation);
        auto* te = ev.mutable_token();
        te->set_step(m_produced);
        te->set_token(token);
        te->set_pos(w.startPos + rows - 1);
        te->set_input_tokens(static_cast<uint32_t>(m_produced == 0 ? w.startPos + rows - m_promptStart : rows));
        for (auto& [id, logit] : Sampler::topLogits(p, n, std::min<uint32_t>(m_header.top_logits(), 64))) {
            te->add_top_ids(id);
            te->add_top_logits(logit);
        }
        const auto s1 = Clock::now();
        rec.set_sampling_us(micros(s1 - s0));
        rec.set_token(token);
        rec.set_end_to_end_us(m_produced > 0 ? static_cast<int64_t>(micros(s1 - m_lastSample)) : -1);
        m_lastSample = s1;
        ++m_produced;
        const int64_t nextPos = w.startPos + rows;
        std::string end;
        if (std::find(m_header.eos_ids().begin(), m_header.eos_ids().end(), token) != m_header.eos_ids().end())
            end = "eos";
        else if (m_header.max_tokens() > 0 && m_produced >= m_header.max_tokens())
            end = "max tokens";
        else if (nextPos >= m_contextLimit)
            end = "context full";
        {
            std::lock_guard lock(m_observeMutex);
            if (end.empty() && m_stopGeneration >= w.generation)
                end = "stopped";
        }
        ev.set_end(end);
        if (!end.empty()) {
            addRecord(rec, 0);
            pushEvent(std::move(ev));
            return;
        }
        pushEvent(std::move(ev));
        // Run ahead of the master by at most `window` tokens.
        if (m_header.window() > 0) {
            setActivity("waiting for the master to take token " + std::to_string(m_produced - m_header.window()));
            std::unique_lock lock(m_observeMutex);
            m_observeCv.wait(lock, [&] {
                const uint64_t acked = m_ackGeneration == w.generation ? m_acked : 0;
                return acked + m_header.window() > m_produced || m_stopGeneration >= w.generation || shuttingDown();
            });
            if (m_stopGeneration >= w.generation) {
                lock.unlock();
                addRecord(rec, 0);
                v1::ObserveEvent stop;
                stop.set_generation(w.generation);
                stop.set_end("stopped");
                pushEvent(std::move(stop));
                return;
            }
        }
        v1::PipeMessage msg;
        msg.set_generation(w.generation);
        msg.set_step(m_nextStep);
        msg.set_start_pos(nextPos);
        msg.add_tokens(token);
        msg.set_sample(true);
        if (!m_tokenPipes.empty()) {
            rec.set_link("stage " + std::to_string(m_stage) + " -> 0 (token)");
            rec.set_link_bytes(msg.ByteSizeLong() * m_tokenPipes.size());
            rec.set_link_start_us(wallMicros());
        }
        const uint64_t seq = addRecord(rec, static_cast<int>(m_tokenPipes.size()));
        if (m_feedSelf) {
            Work next;
            next.generation = w.generation;
            next.step = m_nextStep;
            next.startPos = nextPos;
            next.sample = true;
            next.tokens.assign(1, token);
            {
                std::lock_guard lock(m_queueMutex);
                m_queue.push_back(std::move(next));
            }
        }
        for (auto& pipe : m_tokenPipes)
            if (!pipe->send(msg, seq))
                throw PeerError("the link back to stage 0 at " + pipe->address() + " broke");
    }


    const Credentials& m_credentials;
    int m_threads;
    int m_admittedThreads;
    std::vector<std::string> m_modelsRoots;
    std::string m_owner;     // the launching master's certificate name ("" = anyone with the key: tests)
    std::string m_launchTag; // the launch id's prefix in every shard name of this launch
    std::unique_ptr<SliceCache> m_sliceCache;
    std::mutex m_mutex; // configure, load, connect
    ModelConfig m_config;
    std::string m_configJson;
    ShardSpec m_spec;
    uint32_t m_stage = 0;
    std::string m_launchId;
    std::string m_worker;
    std::string m_me;
    ComputeType m_compute = ComputeType::F32;
    int64_t m_contextLimit = 0;
    std::map<std::string, TensorSlice> m_slices;
    ReceivedWeights m_weights;
    std::unique_ptr<LlamaModel> m_model;
    std::unique_ptr<KvCache> m_cache;
    std::unique_ptr<GlooCommunicator> m_comm;
    std::vector<std::unique_ptr<OutPipe>> m_next;
    std::vector<std::unique_ptr<OutPipe>> m_tokenPipes;
    bool m_feedSelf = false;
    std::unique_ptr<Sampler> m_sampler;
    std::atomic<bool> m_connected{false};
    std::atomic<bool> m_loaded{false};
    std::atomic<uint32_t> m_layersLoaded{0};
    uint32_t m_layersTotal = 0;

    // The runner's state (its thread only).
    uint64_t m_generation = 0;
    uint64_t m_nextStep = 0;
    uint64_t m_produced = 0;
    int64_t m_promptStart = 0;
    v1::GenerationHeader m_header;
    Clock::time_point m_lastSample;
    std::thread m_runner;

    std::mutex m_queueMutex;
    std::condition_variable m_queueCv;
    std::deque<Work> m_queue;
    uint64_t m_queuedBytes = 0;
    static constexpr size_t kMaxQueuedSteps = 1024;
    static constexpr uint64_t kMaxQueuedBytes = 256u << 20;
    bool m_shutdown = false;
    uint64_t m_lastStarted = 0;

    std::mutex m_observeMutex;
    std::condition_variable m_observeCv;
    std::deque<v1::ObserveEvent> m_events;
    uint64_t m_observer = 0;
    uint64_t m_seenGeneration = 0; // the last generation whose header reached the runner
    uint64_t m_stopGeneration = 0;
    uint64_t m_ackGeneration = 0;
    uint64_t m_acked = 0;

    std::mutex m_stateMutex;
    std::string m_activity = "starting";
    std::string m_error;
    bool m_peerFailed = false;

    std::mutex m_recordMutex;
    std::deque<Record> m_records;
    uint64_t m_recordSequence = 0;

};

OutPipe::OutPipe(const Credentials& credentials, std::string address, ShardService& owner)
    : m_address(std::move(address))
    , m_owner(owner)
    , m_stub(v1::Shard::NewStub(openChannel(credentials, m_address)))
{
    m_ctx.set_wait_for_ready(true);
    m_stream = m_stub->Pipe(&m_ctx);
    m_reader = std::thread([this] { readAcks(); });
}

OutPipe::~OutPipe()
{
    m_ctx.TryCancel();
    if (m_reader.joinable())
        m_reader.join();
}

bool OutPipe::send(const v1::PipeMessage& message, uint64_t recordSequence)
{
    {
        std::lock_guard lock(m_mutex);
        if (m_pending.size() > 10000)
            m_pending.erase(m_pending.begin());
        m_pending[{message.generation(), message.step()}] = Pending{Clock::now(), wallMicros(), recordSequence};
    }
    return m_stream->Write(message);
}

void OutPipe::readAcks()
{
    v1::PipeAck ack;
    while (m_stream->Read(&ack)) {
        Pending p;
        {
            std::lock_guard lock(m_mutex);
            auto it = m_pending.find({ack.generation(), ack.step()});
            if (it == m_pending.end())
                continue;
            p = it->second;
            m_pending.erase(it);
        }
        m_owner.linkMeasured(p.record, p.sentUs, static_cast<int64_t>(micros(Clock::now() - p.sent)) / 2);
    }
}

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
