// SPDX-License-Identifier: MIT
#pragma once

#include "engine/llama_model.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/shard_spec.h"
#include "proto/together.grpc.pb.h"
#include "wire/checks.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace together {

class ShardStatus;
class SliceCache;
struct ShardOptions;

// Weights received from the master, exactly this shard's slices.
class ReceivedWeights : public WeightProvider {
public:
    struct Tensor {
        TensorType type;
        std::vector<int64_t> shape;
        std::vector<std::byte> bytes;
    };
    mutable std::map<std::string, Tensor> tensors;

    void release(const TensorSlice& slice) const override { tensors.erase(slice.name); }
    TensorView get(const TensorSlice& slice, std::vector<std::byte>&) const override;
};

// This rank's part of the model: where it sits in the plan (Configure), the weights of its slice as the master
// streams them (LoadWeights), as the slice cache holds them (LoadCached) or as a local checkpoint has them
// (LoadLocalWeights, each slice checked against the master's hash), and the model and KV cache built from them.
// A received slice is also kept in the slice cache, so a relaunch of the same placement skips the transfer.
//
// No mutex of its own: Configure and the loads run under the service's launch mutex, one at a time, and
// everything here is written before loaded() turns true (an atomic). From then on the placement is only read
// (by any handler, without a lock) and only the ring's runner uses the model and the KV cache. layersLoaded()
// is atomic: Status reads it while a load runs.
class ShardWeights {
public:
    // The slice cache is opened here (a cache that cannot be opened is only reported: the shard runs without).
    ShardWeights(const ShardOptions& options, ShardStatus& status);
    ~ShardWeights();

    // The launch calls, after the caller's checks (the owner, canLoad): each answers the master itself, and on
    // failure leaves the shard configured without a model.
    grpc::Status configure(const v1::ShardConfig& request, v1::ConfigureReply* reply);
    grpc::Status receive(grpc::ServerReader<v1::WeightChunk>& reader, v1::LoadWeightsReply* reply);
    grpc::Status loadCached(const v1::LoadCachedRequest& request, v1::LoadCachedReply* reply);
    grpc::Status loadLocal(const v1::LoadLocalRequest& request, v1::LoadWeightsReply* reply);

    bool configured() const { return !m_slices.empty(); }
    bool hasModel() const { return m_model != nullptr; }
    bool loaded() const { return m_loaded; }
    uint32_t layersLoaded() const { return m_layersLoaded.load(); }
    uint32_t layersTotal() const { return m_layersTotal; }

    // The placement (set by Configure).
    const ModelConfig& config() const { return m_config; }
    const ShardSpec& spec() const { return m_spec; }
    uint32_t stage() const { return m_stage; }
    const std::string& launchId() const { return m_launchId; }
    const std::string& me() const { return m_me; } // "stage S rank R on WORKER", for messages
    int64_t contextLimit() const { return m_contextLimit; }
    int threads() const { return m_threads; }
    // What a peer's message is checked against.
    wire::ShardLimits limits() const;

    // The runner's (once loaded).
    LlamaModel& model() { return *m_model; }
    KvCache& cache() { return *m_cache; }

private:
    std::string sliceDescription() const;
    void storeInCache(const std::map<std::string, std::string>& hashes);
    void buildModel(const WeightProvider& weights);

    ShardStatus& m_status;
    int m_threads;
    int m_admittedThreads;
    std::vector<std::string> m_modelsRoots;
    std::unique_ptr<SliceCache> m_sliceCache;
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
    std::atomic<bool> m_loaded{false};
    std::atomic<uint32_t> m_layersLoaded{0};
    uint32_t m_layersTotal = 0;
};

} // namespace together
