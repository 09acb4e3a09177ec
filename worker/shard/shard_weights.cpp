// SPDX-License-Identifier: MIT
#include "shard/shard_weights.h"

#include "base/error.h"
#include "base/files.h"
#include "base/json.h"
#include "base/user_dirs.h"
#include "model/gguf.h"
#include "shard/shard_server.h"
#include "shard/shard_status.h"
#include "shard/slice_cache.h"

#include <nlohmann/json.hpp>

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace together {

namespace {

grpc::Status fail(grpc::StatusCode code, const std::string& msg) { return grpc::Status(code, msg); }

// A local checkpoint's slices, each checked against the master's SHA-256 before the model uses it.
class VerifiedWeights : public WeightProvider {
public:
    VerifiedWeights(const SafeTensors& files, bool keepBlocks, const std::map<std::string, std::string>& hashes, std::string dir)
        : m_inner(files, keepBlocks)
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

} // namespace

TensorView ReceivedWeights::get(const TensorSlice& slice, std::vector<std::byte>&) const
{
    auto it = tensors.find(slice.name);
    if (it == tensors.end())
        throw Error("tensor " + slice.name + " was not received");
    TensorView v;
    v.name = slice.name;
    v.dtype = it->second.type.dtype;
    v.stored = it->second.type.blocks;
    v.shape = it->second.shape;
    v.data = it->second.bytes.data();
    v.nbytes = it->second.bytes.size();
    return v;
}

ShardWeights::ShardWeights(const ShardOptions& options, ShardStatus& status)
    : m_status(status)
    , m_threads(options.threads)
    , m_admittedThreads(options.threads)
    , m_modelsRoots(options.modelsRoots)
{
    if (!options.cacheDir.empty() && options.cacheBytes > 0) {
        try {
            m_sliceCache = std::make_unique<SliceCache>(options.cacheDir, options.cacheBytes);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "slice cache off: %s\n", e.what());
        }
    }
}

ShardWeights::~ShardWeights() = default;

grpc::Status ShardWeights::configure(const v1::ShardConfig& req, v1::ConfigureReply* rep)
{
    try {
        if (!m_slices.empty() || m_model)
            throw Error("this shard is already configured");
        m_config = ModelConfig::fromJsonText(req.config_json(), "config.json from the master");
        m_configJson = req.config_json();
        if (std::string bad = wire::check(req, m_config); !bad.empty())
            throw Error(bad);
        m_spec = ShardSpec{req.first_layer(), req.last_layer(), static_cast<int>(req.tp_rank()), static_cast<int>(req.tp_size()),
                           req.stage() == 0, req.stage() + 1 == req.num_stages()};
        m_stage = req.stage();
        m_launchId = req.launch_id();
        m_worker = req.worker().substr(0, 256);
        m_compute = parseComputeType(req.dtype());
        m_contextLimit = req.context_limit();
        // Never more than the daemon admitted this shard with (its --threads): that is what the machine donates.
        if (req.threads() > 0)
            m_threads = std::min(static_cast<int>(req.threads()), m_admittedThreads);
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
        m_status.setActivity("configured");
    } catch (const std::exception& e) {
        m_slices.clear();
        return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("configure: ") + e.what());
    }
    return grpc::Status::OK;
}

grpc::Status ShardWeights::receive(grpc::ServerReader<v1::WeightChunk>& reader, v1::LoadWeightsReply* rep)
{
    m_status.setActivity("receiving weights");
    v1::WeightChunk chunk;
    std::string current;
    uint64_t received = 0;
    std::map<std::string, std::string> hashes;
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    auto cleanup = [&] { EVP_MD_CTX_free(md); };
    try {
        while (reader.Read(&chunk)) {
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
                t.type = first.type;
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
        m_status.setActivity("configured");
        return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load weights: ") + e.what());
    }
    rep->set_bytes(received);
    rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
    return grpc::Status::OK;
}

grpc::Status ShardWeights::loadCached(const v1::LoadCachedRequest& req, v1::LoadCachedReply* rep)
{
    rep->set_found(false);
    if (!m_sliceCache)
        return grpc::Status::OK;
    try {
        std::map<std::string, std::string> expected;
        std::vector<std::pair<std::string, std::string>> ordered;
        for (auto& h : req.hashes()) {
            if (!m_slices.count(h.name()) || h.sha256().size() != 32)
                throw Error("hash for " + h.name() + " does not belong to this slice");
            expected[h.name()] = h.sha256();
            ordered.emplace_back(h.name(), h.sha256());
        }
        if (expected.size() != m_slices.size())
            return grpc::Status::OK;
        m_status.setActivity("reading weights from the slice cache");
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
            r.type = parseTensorType(t.dtype, "cached tensor " + t.name);
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
        m_status.setActivity("configured");
        return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load cached weights: ") + e.what());
    }
    return grpc::Status::OK;
}

grpc::Status ShardWeights::loadLocal(const v1::LoadLocalRequest& req, v1::LoadWeightsReply* rep)
{
    try {
        const std::string& dir = req.model_dir();
        checkModelFolderAllowed(dir, m_modelsRoots);
        // Every file read by name is checked too (each may be a symlink), before it is opened. A GGUF model is one
        // file (its split parts are checked below, with the tensors' files).
        for (const std::string& part : ggufSplitParts(dir)) // a split model's parts too, before any is opened
            if (part != dir)
                checkModelFolderAllowed(part, m_modelsRoots);
        const bool gguf = Gguf::isGguf(dir);
        for (const char* name : {"config.json", "model.safetensors.index.json", "model.safetensors"})
            if (!gguf && (std::filesystem::exists(dir + "/" + name) || std::string(name) == "config.json"))
                checkModelFolderAllowed(dir + "/" + name, m_modelsRoots);
        // Same model as the master's? config.json (or what the GGUF's metadata amounts to) first, then every slice by hash.
        const nlohmann::json local = parseUntrustedJson(ModelConfig::configJsonText(dir), dir + (gguf ? "" : "/config.json"));
        const nlohmann::json master = parseUntrustedJson(m_configJson, "config.json from the master");
        if (local != master)
            throw Error("the model in " + dir + " on this worker is not the master's model (config.json differs)");
        std::map<std::string, std::string> hashes;
        for (auto& h : req.hashes())
            hashes[h.name()] = h.sha256();
        SafeTensors files = SafeTensors::open(dir, /*map=*/false); // headers only: the slice is read by pread
        for (auto& [name, view] : files.tensors())
            checkModelFolderAllowed(view.file->path(), m_modelsRoots); // shard files may be symlinks (HF cache)
        VerifiedWeights weights(files, m_compute == ComputeType::Native, hashes, dir);
        m_status.setActivity("reading weights from " + dir);
        buildModel(weights);
        rep->set_bytes(weights.bytesRead());
        rep->set_tensors(static_cast<uint32_t>(m_slices.size()));
    } catch (const std::exception& e) {
        m_model.reset();
        m_status.setActivity("configured");
        return fail(grpc::StatusCode::INVALID_ARGUMENT, std::string("load local weights: ") + e.what());
    }
    return grpc::Status::OK;
}

wire::ShardLimits ShardWeights::limits() const
{
    wire::ShardLimits l;
    l.contextLimit = m_contextLimit;
    l.vocabSize = m_config.vocabSize;
    l.hiddenSize = m_config.hiddenSize;
    l.firstStage = m_spec.firstStage;
    return l;
}

std::string ShardWeights::sliceDescription() const
{
    return "layers " + std::to_string(m_spec.firstLayer) + "-" + std::to_string(m_spec.lastLayer) + " tp " + std::to_string(m_spec.tpRank) + "/" +
           std::to_string(m_spec.tpSize) + (m_spec.firstStage ? " first" : "") + (m_spec.lastStage ? " last" : "");
}

void ShardWeights::storeInCache(const std::map<std::string, std::string>& hashes)
{
    if (!m_sliceCache)
        return;
    try {
        m_status.setActivity("keeping the weights in the slice cache");
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
            t.dtype = tensorTypeName(r.type);
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

void ShardWeights::buildModel(const WeightProvider& weights)
{
    m_status.setActivity("loading layers");
    m_layersLoaded = 0;
    setComputeThreads(m_threads);
    ProgressWeights progress(weights, m_layersLoaded);
    m_model = std::make_unique<LlamaModel>(m_config, progress, m_compute, m_spec, nullptr);
    m_layersLoaded = m_layersTotal;
    m_cache = std::make_unique<KvCache>(m_model->newCache(m_contextLimit));
    m_loaded = true;
    m_status.setActivity("weights loaded");
}

} // namespace together
