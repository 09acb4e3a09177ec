// SPDX-License-Identifier: MIT
#pragma once

#include "model/model_config.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"

#include <cstdint>
#include <string>
#include <vector>

namespace together {

// What one process (a shard) holds: a contiguous layer range of one pipeline stage, and within the stage's
// tensor-parallel group of size tpSize, rank tpRank's share.
//
// Matrix convention: Y = X · Wᵀ with W stored [out, in] as nn.Linear keeps it.
//  - ColumnParallel (q, k, v, gate, up): W's rows (the output dimension) are split; no communication.
//  - RowParallel (o, down): W's columns (the input dimension) are split; each rank's partial output is
//    summed by an all-reduce. Biases of column-parallel layers split with their rows.
// q heads split evenly (heads % tp == 0 is required). K/V heads split evenly when tp divides them; when tp
// is a multiple of the KV heads, each KV head is held by tp / kv ranks (as vLLM does). The intermediate
// size splits as evenly as possible (the first I % tp ranks get one more column); no divisibility needed.
// The first stage holds the embedding (whole, on every rank). The last stage's ranks each hold the final
// norm and a vocabulary slice of the lm_head (split as evenly as possible); their partial logits are summed
// into the full vector, which rank 0 samples from.
struct ShardSpec {
    int64_t firstLayer = 0;
    int64_t lastLayer = 0; // inclusive
    int tpRank = 0;
    int tpSize = 1;
    bool firstStage = true;
    bool lastStage = true;

    static ShardSpec whole(const ModelConfig& c) { return {0, c.numLayers - 1, 0, 1, true, true}; }
    bool holdsEmbedding() const { return firstStage; }
    bool holdsHead() const { return lastStage; }         // a vocabulary slice of it
    bool returnsLogits() const { return lastStage && tpRank == 0; }
};

// The per-rank sizes the split gives.
struct ShardDims {
    int64_t qHeads = 0, qHeadBegin = 0;
    int64_t kvHeads = 0, kvHeadBegin = 0;
    int64_t intermediate = 0, intermediateBegin = 0;
    int64_t vocab = 0, vocabBegin = 0; // lm_head rows on the last stage
};
constexpr int64_t kIntermediateUnit = 32;
ShardDims shardDims(const ModelConfig& c, int tpRank, int tpSize);
// Throws Error when the model cannot be split tpSize ways (heads not divisible, KV heads neither divisible
// nor a divisor of tpSize, more ranks than intermediate columns).
void checkTensorParallel(const ModelConfig& c, int tpSize);

// A native run keeps a GGUF's blocks, so o_proj's and down_proj's tensor-parallel column shares must start and end
// on the file's largest block (ModelConfig::storedBlockWeights: 256 for the K-quants). Empty when every rank's
// shares do, or the run does not keep blocks; else the reason, naming the rank, the share and the way out.
std::string blockAlignmentProblem(const ModelConfig& c, int tpSize, RunDtype dtype);

// One tensor of a shard: which part of the checkpoint tensor it is.
struct TensorSlice {
    std::string name;
    std::vector<int64_t> fullShape;
    int dim = -1; // -1: whole tensor; 0: rows [begin, end); 1: columns [begin, end)
    int64_t begin = 0, end = 0;
    std::vector<int64_t> shape() const;
};

std::vector<TensorSlice> shardTensors(const ModelConfig& c, const ShardSpec& s);
// Bytes of the shard's slices at the given storage dtype, or as the engine holds them in a run's format (q8:
// matrices in blocks, the embedding table bf16, vectors f32).
int64_t shardBytes(const ModelConfig& c, const ShardSpec& s, DType dtype);
int64_t shardBytes(const ModelConfig& c, const ShardSpec& s, RunDtype dtype);

// The all-reduces one forward step of a shard makes, in order, each with its float count (every rank of the
// stage's group contributes that many floats): after each layer's attention output and MLP output (rows x
// hidden), and on the last stage one over the vocabulary (the logits of the last row). None without tensor
// parallelism. The engine's calls are checked against this (tests/test_sharding), so the cost model that
// uses it stays right when the engine changes.
struct Collective {
    const char* what; // "attention output", "mlp output", "logits"
    int64_t floats;
};
std::vector<Collective> shardCollectives(const ModelConfig& c, const ShardSpec& s, int64_t rows);
// Bytes of weights one decode step of the shard reads: every matrix and norm of its layers once, one row of
// the embedding, and its slice of the head (with f32 norms when `dtype` is f32; see LlamaModel).
int64_t decodeBytesPerToken(const ModelConfig& c, const ShardSpec& s, DType dtype);
int64_t decodeBytesPerToken(const ModelConfig& c, const ShardSpec& s, RunDtype dtype);

// What a shard process needs at its peak, about: its weights at the run's dtype, its KV cache grown to
// `contextLimit` positions (f32 keys and values of its KV heads in each of its layers), and in runtimeBytes the
// process's own memory (kShardRuntimeBytes) plus whichever transient peaks higher: loading (the received slice
// at the checkpoint's dtype beside the converted copies) or the activations of a prefill chunk that attends
// over the whole context (see estimateShardMemory).
struct ShardMemoryEstimate {
    int64_t weightBytes = 0;
    int64_t kvCacheBytes = 0;
    int64_t runtimeBytes = 0;
    int64_t total() const { return weightBytes + kvCacheBytes + runtimeBytes; }
};
// The process itself (libtorch, gRPC, OpenMP, buffers), measured as VmHWM of shards on loopback
// (tests/test_memory_estimate): about 118 MiB of mapped code and 70 MiB of heap; a shard of an 8 MiB model peaks
// at 185-200 MiB, and shards of 40 MiB to 1.2 GiB of weights peak 175-230 MiB above the load and prefill terms.
constexpr int64_t kShardRuntimeBytes = 192ll << 20;
ShardMemoryEstimate estimateShardMemory(const ModelConfig& c, const ShardSpec& s, RunDtype dtype, int64_t contextLimit);
ShardMemoryEstimate estimateShardMemory(const ModelConfig& c, const ShardSpec& s, DType dtype, int64_t contextLimit);

// Copies a slice of a checkpoint tensor into `out` (row slices are one contiguous copy).
// A prompt goes round the ring in steps of at most this much f32 hidden state (only the last step samples): the
// master cuts it so, a shard refuses a pipeline message with more rows, and the memory estimate counts one step.
constexpr size_t kPrefillChunkBytes = size_t{4} << 20;
// Rows of hidden state in one such step (at least 1).
int64_t prefillChunkRows(int64_t hiddenSize);

// A GGUF matrix in blocks is widened to f32, unless keepBlocks: then its blocks are copied as they are (rows
// reordered out of rotary interleaving; a column range must start and end on block boundaries, else Error
// naming the cut and the type).
void copySlice(const TensorView& full, const TensorSlice& slice, std::vector<std::byte>& out, bool keepBlocks = false);
// Whether a slice of `full` comes out in blocks under keepBlocks (a quantized matrix).
bool keepsBlocks(const TensorView& full, bool keepBlocks);

// Where a shard's weights come from: the master's stream, or a local checkpoint. `get` returns a view of
// exactly the slice's shape; `scratch` may back it when the slice had to be gathered.
class WeightProvider {
public:
    virtual ~WeightProvider() = default;
    virtual TensorView get(const TensorSlice& slice, std::vector<std::byte>& scratch) const = 0;
    // The consumer has its own copy: a provider holding received bytes may free them now, so a shard's
    // peak memory stays near one copy of its slice.
    virtual void release(const TensorSlice&) const {}
};

// keepBlocks: quantized matrices come in their blocks (a native run), with `stored` set; else widened to f32.
class SafeTensorsWeights : public WeightProvider {
public:
    explicit SafeTensorsWeights(const SafeTensors& tensors, bool keepBlocks = false)
        : m_tensors(tensors)
        , m_keepBlocks(keepBlocks)
    {
    }
    TensorView get(const TensorSlice& slice, std::vector<std::byte>& scratch) const override;

private:
    const SafeTensors& m_tensors;
    bool m_keepBlocks;
};

} // namespace together
