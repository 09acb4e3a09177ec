// SPDX-License-Identifier: MIT
#include "worker/shard_server.h"

#include "core/credentials.h"
#include "core/error.h"
#include "core/model_config.h"
#include "core/process.h"
#include "core/protocol.h"
#include "core/rpc.h"
#include "core/safetensors.h"
#include "core/sampler.h"
#include "core/shard_spec.h"
#include "core/user_dirs.h"
#include "proto/together.grpc.pb.h"
#include "worker/gloo_comm.h"
#include "worker/llama_model.h"
#include "worker/shard_processes.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <openssl/evp.h>

#include <condition_variable>
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

class ShardService final : public v1::Shard::Service, public v1::KvStore::Service {
public:
    ShardService(const Credentials& credentials, int threads, std::vector<std::string> modelsRoots)
        : m_credentials(credentials)
        , m_threads(threads)
        , m_admittedThreads(threads)
        , m_modelsRoots(std::move(modelsRoots))
    {
        setComputeThreads(threads);
    }

    grpc::Status Configure(grpc::ServerContext* ctx, const v1::ShardConfig* req, v1::ConfigureReply* rep) override
    {
        std::lock_guard lock(m_mutex);
        try {
            if (m_model)
                throw Error("this shard is already configured");
            m_config = ModelConfig::fromJsonText(req->config_json(), "config.json from the master");
            m_configJson = req->config_json();
            if (req->tp_size() < 1 || req->tp_rank() >= req->tp_size() || req->num_stages() < 1 || req->stage() >= req->num_stages())
                throw Error("bad rank or stage numbers");
            m_spec = ShardSpec{req->first_layer(), req->last_layer(), static_cast<int>(req->tp_rank()), static_cast<int>(req->tp_size()),
                               req->stage() == 0, req->stage() + 1 == req->num_stages()};
            m_stage = req->stage();
            m_launchId = req->launch_id();
            m_compute = parseComputeType(req->dtype());
            m_contextLimit = req->context_limit();
            // Never more than the daemon admitted this shard with (its --threads): that is what the machine donates.
            if (req->threads() > 0) {
                m_threads = std::min(static_cast<int>(req->threads()), m_admittedThreads);
                setComputeThreads(m_threads);
            }
            m_slices.clear();
            int64_t bytes = 0;
            for (auto& s : shardTensors(m_config, m_spec)) {
                int64_t n = 1;
                for (auto d : s.shape())
                    n *= d;
                bytes += n * 4; // at most f32
                m_slices.emplace(s.name, s);
            }
            rep->set_expected_bytes(bytes);
            rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
            m_weights = ReceivedWeights();
        } catch (const std::exception& e) {
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("configure: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status LoadWeights(grpc::ServerContext* ctx, grpc::ServerReader<v1::WeightChunk>* reader, v1::LoadWeightsReply* rep) override
    {
        std::lock_guard lock(m_mutex);
        if (m_slices.empty())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: the shard is not configured");
        v1::WeightChunk chunk;
        std::string current;
        uint64_t received = 0;
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
                    std::vector<int64_t> shape(chunk.shape().begin(), chunk.shape().end());
                    if (shape != it->second.shape())
                        throw Error("tensor " + current + " has shape " + shapeString(shape) + " but this shard's slice is " +
                                    shapeString(it->second.shape()));
                    DType dt = parseDType(chunk.dtype(), "tensor " + current);
                    int64_t n = 1;
                    for (auto d : shape)
                        n *= d;
                    // Size is checked against the plan before any allocation.
                    if (chunk.total_bytes() != static_cast<uint64_t>(n) * dtypeSize(dt))
                        throw Error("tensor " + current + ": " + std::to_string(chunk.total_bytes()) + " bytes announced, the slice needs " +
                                    std::to_string(static_cast<uint64_t>(n) * dtypeSize(dt)));
                    auto& t = m_weights.tensors[current];
                    t.dtype = dt;
                    t.shape = shape;
                    t.bytes.reserve(chunk.total_bytes());
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
                    current.clear();
                }
            }
            if (!current.empty())
                throw Error("the stream ended inside tensor " + current);
            for (auto& [name, s] : m_slices)
                if (!m_weights.tensors.count(name))
                    throw Error("tensor " + name + " was not sent");
            setComputeThreads(m_threads);
            m_model = std::make_unique<LlamaModel>(m_config, m_weights, m_compute, m_spec, nullptr);
            m_weights = ReceivedWeights(); // the model holds converted copies
            m_cache = std::make_unique<KvCache>(m_model->newCache(m_contextLimit));
        } catch (const std::exception& e) {
            cleanup();
            m_weights = ReceivedWeights();
            m_model.reset();
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load weights: ") + e.what());
        }
        cleanup();
        rep->set_bytes(received);
        rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
        return grpc::Status::OK;
    }

    grpc::Status LoadLocalWeights(grpc::ServerContext* ctx, const v1::LoadLocalRequest* req, v1::LoadWeightsReply* rep) override
    {
        std::lock_guard lock(m_mutex);
        if (m_slices.empty())
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "load weights: the shard is not configured");
        try {
            const std::string& dir = req->model_dir();
            checkModelFolderAllowed(dir, m_modelsRoots);
            // Every file read by name is checked too (each may be a symlink), before it is opened.
            for (const char* name : {"config.json", "model.safetensors.index.json", "model.safetensors"})
                if (std::filesystem::exists(dir + "/" + name) || std::string(name) == "config.json")
                    checkModelFolderAllowed(dir + "/" + name, m_modelsRoots);
            // Same model as the master's? config.json first, then every slice by hash.
            nlohmann::json local, master;
            try {
                local = nlohmann::json::parse(readTextFile(dir + "/config.json"));
                master = nlohmann::json::parse(m_configJson);
            } catch (const nlohmann::json::exception& e) {
                throw Error(dir + "/config.json: malformed JSON: " + e.what());
            }
            if (local != master)
                throw Error("the model in " + dir + " on this worker is not the master's model (config.json differs)");
            std::map<std::string, std::string> hashes;
            for (auto& h : req->hashes())
                hashes[h.name()] = h.sha256();
            SafeTensors files = SafeTensors::open(dir, /*map=*/false); // headers only: the slice is read by pread
            for (auto& [name, view] : files.tensors())
                checkModelFolderAllowed(view.file->path(), m_modelsRoots); // shard files may be symlinks (HF cache)
            VerifiedWeights weights(files, hashes, dir);
            setComputeThreads(m_threads);
            m_model = std::make_unique<LlamaModel>(m_config, weights, m_compute, m_spec, nullptr);
            m_cache = std::make_unique<KvCache>(m_model->newCache(m_contextLimit));
            rep->set_bytes(weights.bytesRead());
            rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
        } catch (const std::exception& e) {
            m_model.reset();
            return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load local weights: ") + e.what());
        }
        return grpc::Status::OK;
    }

    grpc::Status Connect(grpc::ServerContext* ctx, const v1::ConnectRequest* req, v1::ConnectReply*) override
    {
        std::lock_guard lock(m_mutex);
        if (!m_model)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, "connect: weights are not loaded");
        try {
            if (m_spec.tpSize > 1) {
                auto timeout = std::chrono::milliseconds(req->collective_timeout_ms() ? req->collective_timeout_ms() : 600000);
                m_comm = std::make_unique<GlooCommunicator>(m_credentials, req->store_address(), m_launchId + "/stage" + std::to_string(m_stage),
                                                            req->gloo_host(), m_spec.tpRank, m_spec.tpSize, timeout,
                                                            req->busy_poll());
                m_model->setCommunicator(m_comm.get());
            }
            m_next.clear();
            for (auto& a : req->next_addresses())
                m_next.push_back({a, v1::Shard::NewStub(openChannel(m_credentials, a))});
        } catch (const std::exception& e) {
            return fail(grpc::StatusCode::UNAVAILABLE, std::string("connect: ") + e.what());
        }
        m_connected = true;
        return grpc::Status::OK;
    }

    grpc::Status Step(grpc::ServerContext* ctx, const v1::StepRequest* req, v1::StepReply* rep) override
    {
        std::lock_guard lock(m_mutex);
        const std::string me = "stage " + std::to_string(m_stage) + " rank " + std::to_string(m_spec.tpRank);
        if (!m_connected)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, me + ": not connected");
        if (req->step() != m_lastStep + 1)
            return fail(grpc::StatusCode::FAILED_PRECONDITION, me + ": desynchronised: expected step " + std::to_string(m_lastStep + 1) +
                                                                   ", got " + std::to_string(req->step()));
        m_lastStep = req->step();
        // OpenMP's thread count is per calling thread, and gRPC serves each call on a pool thread whose
        // default is every core: without this a one-thread shard computes with all of them.
        setComputeThreads(m_threads);
        auto t0 = Clock::now();
        at::Tensor out;
        try {
            if (req->start_pos() < 0 || req->start_pos() > m_cache->length())
                throw Error("start position " + std::to_string(req->start_pos()) + " is past the " + std::to_string(m_cache->length()) +
                            " cached positions");
            m_cache->truncate(req->start_pos());
            at::Tensor input;
            if (m_spec.firstStage) {
                if (req->tokens_size() == 0)
                    throw Error("no tokens");
                std::vector<int64_t> ids(req->tokens().begin(), req->tokens().end());
                input = at::tensor(ids, at::kLong);
            } else {
                const int64_t rows = req->rows(), H = m_config.hiddenSize;
                if (rows < 1 || static_cast<uint64_t>(req->hidden().size()) != static_cast<uint64_t>(rows * H * 4))
                    throw Error("hidden state of " + std::to_string(req->hidden().size()) + " bytes does not match " + std::to_string(rows) +
                                " rows of " + std::to_string(H) + " floats");
                input = at::empty({rows, H}, at::kFloat);
                std::memcpy(input.data_ptr<float>(), req->hidden().data(), req->hidden().size());
            }
            out = m_model->forwardShard(input, *m_cache);
        } catch (const std::exception& e) {
            return fail(grpc::StatusCode::INTERNAL, me + ": " + e.what());
        }
        auto t1 = Clock::now();
        v1::StageTiming timing;
        timing.set_stage(m_stage);
        timing.set_rank(static_cast<uint32_t>(m_spec.tpRank));
        uint32_t calls = 0;
        double arSeconds = m_comm ? m_comm->takeSeconds(&calls) : 0.0;
        timing.set_allreduce_us(static_cast<uint64_t>(arSeconds * 1e6));
        timing.set_allreduces(calls);
        timing.set_compute_us(micros(t1 - t0) - std::min<uint64_t>(micros(t1 - t0), timing.allreduce_us()));

        if (!m_spec.lastStage) {
            // Hand the hidden state to our ranks of the next stage, in parallel; one of the replies carries
            // the token when the chain ends at the last stage's rank 0.
            v1::StepRequest next = *req;
            next.clear_tokens();
            next.set_rows(static_cast<uint32_t>(out.size(0)));
            next.set_hidden(std::string(reinterpret_cast<const char*>(out.data_ptr<float>()), static_cast<size_t>(out.numel()) * 4));
            std::vector<std::future<std::pair<grpc::Status, v1::StepReply>>> calls;
            for (auto& n : m_next) {
                calls.push_back(std::async(std::launch::async, [&, stub = n.stub.get()] {
                    grpc::ClientContext c;
                    c.set_deadline(ctx->deadline());
                    v1::StepReply r;
                    grpc::Status s = stub->Step(&c, next, &r);
                    return std::make_pair(s, r);
                }));
            }
            for (size_t i = 0; i < calls.size(); ++i) {
                auto [s, r] = calls[i].get();
                if (!s.ok())
                    return fail(s.error_code(), s.error_message().rfind("stage ", 0) == 0
                                                    ? s.error_message()
                                                    : me + ": next stage " + m_next[i].address + ": " + s.error_message());
                if (r.has_token()) {
                    rep->set_has_token(true);
                    rep->set_token(r.token());
                    *rep->mutable_top_ids() = r.top_ids();
                    *rep->mutable_top_logits() = r.top_logits();
                }
                for (auto& t : r.timings())
                    *rep->add_timings() = t;
            }
            timing.set_downstream_us(micros(Clock::now() - t1));
        } else if (out.defined() && req->sample()) {
            if (req->new_sequence() || !m_sampler) {
                SamplingParams p;
                p.temperature = req->sampling().temperature();
                p.topK = req->sampling().top_k();
                p.topP = req->sampling().top_p() > 0 ? req->sampling().top_p() : 1.0;
                p.seed = req->sampling().seed();
                m_sampler = std::make_unique<Sampler>(p);
            }
            const float* p = out.data_ptr<float>();
            const size_t n = static_cast<size_t>(out.numel());
            rep->set_has_token(true);
            rep->set_token(m_sampler->sample(p, n));
            for (auto& [id, logit] : Sampler::topLogits(p, n, std::min<uint32_t>(req->top_logits(), 64))) {
                rep->add_top_ids(id);
                rep->add_top_logits(logit);
            }
        }
        *rep->add_timings() = timing;
        return grpc::Status::OK;
    }

    // ---- KvStore: gloo rendezvous for this stage (used when this shard is rank 0) ----

    grpc::Status Set(grpc::ServerContext* ctx, const v1::KvSetRequest* req, v1::KvSetReply*) override
    {
        if (req->key().size() > 1024 || req->value().size() > (1 << 20))
            return fail(grpc::StatusCode::INVALID_ARGUMENT, "store: key or value too large");
        std::lock_guard lock(m_kvMutex);
        if (m_kv.size() > 10000)
            return fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "store: too many keys");
        m_kv[req->key()] = req->value();
        m_kvChanged.notify_all();
        return grpc::Status::OK;
    }

    grpc::Status Get(grpc::ServerContext* ctx, const v1::KvGetRequest* req, v1::KvGetReply* rep) override
    {
        std::unique_lock lock(m_kvMutex);
        auto deadline = Clock::now() + std::chrono::milliseconds(std::min<uint32_t>(req->timeout_ms(), 600000));
        auto ready = [&] {
            for (auto& k : req->keys())
                if (!m_kv.count(k))
                    return false;
            return true;
        };
        if (!m_kvChanged.wait_until(lock, deadline, ready))
            return fail(grpc::StatusCode::DEADLINE_EXCEEDED, "store: keys not set in time (a tensor-parallel peer did not join)");
        for (auto& k : req->keys())
            rep->add_values(m_kv[k]);
        return grpc::Status::OK;
    }

private:
    struct NextStage {
        std::string address;
        std::unique_ptr<v1::Shard::Stub> stub;
    };

    const Credentials& m_credentials;
    int m_threads;
    int m_admittedThreads;
    std::vector<std::string> m_modelsRoots;
    std::mutex m_mutex;
    ModelConfig m_config;
    std::string m_configJson;
    ShardSpec m_spec;
    uint32_t m_stage = 0;
    std::string m_launchId;
    ComputeType m_compute = ComputeType::F32;
    int64_t m_contextLimit = 0;
    std::map<std::string, TensorSlice> m_slices;
    ReceivedWeights m_weights;
    std::unique_ptr<LlamaModel> m_model;
    std::unique_ptr<KvCache> m_cache;
    std::unique_ptr<GlooCommunicator> m_comm;
    std::vector<NextStage> m_next;
    std::unique_ptr<Sampler> m_sampler;
    bool m_connected = false;
    uint64_t m_lastStep = 0;

    std::mutex m_kvMutex;
    std::condition_variable m_kvChanged;
    std::map<std::string, std::string> m_kv;
};

} // namespace

int runShard(const ShardOptions& o)
{
    dieWithParent(o.parentPid);
    try {
        const Credentials credentials(ClusterKey::fromFile(o.keyFile), o.name.empty() ? std::string("shard") : o.name.substr(0, 64));
        ShardService service(credentials, o.threads, o.modelsRoots);
        // The first free port of the range (several shards of one machine share it).
        auto [lo, hi] = parsePortRange(o.ports);
        std::unique_ptr<grpc::Server> server;
        int port = 0;
        for (uint32_t p = lo; p <= hi && !server; ++p) {
            grpc::ServerBuilder builder;
            builder.RegisterService(static_cast<v1::Shard::Service*>(&service));
            builder.RegisterService(static_cast<v1::KvStore::Service*>(&service));
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
