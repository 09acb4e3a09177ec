// SPDX-License-Identifier: MIT
#include "engine/llama_model.h"

#include "base/error.h"
#include "model/ggml_types.h"
#include "model/run_dtype.h"
#include "model/safetensors.h"
#include "text/run_options.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <atomic>
#include <cmath>
#include <map>

namespace together {

// The names are core's (core/run_dtype), so the master, plans and the engine accept the same ones.
ComputeType parseComputeType(const std::string& s)
{
    switch (parseRunDtype(s)) {
    case RunDtype::BF16:
        return ComputeType::BF16;
    case RunDtype::Q8:
        return ComputeType::Q8;
    case RunDtype::Q4:
        return ComputeType::Q4;
    case RunDtype::Native:
        return ComputeType::Native;
    case RunDtype::F32:
        break;
    }
    return ComputeType::F32;
}

const char* computeTypeName(ComputeType t)
{
    switch (t) {
    case ComputeType::BF16:
        return runDtypeName(RunDtype::BF16);
    case ComputeType::Q8:
        return runDtypeName(RunDtype::Q8);
    case ComputeType::Q4:
        return runDtypeName(RunDtype::Q4);
    case ComputeType::Native:
        return runDtypeName(RunDtype::Native);
    case ComputeType::F32:
        break;
    }
    return runDtypeName(RunDtype::F32);
}

ComputeType defaultComputeType() { return parseComputeType(defaultDtypeName()); }

namespace {

at::ScalarType scalarOf(DType d)
{
    switch (d) {
    case DType::F32:
        return at::kFloat;
    case DType::F16:
        return at::kHalf;
    case DType::BF16:
        return at::kBFloat16;
    }
    return at::kFloat;
}

// The view's bytes are its shape in its type (rows of whole blocks).
void checkBytes(const TensorView& t)
{
    if (tensorTypeBytes(t.type(), t.shape) != std::optional<uint64_t>(t.nbytes))
        throw Error("tensor " + t.name + ": " + std::to_string(t.nbytes) + " bytes are not " + tensorTypeName(t.type()) + " of shape " +
                    shapeString(t.shape));
}

// Copies a mapped tensor into owned memory of the wanted type (the map is released after loading). Blocks (a
// GGUF tensor kept in its type) are widened row by row.
at::Tensor load(const TensorView& t, at::ScalarType to)
{
    if (t.stored) {
        checkBytes(t);
        const int64_t cols = t.shape.empty() ? 1 : t.shape.back(), rows = cols > 0 ? t.numel() / cols : 0;
        at::Tensor wide = at::empty(t.shape, at::kFloat);
        const size_t rowBytes = static_cast<size_t>(ggmlRowBytes(*t.stored, cols));
        for (int64_t r = 0; r < rows; ++r)
            dequantizeRow(*t.stored, t.data + static_cast<size_t>(r) * rowBytes, wide.data_ptr<float>() + r * cols, cols);
        return wide.to(to);
    }
    at::Tensor view = at::from_blob(const_cast<std::byte*>(t.data), t.shape, at::TensorOptions().dtype(scalarOf(t.dtype)));
    return view.to(to, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

// A matrix view in the type the file stores, copied into weight memory.
kernels::BlockMatrix loadBlocks(const TensorView& t)
{
    if (t.shape.size() != 2)
        throw Error("tensor " + t.name + " of shape " + shapeString(t.shape) + " is not a matrix");
    checkBytes(t);
    return kernels::makeBlockMatrix(t.ggmlType(), t.shape[0], t.shape[1], t.data);
}

} // namespace

KvCache::KvCache(int64_t layers, int64_t kvHeads, int64_t headDim, int64_t limit)
    : m_k(static_cast<size_t>(layers))
    , m_v(static_cast<size_t>(layers))
    , m_kvHeads(kvHeads)
    , m_headDim(headDim)
    , m_limit(limit)
{
}

void KvCache::truncate(int64_t n)
{
    if (n < 0 || n > m_length)
        throw Error("KV cache: cannot keep " + std::to_string(n) + " of " + std::to_string(m_length) + " positions");
    m_length = n;
}

void KvCache::reserve(int64_t needed)
{
    if (needed > m_limit)
        throw Error("context full: " + std::to_string(needed) + " positions needed, the cache holds " + std::to_string(m_limit));
    if (needed <= m_capacity)
        return;
    int64_t cap = std::max<int64_t>(m_capacity, 256);
    while (cap < needed)
        cap *= 2;
    cap = std::min(cap, m_limit);
    for (size_t l = 0; l < m_k.size(); ++l) {
        at::Tensor k = at::zeros({m_kvHeads, cap, m_headDim}, at::kFloat);
        at::Tensor v = at::zeros({m_kvHeads, cap, m_headDim}, at::kFloat);
        if (m_length > 0) {
            k.narrow(1, 0, m_length).copy_(m_k[l].narrow(1, 0, m_length));
            v.narrow(1, 0, m_length).copy_(m_v[l].narrow(1, 0, m_length));
        }
        m_k[l] = k;
        m_v[l] = v;
    }
    m_capacity = cap;
}

namespace {

// inv_freq[i] = theta^(-2i/d), computed as Hugging Face does (f32 exponent), then llama3 scaling.
at::Tensor rotaryInvFreq(const ModelConfig& config)
{
    const int64_t half = config.headDim / 2;
    std::vector<float> inv(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
        float expo = static_cast<float>(2 * i) / static_cast<float>(config.headDim);
        double f = 1.0 / std::pow(config.ropeTheta, static_cast<double>(expo));
        const RopeScaling& rs = config.ropeScaling;
        if (rs.type == "llama3") {
            const double lowWavelen = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
            const double highWavelen = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
            const double wavelen = 2 * M_PI / f;
            if (wavelen > lowWavelen) {
                f = f / rs.factor;
            } else if (wavelen >= highWavelen) {
                double smooth = (rs.originalMaxPositionEmbeddings / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
                f = (1 - smooth) * f / rs.factor + smooth * f;
            }
        }
        inv[static_cast<size_t>(i)] = static_cast<float>(f);
    }
    return at::tensor(inv, at::kFloat);
}

} // namespace

LlamaModel::LlamaModel(const ModelConfig& config, const SafeTensors& tensors, ComputeType compute)
    : LlamaModel(config, SafeTensorsWeights(tensors, compute == ComputeType::Native), compute, ShardSpec::whole(config), nullptr)
{
}

LlamaModel::LlamaModel(const ModelConfig& config, const WeightProvider& weights, ComputeType compute, const ShardSpec& spec,
                       Communicator* comm)
    : m_config(config)
    , m_compute(compute)
    , m_spec(spec)
    , m_dims(shardDims(config, spec.tpRank, spec.tpSize))
    , m_comm(comm)
{
    // Linear weights load as bf16/f32, or as f32 to be quantized (q8, q4); the embedding table of a q8 or q4 run is
    // bf16. A native run takes every matrix as the provider holds it (blocks), widening nothing.
    const bool native = compute == ComputeType::Native;
    const at::ScalarType wt = compute == ComputeType::BF16 ? at::kBFloat16 : at::kFloat;
    const at::ScalarType embedType = compute == ComputeType::F32 ? at::kFloat : at::kBFloat16;
    std::map<std::string, TensorSlice> slices;
    for (auto& s : shardTensors(config, spec))
        slices.emplace(s.name, s);
    auto view = [&](const std::string& name, std::vector<std::byte>& scratch) {
        auto it = slices.find(name);
        if (it == slices.end())
            throw Error("internal: tensor " + name + " is not part of this shard");
        TensorView v = weights.get(it->second, scratch);
        if (v.shape != it->second.shape())
            throw Error("tensor " + name + " has shape " + shapeString(v.shape) + " but this shard needs " +
                        shapeString(it->second.shape()));
        if (v.interleavedHead > 0)
            throw Error("internal: tensor " + name + " reached the model in rotary-interleaved order");
        return std::make_pair(v, it->second);
    };
    auto get = [&](const std::string& name, at::ScalarType to) {
        std::vector<std::byte> scratch;
        auto [v, slice] = view(name, scratch);
        at::Tensor t = load(v, to);
        weights.release(slice);
        return t;
    };
    auto blocks = [&](const std::string& name) {
        std::vector<std::byte> scratch;
        auto [v, slice] = view(name, scratch);
        kernels::BlockMatrix b = loadBlocks(v);
        weights.release(slice);
        m_loadedBlocks.emplace_back(name, b);
        return b;
    };
    // A matrix, or rows of several stacked (q/k/v, gate/up).
    auto matrix = [&](const std::vector<std::string>& names) {
        if (native) {
            std::vector<kernels::BlockMatrix> parts;
            for (auto& n : names)
                parts.push_back(blocks(n));
            return stack(std::move(parts));
        }
        std::vector<at::Tensor> ts;
        for (auto& n : names)
            ts.push_back(get(n, wt));
        return makeMatrix(ts.size() == 1 ? ts[0] : at::cat(ts, 0));
    };
    const bool needEmbed = spec.holdsEmbedding() || (spec.holdsHead() && config.tieWordEmbeddings);
    if (needEmbed && native)
        m_embedBlocks = blocks("model.embed_tokens.weight");
    else if (needEmbed)
        m_embed = get("model.embed_tokens.weight", embedType);
    if (spec.holdsHead()) {
        m_finalNorm = get("model.norm.weight", at::kFloat);
        if (!config.tieWordEmbeddings)
            m_lmHead = matrix({"lm_head.weight"});
        else if (native) // the head is our vocabulary rows of the table (all of it, when the table is only ours)
            m_lmHead = stack({spec.holdsEmbedding() ? m_embedBlocks.rowRange(m_dims.vocabBegin, m_dims.vocab) : m_embedBlocks});
        else if (spec.holdsEmbedding()) // whole embedding here: the head is our vocabulary rows of it
            m_lmHead = makeMatrix(m_embed.narrow(0, m_dims.vocabBegin, m_dims.vocab));
        else
            m_lmHead = makeMatrix(m_embed); // loaded as exactly our rows
        if (!spec.holdsEmbedding()) { // only the head needed it
            m_embed = at::Tensor();
            m_embedBlocks = kernels::BlockMatrix();
        }
    }
    for (int64_t l = spec.firstLayer; l <= spec.lastLayer; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        Layer L;
        L.inputNorm = get(p + "input_layernorm.weight", at::kFloat);
        L.postNorm = get(p + "post_attention_layernorm.weight", at::kFloat);
        L.wqkv = matrix({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"});
        if (config.attentionBias)
            L.bqkv = at::cat({get(p + "self_attn.q_proj.bias", at::kFloat), get(p + "self_attn.k_proj.bias", at::kFloat),
                              get(p + "self_attn.v_proj.bias", at::kFloat)},
                             0);
        if (config.qkNorm) {
            L.qNorm = get(p + "self_attn.q_norm.weight", at::kFloat);
            L.kNorm = get(p + "self_attn.k_norm.weight", at::kFloat);
        }
        L.wo = matrix({p + "self_attn.o_proj.weight"});
        L.wGateUp = matrix({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"});
        L.wDown = matrix({p + "mlp.down_proj.weight"});
        m_layers.push_back(std::move(L));
    }

    m_invFreq = rotaryInvFreq(config);
}

KvCache LlamaModel::newCache(int64_t limit) const
{
    int64_t cap = m_config.contextLimit();
    if (limit > 0)
        cap = std::min(cap, limit);
    return KvCache(static_cast<int64_t>(m_layers.size()), m_dims.kvHeads, m_config.headDim, cap);
}

int64_t LlamaModel::Matrix::bytes() const
{
    if (q8)
        return static_cast<int64_t>(q8->bytes());
    int64_t total = w.defined() ? static_cast<int64_t>(w.nbytes()) : 0;
    for (auto& p : parts)
        total += static_cast<int64_t>(p.bytes());
    return total;
}

LlamaModel::Matrix LlamaModel::stack(std::vector<kernels::BlockMatrix> parts)
{
    Matrix m;
    if (parts.empty())
        throw Error("internal: a matrix of no parts");
    m.cols = parts.front().cols;
    for (auto& p : parts) {
        if (p.cols != m.cols)
            throw Error("internal: stacking a " + std::to_string(p.cols) + "-column matrix on " + std::to_string(m.cols) + " columns");
        m.rows += p.rows;
    }
    m.parts = std::move(parts);
    return m;
}

std::vector<std::pair<std::string, kernels::BlockMatrix>> LlamaModel::blockMatrices() const { return m_loadedBlocks; }

LlamaModel::Matrix LlamaModel::makeMatrix(const at::Tensor& w) const
{
    Matrix m;
    m.rows = w.size(0);
    m.cols = w.size(1);
    const GgmlType q4 = m.cols % 256 == 0 ? GgmlType::Q4_K : GgmlType::Q4_0;
    if (m_compute == ComputeType::Q4 && m.cols % 32 == 0) {
        // Q4_K blocks (Q4_0 for rows that are not whole 256-weight blocks), quantized a row at a time.
        at::Tensor f = w.to(at::kFloat).contiguous();
        kernels::BlockMatrix b = kernels::makeBlockMatrix(q4, m.rows, m.cols);
        const float* src = f.data_ptr<float>();
        auto* dst = const_cast<std::byte*>(b.data);
        kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                quantizeRow(q4, src + r * m.cols, dst + static_cast<size_t>(r) * b.rowBytes, m.cols);
        });
        m.parts.push_back(std::move(b));
        return m;
    }
    if (m_compute != ComputeType::Q8 && m_compute != ComputeType::Q4) {
        // Copied into memory a decode step streams faster (kernels::allocateWeights: huge pages).
        const size_t bytes = w.nbytes();
        void* p = kernels::allocateWeights(bytes);
        m.w = at::from_blob(
            p, w.sizes(), [bytes](void* q) { kernels::freeWeights(q, bytes); }, w.options().requires_grad(false));
        m.w.copy_(w);
        return m;
    }
    at::Tensor f = w.to(at::kFloat).contiguous();
    auto q = std::make_shared<kernels::Q8Matrix>(kernels::makeQ8(m.rows, m.cols));
    const float* src = f.data_ptr<float>();
    kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) { kernels::quantizeRowsQ8(src, r0, r1, *q); });
    m.q8 = std::move(q);
    return m;
}

int64_t LlamaModel::weightBytesPerToken() const
{
    int64_t total = 0;
    auto bytes = [](const at::Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : int64_t(0); };
    for (auto& L : m_layers)
        total += L.wqkv.bytes() + bytes(L.bqkv) + bytes(L.qNorm) + bytes(L.kNorm) + L.wo.bytes() + L.wGateUp.bytes() + L.wDown.bytes() +
                 bytes(L.inputNorm) + bytes(L.postNorm);
    if (m_spec.holdsHead())
        total += m_lmHead.bytes() + m_finalNorm.nbytes();
    if (m_embed.defined() && m_spec.holdsEmbedding())
        total += m_embed.nbytes() / m_embed.size(0); // one embedding row per token
    if (m_embedBlocks.data && m_spec.holdsEmbedding())
        total += static_cast<int64_t>(m_embedBlocks.rowBytes);
    return total;
}

// Norms, rotary and the gated activation run the kernels' plain loops over f32 (kernels/rows.cpp), split over
// ATen's threads by rows for a prefill (a decode step's one row runs on the calling thread): a row gives the
// same values however many rows come with it. ATen's operators for any other dtype or layout.
at::Tensor LlamaModel::rmsNorm(const at::Tensor& x, const at::Tensor& w) const
{
    const int64_t n = w.numel();
    if (x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || !w.is_contiguous() || n == 0 || x.dim() < 1 || x.size(-1) != n) {
        at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
        return x * at::rsqrt(var + m_config.rmsNormEps) * w;
    }
    const at::Tensor in = x.contiguous();
    at::Tensor out = at::empty_like(in);
    const float *src = in.data_ptr<float>(), *g = w.data_ptr<float>();
    float* dst = out.data_ptr<float>();
    const float eps = static_cast<float>(m_config.rmsNormEps);
    at::parallel_for(0, in.numel() / n, 64, [&](int64_t a, int64_t b) { kernels::rmsNormRows(src + a * n, g, dst + a * n, b - a, n, eps); });
    return out;
}

namespace {

// Up to this many rows a q8 product runs the kernel once per row (each pass reads the weights); longer inputs
// (prefill) multiply dequantized weights with GEMM.
constexpr int64_t kQ8KernelRows = 4;

std::atomic<bool> g_atenDecode{false};

} // namespace

void LlamaModel::setAtenDecode(bool on) { g_atenDecode.store(on); }

namespace {

// The thread counts of the pools under ATen, looked up at run time (a build may link another BLAS or none):
// OpenMP's (ATen's intra-op parallelism) and OpenBLAS's.
struct PoolThreads {
    using Get = int (*)();
    using Set = void (*)(int);
    Get ompGet = sym<Get>("omp_get_max_threads");
    Set ompSet = sym<Set>("omp_set_num_threads");
    Get blasGet = sym<Get>("openblas_get_num_threads");
    Set blasSet = sym<Set>("openblas_set_num_threads");

    template <class F>
    static F sym(const char* name)
    {
        return reinterpret_cast<F>(::dlsym(RTLD_DEFAULT, name));
    }
};

const PoolThreads& poolThreads()
{
    static const PoolThreads p;
    return p;
}

// A one-row step runs its matrix products on the kernels' pool; ATen's other operators there are tiny, and its
// OpenMP and OpenBLAS pools busy-waiting beside the kernels' threads take their cores (measured: two threads
// decoded slower than one). For the step, both run on the calling thread alone. OpenMP's count is set on this
// thread directly, not with at::set_num_threads, which also rebuilds ATen's pthreadpool (a thread started and
// joined every token).
class SerialAten {
public:
    explicit SerialAten(bool on)
    {
        const PoolThreads& p = poolThreads();
        if (!on)
            return;
        if (p.ompGet && p.ompSet && (m_omp = p.ompGet()) > 1)
            p.ompSet(1);
        if (p.blasGet && p.blasSet && (m_blas = p.blasGet()) > 1)
            p.blasSet(1);
    }
    ~SerialAten()
    {
        const PoolThreads& p = poolThreads();
        if (m_omp > 1)
            p.ompSet(m_omp);
        if (m_blas > 1)
            p.blasSet(m_blas);
    }
    SerialAten(const SerialAten&) = delete;
    SerialAten& operator=(const SerialAten&) = delete;

private:
    int m_omp = 0, m_blas = 0;
};

} // namespace

at::Tensor LlamaModel::linear(const at::Tensor& x, const Matrix& m, const at::Tensor& b) const
{
    const int64_t T = x.size(0);
    if (x.size(1) != m.cols)
        throw Error("internal: a [" + std::to_string(T) + ", " + std::to_string(x.size(1)) + "] input to a [" + std::to_string(m.rows) +
                    ", " + std::to_string(m.cols) + "] weight");
    at::Tensor y;
    if (!m.parts.empty()) {
        y = linearBlocks(x, m);
    } else if (T == 1 && !m.q8 && g_atenDecode.load()) {
        y = at::mv(m.w, x.to(m.w.scalar_type()).view({m.cols})).view({1, m.rows});
    } else if (T == 1 || (m.q8 && T <= kQ8KernelRows)) {
        // Decode: the weights × one vector at memory speed (worker/kernels), split by output rows over the pool.
        y = at::empty({T, m.rows}, at::kFloat);
        at::Tensor xf = x.to(at::kFloat).contiguous();
        for (int64_t t = 0; t < T; ++t) {
            float* out = y.data_ptr<float>() + t * m.rows;
            const float* in = xf.data_ptr<float>() + t * m.cols;
            if (m.q8) {
                kernels::Q8Vector xq;
                kernels::quantizeVectorQ8(in, m.cols, xq);
                kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) { kernels::gemvQ8(*m.q8, xq, out, r0, r1); });
            } else if (m.w.scalar_type() == at::kBFloat16) {
                at::Tensor xb = xf[t].to(at::kBFloat16).contiguous();
                const auto* w = reinterpret_cast<const uint16_t*>(m.w.data_ptr());
                const auto* xv = reinterpret_cast<const uint16_t*>(xb.data_ptr());
                kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) { kernels::gemvBf16(w, xv, out, m.cols, r0, r1); });
            } else {
                const float* w = m.w.data_ptr<float>();
                kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) { kernels::gemvF32(w, in, out, m.cols, r0, r1); });
            }
        }
    } else if (m.q8) {
        // Prefill in q8: GEMM over tiles of dequantized rows (bf16 where the CPU multiplies bf16 natively), each
        // tile written into one reused buffer that stays in cache, not a fresh full-size copy per product.
        static const bool bf16 = defaultComputeType() == ComputeType::BF16;
        const at::ScalarType wt = bf16 ? at::kBFloat16 : at::kFloat;
        constexpr int64_t kTileRows = 256;
        thread_local at::Tensor tile;
        if (!tile.defined() || tile.scalar_type() != wt || tile.numel() < kTileRows * m.cols)
            tile = at::empty({kTileRows * m.cols}, wt);
        at::Tensor xw = x.to(wt).contiguous();
        y = at::empty({T, m.rows}, at::kFloat);
        for (int64_t r0 = 0; r0 < m.rows; r0 += kTileRows) {
            const int64_t n = std::min(kTileRows, m.rows - r0);
            at::Tensor wd = tile.narrow(0, 0, n * m.cols).view({n, m.cols});
            // ATen's own pool here, as for the GEMM right after: the kernels' pool busy-waiting beside OpenMP's
            // made two threads prefill 5x slower than one.
            at::parallel_for(0, n, 16, [&](int64_t a, int64_t b) {
                if (bf16)
                    kernels::dequantizeRowsQ8Bf16(*m.q8, r0 + a, r0 + b, reinterpret_cast<uint16_t*>(wd.data_ptr()) + a * m.cols);
                else
                    kernels::dequantizeRowsQ8(*m.q8, r0 + a, r0 + b, wd.data_ptr<float>() + a * m.cols);
            });
            y.narrow(1, r0, n).copy_(at::linear(xw, wd));
        }
    } else {
        y = at::linear(x.to(m.w.scalar_type()), m.w);
    }
    if (y.scalar_type() != at::kFloat) // a bf16 GEMM returns bf16 in libtorch 1.13
        y = y.to(at::kFloat);
    if (b.defined())
        y = y + b;
    return y;
}

at::Tensor LlamaModel::linearBlocks(const at::Tensor& x, const Matrix& m) const
{
    const int64_t T = x.size(0);
    at::Tensor y = at::empty({T, m.rows}, at::kFloat);
    at::Tensor xf = x.to(at::kFloat).contiguous();
    if (T <= kQ8KernelRows) {
        // Decode: one pass of the block kernels over all parts per row of x, the input prepared once for them.
        std::vector<GgmlType> types;
        for (auto& p : m.parts)
            types.push_back(p.type);
        kernels::BlockInput in;
        for (int64_t t = 0; t < T; ++t) {
            in.prepare(xf.data_ptr<float>() + t * m.cols, m.cols, types);
            float* out = y.data_ptr<float>() + t * m.rows;
            kernels::parallelRows(m.rows, 16, [&](int64_t r0, int64_t r1) {
                int64_t base = 0;
                for (auto& p : m.parts) {
                    const int64_t lo = std::max(r0, base), hi = std::min(r1, base + p.rows);
                    if (lo < hi)
                        kernels::gemvBlocks(p, in, out + base, lo - base, hi - base);
                    base += p.rows;
                }
            });
        }
        return y;
    }
    // Prefill: f32 and bf16 parts multiply as they are; block types through tiles of dequantized rows, rounded to
    // bf16 where the CPU multiplies bf16 natively (16 rows at a time through f32 that stays in cache: no full f32
    // tile and no second pass over it), into one reused buffer.
    static const bool bf16 = defaultComputeType() == ComputeType::BF16;
    constexpr int64_t kTileRows = 512;
    const at::Tensor xw = bf16 ? xf.to(at::kBFloat16) : xf;
    int64_t base = 0;
    for (auto& p : m.parts) {
        if (p.type == GgmlType::F32 || p.type == GgmlType::BF16) {
            const at::ScalarType st = p.type == GgmlType::F32 ? at::kFloat : at::kBFloat16;
            at::Tensor w = at::from_blob(const_cast<std::byte*>(p.data), {p.rows, p.cols}, at::TensorOptions().dtype(st));
            y.narrow(1, base, p.rows).copy_(at::linear(xf.to(st), w));
            base += p.rows;
            continue;
        }
        const at::ScalarType wt = bf16 ? at::kBFloat16 : at::kFloat;
        thread_local at::Tensor tile;
        if (!tile.defined() || tile.scalar_type() != wt || tile.numel() < kTileRows * p.cols)
            tile = at::empty({kTileRows * p.cols}, wt);
        for (int64_t r0 = 0; r0 < p.rows; r0 += kTileRows) {
            const int64_t n = std::min(kTileRows, p.rows - r0);
            at::Tensor wd = tile.narrow(0, 0, n * p.cols).view({n, p.cols});
            at::parallel_for(0, n, 16, [&](int64_t a, int64_t b) {
                if (!bf16) {
                    kernels::dequantizeRows(p, r0 + a, r0 + b, wd.data_ptr<float>() + a * p.cols);
                    return;
                }
                thread_local at::Tensor rows; // ATen's rounding to bf16, run on this thread
                if (!rows.defined() || rows.numel() < 16 * p.cols)
                    rows = at::empty({16 * p.cols}, at::kFloat);
                for (int64_t i = a; i < b; i += 16) {
                    const int64_t k = std::min<int64_t>(16, b - i);
                    kernels::dequantizeRows(p, r0 + i, r0 + i + k, rows.data_ptr<float>());
                    wd.narrow(0, i, k).copy_(rows.narrow(0, 0, k * p.cols).view({k, p.cols}));
                }
            });
            y.narrow(1, base + r0, n).copy_(at::linear(xw, wd));
        }
        base += p.rows;
    }
    return y;
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const
{
    if (!m_embedBlocks.data)
        return m_embed.index_select(0, ids).to(at::kFloat);
    const int64_t T = ids.size(0);
    at::Tensor x = at::empty({T, m_embedBlocks.cols}, at::kFloat);
    const int64_t* p = ids.data_ptr<int64_t>();
    for (int64_t i = 0; i < T; ++i) {
        if (p[i] < 0 || p[i] >= m_embedBlocks.rows)
            throw Error("token id " + std::to_string(p[i]) + " is outside the embedding table (" + std::to_string(m_embedBlocks.rows) + " rows)");
        kernels::dequantizeRows(m_embedBlocks, p[i], p[i] + 1, x.data_ptr<float>() + i * m_embedBlocks.cols);
    }
    return x;
}

at::Tensor LlamaModel::rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const
{
    // x: [T, heads, d], cos and sin: [T, 1, d]
    if (x.scalar_type() == at::kFloat && x.dim() == 3 && cos.is_contiguous() && sin.is_contiguous() &&
        cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && x.size(-1) % 2 == 0 && cos.dim() == 3 && cos.size(0) == x.size(0) &&
        cos.size(1) == 1 && cos.size(2) == x.size(2) && sin.sizes() == cos.sizes()) {
        const at::Tensor in = x.contiguous();
        at::Tensor out = at::empty_like(in);
        const int64_t heads = in.size(1), d = in.size(2), row = heads * d;
        const float *src = in.data_ptr<float>(), *c = cos.data_ptr<float>(), *sn = sin.data_ptr<float>();
        float* dst = out.data_ptr<float>();
        at::parallel_for(0, in.size(0), 16, [&](int64_t a, int64_t b) {
            kernels::rotaryRows(src + a * row, c + a * d, sn + a * d, dst + a * row, b - a, heads, d);
        });
        return out;
    }
    // x: [T, heads, d]; rotate_half(x) = cat(-x2, x1) over the last dim
    const int64_t half = x.size(-1) / 2;
    at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
    at::Tensor rot = at::cat({-x2, x1}, -1);
    return x * cos + rot * sin;
}

namespace {

// silu(gate) · up for [T, 2I] rows of gate then up.
at::Tensor gatedActivation(const at::Tensor& gu, int64_t I)
{
    if (gu.scalar_type() != at::kFloat || gu.dim() != 2 || gu.size(1) != 2 * I)
        return at::silu(gu.narrow(1, 0, I)) * gu.narrow(1, I, I);
    const at::Tensor in = gu.contiguous();
    at::Tensor out = at::empty({in.size(0), I}, at::kFloat);
    const float* src = in.data_ptr<float>();
    float* dst = out.data_ptr<float>();
    at::parallel_for(0, in.size(0), 4, [&](int64_t a, int64_t b) { kernels::siluMulRows(src + a * 2 * I, dst + a * I, b - a, I); });
    return out;
}

} // namespace

at::Tensor LlamaModel::forward(const std::vector<int>& tokens, KvCache& cache) const
{
    if (!m_spec.firstStage || !m_spec.lastStage || m_spec.tpSize != 1)
        throw Error("internal: forward(tokens) needs the whole model; use forwardShard");
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    return forwardShard(at::tensor(ids, at::kLong), cache);
}

at::Tensor LlamaModel::forwardShard(const at::Tensor& input, KvCache& cache) const
{
    const ModelConfig& c = m_config;
    at::Tensor x;
    int64_t T;
    if (m_spec.firstStage) {
        if (input.scalar_type() != at::kLong || input.dim() != 1)
            throw Error("the first stage takes token ids");
        T = input.size(0);
        if (T == 0)
            throw Error("forward called with no tokens");
        const int64_t* ids = input.data_ptr<int64_t>();
        for (int64_t i = 0; i < T; ++i)
            if (ids[i] < 0 || ids[i] >= c.vocabSize)
                throw Error("token id " + std::to_string(ids[i]) + " is outside the model's vocabulary (" + std::to_string(c.vocabSize) + ")");
        x = embed(input); // [T, hidden]
    } else {
        if (input.scalar_type() != at::kFloat || input.dim() != 2 || input.size(1) != c.hiddenSize || input.size(0) == 0)
            throw Error("a later stage takes an f32 hidden state [T, " + std::to_string(c.hiddenSize) + "]");
        T = input.size(0);
        x = input.contiguous();
    }
    const SerialAten serial(T == 1 && !g_atenDecode.load());
    const int64_t pos0 = cache.length();
    cache.reserve(pos0 + T);
    const int64_t L = pos0 + T;
    const int64_t H = m_dims.qHeads, KV = m_dims.kvHeads, D = c.headDim, G = H / KV;

    at::Tensor pos = at::arange(pos0, L, at::kFloat);
    at::Tensor freqs = at::outer(pos, m_invFreq);          // [T, D/2]
    at::Tensor emb = at::cat({freqs, freqs}, -1);          // [T, D]
    at::Tensor cos = emb.cos().unsqueeze(1), sin = emb.sin().unsqueeze(1); // [T, 1, D]

    at::Tensor mask;
    if (T > 1) {
        // query t sits at pos0 + t and sees keys 0..pos0 + t
        mask = at::full({T, L}, -INFINITY, at::kFloat).triu(pos0 + 1);
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    // Row-parallel outputs are partial sums on each rank: sum them across the group.
    if (m_spec.tpSize > 1 && !m_comm)
        throw Error("internal: a tensor-parallel shard ran without its group");
    auto reduce = [&](at::Tensor t) {
        if (m_spec.tpSize > 1) {
            t = t.contiguous();
            m_comm->allReduceSum(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
        }
        return t;
    };

    for (size_t l = 0; l < m_layers.size(); ++l) {
        const Layer& W = m_layers[l];
        at::Tensor h = rmsNorm(x, W.inputNorm);
        at::Tensor qkv = linear(h, W.wqkv, W.bqkv);
        at::Tensor q = qkv.narrow(1, 0, H * D).view({T, H, D});
        at::Tensor k = qkv.narrow(1, H * D, KV * D).view({T, KV, D});
        at::Tensor v = qkv.narrow(1, (H + KV) * D, KV * D).view({T, KV, D});
        if (c.qkNorm) {
            q = rmsNorm(q, W.qNorm);
            k = rmsNorm(k, W.kNorm);
        }
        q = rotary(q, cos, sin);
        k = rotary(k, cos, sin);
        cache.m_k[l].narrow(1, pos0, T).copy_(k.transpose(0, 1));
        cache.m_v[l].narrow(1, pos0, T).copy_(v.transpose(0, 1));
        at::Tensor K = cache.m_k[l].narrow(1, 0, L); // [KV, L, D]
        at::Tensor V = cache.m_v[l].narrow(1, 0, L);
        // q heads h = j*G + r use kv head j (as HF's repeat_kv): group them to one batched matmul per kv head
        at::Tensor Q = q.transpose(0, 1).reshape({KV, G * T, D});
        at::Tensor scores = at::bmm(Q, K.transpose(1, 2)).mul_(scale); // [KV, G*T, L]
        if (mask.defined())
            scores = (scores.view({KV, G, T, L}) + mask).view({KV, G * T, L});
        at::Tensor probs = at::softmax(scores, -1);
        at::Tensor attn = at::bmm(probs, V).view({H, T, D}).transpose(0, 1).reshape({T, H * D});
        x = x + reduce(linear(attn, W.wo));

        at::Tensor h2 = rmsNorm(x, W.postNorm);
        at::Tensor gu = linear(h2, W.wGateUp);
        const int64_t I = m_dims.intermediate;
        at::Tensor act = gatedActivation(gu, I);
        x = x + reduce(linear(act, W.wDown));
    }
    cache.m_length = L;
    if (!m_spec.lastStage)
        return x;
    // Each rank of the last stage computes the logits of its vocabulary rows; summing zero-padded parts
    // assembles the full vector (one all-reduce of vocab floats), and rank 0 returns it.
    at::Tensor last = rmsNorm(x.narrow(0, T - 1, 1), m_finalNorm);
    at::Tensor part = linear(last, m_lmHead).view({m_dims.vocab});
    at::Tensor logits = part;
    if (m_spec.tpSize > 1) {
        logits = at::zeros({c.vocabSize}, at::kFloat);
        logits.narrow(0, m_dims.vocabBegin, m_dims.vocab).copy_(part);
        logits = reduce(logits);
    }
    if (!m_spec.returnsLogits())
        return at::Tensor();
    return logits.contiguous();
}

LocalStepper::LocalStepper(const LlamaModel& model, const SamplingParams& sampling, int64_t contextLimit, size_t traceTopK)
    : m_model(model)
    , m_cache(model.newCache(contextLimit))
    , m_sampler(sampling)
    , m_topK(traceTopK)
{
}

StepOutput LocalStepper::step(const std::vector<int>& tokens, int64_t startPos)
{
    if (startPos != m_cache.length())
        m_cache.truncate(startPos); // reuse of a shared prefix; throws if startPos is ahead of the cache
    at::Tensor logits = m_model.forward(tokens, m_cache);
    const float* p = logits.data_ptr<float>();
    const size_t n = static_cast<size_t>(logits.numel());
    StepOutput out;
    out.token = m_sampler.sample(p, n);
    if (m_topK > 0)
        out.top = Sampler::topLogits(p, n, m_topK);
    return out;
}

void setComputeThreads(int threads)
{
    kernels::setThreads(threads);
    at::set_num_threads(threads);
    if (auto set = poolThreads().blasSet)
        set(threads);
}

} // namespace together
