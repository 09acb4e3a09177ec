// SPDX-License-Identifier: MIT
#pragma once

#include "kernels/kernels.h"
#include "model/model_config.h"
#include "model/shard_spec.h"
#include "text/generation.h"
#include "text/sampler.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace together {

class SafeTensors;

// Numerics of a run. In BF16 mode the weights and the inputs of every linear layer are bf16; in Q8 mode the
// linear layers' weights are GGUF Q8_0 blocks (int8, one f16 scale per 32, quantized at load from the checkpoint)
// and decode quantizes their inputs the same way, while prefill multiplies dequantized weights on oneDNN/BLAS;
// the embedding table is then kept in bf16. Q4 is the same with Q4_K blocks (Q4_0 where a row is not whole
// 256-weight blocks). In Native mode every matrix, the embedding table included, stays in the type the model file
// stores (a GGUF's Q4_K, Q6_K, Q8_0... blocks, or f16/bf16/f32) and runs on the block kernels. In every mode the
// residual stream, RMSNorm, rotary, attention scores, softmax, KV cache and logits stay f32.
enum class ComputeType {
    F32,
    BF16,
    Q8,
    Q4,
    Native,
};
ComputeType parseComputeType(const std::string& s); // "f32" | "bf16" | "q8" | "q4" | "native"; throws Error otherwise
const char* computeTypeName(ComputeType t);
// bf16 where the CPU has AVX-512 BF16 (native bf16 dot products), else f32.
ComputeType defaultComputeType();

// Per-layer KV cache, f32, [kv_heads, capacity, head_dim] per layer. Grows by doubling up to the limit so a
// 128K-context model does not reserve gigabytes for a short chat.
class KvCache {
public:
    KvCache(int64_t layers, int64_t kvHeads, int64_t headDim, int64_t limit);
    int64_t length() const { return m_length; }
    int64_t limit() const { return m_limit; }
    // Keeps the first n positions (n <= length): a new prompt sharing a prefix reuses them.
    void truncate(int64_t n);

private:
    friend class LlamaModel;
    void reserve(int64_t needed);
    std::vector<at::Tensor> m_k, m_v;
    int64_t m_kvHeads, m_headDim, m_capacity = 0, m_length = 0, m_limit;
};

// Sums a tensor across the ranks of a tensor-parallel group. Every rank calls it in the same order
// (two per layer: after o_proj and after down_proj); an implementation throws Error on a failed or
// desynchronised peer rather than hanging.
class Communicator {
public:
    virtual ~Communicator() = default;
    virtual void allReduceSum(float* data, size_t count) = 0;
};

// The Llama decoder (Llama 2/3, Mistral, Qwen2 with q/k/v bias, Qwen3 with q/k norm), whole or one shard of
// it (a layer range and a tensor-parallel share, see ShardSpec). Weights are stored [out, in] as nn.Linear
// keeps them and applied as Y = X · Wᵀ. q/k/v are fused into one [q + 2·kv, hidden] matrix and gate/up into
// one [2·intermediate, hidden] matrix so each layer makes two matmul calls where the checkpoint has five.
class LlamaModel {
public:
    // The whole model in this process.
    LlamaModel(const ModelConfig& config, const SafeTensors& tensors, ComputeType compute);
    // One shard; `comm` is required when spec.tpSize > 1 and must outlive the model.
    LlamaModel(const ModelConfig& config, const WeightProvider& weights, ComputeType compute, const ShardSpec& spec,
               Communicator* comm);

    // Whole model: feeds `tokens` at positions [cache.length(), +n), appends their keys/values to the cache,
    // and returns the f32 logits [vocab] of the last position. Throws Error when the cache limit would be passed.
    at::Tensor forward(const std::vector<int>& tokens, KvCache& cache) const;
    // One shard: `input` is int64 token ids [T] on the first stage, else the f32 hidden state [T, hidden]
    // from the previous stage. Returns the hidden state [T, hidden] (every rank holds all of it after the
    // last all-reduce), or on the last stage the logits [vocab] of the last position on rank 0 and an
    // undefined tensor on the other ranks.
    at::Tensor forwardShard(const at::Tensor& input, KvCache& cache) const;
    KvCache newCache(int64_t limit = 0) const; // 0: the config's context limit
    const ShardSpec& shard() const { return m_spec; }
    // The group is joined after the weights are loaded; set it before the first forward.
    void setCommunicator(Communicator* comm) { m_comm = comm; }

    const ModelConfig& config() const { return m_config; }
    ComputeType computeType() const { return m_compute; }
    // Bytes of weights one decode step reads (each matrix once, one embedding row).
    int64_t weightBytesPerToken() const;

    // A linear layer's weight [rows, cols] in the run's format: a tensor (f32, bf16), q8 blocks, or block
    // matrices stacked by rows (q4, native: a fused q/k/v keeps each part's own type, as a Q4_K_M file mixes
    // Q4_K and Q6_K).
    struct Matrix {
        at::Tensor w;
        std::shared_ptr<const kernels::Q8Matrix> q8;
        std::vector<kernels::BlockMatrix> parts;
        int64_t rows = 0, cols = 0;
        int64_t bytes() const;
    };
    // Y = X · Wᵀ (+ b), f32 [T, rows]. One-row steps (and q8 steps of a few rows) run the decode kernels over
    // the shard's thread pool; longer ones oneDNN/BLAS's GEMM. Public for calibration and benchmarks.
    at::Tensor linear(const at::Tensor& x, const Matrix& w, const at::Tensor& b = {}) const;
    // The weight in this model's format (quantized when it runs q8 or q4).
    Matrix makeMatrix(const at::Tensor& w) const;
    // Block matrices stacked by rows (all of one width).
    static Matrix stack(std::vector<kernels::BlockMatrix> parts);
    // The block kernels' matrices of this shard, in load order (tests check they hold the file's bytes).
    std::vector<std::pair<std::string, kernels::BlockMatrix>> blockMatrices() const;
    // Benchmarks only: one-row f32/bf16 products through ATen (at::mv: oneDNN or BLAS) instead of the decode
    // kernels, as before they existed, so both are measured side by side in one run. Process-wide.
    static void setAtenDecode(bool on);

private:
    struct Layer {
        at::Tensor inputNorm, postNorm;
        Matrix wqkv, wo, wGateUp, wDown;
        at::Tensor bqkv; // undefined without bias
        at::Tensor qNorm, kNorm; // undefined without qk norm
    };
    at::Tensor rmsNorm(const at::Tensor& x, const at::Tensor& w) const;
    at::Tensor linearBlocks(const at::Tensor& x, const Matrix& m) const;
    at::Tensor embed(const at::Tensor& ids) const;
    at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

    ModelConfig m_config;
    ComputeType m_compute;
    ShardSpec m_spec;
    ShardDims m_dims;
    Communicator* m_comm = nullptr;
    at::Tensor m_embed, m_finalNorm, m_invFreq;
    kernels::BlockMatrix m_embedBlocks; // Native: the table in the file's type (rows dequantized per token)
    std::vector<std::pair<std::string, kernels::BlockMatrix>> m_loadedBlocks;
    Matrix m_lmHead;
    std::vector<Layer> m_layers;
};

// TokenStepper over a local LlamaModel: runs forward and samples.
class LocalStepper : public TokenStepper {
public:
    LocalStepper(const LlamaModel& model, const SamplingParams& sampling, int64_t contextLimit = 0, size_t traceTopK = 10);
    StepOutput step(const std::vector<int>& tokens, int64_t startPos) override;
    int64_t contextLimit() const override { return m_cache.limit(); }
    KvCache& cache() { return m_cache; }

private:
    const LlamaModel& m_model;
    KvCache m_cache;
    Sampler m_sampler;
    size_t m_topK;
};

} // namespace together

namespace together {
// Sets the compute threads for the decode kernels' pool, ATen's pool, and OpenBLAS's own pool (used by f32
// matmuls), which otherwise ignores at::set_num_threads and oversubscribes the cores.
void setComputeThreads(int threads);
} // namespace together
