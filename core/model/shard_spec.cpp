// SPDX-License-Identifier: MIT
#include "model/shard_spec.h"

#include "base/error.h"

#include <algorithm>
#include <cstring>

namespace together {

void checkTensorParallel(const ModelConfig& c, int tpSize)
{
    if (tpSize < 1)
        throw Error("tensor-parallel size must be at least 1");
    if (c.numHeads % tpSize != 0)
        throw Error("tensor-parallel size " + std::to_string(tpSize) + " does not divide the " + std::to_string(c.numHeads) +
                    " attention heads");
    if (c.numKvHeads % tpSize != 0 && tpSize % c.numKvHeads != 0)
        throw Error("tensor-parallel size " + std::to_string(tpSize) + " neither divides the " + std::to_string(c.numKvHeads) +
                    " key/value heads nor is a multiple of them");
    if (c.intermediateSize < tpSize || c.vocabSize < tpSize)
        throw Error("tensor-parallel size " + std::to_string(tpSize) + " exceeds the intermediate size " +
                    std::to_string(c.intermediateSize));
}

std::string blockAlignmentProblem(const ModelConfig& c, int tpSize, RunDtype dtype)
{
    const int64_t unit = c.storedBlockWeights;
    if (dtype != RunDtype::Native || unit <= 1 || tpSize <= 1)
        return {};
    for (int r = 0; r < tpSize; ++r) {
        const ShardDims d = shardDims(c, r, tpSize);
        const int64_t attn0 = d.qHeadBegin * c.headDim, attn1 = attn0 + d.qHeads * c.headDim;
        const int64_t mlp0 = d.intermediateBegin, mlp1 = mlp0 + d.intermediate;
        const char* what = attn0 % unit || attn1 % unit ? "attention output's" : mlp0 % unit || mlp1 % unit ? "MLP's" : nullptr;
        if (what)
            return "tensor-parallel size " + std::to_string(tpSize) + " cuts the model file's blocks of " + std::to_string(unit) + " weights: rank " +
                   std::to_string(r) + "'s share of the " + what + " columns is " +
                   std::to_string(what[0] == 'a' ? attn0 : mlp0) + "-" + std::to_string(what[0] == 'a' ? attn1 : mlp1) +
                   "; a native run keeps the blocks whole, so choose a size whose shares are whole blocks, or --dtype q8";
    }
    return {};
}

ShardDims shardDims(const ModelConfig& c, int r, int t)
{
    ShardDims d;
    d.qHeads = c.numHeads / t;
    d.qHeadBegin = d.qHeads * r;
    if (c.numKvHeads % t == 0) {
        d.kvHeads = c.numKvHeads / t;
        d.kvHeadBegin = d.kvHeads * r;
    } else { // replicated: t / kv ranks share each KV head
        d.kvHeads = 1;
        d.kvHeadBegin = r / (t / c.numKvHeads);
    }
    // The intermediate columns go in units of 32 (the q8 block: a rank's down_proj slice then starts on a
    // block boundary, so its blocks are the whole model's), the first ranks one unit more when they do not
    // divide evenly, the last rank the partial unit; by single columns when there are fewer units than ranks.
    const int64_t unit = (c.intermediateSize + kIntermediateUnit - 1) / kIntermediateUnit >= t ? kIntermediateUnit : 1;
    const int64_t units = (c.intermediateSize + unit - 1) / unit;
    const int64_t base = units / t, extra = units % t;
    const int64_t u0 = base * r + std::min<int64_t>(r, extra), u1 = u0 + base + (r < extra ? 1 : 0);
    d.intermediateBegin = u0 * unit;
    d.intermediate = std::min<int64_t>(c.intermediateSize, u1 * unit) - d.intermediateBegin;
    const int64_t vbase = c.vocabSize / t, vextra = c.vocabSize % t;
    d.vocab = vbase + (r < vextra ? 1 : 0);
    d.vocabBegin = vbase * r + std::min<int64_t>(r, vextra);
    return d;
}

std::vector<int64_t> TensorSlice::shape() const
{
    std::vector<int64_t> s = fullShape;
    if (dim >= 0)
        s[static_cast<size_t>(dim)] = end - begin;
    return s;
}

std::vector<TensorSlice> shardTensors(const ModelConfig& c, const ShardSpec& s)
{
    checkTensorParallel(c, s.tpSize);
    if (s.firstLayer < 0 || s.lastLayer >= c.numLayers || s.firstLayer > s.lastLayer)
        throw Error("layer range [" + std::to_string(s.firstLayer) + ", " + std::to_string(s.lastLayer) +
                    "] is outside the model's " + std::to_string(c.numLayers) + " layers");
    const ShardDims d = shardDims(c, s.tpRank, s.tpSize);
    const int64_t D = c.headDim;
    std::vector<TensorSlice> out;
    auto whole = [&](const ModelConfig::TensorSpec& t) { out.push_back({t.name, t.shape, -1, 0, 0}); };
    auto rows = [&](const ModelConfig::TensorSpec& t, int64_t b, int64_t e) { out.push_back({t.name, t.shape, 0, b, e}); };
    auto cols = [&](const ModelConfig::TensorSpec& t, int64_t b, int64_t e) { out.push_back({t.name, t.shape, 1, b, e}); };
    for (auto& g : c.globalTensors()) {
        if (g.name == "model.embed_tokens.weight") {
            if (s.holdsEmbedding())
                whole(g); // token lookup needs every row (the tied head then uses a view of it)
            else if (s.holdsHead() && c.tieWordEmbeddings)
                rows(g, d.vocabBegin, d.vocabBegin + d.vocab);
        } else if (g.name == "lm_head.weight" && s.holdsHead()) {
            rows(g, d.vocabBegin, d.vocabBegin + d.vocab);
        } else if (s.holdsHead()) {
            whole(g); // final norm
        }
    }
    for (int64_t l = s.firstLayer; l <= s.lastLayer; ++l) {
        for (auto& t : c.layerTensors(l)) {
            const std::string& n = t.name;
            auto has = [&](const char* suffix) { return n.size() >= std::strlen(suffix) && n.compare(n.size() - std::strlen(suffix), std::string::npos, suffix) == 0; };
            if (has("q_proj.weight") || has("q_proj.bias"))
                rows(t, d.qHeadBegin * D, (d.qHeadBegin + d.qHeads) * D);
            else if (has("k_proj.weight") || has("v_proj.weight") || has("k_proj.bias") || has("v_proj.bias"))
                rows(t, d.kvHeadBegin * D, (d.kvHeadBegin + d.kvHeads) * D);
            else if (has("o_proj.weight"))
                cols(t, d.qHeadBegin * D, (d.qHeadBegin + d.qHeads) * D);
            else if (has("gate_proj.weight") || has("up_proj.weight"))
                rows(t, d.intermediateBegin, d.intermediateBegin + d.intermediate);
            else if (has("down_proj.weight"))
                cols(t, d.intermediateBegin, d.intermediateBegin + d.intermediate);
            else
                whole(t); // norms
        }
    }
    return out;
}

namespace {

int64_t elements(const TensorSlice& t)
{
    int64_t n = 1;
    for (auto x : t.shape())
        n *= x;
    return n;
}

// Bits per weight of a native run's matrices: the file's own average (a GGUF's mix of blocks), else the
// checkpoint's dtype.
double storedBits(const ModelConfig& c) { return c.nativeBitsPerWeight(); }

bool quantizedRun(RunDtype d) { return d == RunDtype::Q8 || d == RunDtype::Q4; }

// A [rows, cols] slice of a matrix as a native run holds it: in the type the file stores that tensor (rows of
// whole blocks), else at the file's average bits per weight.
int64_t nativeMatrixBytes(const ModelConfig& c, const std::string& name, int64_t rows, int64_t cols)
{
    const auto it = c.storedTensorTypes.find(name);
    if (it == c.storedTensorTypes.end())
        return matrixBytes(RunDtype::Native, rows, cols, storedBits(c));
    const TensorType type = parseTensorType(it->second, "gguf_tensor_types: " + name);
    if (!type.blocks)
        return rows * cols * static_cast<int64_t>(dtypeSize(type.dtype));
    const GgmlTypeInfo& info = ggmlTypeInfo(*type.blocks);
    return rows * ((cols + info.blockSize - 1) / info.blockSize) * info.blockBytes;
}

// One tensor as the engine holds it in a run's format.
int64_t heldBytes(const ModelConfig& c, const TensorSlice& t, RunDtype d)
{
    const std::vector<int64_t> shape = t.shape();
    if (d == RunDtype::Native)
        return shape.size() == 2 ? nativeMatrixBytes(c, t.name, shape[0], shape[1]) : elements(t) * 4;
    if (!quantizedRun(d))
        return elements(t) * (d == RunDtype::F32 ? 4 : 2);
    if (t.name == "model.embed_tokens.weight")
        return elements(t) * 2; // looked up by row, kept bf16
    if (shape.size() == 2)
        return matrixBytes(d, shape[0], shape[1]);
    return elements(t) * 4;
}

// The tied head's own copy of its vocabulary rows (quantized runs; the others use the table's rows).
int64_t tiedHeadBytes(const ModelConfig& c, const ShardDims& d, RunDtype dtype)
{
    if (quantizedRun(dtype))
        return matrixBytes(dtype, d.vocab, c.hiddenSize);
    if (dtype == RunDtype::Native)
        return nativeMatrixBytes(c, "model.embed_tokens.weight", d.vocab, c.hiddenSize);
    return d.vocab * c.hiddenSize * (dtype == RunDtype::F32 ? 4 : 2);
}

} // namespace

int64_t shardBytes(const ModelConfig& c, const ShardSpec& s, DType dtype)
{
    int64_t total = 0;
    for (auto& t : shardTensors(c, s))
        total += elements(t) * static_cast<int64_t>(dtypeSize(dtype));
    return total;
}

int64_t shardBytes(const ModelConfig& c, const ShardSpec& s, RunDtype dtype)
{
    int64_t total = 0;
    for (auto& t : shardTensors(c, s)) {
        total += heldBytes(c, t, dtype);
        if (quantizedRun(dtype) && t.name == "model.embed_tokens.weight" && s.holdsHead() && c.tieWordEmbeddings) {
            const ShardDims d = shardDims(c, s.tpRank, s.tpSize);
            total += matrixBytes(dtype, d.vocab, c.hiddenSize); // the tied head's quantized copy
            if (!s.holdsEmbedding())
                total -= heldBytes(c, t, dtype); // only the head needed the rows
        }
    }
    return total;
}

std::vector<Collective> shardCollectives(const ModelConfig& c, const ShardSpec& s, int64_t rows)
{
    std::vector<Collective> out;
    if (s.tpSize <= 1)
        return out;
    for (int64_t l = s.firstLayer; l <= s.lastLayer; ++l) {
        out.push_back({"attention output", rows * c.hiddenSize});
        out.push_back({"mlp output", rows * c.hiddenSize});
    }
    if (s.lastStage)
        out.push_back({"logits", c.vocabSize});
    return out;
}

int64_t decodeBytesPerToken(const ModelConfig& c, const ShardSpec& s, DType dtype) { return decodeBytesPerToken(c, s, runDtypeOf(dtype)); }

int64_t decodeBytesPerToken(const ModelConfig& c, const ShardSpec& s, RunDtype dtype)
{
    const ShardDims d = shardDims(c, s.tpRank, s.tpSize);
    int64_t total = 0;
    for (auto& t : shardTensors(c, s)) {
        if (t.name != "model.embed_tokens.weight") {
            total += heldBytes(c, t, dtype);
            continue;
        }
        if (s.holdsEmbedding()) // one row per token
            total += dtype == RunDtype::Native ? nativeMatrixBytes(c, t.name, 1, c.hiddenSize) : c.hiddenSize * (dtype == RunDtype::F32 ? 4 : 2);
        if (s.holdsHead() && c.tieWordEmbeddings)
            total += tiedHeadBytes(c, d, dtype);
    }
    return total;
}

namespace {

// The dtype the checkpoint stores (config.json's torch_dtype): what the master streams and the shard holds
// until the engine has converted each tensor. Unknown: assumed to be the run's.
DType checkpointDType(const ModelConfig& c, RunDtype run)
{
    if (c.torchDtype == "bfloat16")
        return DType::BF16;
    if (c.torchDtype == "float16")
        return DType::F16;
    if (c.torchDtype == "float32")
        return DType::F32;
    return run == RunDtype::F32 ? DType::F32 : DType::BF16;
}

} // namespace

ShardMemoryEstimate estimateShardMemory(const ModelConfig& c, const ShardSpec& s, DType dtype, int64_t contextLimit)
{
    return estimateShardMemory(c, s, runDtypeOf(dtype), contextLimit);
}

ShardMemoryEstimate estimateShardMemory(const ModelConfig& c, const ShardSpec& s, RunDtype dtype, int64_t contextLimit)
{
    ShardMemoryEstimate m;
    const ShardDims d = shardDims(c, s.tpRank, s.tpSize);
    // The converted copies made while loading: at the run's element size, f32 for q8 and q4 (a tensor is
    // converted to f32, then quantized), the blocks themselves for a native run (copied, not converted).
    const double elem = dtype == RunDtype::BF16 ? 2 : dtype == RunDtype::Native ? storedBits(c) / 8 : 4;
    const int64_t context = std::max<int64_t>(1, contextLimit);
    m.weightBytes = shardBytes(c, s, dtype);
    const int64_t layers = s.lastLayer - s.firstLayer + 1;
    m.kvCacheBytes = 2 * layers * d.kvHeads * context * c.headDim * 4;

    // Loading: the streamed (or slice-cached) slice is held whole at the checkpoint's dtype, then the engine
    // converts it tensor by tensor, freeing each received tensor once its copy exists, and concatenates q/k/v
    // and gate/up (the pieces and the fused copy coexist). The peak is at the start (all received bytes plus
    // the first, largest converted tensor) when the conversion does not grow the weights, near the end (all
    // converted weights plus a fused copy) when it does (a bf16 checkpoint run in f32). A worker that reads its
    // own copy of the model holds one received tensor at a time: less than this.
    int64_t largest = 0;
    for (auto& t : shardTensors(c, s)) {
        int64_t n = 1;
        for (auto x : t.shape())
            n *= x;
        largest = std::max(largest, static_cast<int64_t>(static_cast<double>(n) * elem));
    }
    // A native run stacks q/k/v and gate/up without a fused copy, and receives what it runs.
    const int64_t fused = dtype == RunDtype::Native
                              ? 0
                              : static_cast<int64_t>(static_cast<double>(std::max((d.qHeads + 2 * d.kvHeads) * c.headDim, 2 * d.intermediate) * c.hiddenSize) * elem);
    const int64_t received = dtype == RunDtype::Native ? m.weightBytes : shardBytes(c, s, checkpointDType(c, dtype));
    const int64_t loading = std::max(received + std::max(largest, fused), m.weightBytes + fused);

    // Running: the weights, the KV cache grown to the context, and the activations of a prefill chunk (the
    // master feeds prompts in chunks of kPrefillChunkBytes of f32 hidden state; the chunk that ends the context
    // attends over every position): two [q heads, rows, context] f32 tensors at once (the scores, then the
    // masked scores or the softmax beside them), and per row about 24 hidden-sized and 8 intermediate-sized f32
    // vectors (norms, q/k/v and their rotary temporaries, bf16 copies of the inputs, gate/up and the product;
    // fitted to the measured peaks, tests/test_memory_estimate).
    const int64_t rows = std::min(context, prefillChunkRows(c.hiddenSize));
    const int64_t activations = 4 * rows * (2 * d.qHeads * context + 24 * c.hiddenSize + 8 * d.intermediate);
    const int64_t running = m.weightBytes + m.kvCacheBytes + activations;

    // The two phases do not overlap (the KV cache is allocated as the generation grows): the larger one counts.
    m.runtimeBytes = kShardRuntimeBytes + std::max(loading, running) - m.weightBytes - m.kvCacheBytes;
    return m;
}

int64_t prefillChunkRows(int64_t hiddenSize)
{
    return std::max<int64_t>(1, static_cast<int64_t>(kPrefillChunkBytes) / (std::max<int64_t>(1, hiddenSize) * 4));
}

namespace {

// A slice of an encoded view (a GGUF tensor in blocks, or with rows in interleaved rotary order): the rows it
// needs are read once, then each output row is taken from its source row (reordered within each head) and widened
// to the view's dtype, its columns cut after widening.
void copyEncodedSlice(const TensorView& full, const TensorSlice& slice, std::vector<std::byte>& out, bool keepBlocks)
{
    const bool matrix = full.shape.size() == 2;
    const int64_t cols = matrix ? full.shape[1] : full.shape[0];
    const int64_t rows = matrix ? full.shape[0] : 1;
    const GgmlType type = full.ggmlType();
    const int64_t head = full.interleavedHead;
    // A 1-D tensor in rotary order (a q or k bias) is a column of single-value rows.
    const bool perElement = !matrix && head > 0;
    const int64_t nRows = perElement ? cols : rows, rowLen = perElement ? 1 : cols;
    // A 1-D tensor held as one row (a bias): a slice of its elements is a range of that row's columns.
    const bool rowOfElements = !matrix && !perElement;
    const bool rowRange = slice.dim == 0 && !rowOfElements;
    const bool colRange = slice.dim == 1 || (slice.dim == 0 && rowOfElements);
    const int64_t r0 = rowRange ? slice.begin : 0, r1 = rowRange ? slice.end : nRows;
    const int64_t c0 = colRange ? slice.begin : 0, c1 = colRange ? slice.end : rowLen;
    const std::string where = (full.file ? full.file->path() + ": " : std::string()) + "tensor " + slice.name;
    if (r0 < 0 || r0 > r1 || r1 > nRows || c0 < 0 || c0 > c1 || c1 > rowLen)
        throw Error(where + ": the slice " + std::to_string(slice.begin) + "-" + std::to_string(slice.end) + " is outside its shape " +
                    shapeString(full.shape));
    if (perElement && full.stored)
        throw Error(where + ": a quantized vector in rotary order is not supported");
    if (head > 0 && (r0 % head != 0 || r1 % head != 0 || head % 2 != 0))
        throw Error(where + ": rows " + std::to_string(r0) + "-" + std::to_string(r1) + " are not whole heads of " + std::to_string(head));
    const size_t rowBytes = static_cast<size_t>(ggmlRowBytes(type, rowLen));
    // Kept in blocks (a matrix of a native run): a column cut must fall between blocks.
    const bool blocks = keepBlocks && full.stored && matrix;
    const int64_t unit = ggmlTypeInfo(type).blockSize;
    if (blocks && (c0 % unit != 0 || c1 % unit != 0))
        throw Error(where + ": a tensor-parallel cut at columns " + std::to_string(c0) + "-" + std::to_string(c1) + " is not on a " +
                    ggmlTypeName(type) + " block boundary (blocks of " + std::to_string(unit) +
                    " weights): choose a split whose shares are whole blocks, or run it with --dtype q8");
    std::vector<std::byte> raw(static_cast<size_t>(r1 - r0) * rowBytes);
    if (full.data)
        std::memcpy(raw.data(), full.data + static_cast<size_t>(r0) * rowBytes, raw.size());
    else
        full.file->read(full.fileOffset + static_cast<uint64_t>(r0) * rowBytes, raw.size(), raw.data());
    const size_t es = dtypeSize(full.dtype);
    const size_t outRow = blocks ? static_cast<size_t>(ggmlRowBytes(type, c1 - c0)) : static_cast<size_t>(c1 - c0) * es;
    const size_t colOffset = blocks ? static_cast<size_t>(ggmlRowBytes(type, c0)) : static_cast<size_t>(c0) * es;
    out.resize(static_cast<size_t>(r1 - r0) * outRow);
    std::vector<float> wide(static_cast<size_t>(rowLen));
    for (int64_t r = r0; r < r1; ++r) {
        int64_t src = r;
        if (head > 0) { // Hugging Face row i of a head is the file's row 2i (first half) or 2(i - head/2) + 1
            const int64_t i = r % head, half = head / 2;
            src = r - i + (i < half ? 2 * i : 2 * (i - half) + 1);
        }
        const std::byte* in = raw.data() + static_cast<size_t>(src - r0) * rowBytes;
        std::byte* dst = out.data() + static_cast<size_t>(r - r0) * outRow;
        if (!full.stored || blocks) { // same type: the columns (whole blocks) as they are
            std::memcpy(dst, in + colOffset, outRow);
            continue;
        }
        dequantizeRow(type, in, wide.data(), rowLen);
        std::memcpy(dst, wide.data() + c0, static_cast<size_t>(c1 - c0) * sizeof(float));
    }
}

} // namespace

bool keepsBlocks(const TensorView& full, bool keepBlocks) { return keepBlocks && full.stored && full.shape.size() == 2; }

void copySlice(const TensorView& full, const TensorSlice& slice, std::vector<std::byte>& out, bool keepBlocks)
{
    if (full.shape != slice.fullShape)
        throw Error("tensor " + slice.name + " has shape " + shapeString(full.shape) + ", expected " + shapeString(slice.fullShape));
    if (full.encoded())
        return copyEncodedSlice(full, slice, out, keepBlocks);
    // Reads go through the file (memcpy from the map, or pread when unmapped): only the slice's bytes.
    auto read = [&](size_t offset, size_t length, std::byte* dst) {
        if (full.data)
            std::memcpy(dst, full.data + offset, length);
        else
            full.file->read(full.fileOffset + offset, length, dst);
    };
    const size_t es = dtypeSize(full.dtype);
    if (slice.dim < 0) {
        out.resize(full.nbytes);
        read(0, full.nbytes, out.data());
        return;
    }
    const int64_t rows = full.shape[0];
    const int64_t cols = full.shape.size() > 1 ? full.shape[1] : 1;
    if (slice.dim == 0) {
        const size_t rowBytes = static_cast<size_t>(cols) * es;
        out.resize(static_cast<size_t>(slice.end - slice.begin) * rowBytes);
        read(static_cast<size_t>(slice.begin) * rowBytes, out.size(), out.data());
        return;
    }
    const size_t w = static_cast<size_t>(slice.end - slice.begin) * es;
    out.resize(static_cast<size_t>(rows) * w);
    for (int64_t r = 0; r < rows; ++r)
        read((static_cast<size_t>(r) * static_cast<size_t>(cols) + static_cast<size_t>(slice.begin)) * es, w,
             out.data() + static_cast<size_t>(r) * w);
}

TensorView SafeTensorsWeights::get(const TensorSlice& slice, std::vector<std::byte>& scratch) const
{
    const TensorView& full = m_tensors.expect(slice.name, slice.fullShape);
    TensorView v = full;
    v.shape = slice.shape();
    if (!full.data || full.encoded()) { // not mapped: read exactly the slice; encoded: decode it (or reorder its blocks)
        if (!keepsBlocks(full, m_keepBlocks))
            v.stored.reset();
        v.interleavedHead = 0;
        copySlice(full, slice, scratch, m_keepBlocks);
        v.data = scratch.data();
        v.nbytes = scratch.size();
        return v;
    }
    if (slice.dim < 0)
        return full;
    if (slice.dim == 0) { // rows are contiguous: a view into the map
        const size_t rowBytes = full.nbytes / static_cast<size_t>(full.shape[0]);
        v.data = full.data + static_cast<size_t>(slice.begin) * rowBytes;
        v.nbytes = static_cast<size_t>(slice.end - slice.begin) * rowBytes;
        return v;
    }
    copySlice(full, slice, scratch);
    v.data = scratch.data();
    v.nbytes = scratch.size();
    return v;
}

} // namespace together
